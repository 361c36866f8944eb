"""Conntrack: /proc text and raw ctnetlink bytes -> dataclasses; sockets kept apart.

Three layers, each usable alone:

1. Pure parsers (no I/O, fixture- and fuzz-tested): :func:`parse_proc_stat` for
   /proc/net/stat/nf_conntrack, and the ctnetlink decoders :func:`decode_stats_cpu`,
   :func:`decode_stats`, :func:`decode_exp_stats_cpu`, :func:`count_messages` and
   :class:`StateCounter` (the minimal entry-dump decoder).  They take the bytes the kernel
   sent and return typed results; input they cannot understand raises
   :class:`exporter.sources.ParseError`, nothing else.  An error *reply* from the kernel
   (e.g. EPERM) is a well-formed message, so decoders report it in their result
   (``Reply.error``) instead of raising.  Framing and attributes are
   :mod:`exporter.sources.netlink`'s; :class:`StateCounter` is an accelerator over it (its
   fast paths fall back to :func:`entry_state`, and a property test keeps them equal).
2. The socket layer, :class:`CtNetlink`: a :class:`netlink.NetlinkSocket` on
   NETLINK_NETFILTER (deadline, byte budget, sequence and truncation checks; ``transport=``
   replays captured datagrams).  Kernel refusals are :class:`NetlinkError` (an ``OSError``
   with the kernel's errno), so callers tell "not permitted" (EPERM, no CAP_NET_ADMIN) from
   "conntrack not in this kernel".
3. Per network namespace counting (:func:`count_in_namespaces`) over the namespaces that
   :mod:`exporter.sources.netns` discovers and enters.

Kernel facts the code relies on (include/uapi/linux/netfilter/nfnetlink_conntrack.h):
message type = subsystem << 8 | message; after the 16-byte nlmsghdr comes a 4-byte nfgenmsg
(family, version, big-endian res_id: the CPU number in per-CPU stats replies); attribute
values are big-endian.  Counts and stats are O(1) in the number of entries; only the optional
state breakdown walks the table, and it does so under a hard budget.
"""
from __future__ import annotations

import errno as errno_mod
import struct
import time
from dataclasses import dataclass

from . import NetlinkError, ParseError
from . import netlink as nl
from .netns import Namespace, run_in_namespaces


# --------------------------------------------------------------------------------------------
# Per-CPU statistics: one dataclass for both sources.
# --------------------------------------------------------------------------------------------

# Counter fields in the order of CTA_STATS_* (nfnetlink_conntrack.h).  None = not reported by
# this kernel (e.g. clash_resolve before 5.10, chaintoolong before 5.16, the old procfs layout).
STAT_FIELDS = ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error",
               "search_restart", "clash_resolve", "chaintoolong")


@dataclass(frozen=True)
class CpuStats:
    cpu: int
    found: int | None = None
    invalid: int | None = None
    insert: int | None = None
    insert_failed: int | None = None
    drop: int | None = None
    early_drop: int | None = None
    error: int | None = None          # icmp_error in /proc
    search_restart: int | None = None
    clash_resolve: int | None = None  # clashres in /proc
    chaintoolong: int | None = None   # chainlength in /proc


def sum_stats(cpus: list[CpuStats]) -> dict[str, int | None]:
    """Field -> sum over CPUs; None where no CPU reported the field."""
    out: dict[str, int | None] = {}
    for name in STAT_FIELDS:
        values = [getattr(c, name) for c in cpus if getattr(c, name) is not None]
        out[name] = sum(values) if values else None
    return out


# --------------------------------------------------------------------------------------------
# /proc/net/stat/nf_conntrack
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcStat:
    entries: int             # the "entries" column: this namespace's table size
    cpus: list[CpuStats]     # one row per possible CPU, in order
    columns: tuple[str, ...]  # the header as understood (for diagnostics)


# Header name -> CpuStats field; names absent here (searched, new, ignore, delete, delete_list,
# expect_*) are obsolete or not exported and are skipped.
_PROC_COLUMNS = {
    "found": "found", "invalid": "invalid", "insert": "insert", "insert_failed": "insert_failed",
    "drop": "drop", "early_drop": "early_drop", "icmp_error": "error",
    "search_restart": "search_restart", "clashres": "clash_resolve",
    "chainlength": "chaintoolong",
}
# Without a header line: the 16/17-column layout every kernel since 2.6 prints by position.
_LEGACY_HEADER = ("entries", "searched", "found", "new", "invalid", "ignore", "delete",
                  "delete_list", "insert", "insert_failed", "drop", "early_drop", "icmp_error",
                  "expect_new", "expect_create", "expect_delete", "search_restart")


def parse_proc_stat(text: str) -> ProcStat:
    """Parses /proc/net/stat/nf_conntrack (header line, then one hex row per possible CPU).

    Columns are mapped by the header's names, which covers every layout: the old one
    (``searched``/``delete_list``, 16 columns before 2.6.37-ish, 17 with ``search_restart``)
    and the current one where ``clashres`` and ``chainlength`` took those slots.  A file with
    no header is read with the legacy positions.  Every row must have as many columns as the
    header and at least 16.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ParseError("nf_conntrack stat: empty file")
    first = lines[0].split()
    if all(_is_hex(f) for f in first):
        header, rows = _LEGACY_HEADER[: len(first)], lines
    else:
        header, rows = tuple(first), lines[1:]
        if header[0] != "entries":
            raise ParseError(f"nf_conntrack stat: header starts with {header[0][:40]!r}")
    if len(header) < 16:
        raise ParseError(f"nf_conntrack stat: {len(header)} columns, need >= 16")
    if len(set(header)) != len(header):
        raise ParseError("nf_conntrack stat: duplicate column names in header")
    index = [(i, _PROC_COLUMNS[name]) for i, name in enumerate(header) if name in _PROC_COLUMNS]
    cpus, entries = [], 0
    for n, line in enumerate(rows):
        fields = line.split()
        if len(fields) != len(header):
            raise ParseError(
                f"nf_conntrack stat row {n}: {len(fields)} columns, header has {len(header)}")
        try:
            values = [int(f, 16) for f in fields]
        except ValueError:
            raise ParseError(f"nf_conntrack stat row {n}: non-hex value") from None
        if any(v < 0 for v in values):  # int("-1", 16) parses
            raise ParseError(f"nf_conntrack stat row {n}: negative value")
        entries = values[0]  # the same table count on every row
        cpus.append(CpuStats(n, **{name: values[i] for i, name in index}))
    if not cpus:
        raise ParseError("nf_conntrack stat: no CPU rows")
    return ProcStat(entries=entries, cpus=cpus, columns=header)


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)


# --------------------------------------------------------------------------------------------
# Netlink wire format
# --------------------------------------------------------------------------------------------

NETLINK_NETFILTER = nl.NETLINK_NETFILTER
NLMSG_ERROR, NLMSG_DONE = nl.NLMSG_ERROR, nl.NLMSG_DONE
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = (nl.NLM_F_REQUEST, nl.NLM_F_MULTI,
                                                     nl.NLM_F_ACK, nl.NLM_F_DUMP)
NLA_TYPE_MASK = nl.NLA_TYPE_MASK

NFNL_SUBSYS_CTNETLINK, NFNL_SUBSYS_CTNETLINK_EXP = 1, 2
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_GET_STATS_CPU, IPCTNL_MSG_CT_GET_STATS = 1, 4, 5
IPCTNL_MSG_EXP_GET, IPCTNL_MSG_EXP_GET_STATS_CPU = 1, 3

MSG_CT_GET = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
# Dumped entries and expectations come back typed as IPCTNL_MSG_CT_NEW / IPCTNL_MSG_EXP_NEW
# (0x100 / 0x200); older kernels echoed the request type, so GET is accepted too.
MSG_CT_NEW = NFNL_SUBSYS_CTNETLINK << 8
MSG_EXP_NEW = NFNL_SUBSYS_CTNETLINK_EXP << 8
MSG_CT_STATS_CPU = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET_STATS_CPU
MSG_CT_STATS = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET_STATS
MSG_EXP_GET = NFNL_SUBSYS_CTNETLINK_EXP << 8 | IPCTNL_MSG_EXP_GET
MSG_EXP_STATS_CPU = NFNL_SUBSYS_CTNETLINK_EXP << 8 | IPCTNL_MSG_EXP_GET_STATS_CPU
# The kernel answers EXP_GET_STATS_CPU with subsystem CTNETLINK (0x103), not CTNETLINK_EXP
# (ctnetlink_exp_stat_fill_info); accept both in case that is ever fixed.
MSG_EXP_STATS_CPU_REPLY = (NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_EXP_GET_STATS_CPU,
                           MSG_EXP_STATS_CPU)

# enum ctattr_stats_cpu
CTA_STATS = {2: "found", 4: "invalid", 8: "insert", 9: "insert_failed", 10: "drop",
             11: "early_drop", 12: "error", 13: "search_restart", 14: "clash_resolve",
             15: "chaintoolong"}
# enum ctattr_stats_global
CTA_STATS_GLOBAL_ENTRIES, CTA_STATS_GLOBAL_MAX_ENTRIES = 1, 2
# enum ctattr_expect_stats
CTA_STATS_EXP = {1: "new", 2: "create", 3: "delete"}
# enum ctattr_type / ctattr_tuple / ctattr_l4proto / ctattr_protoinfo(_tcp)
CTA_TUPLE_ORIG, CTA_PROTOINFO = 1, 4
CTA_TUPLE_PROTO, CTA_PROTO_NUM = 2, 1
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1

_NFGEN = struct.Struct("!BBH")        # family, version, res_id (network order)
_BE32 = struct.Struct("!I")
_HDR_LEN = nl.HDR_LEN + _NFGEN.size   # 20: where a ctnetlink message's attributes start
_NLMSGHDR = nl.HDR
iter_attrs = nl.iter_attrs


@dataclass(frozen=True)
class Reply:
    """What a stream of netlink bytes said: the decoded records, whether the stream ended
    (NLMSG_DONE, or an ack/error for a non-dump request) and the kernel's errno if it refused."""

    records: list
    done: bool
    error: int | None = None  # positive errno from an NLMSG_ERROR; None if no error


def _be32(buf: bytes, start: int, end: int, what: str) -> int:
    if end - start != 4:
        raise ParseError(f"netlink: {what} is {end - start} bytes, expected 4")
    return _BE32.unpack_from(buf, start)[0]


def _records(msgs: list[nl.Message], want_type, record) -> list:
    """record(buf, res_id, attr_start, end) of every message, of want_type (int or tuple)."""
    wanted = want_type if isinstance(want_type, tuple) else (want_type,)
    out = []
    for m in msgs:
        if m.type not in wanted:
            raise ParseError(f"netlink: unexpected message type {m.type:#x}")
        if m.end - m.start < _NFGEN.size:
            raise ParseError("netlink: message shorter than nfgenmsg")
        _family, _version, res_id = _NFGEN.unpack_from(m.data, m.start)
        out.append(record(m.data, res_id, m.start + _NFGEN.size, m.end))
    return out


def _decode(buf: bytes, want_type, record) -> Reply:
    """The pure form over captured bytes: every message of want_type through record."""
    reply = nl.Reply(None, context="ctnetlink")
    try:
        msgs = reply.messages(buf)
    except NetlinkError as exc:
        return Reply([], True, exc.errno)
    return Reply(_records(msgs, want_type, record), reply.done)


def _cpu_stats_record(buf, res_id, start, end) -> CpuStats:
    values = {}
    for atype, vs, ve in iter_attrs(buf, start, end):
        name = CTA_STATS.get(atype)
        if name is not None:  # unknown (future or obsolete "searched"/"new"...) ones skipped
            values[name] = _be32(buf, vs, ve, f"CTA_STATS {name}")
    return CpuStats(res_id, **values)


def decode_stats_cpu(buf: bytes) -> Reply:
    """IPCTNL_MSG_CT_GET_STATS_CPU dump stream -> Reply(records=[CpuStats per CPU])."""
    return _decode(buf, MSG_CT_STATS_CPU, _cpu_stats_record)


@dataclass(frozen=True)
class GlobalStats:
    entries: int             # this namespace's table size (CTA_STATS_GLOBAL_ENTRIES)
    max_entries: int | None  # nf_conntrack_max (global); absent on very old kernels


def _global_record(buf, _res_id, start, end) -> GlobalStats:
    entries = max_entries = None
    for atype, vs, ve in iter_attrs(buf, start, end):
        if atype == CTA_STATS_GLOBAL_ENTRIES:
            entries = _be32(buf, vs, ve, "CTA_STATS_GLOBAL_ENTRIES")
        elif atype == CTA_STATS_GLOBAL_MAX_ENTRIES:
            max_entries = _be32(buf, vs, ve, "CTA_STATS_GLOBAL_MAX_ENTRIES")
    if entries is None:
        raise ParseError("netlink: stats reply without CTA_STATS_GLOBAL_ENTRIES")
    return GlobalStats(entries, max_entries)


def decode_stats(buf: bytes) -> Reply:
    """IPCTNL_MSG_CT_GET_STATS reply (+ ack) -> Reply(records=[GlobalStats])."""
    return _decode(buf, MSG_CT_STATS, _global_record)


@dataclass(frozen=True)
class ExpectCpuStats:
    cpu: int
    new: int | None = None
    create: int | None = None
    delete: int | None = None


def _exp_record(buf, res_id, start, end) -> ExpectCpuStats:
    values = {}
    for atype, vs, ve in iter_attrs(buf, start, end):
        name = CTA_STATS_EXP.get(atype)
        if name is not None:
            values[name] = _be32(buf, vs, ve, f"CTA_STATS_EXP {name}")
    return ExpectCpuStats(res_id, **values)


def decode_exp_stats_cpu(buf: bytes) -> Reply:
    """IPCTNL_MSG_EXP_GET_STATS_CPU dump stream -> Reply(records=[ExpectCpuStats])."""
    return _decode(buf, MSG_EXP_STATS_CPU_REPLY, _exp_record)


def count_messages(buf: bytes, want_type) -> Reply:
    """Counts messages of want_type (int or tuple) without decoding them (expectation dump).

    records holds a single int: the number of messages in this buffer.
    """
    wanted = want_type if isinstance(want_type, tuple) else (want_type,)
    reply = nl.Reply(None, context="ctnetlink")
    try:
        msgs = reply.messages(buf)
    except NetlinkError as exc:
        return Reply([0], True, exc.errno)
    for m in msgs:
        if m.type not in wanted:
            raise ParseError(f"netlink: unexpected message type {m.type:#x}")
    return Reply([len(msgs)], reply.done)


# --------------------------------------------------------------------------------------------
# Minimal entry-dump decoder (protocol + TCP state)
# --------------------------------------------------------------------------------------------

PROTOCOLS = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "icmpv6",
             132: "sctp", 136: "udplite"}
# enum tcp_conntrack (include/uapi/linux/netfilter/nf_conntrack_tcp.h), lower-cased like
# node_exporter's tcpstat states.
TCP_STATES = ("none", "syn_sent", "syn_recv", "established", "fin_wait", "close_wait",
              "last_ack", "time_wait", "close", "syn_sent2")
_PROTO_TCP = 6


class StateCounter:
    """Accumulates (protocol number, TCP state number or -1) -> entries over dump buffers.

    Decodes only what it needs from each entry: CTA_TUPLE_ORIG > CTA_TUPLE_PROTO >
    CTA_PROTO_NUM and, for TCP, CTA_PROTOINFO > CTA_PROTOINFO_TCP > CTA_PROTOINFO_TCP_STATE.
    Fast paths read them where the kernel puts them (ctnetlink_fill_info: CTA_TUPLE_ORIG is
    the first attribute, CTA_TUPLE_IP its first member; CTA_PROTOINFO usually the last one),
    accepting a value only if every attribute header on the way has exactly the expected
    length and type; anything else (a helper, labels or seqadj after PROTOINFO, a future
    layout) goes through a full walk of the attributes.  Cost per entry: docs/performance.md.
    """

    def __init__(self):
        self.counts: dict[tuple[int, int], int] = {}
        self.entries = 0
        self.done = False
        self.error: int | None = None
        self._reply = nl.Reply(None, context="ctnetlink dump")

    def _control(self, buf, off: int) -> None:
        """A control message (DONE, ERROR, NOOP, OVERRUN): netlink.Reply's rules."""
        try:
            self._reply.control(buf, off)
        except NetlinkError as exc:
            self.done, self.error = True, exc.errno
            return
        self.done = self._reply.done

    def feed(self, buf: bytes, limit: int | None = None) -> int:  # noqa: C901 - one inlined hot loop
        """Decodes one receive buffer; returns the entries counted from it.

        Stops early (returns) once ``self.entries`` reaches ``limit``.  Sets ``done`` on
        NLMSG_DONE and ``error`` on an NLMSG_ERROR with a non-zero code.
        """
        counts = self.counts
        unpack_hdr = _NLMSGHDR.unpack_from
        unpack_orig = _FAST_ORIG.unpack_from
        unpack_proto = _FAST_PROTO.unpack_from
        unpack_tcp = _FAST_TCP.unpack_from
        mask = NLA_TYPE_MASK
        size = len(buf)
        off = 0
        counted = 0
        remaining = None if limit is None else limit - self.entries
        while off < size:
            if size - off < 16:
                raise ParseError(f"netlink dump: {size - off} trailing bytes")
            length, mtype, _f, _s, _p = unpack_hdr(buf, off)
            end = off + length
            if length < 16 or end > size:
                raise ParseError(f"netlink dump: message length {length} at {off}")
            if mtype != MSG_CT_NEW and mtype != MSG_CT_GET:
                if mtype >= nl.NLMSG_MIN_TYPE:
                    raise ParseError(f"netlink dump: unexpected message type {mtype:#x}")
                self._control(buf, off)
                if self.done:
                    break
                off = (end + 3) & ~3   # NLMSG_NOOP
                continue
            a = off + _HDR_LEN
            if a > end:
                raise ParseError("netlink dump: message shorter than nfgenmsg")
            proto = -1
            # fast path: ORIG(first) > IP(first) then PROTO > PROTO_NUM(u8)
            if a + 8 <= end:
                olen, otype, iplen, iptype = unpack_orig(buf, a)
                p = a + 4 + ((iplen + 3) & ~3)
                if (otype & mask == CTA_TUPLE_ORIG and iptype & mask == 1 and iplen >= 4
                        and p + 9 <= a + olen <= end):
                    _pl, ptype, nlen, ntype, num = unpack_proto(buf, p)
                    if ptype & mask == CTA_TUPLE_PROTO and nlen == 5 and \
                            ntype & mask == CTA_PROTO_NUM:
                        proto = num
            state = -1
            if proto < 0 or proto == _PROTO_TCP:
                t = end - 48
                if proto == _PROTO_TCP and t >= a:
                    # fast path: PROTOINFO(48) > TCP(44) > STATE(u8), as the last attribute
                    plen, ptype, tlen, ttype, slen, stype, value = unpack_tcp(buf, t)
                    if (plen == 48 and tlen == 44 and slen == 5 and ptype & mask == CTA_PROTOINFO
                            and ttype & mask == CTA_PROTOINFO_TCP
                            and stype & mask == CTA_PROTOINFO_TCP_STATE):
                        state = value
                if state < 0:
                    proto, state = entry_state(buf, a, end)
            key = (proto, state)
            counts[key] = counts.get(key, 0) + 1
            counted += 1
            off = (end + 3) & ~3
            if remaining is not None and counted >= remaining:
                break
        self.entries += counted
        return counted

    def named(self) -> dict[tuple[str, str], int]:
        """(protocol name, state name) -> count; state "" for non-TCP, number if unknown."""
        out: dict[tuple[str, str], int] = {}
        for (proto, state), n in self.counts.items():
            pname = PROTOCOLS.get(proto, str(proto))
            if proto == _PROTO_TCP:
                sname = TCP_STATES[state] if 0 <= state < len(TCP_STATES) else (
                    "unknown" if state < 0 else str(state))
            else:
                sname = ""
            key = (pname, sname)
            out[key] = out.get(key, 0) + n
        return out


_FAST_ORIG = struct.Struct("=HHHH")      # CTA_TUPLE_ORIG header, CTA_TUPLE_IP header
_FAST_PROTO = struct.Struct("=HHHHB")    # CTA_TUPLE_PROTO header, CTA_PROTO_NUM header, u8
_FAST_TCP = struct.Struct("=HHHHHHB")    # PROTOINFO, PROTOINFO_TCP, TCP_STATE headers, u8


def entry_state(buf: bytes, start: int, end: int) -> tuple[int, int]:
    """(protocol, TCP state or -1) of one entry (its attributes in buf[start:end]) by walking
    its attributes: the generic decoder StateCounter's fast paths must equal."""
    proto = state = -1
    for atype, vs, ve in iter_attrs(buf, start, end):
        if atype == CTA_TUPLE_ORIG:
            proto = _find_u8(buf, vs, ve, CTA_TUPLE_PROTO, CTA_PROTO_NUM)
            if proto != _PROTO_TCP:
                break  # nothing more needed from this entry
        elif atype == CTA_PROTOINFO:
            state = _find_u8(buf, vs, ve, CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE)
            break
    if proto < 0:
        raise ParseError(f"netlink dump: entry at {start} without protocol")
    return proto, state


def _find_u8(buf: bytes, start: int, end: int, outer: int, inner: int) -> int:
    """The u8 value of nested attribute outer > inner inside [start, end); -1 if absent."""
    for atype, vs, ve in iter_attrs(buf, start, end):
        if atype == outer:
            for itype, ivs, ive in iter_attrs(buf, vs, ve):
                if itype == inner:
                    if ive - ivs != 1:
                        raise ParseError(f"netlink dump: u8 attribute is {ive - ivs} "
                                         f"bytes")
                    return buf[ivs]
            return -1
    return -1


# --------------------------------------------------------------------------------------------
# Socket layer
# --------------------------------------------------------------------------------------------

RECV_BUFSIZE = 1 << 16


class CtNetlink:
    """One NETLINK_NETFILTER socket in the namespace of the thread that created it.

    Requests are synchronous; ``timeout`` bounds every receive, ``deadline`` every request
    (:class:`netlink.NetlinkSocket`).  Not thread-safe: use one instance per thread or
    serialise (the collector holds a lock).  ``transport``: a netlink.ReplayTransport in tests.
    """

    def __init__(self, timeout: float = 2.0, deadline: float = 10.0,
                 transport: nl.Transport | None = None):
        self.timeout = timeout
        # one recvmsg per datagram: these answers are one or two datagrams, and a dump's
        # datagrams come one at a time (recvmmsg's ctypes call would cost more than it saves)
        self.sock = nl.NetlinkSocket(NETLINK_NETFILTER, timeout=timeout, deadline=deadline,
                                     recv_size=RECV_BUFSIZE, batched=False, transport=transport)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, mtype: int, flags: int, family: int = 0) -> nl.Reply:
        return self.sock.send(mtype, flags, _NFGEN.pack(family, 0, 0), "ctnetlink")

    def _transact(self, mtype: int, flags: int, want_type, record, family: int = 0) -> list:
        """Sends one request and decodes its answer's messages through record."""
        reply = self._send(mtype, flags, family)
        records: list = []
        for data in self.sock.datagrams(reply):
            records.extend(_records(reply.messages(data), want_type, record))
        return records

    def stats_cpu(self) -> list[CpuStats]:
        return self._transact(MSG_CT_STATS_CPU, NLM_F_DUMP, MSG_CT_STATS_CPU, _cpu_stats_record)

    def stats(self) -> GlobalStats:
        records = self._transact(MSG_CT_STATS, NLM_F_ACK, MSG_CT_STATS, _global_record)
        if len(records) != 1:
            raise ParseError(f"netlink: {len(records)} global stats replies")
        return records[0]

    def exp_stats_cpu(self) -> list[ExpectCpuStats]:
        return self._transact(MSG_EXP_STATS_CPU, NLM_F_DUMP, MSG_EXP_STATS_CPU_REPLY,
                              _exp_record)

    def expect_count(self) -> int:
        """Number of expectations (all families): a dump counted, never decoded.

        The expectation table is small by construction (nf_conntrack_expect_max, a few
        thousand at most), so this stays cheap.
        """
        reply = self._send(MSG_EXP_GET, NLM_F_DUMP)
        n = 0
        for data in self.sock.datagrams(reply):
            for m in reply.messages(data):
                if m.type not in (MSG_EXP_NEW, MSG_EXP_GET):
                    raise ParseError(f"netlink: unexpected message type {m.type:#x}")
                n += 1
        return n

    def state_counts(self, max_entries: int, max_seconds: float) -> tuple[StateCounter, bool]:
        """Dumps the table, counting entries by protocol/TCP state within a budget.

        Returns (counter, partial).  When the budget (entries or wall time) is hit, reading
        stops and the socket is closed, since the rest of the dump is still queued on it: use
        a dedicated :class:`CtNetlink` for this call.
        """
        counter = StateCounter()
        deadline = time.monotonic() + max_seconds
        reply = self._send(MSG_CT_GET, NLM_F_DUMP)
        partial = False
        # the budget ends the dump as partial; the socket's own deadline stays a backstop
        for data in self.sock.datagrams(reply, deadline=max_seconds + self.timeout):
            counter.feed(data, max_entries)
            if counter.done:
                reply.done = True
            elif counter.entries >= max_entries or time.monotonic() >= deadline:
                partial = True
                break
        if counter.error:
            raise NetlinkError(counter.error, "ctnetlink dump")
        if partial:
            self.close()
        return counter, partial


def is_unavailable(exc: OSError) -> bool:
    """True if the error means "no ctnetlink/conntrack in this kernel" (not a failure)."""
    return exc.errno in (errno_mod.EPROTONOSUPPORT, errno_mod.EAFNOSUPPORT, errno_mod.EINVAL,
                         errno_mod.EOPNOTSUPP, errno_mod.ENOENT)


def is_permission(exc: OSError) -> bool:
    return exc.errno in (errno_mod.EPERM, errno_mod.EACCES)


# --------------------------------------------------------------------------------------------
# Per network namespace (discovery and setns live in sources/netns.py)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NamespaceCount:
    ns: Namespace
    entries: int


def count_in_namespaces(namespaces: list[Namespace], timeout: float = 1.0,
                        deadline: float | None = None) -> tuple[list[NamespaceCount], list[str]]:
    """Entries of each namespace via CT_GET_STATS from a socket created inside it
    (:func:`exporter.sources.netns.run_in_namespaces`).  Returns (counts, skipped)."""

    def entries(_ns: Namespace) -> int:
        with CtNetlink(timeout) as nl:
            return nl.stats().entries

    done, skipped = run_in_namespaces(namespaces, entries, deadline)
    return [NamespaceCount(ns, n) for ns, n in done], skipped
