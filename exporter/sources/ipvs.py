"""IPVS virtual servers and real servers over generic netlink.

Two layers, as in the rest of `exporter.sources`:

* a pure decoder of the kernel's IPVS_CMD_GET_SERVICE / IPVS_CMD_GET_DEST dump replies
  (raw netlink bytes -> typed dataclasses); every malformed input raises `ParseError` and
  nothing else, a kernel refusal in the bytes `NetlinkError`.  The generic decoder walks
  the attributes (:mod:`.netlink`); :class:`Layouts` is its accelerator (compiled message
  layouts), held by the reader and kept equal to the generic decoder by property tests;
* `IPVSReader`: a :class:`netlink.NetlinkSocket` on NETLINK_GENERIC (``transport_factory``
  replays captured datagrams in tests); resolves the "IPVS" family by dump, dumps the
  services and then each service's destinations.

Opening the IPVS family makes the kernel request the ip_vs module when it is absent, so the
reader first checks that IPVS is present (`<procfs>/net/ip_vs` or `<sysfs>/module/ip_vs`) and
otherwise raises :class:`exporter.sources.Unavailable` without touching netlink.

Statistics come from the 64-bit nest (IPVS_SVC_ATTR_STATS64 / IPVS_DEST_ATTR_STATS64, all
IPVS_STATS_ATTR_* fields); the 32-bit nest is only a fallback for kernels without it.
Attribute numbers: include/uapi/linux/ip_vs.h.
"""
from __future__ import annotations

import operator
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from . import NetlinkError, ParseError, Unavailable
from . import netlink as nl

# --- netlink / generic netlink constants (from sources/netlink) ----------------------------
NETLINK_GENERIC = nl.NETLINK_GENERIC
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = nl.NLM_F_REQUEST, nl.NLM_F_MULTI, nl.NLM_F_ACK
NLM_F_DUMP = nl.NLM_F_DUMP
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = nl.NLMSG_NOOP, nl.NLMSG_ERROR, nl.NLMSG_DONE
GENL_ID_CTRL, CTRL_CMD_GETFAMILY = nl.GENL_ID_CTRL, nl.CTRL_CMD_GETFAMILY
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = nl.CTRL_ATTR_FAMILY_ID, nl.CTRL_ATTR_FAMILY_NAME
NLA_F_NESTED, NLA_TYPE_MASK = nl.NLA_F_NESTED, nl.NLA_TYPE_MASK

IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1
IPVS_CMD_GET_SERVICE = 4
IPVS_CMD_GET_DEST = 8
IPVS_CMD_ATTR_SERVICE, IPVS_CMD_ATTR_DEST = 1, 2

# IPVS_SVC_ATTR_*
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK, SVC_SCHED_NAME = 1, 2, 3, 4, 5, 6
SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK, SVC_STATS, SVC_PE_NAME, SVC_STATS64 = 7, 8, 9, 10, 11, 12
# IPVS_DEST_ATTR_*
DST_ADDR, DST_PORT, DST_FWD_METHOD, DST_WEIGHT, DST_U_THRESH, DST_L_THRESH = 1, 2, 3, 4, 5, 6
DST_ACTIVE_CONNS, DST_INACT_CONNS, DST_PERSIST_CONNS, DST_STATS = 7, 8, 9, 10
DST_ADDR_FAMILY, DST_STATS64, DST_TUN_TYPE, DST_TUN_PORT, DST_TUN_FLAGS = 11, 12, 13, 14, 15
# IPVS_STATS_ATTR_* 1..10 (11 is PAD)
STATS_FIELDS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes",
                "cps", "inpps", "outpps", "inbps", "outbps")

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6
FAMILY_NAMES: dict[int, str] = {AF_INET: "ipv4", AF_INET6: "ipv6"}
PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}
# IP_VS_CONN_F_FWD_MASK values
FWD_NAMES = {0: "masq", 1: "local", 2: "tunnel", 3: "route", 4: "bypass"}
# IP_VS_SVC_F_*; SCHED1..3 are named by the scheduler that gives them a meaning
SVC_F_PERSISTENT, SVC_F_HASHED, SVC_F_ONEPACKET = 0x1, 0x2, 0x4
SVC_F_SCHED1, SVC_F_SCHED2, SVC_F_SCHED3 = 0x8, 0x10, 0x20
_SCHED_FLAG_NAMES = {
    "sh": ("sh-fallback", "sh-port", "flag-3"),
    "mh": ("mh-fallback", "mh-port", "flag-3"),
}


@dataclass(slots=True)
class Stats:
    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


ZERO_STATS = Stats()          # for comparisons; decoders return fresh instances


@dataclass(slots=True)
class Backend:
    family: int                 # AF_INET / AF_INET6 (IPVS_DEST_ATTR_ADDR_FAMILY, else service's)
    address: str
    port: int
    fwd_method: int             # IP_VS_CONN_F_FWD_MASK bits, see FWD_NAMES
    weight: int
    u_threshold: int
    l_threshold: int
    active_conns: int
    inactive_conns: int
    persistent_conns: int
    stats: Stats
    tun_type: int = 0
    tun_port: int = 0
    tun_flags: int = 0

    @property
    def fwd_name(self) -> str:
        return FWD_NAMES.get(self.fwd_method, str(self.fwd_method))

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES.get(self.family, str(self.family))


@dataclass(slots=True)
class Service:
    family: int                 # AF_INET / AF_INET6
    protocol: int               # IPPROTO_*; 0 for a fwmark service
    address: str                # "" for a fwmark service
    port: int                   # 0 for a fwmark service
    fwmark: int                 # 0 unless a fwmark service
    scheduler: str
    flags: int                  # IP_VS_SVC_F_* bits
    timeout: int                # persistence timeout, seconds
    netmask: str                # persistence mask: dotted IPv4 mask, or IPv6 prefix length
    stats: Stats
    pe_name: str = ""
    backends: list = field(default_factory=list)   # list[Backend], filled by the reader
    addr_raw: bytes = b""       # the kernel's 16-byte address (for the GET_DEST request)

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES.get(self.family, str(self.family))

    @property
    def protocol_name(self) -> str:
        if self.fwmark:
            return "fwmark"
        return PROTO_NAMES.get(self.protocol, str(self.protocol))

    @property
    def flag_names(self) -> tuple:
        """Set flags in ipvsadm's words (HASHED is internal and left out)."""
        out = []
        f = self.flags
        if f & SVC_F_PERSISTENT:
            out.append("persistent")
        if f & SVC_F_ONEPACKET:
            out.append("ops")
        names = _SCHED_FLAG_NAMES.get(self.scheduler, ("flag-1", "flag-2", "flag-3"))
        for bit, name in zip((SVC_F_SCHED1, SVC_F_SCHED2, SVC_F_SCHED3), names, strict=True):
            if f & bit:
                out.append(name)
        return tuple(out)


# --- decoding -----------------------------------------------------------------------------
_NLMSGHDR = nl.HDR
_U16 = struct.Struct("=H")
_BE16 = struct.Struct("!H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_FLAGS = struct.Struct("=II")

_inet_ntop = socket.inet_ntop
_inet_ntoa = socket.inet_ntoa
_nlas = nl.attrs      # type -> (payload start, payload end)


def _need(a: dict, typ: int, size: int, what: str):
    s, e = a[typ]
    if e - s < size:
        raise ParseError(f"{what}: payload {e - s} bytes, need {size}")
    return s


def decode_stats(buf, start: int, end: int, wide: bool = True) -> Stats:
    """IPVS_STATS_ATTR_* nest (64-bit when `wide`, else the legacy 32/64-bit mix)."""
    vals = [0] * 10
    a = _nlas(buf, start, end)
    for t, (s, e) in a.items():
        if 1 <= t <= 10:
            n = e - s
            if n >= 8:
                vals[t - 1] = _U64.unpack_from(buf, s)[0]
            elif n >= 4:
                vals[t - 1] = _U32.unpack_from(buf, s)[0]
            else:
                raise ParseError(f"stats attribute {t}: {n} bytes")
    return Stats(*vals)


def _addr(buf, s: int, e: int, af: int) -> str:
    if af == AF_INET:
        if e - s < 4:
            raise ParseError("IPv4 address attribute shorter than 4 bytes")
        return _inet_ntoa(bytes(buf[s:s + 4]))
    if af == AF_INET6:
        if e - s < 16:
            raise ParseError("IPv6 address attribute shorter than 16 bytes")
        return _inet_ntop(AF_INET6, bytes(buf[s:s + 16]))
    raise ParseError(f"unknown address family {af}")


def _stats_of(buf, a: dict, t64: int, t32: int) -> Stats:
    if t64 in a:
        s, e = a[t64]
        return decode_stats(buf, s, e, True)
    if t32 in a:
        s, e = a[t32]
        return decode_stats(buf, s, e, False)
    return Stats()


def _u32(buf, a, typ, default=0):
    if typ not in a:
        return default
    s, e = a[typ]
    if e - s < 4:
        raise ParseError(f"attribute {typ}: {e - s} bytes, need 4")
    return _U32.unpack_from(buf, s)[0]


def _str(buf, a, typ) -> str:
    if typ not in a:
        return ""
    s, e = a[typ]
    return bytes(buf[s:e]).split(b"\0", 1)[0].decode("ascii", "replace")


def decode_service_attrs(buf, start: int, end: int) -> Service:
    """One IPVS_CMD_ATTR_SERVICE nest (its payload) -> Service."""
    a = _nlas(buf, start, end)
    if SVC_AF not in a:
        raise ParseError("service without IPVS_SVC_ATTR_AF")
    af = _U16.unpack_from(buf, _need(a, SVC_AF, 2, "af"))[0]
    if af not in FAMILY_NAMES:
        raise ParseError(f"service address family {af}")
    fwmark = _u32(buf, a, SVC_FWMARK)
    if SVC_FWMARK in a and SVC_ADDR not in a:
        proto, address, port, raw = 0, "", 0, b""
    else:
        for t, w in ((SVC_PROTOCOL, "protocol"), (SVC_ADDR, "addr"), (SVC_PORT, "port")):
            if t not in a:
                raise ParseError(f"service without {w} and without fwmark")
        proto = _U16.unpack_from(buf, _need(a, SVC_PROTOCOL, 2, "protocol"))[0]
        s, e = a[SVC_ADDR]
        address = _addr(buf, s, e, af)
        raw = bytes(buf[s:e])
        port = _BE16.unpack_from(buf, _need(a, SVC_PORT, 2, "port"))[0]
    flags = 0
    if SVC_FLAGS in a:
        flags = _FLAGS.unpack_from(buf, _need(a, SVC_FLAGS, 8, "flags"))[0]
    netmask = ""
    if SVC_NETMASK in a:
        s = _need(a, SVC_NETMASK, 4, "netmask")
        # IPv4: a network-order mask; IPv6: the prefix length, stored host-order
        netmask = (_inet_ntoa(bytes(buf[s:s + 4])) if af == AF_INET
                   else str(_U32.unpack_from(buf, s)[0]))
    return Service(
        family=af, protocol=proto, address=address, port=port, fwmark=fwmark,
        scheduler=_str(buf, a, SVC_SCHED_NAME), flags=flags,
        timeout=_u32(buf, a, SVC_TIMEOUT), netmask=netmask,
        stats=_stats_of(buf, a, SVC_STATS64, SVC_STATS), pe_name=_str(buf, a, SVC_PE_NAME),
        addr_raw=raw)


def decode_dest_attrs(buf, start: int, end: int, service_family: int) -> Backend:
    """One IPVS_CMD_ATTR_DEST nest (its payload) -> Backend."""
    a = _nlas(buf, start, end)
    af = service_family
    if DST_ADDR_FAMILY in a:
        af = _U16.unpack_from(buf, _need(a, DST_ADDR_FAMILY, 2, "dest af"))[0]
    if DST_ADDR not in a or DST_PORT not in a:
        raise ParseError("destination without address or port")
    s, e = a[DST_ADDR]
    address = _addr(buf, s, e, af)
    u32 = _U32.unpack_from
    vals = []
    for t in (DST_FWD_METHOD, DST_WEIGHT, DST_U_THRESH, DST_L_THRESH,
              DST_ACTIVE_CONNS, DST_INACT_CONNS, DST_PERSIST_CONNS):
        se = a.get(t)
        if se is None:
            vals.append(0)
        elif se[1] - se[0] < 4:
            raise ParseError(f"destination attribute {t}: {se[1] - se[0]} bytes")
        else:
            vals.append(u32(buf, se[0])[0])
    tun_type = tun_port = tun_flags = 0
    if DST_TUN_TYPE in a:
        tun_type = buf[_need(a, DST_TUN_TYPE, 1, "tun_type")]
    if DST_TUN_PORT in a:
        tun_port = _BE16.unpack_from(buf, _need(a, DST_TUN_PORT, 2, "tun_port"))[0]
    if DST_TUN_FLAGS in a:
        tun_flags = _U16.unpack_from(buf, _need(a, DST_TUN_FLAGS, 2, "tun_flags"))[0]
    return Backend(af, address, _BE16.unpack_from(buf, _need(a, DST_PORT, 2, "port"))[0],
                   vals[0] & 0x7, vals[1], vals[2], vals[3], vals[4], vals[5], vals[6],
                   _stats_of(buf, a, DST_STATS64, DST_STATS), tun_type, tun_port, tun_flags)


# --- fast path: compiled message layouts ----------------------------------------------------
# The kernel writes every destination (and every service of one kind) with the same attribute
# sequence; only the values differ.  The first message of a given shape is walked once and
# compiled into one struct format covering the whole message; later messages of the same
# length are unpacked with one call and accepted only if their netlink/genetlink headers and
# all their (length, type) words equal the compiled ones (its _Skeleton, which also checks a
# whole datagram of such messages at once).  Anything else (other kernels, PAD attributes
# placed differently, garbage) goes through the generic decoder above, the reference.
_LEAF_CODES = {
    "svc": {SVC_AF: "H", SVC_PROTOCOL: "H", SVC_ADDR: "16s", SVC_PORT: "BB", SVC_FWMARK: "I",
            SVC_FLAGS: "II", SVC_TIMEOUT: "I", SVC_NETMASK: "4s", SVC_SCHED_NAME: "s",
            SVC_PE_NAME: "s"},
    "dst": {DST_ADDR: "16s", DST_PORT: "BB", DST_FWD_METHOD: "I", DST_WEIGHT: "I",
            DST_U_THRESH: "I", DST_L_THRESH: "I", DST_ACTIVE_CONNS: "I", DST_INACT_CONNS: "I",
            DST_PERSIST_CONNS: "I", DST_ADDR_FAMILY: "H", DST_TUN_TYPE: "B", DST_TUN_PORT: "BB",
            DST_TUN_FLAGS: "H"},
}
_CODE_SIZE = {"H": 2, "16s": 16, "BB": 2, "I": 4, "II": 8, "4s": 4, "B": 1}
_CODE_NVALS = {"BB": 2, "II": 2}
_STATS_TYPES = {"svc": {SVC_STATS: "s32", SVC_STATS64: "s64"},
                "dst": {DST_STATS: "s32", DST_STATS64: "s64"}}
_TOP_ATTR = {"svc": IPVS_CMD_ATTR_SERVICE, "dst": IPVS_CMD_ATTR_DEST}
_MAX_TEMPLATES = 64


def _compile(data, off: int, ln: int, kind: str, names: dict):  # noqa: C901 - one walk
    """Walk one message and compile its layout; None if it has no decodable shape."""
    fmt = ["=IHHIIBBH"]
    idx: dict = {}
    n = 8
    codes, stypes = _LEAF_CODES[kind], _STATS_TYPES[kind]
    heads = [(0, 8), (16, 20)]   # nlmsghdr len/type/flags, genl cmd/version/reserved

    def walk(pos, end, level):
        nonlocal n
        while pos < end:
            if end - pos < 4:
                return False
            alen, atyp = nl.ATTR.unpack_from(data, pos)
            heads.append((pos - off, pos - off + 4))
            padded = (alen + 3) & ~3
            if alen < 4 or pos + padded > end:
                return False
            t = atyp & NLA_TYPE_MASK
            plen = alen - 4
            fmt.append("HH")
            n += 2
            if level == "top" and t == _TOP_ATTR[kind] and "main" not in idx:
                idx["main"] = True
                if not walk(pos + 4, pos + alen, "main"):
                    return False
            elif level == "main" and t in stypes:
                if not walk(pos + 4, pos + alen, stypes[t]):
                    return False
            elif level == "main" and t in codes:
                code = codes[t]
                if code == "s":
                    code = f"{plen}s"
                elif _CODE_SIZE[code] != plen:
                    return False
                fmt.append(code)
                idx[t] = n
                n += _CODE_NVALS.get(code, 1)
            elif level in ("s32", "s64") and 1 <= t <= 10:
                if plen not in (4, 8):   # odd sizes (the generic walker's cases): no layout
                    return False
                fmt.append("Q" if plen == 8 else "I")
                idx[(level, t)] = n
                n += 1
            elif plen:
                fmt.append(f"{plen}x")
            if padded != alen:
                fmt.append(f"{padded - alen}x")
            pos += padded
        return True

    if not walk(off + 20, off + ln, "top") or "main" not in idx:
        return None
    st = struct.Struct("".join(fmt))
    if st.size != ln:
        return None
    builder = (_service_builder(idx, n, names) if kind == "svc" else _dest_builder(idx, n))
    if builder is None:
        return None
    return st, builder, _Skeleton(bytes(data[off:off + ln]), heads)


class _Skeleton:
    """The bytes every message of a compiled shape must repeat: its netlink and genetlink
    headers and every attribute's (length, type) word; checks k messages at once with one
    big-integer AND (C speed, no tuple per message)."""

    __slots__ = ("mask", "skel", "_k")

    def __init__(self, message: bytes, heads):
        mask = bytearray(len(message))
        for a, b in heads:
            mask[a:b] = b"\xff" * (b - a)
        self.mask = bytes(mask)
        self.skel = bytes(x & y for x, y in zip(message, mask, strict=True))
        self._k: dict = {}

    def matches(self, data, k: int) -> bool:
        """True if data (k messages of this shape back to back) has the skeleton in each."""
        mk = self._k.get(k)
        if mk is None:
            mk = (int.from_bytes(self.mask * k, "little"), int.from_bytes(self.skel * k, "little"))
            if len(self._k) < 16:
                self._k[k] = mk
        return int.from_bytes(data, "little") & mk[0] == mk[1]


def _stats_getter(idx: dict, n: int):
    key = "s64" if any(k[0] == "s64" for k in idx if isinstance(k, tuple)) else "s32"
    ix = [idx.get((key, t), n) for t in range(1, 11)]
    return operator.itemgetter(*ix), n in ix


def _dest_builder(idx: dict, n: int):
    if DST_ADDR not in idx or DST_PORT not in idx:
        return None
    i_addr, i_port = idx[DST_ADDR], idx[DST_PORT]
    i_af = idx.get(DST_ADDR_FAMILY)
    i_tp = idx.get(DST_TUN_PORT)
    ints_ix = [idx.get(t, n) for t in (DST_FWD_METHOD, DST_WEIGHT, DST_U_THRESH, DST_L_THRESH,
                                       DST_ACTIVE_CONNS, DST_INACT_CONNS, DST_PERSIST_CONNS,
                                       DST_TUN_TYPE, DST_TUN_FLAGS)]
    ints = operator.itemgetter(*ints_ix)
    stats, stats_pad = _stats_getter(idx, n)
    pad = stats_pad or n in ints_ix

    def build(v, svc_af):
        if pad:
            v = v + (0,)
        af = v[i_af] if i_af is not None else svc_af
        a = v[i_addr]
        if af == AF_INET:
            address = _inet_ntoa(a[:4])
        elif af == AF_INET6:
            address = _inet_ntop(AF_INET6, a)
        else:
            raise ParseError(f"destination address family {af}")
        fwd, w, u, lo, act, inact, pers, tt, tf = ints(v)
        return Backend(af, address, (v[i_port] << 8) | v[i_port + 1], fwd & 0x7, w, u, lo, act,
                       inact, pers, Stats(*stats(v)), tt,
                       (v[i_tp] << 8) | v[i_tp + 1] if i_tp is not None else 0, tf)
    return build


def _service_builder(idx: dict, n: int, names: dict):
    def _name(b: bytes) -> str:
        s = names.get(b)
        if s is None:
            s = b.split(b"\0", 1)[0].decode("ascii", "replace")
            if len(names) < 256:
                names[b] = s
        return s

    if SVC_AF not in idx:
        return None
    fw = SVC_FWMARK in idx and SVC_ADDR not in idx
    if not fw and not all(t in idx for t in (SVC_PROTOCOL, SVC_ADDR, SVC_PORT)):
        return None
    i_af = idx[SVC_AF]
    i_fw, i_proto, i_addr = (idx.get(t) for t in (SVC_FWMARK, SVC_PROTOCOL, SVC_ADDR))
    i_port: int = idx.get(SVC_PORT, 0)
    i_sched, i_pe, i_flags, i_timeout, i_mask = (
        idx.get(t) for t in (SVC_SCHED_NAME, SVC_PE_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK))
    stats, pad = _stats_getter(idx, n)

    def build(v, _unused=None):
        if pad:
            v = v + (0,)
        af = v[i_af]
        if af not in FAMILY_NAMES:
            raise ParseError(f"service address family {af}")
        fwmark = v[i_fw] if i_fw is not None else 0
        if fw:
            proto, address, port, raw = 0, "", 0, b""
        else:
            raw = v[i_addr]
            address = _inet_ntoa(raw[:4]) if af == AF_INET else _inet_ntop(AF_INET6, raw)
            proto, port = v[i_proto], (v[i_port] << 8) | v[i_port + 1]
        netmask = ""
        if i_mask is not None:
            m = v[i_mask]
            netmask = _inet_ntoa(m) if af == AF_INET else str(_U32.unpack(m)[0])
        return Service(af, proto, address, port, fwmark,
                       _name(v[i_sched]) if i_sched is not None else "",
                       v[i_flags] if i_flags is not None else 0,
                       v[i_timeout] if i_timeout is not None else 0, netmask,
                       Stats(*stats(v)), _name(v[i_pe]) if i_pe is not None else "",
                       [], raw)
    return build


class Layouts:
    """The accelerator of the decoders: message layouts compiled from the first message of
    each shape, with their skeletons and the scheduler-name cache.  One per reader (it lives
    as long as the reader, so a scrape reuses the last one's layouts); a decoder given none
    uses the generic attribute walker only."""

    def __init__(self, max_templates: int = _MAX_TEMPLATES):
        self.templates: dict = {}   # (kind, message length) -> [(struct, builder, _Skeleton)]
        self.count = 0
        self.max = max_templates
        self.names: dict = {}

    def message(self, data, off: int, ln: int, kind: str, family: int):
        """Decode the message at `off` through a compiled layout; None when none applies."""
        key = (kind, ln)
        tpls = self.templates.get(key)
        if tpls:
            msg = memoryview(data)[off:off + ln]
            for st, build, skeleton in tpls:
                if skeleton.matches(msg, 1):
                    return build(st.unpack_from(msg), family)
        if self.count >= self.max:
            return None
        t = _compile(data, off, ln, kind, self.names)
        if t is None:
            return None
        self.templates.setdefault(key, []).append(t)
        self.count += 1
        return t[1](t[0].unpack_from(data, off), family)

    def uniform_dests(self, data, service_family: int, seq):
        """The common case in one pass: a chunk made only of destination messages of one
        compiled shape (the kernel writes every IPv4 or IPv6 destination alike), unpacked
        with iter_unpack and checked all at once; None when the chunk is anything else."""
        if len(data) < 20:
            return None
        ln = _NLMSGHDR.unpack_from(data, 0)[0]
        tpls = self.templates.get(("dst", ln))
        if not tpls or ln % 4:
            return None
        n = len(data)
        if n % ln:
            # the dump's NLMSG_DONE may end the same chunk (one buffer holding a whole reply)
            if n % ln != 20 or n < ln + 20:
                return None
            _l, typ, _f, mseq, _p = _NLMSGHDR.unpack_from(data, n - 20)
            if _l != 20 or typ != NLMSG_DONE or (seq is not None and mseq != seq):
                return None
            data = memoryview(data)[:n - 20]
        k = len(data) // ln
        if seq is not None and memoryview(data).cast("I")[2::ln // 4].tolist().count(seq) != k:
            return None     # a message of another request: the general path skips it
        for st, build, skeleton in tpls:
            if skeleton.matches(data, k):
                return [build(v, service_family) for v in st.iter_unpack(data)]
        return None


def iter_genl_payloads(data, seq: int | None = None):
    """Yield (start, end) of each generic-netlink message's attribute block in `data`
    (concatenated netlink messages) of request `seq` (None: any).  netlink.Reply's rules:
    stops at NLMSG_DONE, NetlinkError for an NLMSG_ERROR with an error code, ParseError for
    malformed framing."""
    for m in nl.Reply(seq, context="IPVS reply").messages(data):
        if m.end - m.start < 4:
            raise ParseError("generic netlink message shorter than its header")
        yield m.start + 4, m.end


_DECODE_ERRORS = (struct.error, IndexError, ValueError, KeyError, TypeError, UnicodeError)


def decode_services(data, seq: int | None = None, layouts: Layouts | None = None) -> list:
    """Bytes of an IPVS_CMD_GET_SERVICE dump reply (one or more netlink messages) ->
    [Service].  Raises ParseError on malformed data, NetlinkError for a kernel
    NLMSG_ERROR in the reply.  `layouts`: the accelerator (None: generic walker only)."""
    out = []
    try:
        for s, e in iter_genl_payloads(data, seq):
            if layouts is not None:
                svc = layouts.message(data, s - 20, e - s + 20, "svc", 0)
                if svc is not None:
                    out.append(svc)
                    continue
            a = _nlas(data, s, e)
            if IPVS_CMD_ATTR_SERVICE in a:
                ss, se = a[IPVS_CMD_ATTR_SERVICE]
                out.append(decode_service_attrs(data, ss, se))
    except (ParseError, NetlinkError):
        raise
    except _DECODE_ERRORS as e:
        raise ParseError(f"{type(e).__name__}: {e}") from e
    return out


def decode_dests(data, service_family: int, seq: int | None = None,
                 layouts: Layouts | None = None) -> list:
    """Bytes of an IPVS_CMD_GET_DEST dump reply -> [Backend] (addresses default to the
    service's family when the kernel omits IPVS_DEST_ATTR_ADDR_FAMILY).  Raises
    ParseError on malformed data, NetlinkError for a kernel NLMSG_ERROR.  `layouts`: the
    accelerator (None: generic walker only)."""
    out = []
    try:
        if layouts is not None:
            fast = layouts.uniform_dests(data, service_family, seq)
            if fast is not None:
                return fast
        for s, e in iter_genl_payloads(data, seq):
            if layouts is not None:
                b = layouts.message(data, s - 20, e - s + 20, "dst", service_family)
                if b is not None:
                    out.append(b)
                    continue
            a = _nlas(data, s, e)
            if IPVS_CMD_ATTR_DEST in a:
                ds, de = a[IPVS_CMD_ATTR_DEST]
                out.append(decode_dest_attrs(data, ds, de, service_family))
    except (ParseError, NetlinkError):
        raise
    except _DECODE_ERRORS as e:
        raise ParseError(f"{type(e).__name__}: {e}") from e
    return out


_nla = nl.attr


def service_key(svc: Service) -> bytes:
    """The identifying attributes of a service, as IPVS_CMD_GET_DEST wants them."""
    if svc.fwmark and not svc.addr_raw:
        inner = _nla(SVC_AF, _U16.pack(svc.family)) + _nla(SVC_FWMARK, _U32.pack(svc.fwmark))
    else:
        raw = svc.addr_raw or socket.inet_pton(svc.family, svc.address)
        inner = (_nla(SVC_AF, _U16.pack(svc.family)) + _nla(SVC_PROTOCOL, _U16.pack(svc.protocol))
                 + _nla(SVC_ADDR, raw) + _nla(SVC_PORT, _BE16.pack(svc.port)))
    return _nla(IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, inner)


# --- the reader ---------------------------------------------------------------------------
def ipvs_present(procfs: str = "/proc", sysfs: str = "/sys") -> bool:
    """True when IPVS is in the kernel: checked on the filesystem only, so that the
    kernel is never asked to load ip_vs."""
    return (os.path.exists(os.path.join(procfs, "net", "ip_vs"))
            or os.path.isdir(os.path.join(sysfs, "module", "ip_vs")))


@dataclass(slots=True)
class IPVSTable:
    available: bool
    services: list = field(default_factory=list)   # [Service], each with .backends

    @property
    def backend_count(self) -> int:
        return sum(len(s.backends) for s in self.services)


class IPVSReader:
    """Reads the IPVS table of the current network namespace.

    `read()` returns IPVSTable(available=False) when IPVS is absent, without opening the
    IPVS family.  One netlink socket per `read()`; the kernel's dump skbs are <= 32 KiB, so
    memory stays bounded by the decoded table.  The compiled layouts (`self.layouts`) live
    as long as the reader."""

    RECV_SIZE = 1 << 16

    def __init__(self, procfs: str = "/proc", sysfs: str = "/sys", timeout: float = 10.0,
                 transport_factory: Callable[[], nl.Transport] | None = None):
        self.procfs = procfs
        self.sysfs = sysfs
        self.timeout = timeout
        self.transport_factory = transport_factory
        self.layouts = Layouts()

    def available(self) -> bool:
        return ipvs_present(self.procfs, self.sysfs)

    def socket(self) -> nl.NetlinkSocket:
        transport = self.transport_factory() if self.transport_factory else None
        return nl.NetlinkSocket(NETLINK_GENERIC, timeout=self.timeout, deadline=self.timeout,
                                recv_size=self.RECV_SIZE, transport=transport)

    def scan(self, backends: bool = True, service_filter=None):
        """Yield each Service (with .backends when `backends`), one destination dump at a
        time, so only one service's backends are decoded at once.  `service_filter(Service)
        -> bool` drops services before their destinations are dumped.  Raises Unavailable
        when IPVS is absent (checked before touching netlink) or goes away during the read;
        ParseError/OSError on other failures."""
        if not self.available():
            raise Unavailable("IPVS not present (no net/ip_vs in procfs, no module/ip_vs "
                              "in sysfs)")
        layouts = self.layouts
        try:
            with self.socket() as sock:
                fam = nl.resolve_family(sock, IPVS_GENL_NAME)
                if fam is None:
                    raise Unavailable("no IPVS generic-netlink family")
                services = []
                for chunk, seq in dump(sock, fam.id, IPVS_CMD_GET_SERVICE):
                    services.extend(decode_services(chunk, seq, layouts))
                if service_filter is not None:
                    services = [s for s in services if service_filter(s)]
                for i, svc in enumerate(services):
                    # the list lets go of each service once yielded: a consumer that streams
                    # (the collector) keeps only one service's decoded backends alive at once
                    services[i] = None
                    if backends:
                        svc.backends = _dests(sock, fam.id, svc, layouts)
                    yield svc
                    del svc
        except Unavailable:
            raise
        except OSError as e:
            # the module went away between the presence check and the dump
            if not self.available():
                raise Unavailable(f"IPVS went away during the read ({e})") from e
            raise

    def read(self, backends: bool = True, service_filter=None) -> IPVSTable:
        """The whole table at once; IPVSTable(available=False) when IPVS is absent."""
        try:
            return IPVSTable(True, list(self.scan(backends, service_filter)))
        except Unavailable:
            return IPVSTable(False)


def _dests(sock: nl.NetlinkSocket, family_id: int, svc: Service, layouts: Layouts) -> list:
    """One service's destinations.  A datagram the accelerator takes whole (destinations of
    one compiled shape, whose headers it checked: no control message among them) needs no
    header scan; a trailing NLMSG_DONE goes through netlink.Reply.control."""
    reply = sock.send(family_id, NLM_F_DUMP, nl.genl_header(IPVS_CMD_GET_DEST, IPVS_GENL_VERSION)
                      + service_key(svc), "IPVS dump")
    seq, family, out = reply.seq, svc.family, []
    for data in sock.datagrams(reply):
        got = layouts.uniform_dests(data, family, seq)
        if got is None:
            reply.scan(data)
            out.extend(decode_dests(data, family, seq, layouts))
            continue
        out.extend(got)
        if len(data) % _NLMSGHDR.unpack_from(data, 0)[0]:   # ended by its NLMSG_DONE
            reply.control(data, len(data) - 20)
    return out


def dump(sock: nl.NetlinkSocket, family_id: int, cmd: int, attrs: bytes = b""):
    """Yield (datagram, seq) for each received part of one IPVS dump reply; the socket
    layer's checks (deadline, budget, truncation, sequence) apply, the reply's end and any
    kernel refusal are read from the headers (netlink.Reply.scan)."""
    reply = sock.send(family_id, NLM_F_DUMP, nl.genl_header(cmd, IPVS_GENL_VERSION) + attrs,
                      "IPVS dump")
    for data in sock.datagrams(reply):
        reply.scan(data)
        yield data, reply.seq
