"""The pod view: refusal counters of every other network namespace (pods), read from outside.

Enabled with ``--collector.netns`` (default off).  Discovery (:func:`sources.netns.discover_pods`)
lists the namespaces under ``--collector.netns.dirs`` (default /run/netns) and, with hostPID,
those of every process in ``/proc/<pid>/ns/net``, distinct by nsfs inode, the exporter's own
left out, at most ``--collector.netns.max`` (default 200).  Each is read through one member
process's ``/proc/<pid>/net/{snmp,netstat,snmp6,sockstat,sockstat6,dev}`` (no setns), kept
open between scrapes and pread from offset 0 (:class:`NetFiles`: half the kernel's cost; a
namespace is let go at the first walk that no longer finds it, every one after
``--collector.netns.keep-open`` without a scrape); one known only as a bind mount (no member
process) is read by entering it (setns, CAP_SYS_ADMIN) from a short-lived thread, else counted
in ``nodenet_netns_unread``.

Series per namespace at default flags (labels netns, netns_inode, pod_uid as
``nodenet_conntrack_netns_entries``): 3 TCP counters + 3 x 2 UDP/IP counters per family
+ 2 TCP in-use + 1 TIME_WAIT + 4 per interface (lo excluded): 16 with one eth0.
``--collector.netns.counters`` (a regex over the ``netstat`` collector's metric names) adds
more of that allowlist.

Privilege (docs/podview.md): hostPID for /proc discovery.  Without CAP_SYS_PTRACE, the ns link
of a process of another uid (a pod's pause process runs as 65535) is refused while its
/proc/<pid>/net files are readable: such namespaces are still found (grouped by the inode of
/proc/<pid>/net/dev, one per namespace) and read, with ``netns_inode`` "" (counted in
``nodenet_netns_inode_unknown``, said once in the log); one without a pod UID either cannot
be told apart honestly and is counted as unread (reason ``identity``).

A namespace that vanishes mid-read (its process exited, the pid now names another namespace:
the files are opened through a directory fd on /proc/<pid>, which pins that process, and
checked against the namespace discovered) is simply absent.  The time budget
(``--collector.netns.timeout``) stops the walk: ``nodenet_netns_partial`` 1 and the rest
counted as unread (reason ``time_budget``).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import threading
import time
from collections.abc import Callable

from ..config import (
    Option,
    parse_bool,
    parse_duration,
    parse_duration_or_zero,
    parse_list,
    parse_positive_int,
    parse_regex,
)
from ..metrics import COUNTER, GAUGE, Metric
from ..sources import netlink as nl
from ..sources import netns
from ..sources.procnetdev import parse_net_dev
from . import netstat
from . import sockets as sockets_mod
from .base import Collector, register

NS_LABELS = ("netns", "netns_inode", "pod_uid")
_WHERE = (" In a pod's (or any other) network namespace, read from outside through a member "
          "process's /proc/<pid>/net; netns is the name under /run/netns if any, netns_inode "
          "the namespace's inode (\"\" without CAP_SYS_PTRACE), pod_uid from its cgroup.")


def pod_metric(m: Metric) -> Metric:
    """The pod-view twin of a node metric: nodenet_x -> nodenet_netns_x, namespace labels first."""
    help_ = m.help.replace(" Per network namespace.", "")
    return Metric("nodenet_netns_" + m.name[len("nodenet_"):], m.type, help_ + _WHERE,
                  NS_LABELS + m.labels)


POD_COUNTERS = {m.name: pod_metric(m) for m in netstat.METRICS}
DEFAULT_COUNTERS = ("nodenet_tcp_listen_overflows_total", "nodenet_tcp_listen_drops_total",
                    "nodenet_tcp_retransmitted_segments_total",
                    "nodenet_udp_receive_buffer_errors_total", "nodenet_udp_in_errors_total",
                    "nodenet_ip_reassembly_failures_total")
TCP_INUSE = Metric("nodenet_netns_tcp_sockets_in_use", GAUGE,
                   "TCP sockets in use (not TIME_WAIT), by family (sockstat TCP/TCP6 inuse)."
                   + _WHERE, NS_LABELS + ("family",))
TW = Metric("nodenet_netns_tcp_timewait_sockets", GAUGE,
            "TCP sockets in TIME_WAIT, IPv4 and IPv6 (sockstat tw)." + _WHERE, NS_LABELS)
_IF = NS_LABELS + ("interface",)
_DEV = " of the namespace's own interface (/proc/<pid>/net/dev; lo excluded)."
IF_RX_DROPS = Metric("nodenet_netns_interface_receive_drops_total", COUNTER,
                     "Received packets dropped" + _DEV + _WHERE, _IF)
IF_RX_ERRORS = Metric("nodenet_netns_interface_receive_errors_total", COUNTER,
                      "Receive errors" + _DEV + _WHERE, _IF)
IF_TX_DROPS = Metric("nodenet_netns_interface_transmit_drops_total", COUNTER,
                     "Packets dropped on transmit" + _DEV + _WHERE, _IF)
IF_TX_ERRORS = Metric("nodenet_netns_interface_transmit_errors_total", COUNTER,
                      "Transmit errors" + _DEV + _WHERE, _IF)
FOUND = Metric("nodenet_netns_namespaces", GAUGE,
               "Network namespaces found other than the exporter's own (/run/netns and, with "
               "hostPID, /proc/<pid>/ns/net, distinct), read or not.")
UNREAD = Metric("nodenet_netns_unread", GAUGE,
                "Namespaces found but not exported, by reason: setns (only a bind mount, and "
                "entering it was refused: CAP_SYS_ADMIN), identity (no readable ns link and no "
                "pod UID: CAP_SYS_PTRACE), max (over --collector.netns.max), time_budget.",
                ("reason",))
PARTIAL = Metric("nodenet_netns_partial", GAUGE,
                 "1 if the last walk (counters, or sockets with --collector.netns.sockets) "
                 "stopped at its time budget (--collector.netns.timeout): the namespace "
                 "series cover only the namespaces read before it.")
INODE_UNKNOWN = Metric("nodenet_netns_inode_unknown", GAUGE,
                       "Namespaces exported with netns_inode \"\": their processes' "
                       "/proc/<pid>/ns/net was refused (another uid, no CAP_SYS_PTRACE).")
_SOCK = (" Inside the namespace, from sock_diag after setns (--collector.netns.sockets: "
         "CAP_SYS_ADMIN).")
POD_LISTEN_QUEUE = Metric("nodenet_netns_tcp_listen_queue_length", GAUGE,
                          "Connections waiting for accept() on a TCP listener (idiag_rqueue)."
                          + _SOCK, NS_LABELS + ("address", "port"))
POD_LISTEN_LIMIT = Metric("nodenet_netns_tcp_listen_queue_limit", GAUGE,
                          "A TCP listener's accept backlog (idiag_wqueue)." + _SOCK,
                          NS_LABELS + ("address", "port"))
POD_UDP_DROPS = Metric("nodenet_netns_udp_socket_drops_total", COUNTER,
                       "Datagrams dropped by a UDP server socket (SK_MEMINFO drops), summed "
                       "over its SO_REUSEPORT group." + _SOCK, NS_LABELS + ("address", "port"))
SOCKETS_UNREAD = Metric("nodenet_netns_sockets_unread", GAUGE,
                        "Namespaces whose sockets could not be read (setns refused: "
                        "CAP_SYS_ADMIN, or their ns link: CAP_SYS_PTRACE), with "
                        "--collector.netns.sockets.")
REASONS = ("setns", "identity", "max", "time_budget")
OWN_NET = "/proc/thread-self/net"


_BUF = 1 << 16
_SLACK = 4096   # more than any one seq_file record of these files (a dev line is ~200 bytes)


def _complete(chunk: bytes) -> bool:
    """Whether one read of ``_BUF`` bytes returned the whole file.  seq_file fills the buffer
    until EOF or until the next record does not fit: a reply shorter than the buffer by more
    than the largest record is all of it (single-record files - snmp, netstat, snmp6,
    sockstat* - are whole whenever shorter than the buffer)."""
    return len(chunk) <= _BUF - _SLACK


def _read(path: str) -> bytes:
    """The whole file in as few syscalls as possible (no io layers)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _pread_all(fd)
    finally:
        os.close(fd)


def _pread_all(fd: int) -> bytes:
    """The whole of a procfs seq_file from offset 0: the kernel formats it anew each time, so
    one kept fd serves every scrape (``pread`` at 0 restarts the file)."""
    chunk = os.pread(fd, _BUF, 0)
    if _complete(chunk):
        return chunk
    parts = [chunk]
    offset = len(chunk)
    while chunk:
        chunk = os.pread(fd, _BUF, offset)
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


Reader = Callable[[str], "bytes | None"]


def dir_reader(net_dir: str) -> Reader:
    """``read(file)`` over a net directory (a fixture, /proc/<pid>/net): None if absent."""
    def read(file: str) -> bytes | None:
        try:
            return _read(f"{net_dir}/{file}")
        except FileNotFoundError:
            return None
    return read


class NetFiles:
    """The open files of one namespace's /proc/<pid>/net, kept between scrapes.

    Opening and closing a procfs file costs more than the kernel's formatting of a small one
    (measured: 10 us per open+close, 2-3 us per pread of sockstat or dev), so a namespace's
    files are opened once, through a directory fd on /proc/<pid> (which pins that process: a
    reused pid cannot slip in between the opens and the identity check), and each scrape
    preads them from offset 0.  An open file holds its network namespace (the kernel takes
    a reference at open): the collector closes a namespace's files as soon as a walk no
    longer finds the namespace, and all of them after ``--collector.netns.keep-open`` without
    a scrape, so a deleted pod's namespace is never held longer than that."""

    __slots__ = ("fds", "memo")

    def __init__(self, fds: dict[str, int]):
        self.fds = fds
        self.memo: dict[str, tuple[bytes, list]] = {}   # read_namespace's, per file

    @classmethod
    def open(cls, procfs: str, pid: int, files: tuple[str, ...], inode: int,
             proc_inode: int | None) -> NetFiles | None:
        """The files of ``pid``'s namespace if it is still the one discovered (nsfs
        ``inode``, or when that is unknown, ``proc_inode``); None if it is gone or changed.
        OSError EMFILE/ENFILE propagates (the caller reads without keeping)."""
        d = os.open(f"{procfs}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fds: dict[str, int] = {}
        ok = False
        try:
            for file in files:
                try:
                    fds[file] = os.open(f"net/{file}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=d)
                except FileNotFoundError:
                    if file == "dev":
                        return None   # the process exited: every net file is gone
                    # snmp6/sockstat6 without IPv6: absent, as in the fixtures
            if "dev" not in fds:
                return None
            if proc_inode is not None and os.fstat(fds["dev"]).st_ino != proc_inode:
                return None
            if inode and os.readlink("ns/net", dir_fd=d) != f"net:[{inode}]":
                return None   # the pid now names a process of another namespace
            ok = True
            return cls(fds)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise
            return None       # exited mid-open
        finally:
            os.close(d)
            if not ok:
                for fd in fds.values():
                    os.close(fd)

    def read(self, file: str) -> bytes | None:
        fd = self.fds.get(file)
        return None if fd is None else _pread_all(fd)

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = {}


_MAX_U64 = (1 << 64) - 1


def _number(token: bytes) -> int | None:
    """An unsigned decimal counter (as the generic parser accepts: no sign, at most u64)."""
    if not token.isdigit():
        return None
    value = int(token)
    return value if value <= _MAX_U64 else None


class FastReader:
    """What :func:`netstat.read_mibs` + :func:`netstat.counter_values` give for ``rows``, read
    with bytes splits of only the wanted sections (the pod view reads 7 files per namespace:
    the generic parser's validation cost more than the kernel's formatting).  Kept equal to
    the generic path by tests/unit/test_podview.py on every fixture kernel and this one."""

    def __init__(self, rows):
        want = netstat.wanted(rows)
        # file -> (section -> [(field, metric, labels)]) in the rows' order per section;
        # snmp6's one section is b":"
        self.plan: list[tuple[str, frozenset[bytes], list]] = []
        for file in netstat.FILES:
            if not want.get(file):
                continue
            by_section: dict[bytes, list] = {}
            for m, labels, f, section, field in rows:
                if f == file:
                    key = b":" if file == "snmp6" else (section + ":").encode()
                    by_section.setdefault(key, []).append((field.encode(), m, labels))
            self.plan.append((file, frozenset(by_section), list(by_section.items())))
        self._index: dict[tuple[bytes, bytes], tuple[int, list]] = {}
        self.files = tuple(file for file, _, _ in self.plan)     # the netstat collector's
        self.all_files = (*self.files, *OTHER_FILES)            # ... and the pod view's own

    def counters(self, read: Reader) -> list[tuple[Metric, tuple, int]]:
        out: list[tuple[Metric, tuple, int]] = []
        for file in self.files:
            data = read(file)
            if data is not None:
                out.extend(self.parse(file, data))
        return out

    def parse(self, file: str, data: bytes) -> list[tuple[Metric, tuple, int]]:
        """The wanted counters of one file of the plan."""
        out: list[tuple[Metric, tuple, int]] = []
        text = b"\n" + data
        for f, _sections, wanted in self.plan:
            if f != file:
                continue
            for section, fields in wanted:
                if file == "snmp6":
                    self._snmp6(text, fields, out)
                else:
                    self._pair(text, section, fields, out)
        return out

    @staticmethod
    def _snmp6(text: bytes, fields, out: list) -> None:
        """``Name value`` lines: each wanted name found at a line start (its first line)."""
        for field, metric, labels in fields:
            at = text.find(b"\n" + field + b" ")
            if at < 0:
                continue
            end = text.find(b"\n", at + 1)
            tokens = text[at + 1:end if end >= 0 else len(text)].split()
            if len(tokens) == 2 and tokens[1].isdigit():
                value = int(tokens[1])
                if value <= _MAX_U64:
                    out.append((metric, labels, value))

    def _pair(self, text: bytes, prefix: bytes, fields, out: list) -> None:
        """One header/values line pair (the first of ``prefix``), the wanted fields picked
        by their index in the header; the index is worked out once per distinct header."""
        at = text.find(b"\n" + prefix)
        if at < 0:
            return
        head_end = text.find(b"\n", at + 1)
        if head_end < 0 or not text.startswith(prefix, head_end + 1):
            return    # a header without its values line
        header = text[at + 1:head_end]
        plan = self._index.get((prefix, header))
        if plan is None:
            if len(self._index) > 64:
                self._index.clear()
            names = header.split()[1:]
            position = dict(zip(names, range(len(names)), strict=True))  # last wins, as dict(zip)
            plan = self._index[(prefix, header)] = (
                len(names), [(position.get(f), m, lv) for f, m, lv in fields])
        end = text.find(b"\n", head_end + 1)
        values = text[head_end + 1:end if end >= 0 else len(text)].split()[1:]
        if len(values) != plan[0]:
            return    # the section is dropped, as generically
        for i, metric, labels in plan[1]:
            if i is None:
                continue
            token = values[i]
            if token.isdigit():
                value = int(token)
                if value <= _MAX_U64:
                    out.append((metric, labels, value))


def _sockstat(data: bytes, key: bytes) -> dict[bytes, bytes]:
    for line in data.split(b"\n"):
        if line.startswith(key):
            tokens = line.split()[1:]
            return dict(zip(tokens[::2], tokens[1::2], strict=False))
    return {}


OTHER_FILES = ("sockstat", "sockstat6", "dev")


def _sockstat_values(data: bytes, family: str) -> list[tuple[Metric, tuple, int]]:
    sec = _sockstat(data, b"TCP:" if family == "ipv4" else b"TCP6:")
    out = []
    for metric, labels, token in ((TCP_INUSE, (family,), sec.get(b"inuse")),
                                  (TW, (), sec.get(b"tw") if family == "ipv4" else None)):
        value = _number(token) if token is not None else None
        if value is not None:
            out.append((metric, labels, value))
    return out


def _dev_values(data: bytes) -> list[tuple[Metric, tuple, int]]:
    out: list[tuple[Metric, tuple, int]] = []
    for name, c in parse_net_dev(data.decode("ascii", "replace")).interfaces.items():
        if name == "lo":
            continue
        ifkey = (name,)
        out.extend(((IF_RX_DROPS, ifkey, c.rx_drops), (IF_RX_ERRORS, ifkey, c.rx_errors),
                    (IF_TX_DROPS, ifkey, c.tx_drops), (IF_TX_ERRORS, ifkey, c.tx_errors)))
    return out


def read_namespace(read: Reader, reader: FastReader,
                   memo: dict | None = None) -> list[tuple[Metric, tuple, int]]:
    """(metric, label values without the namespace labels, value) from one namespace's net
    files (``read(file)``: bytes, None if absent).  ``memo`` (file -> (bytes, values), kept
    with the namespace's open files) skips parsing a file whose text has not changed since
    the last scrape, as most of an idle pod's have not.  OSError (the process is gone)
    propagates: the caller drops the namespace."""
    out: list[tuple[Metric, tuple, int]] = []
    for file in reader.all_files:
        data = read(file)
        if data is None:
            if file == "dev":
                raise FileNotFoundError("dev")   # every namespace has one: the process is gone
            continue
        last = memo.get(file) if memo is not None else None
        if last is not None and last[0] == data:
            out.extend(last[1])
            continue
        if file == "dev":
            values = _dev_values(data)
        elif file == "sockstat":
            values = _sockstat_values(data, "ipv4")
        elif file == "sockstat6":
            values = _sockstat_values(data, "ipv6")
        else:
            values = reader.parse(file, data)
        if memo is not None:
            memo[file] = (data, values)
        out.extend(values)
    return out


@register
class NetnsCollector(Collector):
    name = "netns"
    default_enabled = False
    description = ("The pod view: refusal counters (listen overflows, UDP buffer errors, "
                   "retransmits, interface drops) of every other network namespace")
    source = "/run/netns, /proc/<pid>/ns/net, /proc/<pid>/net/{snmp,snmp6,netstat,sockstat,dev}"
    metrics = (*(POD_COUNTERS[n] for n in DEFAULT_COUNTERS), TCP_INUSE, TW, IF_RX_DROPS,
               IF_RX_ERRORS, IF_TX_DROPS, IF_TX_ERRORS, FOUND, UNREAD, PARTIAL, INODE_UNKNOWN,
               POD_LISTEN_QUEUE, POD_LISTEN_LIMIT, POD_UDP_DROPS, SOCKETS_UNREAD,
               *(m for n, m in POD_COUNTERS.items() if n not in DEFAULT_COUNTERS))
    options = (
        Option("collector.netns.max", parse_positive_int, 200,
               "Most network namespaces read per scrape (the rest counted as unread)"),
        Option("collector.netns.dirs", parse_list, ["/run/netns"],
               "Directories of named network namespaces (bind mounts)"),
        Option("collector.netns.counters", parse_regex, "",
               "Regex over the netstat collector's metric names: more counters per namespace "
               "on top of the default six (each costs one series per namespace and family)"),
        Option("collector.netns.timeout", parse_duration, 1.0,
               "Time budget of one walk over the namespaces (partial results beyond it)"),
        Option("collector.netns.keep-open", parse_duration_or_zero, 120.0,
               "Keep each namespace's /proc/<pid>/net files open between scrapes (half the "
               "kernel cost of a walk); an open file holds its namespace, so all are closed "
               "after this long without a scrape, and a namespace's as soon as a walk no longer "
               "finds it. 0: open and close them every scrape"),
        Option("collector.netns.sockets", parse_bool, False,
               "Also the listener and UDP-server series inside each namespace (sock_diag "
               "after setns: CAP_SYS_ADMIN and, for pods of another uid, CAP_SYS_PTRACE)"),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        s = ctx.settings
        self.max = s["collector.netns.max"]
        self.dirs = s["collector.netns.dirs"]
        self.timeout = s["collector.netns.timeout"]
        self.sockets = s["collector.netns.sockets"]
        self.max_sockets = s["collector.sockets.max-series"]
        extra = s["collector.netns.counters"]
        names = set(DEFAULT_COUNTERS)
        if extra:
            names |= {n for n in POD_COUNTERS if re.fullmatch(extra, n)}
        self.rows = tuple((POD_COUNTERS[m.name], labels, file, section, field)
                          for m, labels, file, section, field in netstat.COUNTERS
                          if m.name in names)
        self.reader = FastReader(self.rows)
        self.files = self.reader.all_files
        self.keep_open = s["collector.netns.keep-open"]
        self._open: dict[tuple, NetFiles] = {}   # namespace key -> its files, kept open
        self._lock = threading.Lock()
        self._release: threading.Timer | None = None
        self._uid_cache: dict = {}
        self._proc_cache = netns.ProcNetCache()
        if self.keep_open > 0:
            self._raise_fd_limit(len(self.files) * self.max + 1024)

    def _raise_fd_limit(self, want: int) -> None:
        """Kept files need about 6 fds per namespace: raise the soft RLIMIT_NOFILE towards
        the hard one as Go programs do at start (containerd 2 starts containers at soft 1024).
        Short of it, namespaces beyond the limit are read anew each scrape (said once)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= want:
            return
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

    @staticmethod
    def _key(ns) -> tuple:
        """A namespace's identity while its files are open (they hold it, so neither its nsfs
        inode nor its procfs inode can be reused meanwhile)."""
        return ("ns", ns.inode) if ns.inode else ("proc", ns.proc_inode)

    def _read_member(self, key: tuple, ns) -> list | None:
        """One namespace's values through its kept files (opened on first sight), or None
        if it is gone (its files are closed then)."""
        files = self._open.get(key)
        if files is None:
            try:
                files = NetFiles.open(self.ctx.procfs, ns.pid, self.files, ns.inode,
                                      ns.proc_inode)
            except OSError as exc:   # out of file descriptors: read once, keep nothing
                self.say("fds", f"cannot keep namespace files open ({exc.strerror}): "
                                 "reading them anew each scrape; raise RLIMIT_NOFILE "
                                 f"(about {len(self.files)} per namespace)")
                return self._read_once(ns)
            if files is None:
                return None
            if self.keep_open > 0:
                self._open[key] = files
        try:
            return read_namespace(files.read, self.reader, files.memo)
        except OSError:
            self._open.pop(key, None)
            return None
        finally:
            if self._open.get(key) is not files:
                files.close()

    def _read_once(self, ns) -> list | None:
        """The path-based read (no fd kept): the pid's files, checked against pid reuse by
        the inode of net/dev before and after."""
        base = f"{self.ctx.procfs}/{ns.pid}/net"
        try:
            before = os.stat(f"{base}/dev").st_ino
            values = read_namespace(dir_reader(base), self.reader)
            after = os.stat(f"{base}/dev").st_ino
        except OSError:
            return None
        if before != after or (ns.proc_inode is not None and before != ns.proc_inode):
            return None
        return values

    def _arm_release(self) -> None:
        """Closes every kept file after ``keep_open`` seconds without a scrape."""
        if self._release is not None:
            self._release.cancel()
            self._release = None
        if self._open:
            self._release = threading.Timer(self.keep_open, self.release)
            self._release.daemon = True
            self._release.start()

    def release(self) -> None:
        """Closes every kept namespace file (and so lets go of every namespace)."""
        with self._lock:
            for files in self._open.values():
                files.close()
            self._open.clear()

    def _pod_uids(self, chosen) -> None:
        """pod_uid of each namespace's member process, read once per (pid, namespace): a
        process keeps its pod for life; entries of namespaces not seen again are dropped."""
        cache: dict = {}
        todo = []
        for ns in chosen:
            if ns.pid is None:
                continue
            key = (ns.pid, ns.inode, ns.proc_inode)
            if key in self._uid_cache:
                ns.pod_uid = cache[key] = self._uid_cache[key]
            else:
                todo.append((key, ns))
        netns.fill_pod_uids([ns for _, ns in todo], self.ctx.procfs)
        for key, ns in todo:
            cache[key] = ns.pod_uid
        self._uid_cache = cache

    def _own(self) -> tuple[int | None, int | None]:
        try:
            own = os.stat("/proc/self/ns/net").st_ino
        except OSError:
            own = None
        return own, netns.proc_net_inode(self.ctx.procfs, "self")

    def collect(self):
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        own, own_proc = self._own()
        found = netns.discover_pods(self.dirs, self.ctx.procfs, own, own_proc,
                                     cache=self._proc_cache)
        chosen = found.namespaces[: self.max]
        unread = dict.fromkeys(REASONS, 0)
        unread["max"] = len(found.namespaces) - len(chosen)
        self._pod_uids(chosen)
        results: list[tuple[netns.PodNamespace, list]] = []
        partial = False

        # 1. bind mounts without a member process: enter them (setns), read our own view
        mounts: list[netns.Namespace] = [ns for ns in chosen if ns.pid is None]
        entered_proc: set[int] = set()
        if mounts:
            def read_inside(ns):
                ino = os.stat(os.path.join(OWN_NET, "dev")).st_ino
                return ino, read_namespace(dir_reader(OWN_NET), self.reader)

            done, skipped = netns.run_in_namespaces(list(mounts), read_inside, deadline)
            for ns, (ino, values) in done:
                entered_proc.add(ino)
                results.append((ns, values))  # type: ignore[arg-type]
            for why in skipped:
                if why.endswith(": time budget"):
                    unread["time_budget"] += 1
                    partial = True
                elif not why.endswith(": gone"):
                    unread["setns"] += 1
            self.say("setns", None if not unread["setns"] else
                      f"{unread['setns']} network namespaces known only as bind mounts could "
                      f"not be entered (setns needs CAP_SYS_ADMIN): {'; '.join(skipped[:3])}")

        # 2. namespaces with a member process: its /proc/<pid>/net files (kept open), no setns
        with self._lock:
            seen: set = set()
            for ns in chosen:
                if ns.pid is None:
                    continue
                if time.monotonic() > deadline:
                    unread["time_budget"] += 1
                    partial = True
                    seen.add(self._key(ns))   # still there: keep its files for next time
                    continue
                if ns.inode == 0 and (ns.proc_inode in entered_proc or not ns.pod_uid):
                    if ns.proc_inode not in entered_proc:
                        unread["identity"] += 1
                    continue
                key = self._key(ns)
                seen.add(key)
                values = self._read_member(key, ns)
                if values is not None:
                    results.append((ns, values))
            for key in [k for k in self._open if k not in seen]:
                self._open.pop(key).close()   # gone, or no longer chosen: release it now
            self._arm_release()

        hidden = sum(1 for ns, _ in results if ns.inode == 0)
        extra: list = []
        if self.sockets:
            extra, late = self._sockets(results, deadline)
            partial = partial or late
        self.say("ptrace", None if not found.refused else
                  f"{found.refused} network namespaces seen only through processes whose "
                  "/proc/<pid>/ns/net is refused (another uid, no CAP_SYS_PTRACE): read "
                  "through /proc/<pid>/net with netns_inode \"\", not exported without a pod "
                  "UID (nodenet_netns_unread{reason=\"identity\"})")
        return self._families(results, found, unread, partial, hidden) + extra

    def _sockets(self, results, deadline):
        """Listener and UDP-server series inside each namespace read above (setns);
        (families, stopped at the time budget?)."""
        def inside(ns):
            try:
                with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
                    lo, hi = (int(x) for x in fh.read().split())
            except (OSError, ValueError):
                lo, hi = 32768, 60999
            head = (ns.name, str(ns.inode) if ns.inode else "", ns.pod_uid)
            with nl.NetlinkSocket(nl.NETLINK_SOCK_DIAG, timeout=1.0, deadline=1.0) as sock:
                return sockets_mod.socket_families(
                    sock, lo, hi, self.max_sockets, None,
                    (POD_LISTEN_QUEUE, POD_LISTEN_LIMIT, POD_UDP_DROPS, None, None), head)

        targets = [ns for ns, _ in results if ns.paths]
        done, skipped = netns.run_in_namespaces(targets, inside, deadline)
        late = any(w.endswith(": time budget") for w in skipped)
        refused = [w for w in skipped if not w.endswith((": gone", ": time budget"))]
        refused_n = len(refused) + sum(1 for ns, _ in results if not ns.paths)
        self.say("sockets", None if not refused_n else
                  f"sockets of {refused_n} network namespaces not read (setns needs "
                  "CAP_SYS_ADMIN, /proc/<pid>/ns/net of another uid CAP_SYS_PTRACE): "
                  f"{'; '.join(refused[:3])}")
        merged: dict = {}
        for _ns, fams in done:
            for fam in fams:
                merged.setdefault(fam.spec, fam.spec.family()).samples.extend(fam.samples)
        return [*merged.values(), SOCKETS_UNREAD.single(refused_n)], late

    def _families(self, results, found, unread, partial, hidden):
        fams: dict[int, list] = {}     # id(metric) -> samples (a Metric's hash is not cached)
        specs: dict[int, Metric] = {}
        for ns, values in results:
            head = (ns.name, str(ns.inode) if ns.inode else "", ns.pod_uid)
            for metric, labels, value in values:
                samples = fams.get(id(metric))
                if samples is None:
                    samples = fams[id(metric)] = []
                    specs[id(metric)] = metric
                samples.append((head + labels, value))
        out: list = []
        for key, samples in fams.items():
            fam = specs[key].family()
            fam.samples = samples
            out.append(fam)
        out.append(FOUND.single(len(found.namespaces)))
        fam = UNREAD.family()
        for reason in REASONS:
            fam.add((reason,), unread[reason])
        out.append(fam)
        out.append(PARTIAL.single(1 if partial else 0))
        out.append(INODE_UNKNOWN.single(hidden))
        return out
