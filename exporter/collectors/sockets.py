"""Socket usage beside its kernel limits: sockstat, TCP/UDP memory, fragments, file handles,
ephemeral ports vs the Kubernetes NodePort range.

Sources (under ``--path.procfs``): ``net/sockstat``, ``net/sockstat6`` and ``sys/...``
(``net.ipv4.tcp_max_tw_buckets``, ``tcp_max_orphans``, ``tcp_mem``, ``udp_mem``,
``ipfrag_high_thresh``, ``net.ipv6.ip6frag_high_thresh``, ``ip_local_port_range``,
``ip_local_reserved_ports``, ``fs.file-nr``, ``fs.file-max``).  No privilege needed.

Scope (docs/limits.md has the table): in-use counts, TIME_WAIT, fragment memory and their
limits, and the port range are per network namespace; orphans, TCP/UDP memory and file
handles are machine-wide.  ``tcp_max_orphans``, ``tcp_mem`` and ``udp_mem`` exist only in the
initial namespace's /proc/sys: elsewhere those limits are left out (never 0, never an error).
A file that is absent (no IPv6: no sockstat6) costs only its series; one bad value costs only
that value (logged once per distinct problem set).

The collector is a list of parts (``PARTS``), each a method returning families from what it
reads.  The two that only map files to series are tables (``SOCKSTAT_ROWS``, ``SYSCTL_ROWS``:
where each value comes from, one hop) run by one loop (``_table``); the port range is
computed (``_ports``), and the per-socket attribution (sock_diag listeners, UDP servers, the
opt-in ephemeral-port walk) is the last part.
"""
from __future__ import annotations

import os
import time

from ..config import Option, parse_bool, parse_duration, parse_positive_int
from ..metrics import COUNTER, GAUGE, Metric
from ..sources import ParseError, procfs, sockdiag
from ..sources import netlink as nl
from ..sources import sockstat as ss
from .base import Collector, register

_NS = " Per network namespace."
_GLOBAL = " Machine-wide (the same in every network namespace)."

SOCKETS_USED = Metric("nodenet_sockets_used", GAUGE,
                      "Sockets in use, all families and types (sockstat 'sockets: used')."
                      + _NS + " (Kernels before 4.16 count the whole machine.)")
TCP_INUSE = Metric("nodenet_tcp_sockets_in_use", GAUGE,
                   "TCP sockets in use (not TIME_WAIT), by family (sockstat TCP/TCP6 inuse)."
                   + _NS, ("family",))
UDP_INUSE = Metric("nodenet_udp_sockets_in_use", GAUGE,
                   "UDP sockets in use, by family (sockstat UDP/UDP6 inuse)." + _NS,
                   ("family",))
TW = Metric("nodenet_tcp_timewait_sockets", GAUGE,
            "TCP sockets in TIME_WAIT, IPv4 and IPv6 (sockstat tw); above "
            "nodenet_tcp_timewait_sockets_limit "
            "the kernel destroys new TIME_WAIT sockets early (TCPTimeWaitOverflow)." + _NS)
TW_LIMIT = Metric("nodenet_tcp_timewait_sockets_limit", GAUGE,
                  "net.ipv4.tcp_max_tw_buckets: most TIME_WAIT sockets kept." + _NS)
ORPHANS = Metric("nodenet_tcp_orphan_sockets", GAUGE,
                 "TCP sockets no longer attached to a file (closed, still sending; sockstat "
                 "orphan)." + _GLOBAL)
ORPHANS_LIMIT = Metric("nodenet_tcp_orphan_sockets_limit", GAUGE,
                       "net.ipv4.tcp_max_orphans: above it orphans are reset ('too many "
                       "orphaned sockets')." + _GLOBAL + " Only visible in the initial "
                       "namespace's /proc/sys: absent elsewhere.")
TCP_MEM = Metric("nodenet_tcp_memory_bytes", GAUGE,
                 "Memory held by TCP socket buffers in bytes (sockstat TCP mem, pages x page "
                 "size)." + _GLOBAL)
TCP_MEM_LIMIT = Metric("nodenet_tcp_memory_limit_bytes", GAUGE,
                       "net.ipv4.tcp_mem in bytes: level low (no pressure below), pressure "
                       "(buffers are moderated above), high (allocations fail above)." + _GLOBAL
                       + " Only visible in the initial namespace's /proc/sys: absent elsewhere.",
                       ("level",))
UDP_MEM = Metric("nodenet_udp_memory_bytes", GAUGE,
                 "Memory held by UDP socket buffers in bytes (sockstat UDP mem, pages x page "
                 "size)." + _GLOBAL)
UDP_MEM_LIMIT = Metric("nodenet_udp_memory_limit_bytes", GAUGE,
                       "net.ipv4.udp_mem in bytes (levels low, pressure, high as tcp_mem; above "
                       "high datagrams are dropped, UDP MemErrors)." + _GLOBAL + " Only visible "
                       "in the initial namespace's /proc/sys: absent elsewhere.", ("level",))
FRAG_MEM = Metric("nodenet_ip_fragment_memory_bytes", GAUGE,
                  "Memory held by IP fragments waiting for reassembly, in bytes (sockstat "
                  "FRAG/FRAG6 memory)." + _NS, ("family",))
FRAG_LIMIT = Metric("nodenet_ip_fragment_memory_limit_bytes", GAUGE,
                    "ipfrag_high_thresh (ipv4) / ip6frag_high_thresh (ipv6): above it new "
                    "fragments are dropped (ReasmFails)." + _NS, ("family",))
FILES = Metric("nodenet_file_handles", GAUGE,
               "Allocated file handles (first field of /proc/sys/fs/file-nr), what the kernel "
               "compares with fs.file-max ('VFS: file-max limit reached')." + _GLOBAL)
FILES_LIMIT = Metric("nodenet_file_handles_limit", GAUGE, "fs.file-max." + _GLOBAL)
PORT_RANGE = Metric("nodenet_ephemeral_ports_range_size", GAUGE,
                    "Ports an outgoing connection may take: the size of "
                    "net.ipv4.ip_local_port_range minus the reserved ports inside it." + _NS)
PORTS_RESERVED = Metric("nodenet_ephemeral_ports_reserved", GAUGE,
                        "Ports listed in net.ipv4.ip_local_reserved_ports." + _NS)
PORT_OVERLAP = Metric("nodenet_ephemeral_ports_nodeport_overlap", GAUGE,
                      "Ports of the NodePort range (--collector.sockets.nodeport-range) that "
                      "lie inside ip_local_port_range and are not reserved: an outgoing "
                      "connection may take one and the Service stops answering on that node "
                      "(kubernetes#111682). Should be 0." + _NS)

# -- per-socket attribution (issue 15): sock_diag listeners, UDP servers, ephemeral ports ----
_AP = ("address", "port")
_SD = (" From a sock_diag dump filtered in the kernel; address as the kernel prints it "
       "(0.0.0.0 and :: for wildcards), at most --collector.sockets.max-series sockets." + _NS)
LISTEN_QUEUE = Metric("nodenet_tcp_listen_queue_length", GAUGE,
                      "Connections waiting for accept() on a TCP listener (idiag_rqueue); at "
                      "nodenet_tcp_listen_queue_limit new ones overflow." + _SD, _AP)
LISTEN_LIMIT = Metric("nodenet_tcp_listen_queue_limit", GAUGE,
                      "A TCP listener's accept backlog (idiag_wqueue: min(listen() backlog, "
                      "net.core.somaxconn))." + _SD, _AP)
UDP_DROPS = Metric("nodenet_udp_socket_drops_total", COUNTER,
                   "Datagrams dropped by a UDP server socket (SK_MEMINFO drops: receive buffer "
                   "full, filters), summed over its SO_REUSEPORT group; unconnected sockets on a "
                   "port outside the ephemeral range." + _SD, _AP)
UDP_QUEUE = Metric("nodenet_udp_socket_receive_queue_bytes", GAUGE,
                   "Bytes queued for reading on a UDP server (SK_MEMINFO rmem_alloc), summed "
                   "over its SO_REUSEPORT group." + _SD, _AP)
UDP_RCVBUF = Metric("nodenet_udp_socket_receive_buffer_bytes", GAUGE,
                    "Receive buffer size of a UDP server (SK_MEMINFO rcvbuf), summed over its "
                    "SO_REUSEPORT group." + _SD, _AP)
EPH_MAX = Metric("nodenet_ephemeral_ports_max_in_use", GAUGE,
                 "Ephemeral ports in use towards the busiest (source, destination address:port): "
                 "compare with nodenet_ephemeral_ports_range_size (--collector.sockets."
                 "ephemeral-ports)." + _NS)
EPH_IN_USE = Metric("nodenet_ephemeral_ports_in_use", GAUGE,
                    "Ephemeral ports in use per (source address, destination address:port), "
                    "the top --collector.sockets.ephemeral-ports.top groups." + _NS,
                    ("source", "destination"))
EPH_PARTIAL = Metric("nodenet_ephemeral_ports_partial", GAUGE,
                     "1 if the last TCP walk stopped at its time budget (--collector.sockets."
                     "ephemeral-ports.timeout): the counts cover only the sockets read.")

LEVELS = ("low", "pressure", "high")

# The parts that read a file and map its values to series, as tables.  A row is (what to
# read, [(metric, label values, where the value is in what was read, in pages?)]); a part's
# families are made in its metrics' order, and only those with samples are returned.  What
# is absent costs only its series, what is bad is noted (self._seen) and left out.
USAGE = (SOCKETS_USED, TCP_INUSE, UDP_INUSE, TW, ORPHANS, TCP_MEM, UDP_MEM, FRAG_MEM)
SOCKSTAT_ROWS = (   # what: the file under net/; where: (section, field)
    ("sockstat", ((TCP_INUSE, ("ipv4",), ("TCP", "inuse"), False),
                  (UDP_INUSE, ("ipv4",), ("UDP", "inuse"), False),
                  (FRAG_MEM, ("ipv4",), ("FRAG", "memory"), False),
                  # machine-wide or IPv4+IPv6 totals: from sockstat alone
                  (SOCKETS_USED, (), ("sockets", "used"), False),
                  (TW, (), ("TCP", "tw"), False),
                  (ORPHANS, (), ("TCP", "orphan"), False),
                  (TCP_MEM, (), ("TCP", "mem"), True),
                  (UDP_MEM, (), ("UDP", "mem"), True))),
    ("sockstat6", ((TCP_INUSE, ("ipv6",), ("TCP6", "inuse"), False),
                   (UDP_INUSE, ("ipv6",), ("UDP6", "inuse"), False),
                   (FRAG_MEM, ("ipv6",), ("FRAG6", "memory"), False))),
)
LIMITS = (TW_LIMIT, ORPHANS_LIMIT, TCP_MEM_LIMIT, UDP_MEM_LIMIT, FRAG_LIMIT, FILES, FILES_LIMIT)
SYSCTL_ROWS = (     # what: (sysctl, how many integers it holds); where: their index
    (("net.ipv4.tcp_max_tw_buckets", 1), ((TW_LIMIT, (), 0, False),)),
    (("net.ipv4.tcp_max_orphans", 1), ((ORPHANS_LIMIT, (), 0, False),)),
    (("net.ipv4.tcp_mem", 3), tuple((TCP_MEM_LIMIT, (lv,), i, True)
                                    for i, lv in enumerate(LEVELS))),
    (("net.ipv4.udp_mem", 3), tuple((UDP_MEM_LIMIT, (lv,), i, True)
                                    for i, lv in enumerate(LEVELS))),
    (("net.ipv4.ipfrag_high_thresh", 1), ((FRAG_LIMIT, ("ipv4",), 0, False),)),
    (("net.ipv6.ip6frag_high_thresh", 1), ((FRAG_LIMIT, ("ipv6",), 0, False),)),
    (("fs.file-nr", 3), ((FILES, (), 0, False),)),   # allocated, unused (0), max
    (("fs.file-max", 1), ((FILES_LIMIT, (), 0, False),)),
)


@register
class SocketsCollector(Collector):
    name = "sockets"
    default_enabled = True
    description = ("Socket usage beside its limits: in use, TIME_WAIT, orphans, TCP/UDP memory, "
                   "fragments, file handles, ephemeral ports vs NodePorts")
    source = ("/proc/net/sockstat, /proc/net/sockstat6, /proc/sys (tcp_max_tw_buckets, "
              "tcp_max_orphans, tcp_mem, udp_mem, ipfrag_high_thresh, ip_local_port_range, "
              "ip_local_reserved_ports, fs.file-nr, fs.file-max)")
    metrics = (SOCKETS_USED, TCP_INUSE, UDP_INUSE, TW, TW_LIMIT, ORPHANS, ORPHANS_LIMIT,
               TCP_MEM, TCP_MEM_LIMIT, UDP_MEM, UDP_MEM_LIMIT, FRAG_MEM, FRAG_LIMIT, FILES,
               FILES_LIMIT, PORT_RANGE, PORTS_RESERVED, PORT_OVERLAP,
               LISTEN_QUEUE, LISTEN_LIMIT, UDP_DROPS, UDP_QUEUE, UDP_RCVBUF,
               EPH_MAX, EPH_IN_USE, EPH_PARTIAL)
    options = (Option("collector.sockets.nodeport-range", ss.parse_port_range_flag,
                      (30000, 32767),
                      "NodePort range (LOW-HIGH) compared with ip_local_port_range "
                      "(the Kubernetes default 30000-32767)", "LOW-HIGH"),
               Option("collector.sockets.per-socket", parse_bool, True,
                      "Listener queues and UDP-server drops per (address, port) from sock_diag "
                      "(the running kernel, whatever --path.procfs says)"),
               Option("collector.sockets.max-series", parse_positive_int, 200,
                      "Most listeners plus UDP servers exported (listeners first, each by port)"),
               Option("collector.sockets.ephemeral-ports", parse_bool, False,
                      "Count ephemeral ports per destination (walks every TCP socket)"),
               Option("collector.sockets.ephemeral-ports.top", parse_positive_int, 5,
                      "Destinations exported by the ephemeral-port walk"),
               Option("collector.sockets.ephemeral-ports.timeout", parse_duration, 1.0,
                      "Time budget of the ephemeral-port walk (partial counts beyond it)"))

    PARTS = ("_usage", "_limits", "_ports", "_attribution")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.nodeport_range = ctx.settings["collector.sockets.nodeport-range"]
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        st = ctx.settings
        self.per_socket = st["collector.sockets.per-socket"]
        self.max_series = st["collector.sockets.max-series"]
        self.ephemeral = st["collector.sockets.ephemeral-ports"]
        self.eph_top = st["collector.sockets.ephemeral-ports.top"]
        self.eph_timeout = st["collector.sockets.ephemeral-ports.timeout"]
        self._problems: tuple = ()
        self._seen: list[str] = []     # problems met during the current collection

    def collect(self):
        self._seen = []
        families = []
        for part in self.PARTS:
            families.extend(getattr(self, part)())
        problems = tuple(self._seen)
        if problems != self._problems:
            if problems:
                self.log.warning("values left out", problems=list(problems[:10]))
            self._problems = problems
        return families

    # -- reading ------------------------------------------------------------------------------

    def _text(self, *parts: str) -> str | None:
        try:
            return procfs.read_text(self.ctx.proc(*parts))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _sysctl(self, name: str, n: int = 1) -> list[int] | None:
        """The n integers of a /proc/sys file; None when absent or bad (a bad one noted)."""
        text = self._text("sys", *name.split("."))
        if text is None:
            return None
        try:
            values = procfs.parse_sysctl_value(text)
        except ParseError as exc:
            self._seen.append(f"{name}: {exc}")
            return None
        if len(values) != n:
            self._seen.append(f"{name}: {len(values)} values, expected {n}")
            return None
        return values

    def _sockstat(self, file: str) -> ss.Sockstat | None:
        text = self._text("net", file)
        if text is None:
            return None
        parsed = ss.parse_sockstat(text, file)
        self._seen.extend(parsed.problems)
        return parsed

    # -- parts --------------------------------------------------------------------------------

    def _table(self, metrics, rows, read, get):
        """One table part: ``read(what)`` (None: absent or bad), ``get(read, where)`` (None:
        that value is absent)."""
        fams = {m: m.family() for m in metrics}
        for what, cells in rows:
            got = read(what)
            if got is None:
                continue
            for metric, labels, where, in_pages in cells:
                value = get(got, where)
                if value is not None:
                    fams[metric].add(labels, value * self.page_size if in_pages else value)
        return [f for f in fams.values() if f.samples]

    def _usage(self):
        return self._table(USAGE, SOCKSTAT_ROWS, self._sockstat,
                           lambda st, where: st.get(*where))

    def _limits(self):
        return self._table(LIMITS, SYSCTL_ROWS, lambda what: self._sysctl(*what),
                           lambda values, i: values[i])

    def _ports(self):
        local = self._sysctl("net.ipv4.ip_local_port_range", 2)
        if local is None:
            return []
        text = self._text("sys", "net", "ipv4", "ip_local_reserved_ports")
        reserved: list[tuple[int, int]] = []
        if text is not None:
            try:
                reserved = ss.parse_port_list(text)
            except ParseError as exc:
                self._seen.append(f"net.ipv4.ip_local_reserved_ports: {exc}")
                return []
        ports = ss.ephemeral_ports((local[0], local[1]), reserved, self.nodeport_range)
        return [PORT_RANGE.single(ports.range_size), PORTS_RESERVED.single(ports.reserved),
                PORT_OVERLAP.single(ports.nodeport_overlap)]

    # -- per-socket attribution (issue 15) ----------------------------------------------------

    def _attribution(self):
        if not self.per_socket:
            return []
        local = self._sysctl("net.ipv4.ip_local_port_range", 2)
        lo, hi = (local[0], local[1]) if local else (32768, 60999)
        capped: list[int] = []
        try:
            with nl.NetlinkSocket(nl.NETLINK_SOCK_DIAG, timeout=1.0, deadline=2.0) as sock:
                out = socket_families(sock, lo, hi, self.max_series, capped.append)
        except OSError as exc:
            self._seen.append(f"sock_diag: {exc}")
            return []
        if capped:
            self.say("max-series", "listeners and UDP servers capped by "
                     "--collector.sockets.max-series", found=capped[0], exported=self.max_series)
        else:
            self.say("max-series", None)
        if self.ephemeral:
            out.extend(self._ephemeral(lo, hi))
        return out

    def _ephemeral(self, lo: int, hi: int):
        deadline = time.monotonic() + self.eph_timeout
        try:
            with nl.NetlinkSocket(nl.NETLINK_SOCK_DIAG, timeout=1.0,
                                  deadline=self.eph_timeout + 1.0) as sock:
                groups, complete = sockdiag.ephemeral_walk(sock, lo, hi, deadline)
        except OSError as exc:
            self._seen.append(f"sock_diag TCP walk: {exc}")
            return []
        top = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))[: self.eph_top]
        fam = EPH_IN_USE.family()
        for (src, dst), n in top:
            fam.add((src, dst), n)
        return [EPH_MAX.single(top[0][1] if top else 0), fam,
                EPH_PARTIAL.single(0 if complete else 1)]


def socket_families(sock, lo: int, hi: int, max_series: int, on_cap=None,
                    specs=(LISTEN_QUEUE, LISTEN_LIMIT, UDP_DROPS, UDP_QUEUE, UDP_RCVBUF),
                    head: tuple = ()):
    """The listener and UDP-server families of the namespace ``sock`` lives in (also the pod
    view's, with its namespace labels as ``head`` and its own specs)."""
    listen = sorted(sockdiag.listeners(sock), key=lambda s: (s.sport, s.family, s.source))
    udp = sorted(sockdiag.udp_servers(sockdiag.udp_sockets(sock), lo, hi).items(),
                 key=lambda kv: (kv[0][1], kv[0][0]))
    if len(listen) + len(udp) > max_series:
        if on_cap is not None:
            on_cap(len(listen) + len(udp))
        listen = listen[:max_series]
        udp = udp[: max_series - len(listen)]
    fams = [spec.family() if spec is not None else None for spec in specs]
    for s in listen:
        key = head + (s.source, str(s.sport))
        if fams[0] is not None:
            fams[0].add(key, s.rqueue)
        if fams[1] is not None:
            fams[1].add(key, s.wqueue)
    for (address, port), srv in udp:
        key = head + (address, str(port))
        for fam, v in zip(fams[2:], (srv.drops, srv.queue, srv.rcvbuf), strict=True):
            if fam is not None:
                fam.add(key, v)
    return [f for f in fams if f is not None]
