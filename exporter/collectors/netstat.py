"""Protocol counters that say a packet or a connection was refused, from an allowlist.

Sources (under ``--path.procfs``): ``net/snmp``, ``net/netstat``, ``net/snmp6``; no privilege.
Every counter here is kept by the kernel per network namespace (the exporter's own: the
node's with hostNetwork).  The allowlist is ``COUNTERS``: one row per series, (metric, label
values, file, section, field), so "where does this value come from" is one hop.  A field the
running kernel does not print (UDP MemErrors on old kernels, everything IPv6 with IPv6
disabled) is left out, never exported as 0.  TCP counters are one MIB for IPv4 and IPv6
together (the kernel keeps no per-family TCP counters); UDP, IP and ICMP are per family.

``read_mibs(net_dir)`` and ``families(mibs, rows)`` are the reusable half (issue 15 reads
other namespaces' ``/proc/<pid>/net`` with them); ``COUNTERS`` is the table its regex filter
selects rows from.
"""
from __future__ import annotations

import os

from ..metrics import COUNTER, Metric
from ..sources import procfs, snmp
from .base import Collector, register

_NS = " Per network namespace."
_BOTH = " Counts IPv4 and IPv6 together (one TCP MIB)."


def _c(name, help_, labels=()):
    return Metric(name, COUNTER, help_ + _NS, labels)


TCP_LISTEN_OVERFLOWS = _c("nodenet_tcp_listen_overflows_total",
                          "Connections dropped because a listener's accept queue was full "
                          "(TcpExt ListenOverflows: the application does not accept fast "
                          "enough, or its backlog / net.core.somaxconn is too small)." + _BOTH)
TCP_LISTEN_DROPS = _c("nodenet_tcp_listen_drops_total",
                      "SYNs and handshake completions dropped at a listener for any reason, "
                      "overflows included (TcpExt ListenDrops)." + _BOTH)
TCP_BACKLOG_DROPS = _c("nodenet_tcp_backlog_drops_total",
                       "Segments dropped because a socket's backlog (owned by the application) "
                       "was over its receive buffer limit (TcpExt TCPBacklogDrop)." + _BOTH)
TCP_REQQ_DROPS = _c("nodenet_tcp_request_queue_full_drops_total",
                    "SYNs dropped because the SYN (request) queue was full and syncookies were "
                    "off (TcpExt TCPReqQFullDrop; see net.ipv4.tcp_max_syn_backlog)." + _BOTH)
TCP_TW_OVERFLOWS = _c("nodenet_tcp_timewait_overflows_total",
                      "TIME_WAIT sockets not created because tcp_max_tw_buckets was reached "
                      "(TcpExt TCPTimeWaitOverflow)." + _BOTH)
TCP_MEM_PRESSURES = _c("nodenet_tcp_memory_pressures_total",
                       "Times TCP entered memory pressure (tcp_mem pressure level reached; "
                       "TcpExt TCPMemoryPressures)." + _BOTH)
TCP_ABORT_MEM = _c("nodenet_tcp_aborts_on_memory_total",
                   "Connections reset because TCP was out of memory or there were too many "
                   "orphans (TcpExt TCPAbortOnMemory)." + _BOTH)
TCP_RETRANS = _c("nodenet_tcp_retransmitted_segments_total",
                 "TCP segments retransmitted (Tcp RetransSegs)." + _BOTH)
TCP_OUT_SEGS = _c("nodenet_tcp_sent_segments_total",
                  "TCP segments sent, retransmissions excluded (Tcp OutSegs)." + _BOTH)
TCP_SYN_RETRANS = _c("nodenet_tcp_syn_retransmits_total",
                     "SYN and SYN-ACK retransmissions (TcpExt TCPSynRetrans): peers that do "
                     "not answer a handshake." + _BOTH)
TCP_TIMEOUTS = _c("nodenet_tcp_timeouts_total",
                  "Retransmission timer expiries (TcpExt TCPTimeouts)." + _BOTH)

UDP_RCVBUF = _c("nodenet_udp_receive_buffer_errors_total",
                "Datagrams dropped because the receiving socket's buffer was full "
                "(Udp/Udp6 RcvbufErrors).", ("family",))
UDP_SNDBUF = _c("nodenet_udp_send_buffer_errors_total",
                "Datagrams not sent for lack of send buffer (Udp/Udp6 SndbufErrors).",
                ("family",))
UDP_MEMERR = _c("nodenet_udp_memory_errors_total",
                "Datagrams dropped because UDP memory (udp_mem) was exhausted (Udp/Udp6 "
                "MemErrors; absent on kernels that do not print it).", ("family",))
UDP_NOPORT = _c("nodenet_udp_no_port_total",
                "Datagrams to a port with no socket (Udp/Udp6 NoPorts).", ("family",))
UDP_INERR = _c("nodenet_udp_in_errors_total",
               "Received datagrams not delivered, all reasons, buffer errors included "
               "(Udp/Udp6 InErrors).", ("family",))
UDP_IN = _c("nodenet_udp_received_datagrams_total",
            "Datagrams delivered to sockets (Udp/Udp6 InDatagrams).", ("family",))

IP_REASM_FAILS = _c("nodenet_ip_reassembly_failures_total",
                    "Reassembly failures: fragments dropped (timeout, memory limit, bad "
                    "fragments; Ip ReasmFails, Ip6ReasmFails).", ("family",))
IP_REASM_TIMEOUT = _c("nodenet_ip_reassembly_timeouts_total",
                      "Fragment queues that timed out before all fragments came "
                      "(ipfrag_time; Ip ReasmTimeout, Ip6ReasmTimeout).", ("family",))
IP_FRAG_FAILS = _c("nodenet_ip_fragmentation_failures_total",
                   "Packets that needed fragmenting but could not be (DF set or IPv6 "
                   "forwarding; Ip FragFails, Ip6FragFails).", ("family",))
IP_FRAG_CREATES = _c("nodenet_ip_fragments_created_total",
                     "Fragments created by this host (Ip FragCreates, Ip6FragCreates).",
                     ("family",))

ICMP_UNREACH = _c("nodenet_icmp_destination_unreachable_total",
                  "ICMP destination unreachable messages received (in) and sent (out) "
                  "(Icmp In/OutDestUnreachs, Icmp6In/OutDestUnreachs); for IPv4 this includes "
                  "'fragmentation needed', which has no counter of its own.",
                  ("family", "direction"))
ICMP_TOO_BIG = _c("nodenet_icmp_packet_too_big_total",
                  "ICMPv6 Packet Too Big messages received (in) and sent (out) "
                  "(Icmp6InPktTooBigs, Icmp6OutPktTooBigs): path MTU trouble. IPv6 only: IPv4's "
                  "'fragmentation needed' is counted inside "
                  "nodenet_icmp_destination_unreachable_total.", ("direction",))

V4, V6 = ("ipv4",), ("ipv6",)
# (metric, label values, file, section, field); snmp6 rows use section "".
COUNTERS = (
    (TCP_LISTEN_OVERFLOWS, (), "netstat", "TcpExt", "ListenOverflows"),
    (TCP_LISTEN_DROPS, (), "netstat", "TcpExt", "ListenDrops"),
    (TCP_BACKLOG_DROPS, (), "netstat", "TcpExt", "TCPBacklogDrop"),
    (TCP_REQQ_DROPS, (), "netstat", "TcpExt", "TCPReqQFullDrop"),
    (TCP_TW_OVERFLOWS, (), "netstat", "TcpExt", "TCPTimeWaitOverflow"),
    (TCP_MEM_PRESSURES, (), "netstat", "TcpExt", "TCPMemoryPressures"),
    (TCP_ABORT_MEM, (), "netstat", "TcpExt", "TCPAbortOnMemory"),
    (TCP_RETRANS, (), "snmp", "Tcp", "RetransSegs"),
    (TCP_OUT_SEGS, (), "snmp", "Tcp", "OutSegs"),
    (TCP_SYN_RETRANS, (), "netstat", "TcpExt", "TCPSynRetrans"),
    (TCP_TIMEOUTS, (), "netstat", "TcpExt", "TCPTimeouts"),
    *((m, fam, file, sec, pre + fld)
      for fam, file, sec, pre in ((V4, "snmp", "Udp", ""), (V6, "snmp6", "", "Udp6"))
      for m, fld in ((UDP_RCVBUF, "RcvbufErrors"), (UDP_SNDBUF, "SndbufErrors"),
                     (UDP_MEMERR, "MemErrors"), (UDP_NOPORT, "NoPorts"),
                     (UDP_INERR, "InErrors"), (UDP_IN, "InDatagrams"))),
    *((m, fam, file, sec, pre + fld)
      for fam, file, sec, pre in ((V4, "snmp", "Ip", ""), (V6, "snmp6", "", "Ip6"))
      for m, fld in ((IP_REASM_FAILS, "ReasmFails"), (IP_REASM_TIMEOUT, "ReasmTimeout"),
                     (IP_FRAG_FAILS, "FragFails"), (IP_FRAG_CREATES, "FragCreates"))),
    (ICMP_UNREACH, ("ipv4", "in"), "snmp", "Icmp", "InDestUnreachs"),
    (ICMP_UNREACH, ("ipv4", "out"), "snmp", "Icmp", "OutDestUnreachs"),
    (ICMP_UNREACH, ("ipv6", "in"), "snmp6", "", "Icmp6InDestUnreachs"),
    (ICMP_UNREACH, ("ipv6", "out"), "snmp6", "", "Icmp6OutDestUnreachs"),
    (ICMP_TOO_BIG, ("in",), "snmp6", "", "Icmp6InPktTooBigs"),
    (ICMP_TOO_BIG, ("out",), "snmp6", "", "Icmp6OutPktTooBigs"),
)
METRICS = tuple(dict.fromkeys(row[0] for row in COUNTERS))
FILES = ("snmp", "netstat", "snmp6")


def wanted(rows=COUNTERS) -> dict[str, frozenset[str]]:
    """file -> the sections (snmp, netstat) or names (snmp6) the rows read."""
    out: dict[str, set[str]] = {f: set() for f in FILES}
    for _m, _l, file, section, field in rows:
        out[file].add(field if file == "snmp6" else section)
    return {f: frozenset(v) for f, v in out.items()}


WANTED = wanted()


def read_mibs(net_dir: str, want=WANTED) -> tuple[dict[str, snmp.Mib], bool]:
    """The three files of one namespace's net directory; (file -> Mib, snmp present?).
    An absent file (snmp6 without IPv6) is simply missing from the result; only the
    sections/names in ``want`` (see :func:`wanted`) are parsed."""
    mibs: dict[str, snmp.Mib] = {}
    for file in FILES:
        if not want.get(file):
            continue
        try:
            text = procfs.read_text(os.path.join(net_dir, file))
        except (FileNotFoundError, NotADirectoryError):
            continue
        mibs[file] = (snmp.parse_snmp6(text, want[file]) if file == "snmp6"
                      else snmp.parse_mib(text, file, want[file]))
    return mibs, "snmp" in mibs


def counter_values(mibs: dict[str, snmp.Mib], rows=COUNTERS):
    """(metric, label values, value) for each allowlisted field present."""
    for metric, labels, file, section, field in rows:
        mib = mibs.get(file)
        value = mib.get(section, field) if mib is not None else None
        if value is not None and value >= 0:
            yield metric, labels, value


def families(mibs: dict[str, snmp.Mib], rows=COUNTERS) -> list:
    fams: dict = {}
    for metric, labels, value in counter_values(mibs, rows):
        fam = fams.get(metric)
        if fam is None:
            fam = fams[metric] = metric.family()
        fam.add(labels, value)
    return list(fams.values())


@register
class NetstatCollector(Collector):
    name = "netstat"
    default_enabled = True
    description = ("Allowlisted protocol counters: listen overflows, UDP buffer errors, "
                   "reassembly failures, retransmits, ICMP unreachable/too big")
    source = "/proc/net/snmp, /proc/net/netstat, /proc/net/snmp6"
    metrics = METRICS

    def __init__(self, ctx):
        super().__init__(ctx)
        self._problems: tuple = ()
        self._present: bool | None = None

    def collect(self):
        mibs, present = read_mibs(self.ctx.proc("net"))
        if present != self._present:
            if not present:
                self.log.info("no net/snmp under --path.procfs: no protocol counters")
            self._present = present
        problems = tuple(p for mib in mibs.values() for p in mib.problems)
        if problems != self._problems:
            if problems:
                self.log.warning("values left out", problems=list(problems[:10]))
            self._problems = problems
        return families(mibs)
