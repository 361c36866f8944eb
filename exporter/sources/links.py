"""Network links over rtnetlink: one RTM_GETLINK dump, decoded straight from the bytes.

Why not pyroute2's ``get_links()``: its generic attribute decoding is far slower per link
(figures in docs/performance.md); this module walks the attributes with :mod:`.netlink`'s
walker and keeps only what the netdev collector needs.  Framing, the socket and its bounds
(deadline, byte budget, truncation, sequence numbers, the one retry of a dump the kernel
flags as interrupted, NLM_F_DUMP_INTR) are :mod:`exporter.sources.netlink`'s.

Pure decoders (no I/O, fuzzed by the tests):

- :func:`parse_link_dump` - the concatenated reply bytes of an RTM_GETLINK dump -> ``[Link]``.
- :func:`parse_route_messages` - RTM_NEWROUTE replies (a ``route get`` or a dump) -> ``[Route]``.

Both raise :class:`ParseError` on bytes they cannot understand and :class:`NetlinkError`
when the bytes carry a kernel error (NLMSG_ERROR).

Readers (I/O): :class:`RtNetlink` - ``dump_links()``, ``route_get(address)``,
``dump_routes(family)``; ``transport=`` replays captured datagrams (netlink.ReplayTransport).

The dump request sets ``IFLA_EXT_MASK = RTEXT_FILTER_SKIP_STATS``: no SR-IOV VF information
(``RTEXT_FILTER_VF`` is not asked for) and no per-interface inet6 statistics in IFLA_AF_SPEC
(roughly halves the bytes per link).  The link counters (IFLA_STATS64) are not affected by
that flag.  Interfaces created or deleted while the dump runs are simply present or absent.
"""
from __future__ import annotations

import errno as _errno
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

from . import NetlinkError, ParseError
from . import netlink as nl
from .netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR  # noqa: F401 - re-exported

# --- netlink / rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h) ---
NETLINK_ROUTE = nl.NETLINK_ROUTE
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWROUTE, RTM_GETROUTE = 24, 26

IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_STATS = 3, 4, 5, 7
IFLA_MASTER, IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_STATS64 = 10, 16, 18, 23
IFLA_EXT_MASK, IFLA_LINK_NETNSID = 29, 37
IFLA_MIN_MTU, IFLA_MAX_MTU, IFLA_PARENT_DEV_NAME = 50, 51, 56
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND = 1, 2, 4
RTEXT_FILTER_SKIP_STATS = 1 << 3

IFF_UP = 0x1
ARPHRD_LOOPBACK = 772

# IFLA_VXLAN_*
VXLAN_GROUP, VXLAN_LINK, VXLAN_LOCAL = 2, 3, 4
VXLAN_GROUP6, VXLAN_LOCAL6, VXLAN_COLLECT_METADATA = 16, 17, 25
# IFLA_GENEVE_*
GENEVE_REMOTE, GENEVE_COLLECT_METADATA, GENEVE_REMOTE6 = 2, 6, 7
GENEVE_INNER_PROTO_INHERIT = 14
# IFLA_IPTUN_* (ipip, sit, ip6tnl)
IPTUN_LINK, IPTUN_LOCAL, IPTUN_REMOTE, IPTUN_FLAGS = 1, 2, 3, 8
IPTUN_ENCAP_TYPE, IPTUN_ENCAP_FLAGS, IPTUN_COLLECT_METADATA = 15, 16, 19
# IFLA_GRE_* (gre, gretap, ip6gre, ip6gretap)
GRE_LINK, GRE_OFLAGS, GRE_LOCAL, GRE_REMOTE, GRE_FLAGS = 1, 3, 6, 7, 13
GRE_ENCAP_TYPE, GRE_ENCAP_FLAGS, GRE_COLLECT_METADATA = 14, 15, 18
IP6_TNL_F_IGN_ENCAP_LIMIT = 0x1

# rtattr types of routes
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 6, 9, 15
RT_TABLE_MAIN = 254
RTN_UNICAST = 1

OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")

STATS_FIELDS = (
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors",
    "rx_dropped", "tx_dropped", "multicast", "collisions",
    "rx_length_errors", "rx_over_errors", "rx_crc_errors", "rx_frame_errors",
    "rx_fifo_errors", "rx_missed_errors",
    "tx_aborted_errors", "tx_carrier_errors", "tx_fifo_errors", "tx_heartbeat_errors",
    "tx_window_errors", "rx_compressed", "tx_compressed",
    "rx_nohandler",            # since Linux 4.6
    "rx_otherhost_dropped",    # since Linux 5.19
)
_STATS_MIN = 23  # fields every kernel since 2.6.35 reports

_NLMSG = nl.HDR
_IFINFO = struct.Struct("=BxHiII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_U32 = struct.Struct("=I")
_STATS64 = {n: struct.Struct(f"={n}Q") for n in range(_STATS_MIN, len(STATS_FIELDS) + 1)}
_STATS32 = {n: struct.Struct(f"={n}I") for n in range(_STATS_MIN, len(STATS_FIELDS) + 1)}


class LinkStats(NamedTuple):
    """rtnl_link_stats64 (a tuple: index it with STATS_INDEX for speed); fields the running
    kernel does not report are None."""

    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int
    rx_errors: int
    tx_errors: int
    rx_dropped: int
    tx_dropped: int
    multicast: int
    collisions: int
    rx_length_errors: int
    rx_over_errors: int
    rx_crc_errors: int
    rx_frame_errors: int
    rx_fifo_errors: int
    rx_missed_errors: int
    tx_aborted_errors: int
    tx_carrier_errors: int
    tx_fifo_errors: int
    tx_heartbeat_errors: int
    tx_window_errors: int
    rx_compressed: int
    tx_compressed: int
    rx_nohandler: int | None = None
    rx_otherhost_dropped: int | None = None


STATS_INDEX = {name: i for i, name in enumerate(STATS_FIELDS)}
_STATS_PAD = {n: (None,) * (len(STATS_FIELDS) - n)
              for n in range(_STATS_MIN, len(STATS_FIELDS) + 1)}


@dataclass(slots=True, frozen=True)
class TunnelInfo:
    """What IFLA_INFO_DATA says about an encapsulating device (only what overhead needs).

    ``family`` is the outer (underlay) address family the kernel's configuration implies:
    4 or 6, or None when the kernel exposes no address (e.g. a metadata-mode VXLAN, WireGuard).
    ``remote`` is the packed remote (or multicast group) address, None when unset or "any".
    """

    link: int = 0                 # underlay ifindex the tunnel is bound to (0: none)
    family: int | None = None
    remote: bytes | None = None
    local: bytes | None = None
    external: bool = False        # collect_metadata / flow-based mode
    gre_oflags: int = 0           # GRE output flags (CSUM 0x8000, KEY 0x2000, SEQ 0x1000)
    encap_type: int = 0           # 0 none, 1 FOU, 2 GUE, 3 MPLS
    encap_flags: int = 0
    encap_limit_option: bool = False  # ip6 tunnels: an 8-byte encapsulation limit option is sent
    inner_l3: bool = False        # geneve inner_proto_inherit: no inner Ethernet header


@dataclass(slots=True)
class Link:
    index: int
    name: str
    type: int                     # ARPHRD_*
    flags: int                    # IFF_*
    mtu: int | None = None
    min_mtu: int | None = None
    max_mtu: int | None = None
    operstate: str = "unknown"
    master: int = 0               # ifindex of the master (bridge, bond, vrf), 0 when none
    link: int = 0                 # IFLA_LINK: lower device or veth peer (0 when none)
    link_netnsid: int | None = None  # set when link/underlay ifindexes are in another netns
    parent_dev: str | None = None    # bus device name (physical NICs, virtio...)
    kind: str | None = None
    slave_kind: str | None = None
    stats: LinkStats | None = None
    tunnel: TunnelInfo | None = None

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass(slots=True, frozen=True)
class Route:
    family: int
    dst_len: int
    table: int
    type: int
    oif: int        # output ifindex (first hop of a multipath route), 0 when none
    priority: int   # metric


# --------------------------------------------------------------------------- decoding

Span = tuple[int, int]
_u8, _u16, _be16, _u32, _s32 = nl.u8, nl.u16, nl.be16, nl.u32, nl.s32
_string = nl.string
_span, _u8_at, _u32_at, _s32_at = nl.span, nl.u8_at, nl.u32_at, nl.s32_at


def _address(data, span: Span, what: str) -> bytes | None:
    raw = nl.raw(data, span)
    if len(raw) not in (4, 16):
        raise ParseError(f"{what}: address of {len(raw)} bytes")
    return None if not any(raw) else raw


def _stats(data, span: Span, table: dict, size: int, what: str) -> LinkStats:
    plen = span[1] - span[0]
    n = min(plen // size, len(STATS_FIELDS))
    if n < _STATS_MIN:
        raise ParseError(f"{what}: {plen} bytes, need {_STATS_MIN * size}")
    return tuple.__new__(LinkStats, table[n].unpack_from(data, span[0]) + _STATS_PAD[n])


def _vxlan(data, a: dict, w: str) -> TunnelInfo:
    remote = local = None
    family = None
    if VXLAN_GROUP6 in a or VXLAN_LOCAL6 in a:
        family = 6
    elif VXLAN_GROUP in a or VXLAN_LOCAL in a:
        family = 4
    for key in (VXLAN_GROUP, VXLAN_GROUP6):
        if key in a:
            remote = _address(data, a[key], w + " group")
    for key in (VXLAN_LOCAL, VXLAN_LOCAL6):
        if key in a:
            local = _address(data, a[key], w + " local")
    return TunnelInfo(
        link=_u32(data, a[VXLAN_LINK], w + " link") if VXLAN_LINK in a else 0,
        family=family, remote=remote, local=local,
        external=bool(_u8(data, a[VXLAN_COLLECT_METADATA], w + " collect_metadata"))
        if VXLAN_COLLECT_METADATA in a else False)


def _iptun(kind: str, data, a: dict, w: str) -> TunnelInfo:
    family = 6 if kind == "ip6tnl" else 4
    flags = 0
    if IPTUN_FLAGS in a:
        span = a[IPTUN_FLAGS]
        flags = (_u32(data, span, w + " flags") if span[1] - span[0] >= 4
                 else _u16(data, span, w + " flags"))
    return TunnelInfo(
        link=_u32(data, a[IPTUN_LINK], w + " link") if IPTUN_LINK in a else 0,
        family=family,
        remote=_address(data, a[IPTUN_REMOTE], w + " remote") if IPTUN_REMOTE in a else None,
        local=_address(data, a[IPTUN_LOCAL], w + " local") if IPTUN_LOCAL in a else None,
        external=IPTUN_COLLECT_METADATA in a,
        encap_type=_u16(data, a[IPTUN_ENCAP_TYPE], w + " encap_type")
        if IPTUN_ENCAP_TYPE in a else 0,
        encap_flags=_u16(data, a[IPTUN_ENCAP_FLAGS], w + " encap_flags")
        if IPTUN_ENCAP_FLAGS in a else 0,
        encap_limit_option=kind == "ip6tnl" and not flags & IP6_TNL_F_IGN_ENCAP_LIMIT)


def _gre(kind: str, data, a: dict, w: str) -> TunnelInfo:
    family = 6 if kind.startswith("ip6") else 4
    flags = _u32(data, a[GRE_FLAGS], w + " flags") if GRE_FLAGS in a else 0
    return TunnelInfo(
        link=_u32(data, a[GRE_LINK], w + " link") if GRE_LINK in a else 0,
        family=family,
        remote=_address(data, a[GRE_REMOTE], w + " remote") if GRE_REMOTE in a else None,
        local=_address(data, a[GRE_LOCAL], w + " local") if GRE_LOCAL in a else None,
        external=GRE_COLLECT_METADATA in a,
        gre_oflags=_be16(data, a[GRE_OFLAGS], w + " oflags") if GRE_OFLAGS in a else 0,
        encap_type=_u16(data, a[GRE_ENCAP_TYPE], w + " encap_type") if GRE_ENCAP_TYPE in a else 0,
        encap_flags=_u16(data, a[GRE_ENCAP_FLAGS], w + " encap_flags")
        if GRE_ENCAP_FLAGS in a else 0,
        encap_limit_option=family == 6 and not flags & IP6_TNL_F_IGN_ENCAP_LIMIT)


def _tunnel_info(kind: str, data, span: Span, where: str) -> TunnelInfo | None:
    """IFLA_INFO_DATA of the encapsulating kinds; None for every other kind."""
    if kind == "wireguard":
        return TunnelInfo()  # configured over genetlink; rtnetlink says nothing more
    if kind not in _TUNNEL_KINDS:
        return None
    a = nl.attrs(data, span[0], span[1], f"{where} {kind} data")
    w = f"{where} {kind}"
    if kind == "vxlan":
        return _vxlan(data, a, w)
    if kind == "geneve":
        remote, family = None, None
        if GENEVE_REMOTE6 in a:
            family, remote = 6, _address(data, a[GENEVE_REMOTE6], w + " remote6")
        elif GENEVE_REMOTE in a:
            family, remote = 4, _address(data, a[GENEVE_REMOTE], w + " remote")
        return TunnelInfo(family=family, remote=remote,
                          external=GENEVE_COLLECT_METADATA in a,
                          inner_l3=GENEVE_INNER_PROTO_INHERIT in a)
    if kind in ("ipip", "sit", "ip6tnl"):
        return _iptun(kind, data, a, w)
    return _gre(kind, data, a, w)   # the GRE family


_TUNNEL_KINDS = frozenset({"vxlan", "geneve", "ipip", "sit", "ip6tnl", "gre", "gretap",
                           "ip6gre", "ip6gretap"})
TUNNEL_KINDS = _TUNNEL_KINDS | {"wireguard"}  # the kinds that get a TunnelInfo

_U32_ATTRS = tuple((attr, slot, f"IFLA {slot}") for attr, slot in (
    (IFLA_MTU, "mtu"), (IFLA_MIN_MTU, "min_mtu"), (IFLA_MAX_MTU, "max_mtu"),
    (IFLA_MASTER, "master"), (IFLA_LINK, "link")))


def decode_link_message(data, start: int, end: int) -> Link:
    """One RTM_NEWLINK message body (after the nlmsghdr) in ``data[start:end]``."""
    if end - start < _IFINFO.size:
        raise ParseError(f"RTM_NEWLINK at {start - _NLMSG.size}: {end - start} bytes, "
                         f"shorter than ifinfomsg")
    _family, itype, index, flags, _change = _IFINFO.unpack_from(data, start)
    try:
        return _decode_link_attrs(data, start + _IFINFO.size, end, index, itype, flags)
    except ParseError as exc:  # the getters name the attribute; this adds the link
        raise ParseError(f"link {index}: {exc}") from None


def _decode_link_attrs(data, start: int, end: int, index: int, itype: int, flags: int) -> Link:
    a = nl.attr_index(data, start, end, "attributes")   # ~60 attributes per link: offsets
    get = a.get
    off = get(IFLA_IFNAME)
    if off is None:
        raise ParseError("no IFLA_IFNAME")
    link = Link(index, _string(data, _span(data, off)), itype, flags)
    for attr, slot, what in _U32_ATTRS:
        off = get(attr)
        if off is not None:
            setattr(link, slot, _u32_at(data, off, what))
    off = get(IFLA_OPERSTATE)
    if off is not None:
        state = _u8_at(data, off, "operstate")
        link.operstate = OPERSTATES[state] if state < len(OPERSTATES) else str(state)
    off = get(IFLA_LINK_NETNSID)
    if off is not None:
        link.link_netnsid = _s32_at(data, off, "link_netnsid")
    off = get(IFLA_PARENT_DEV_NAME)
    if off is not None:
        link.parent_dev = _string(data, _span(data, off))
    off = get(IFLA_STATS64)
    if off is not None:
        link.stats = _stats(data, _span(data, off), _STATS64, 8, "stats64")
    else:
        off = get(IFLA_STATS)
        if off is not None:  # a kernel without 64-bit stats
            link.stats = _stats(data, _span(data, off), _STATS32, 4, "stats")
    off = get(IFLA_LINKINFO)
    if off is not None:
        _decode_linkinfo(link, data, _span(data, off))
    return link


def _decode_linkinfo(link: Link, data, span: Span) -> None:
    where = "linkinfo"
    info = nl.attrs(data, span[0], span[1], where)
    if IFLA_INFO_KIND in info:
        link.kind = _string(data, info[IFLA_INFO_KIND])
    if IFLA_INFO_SLAVE_KIND in info:
        link.slave_kind = _string(data, info[IFLA_INFO_SLAVE_KIND])
    kind = link.kind
    if kind not in TUNNEL_KINDS:
        return
    dspan = info.get(IFLA_INFO_DATA)
    if dspan is None:
        link.tunnel = TunnelInfo()  # no data from the kernel: nothing more is known
    else:
        link.tunnel = _tunnel_info(kind, data, dspan, where)


class LinkLayouts:
    """The accelerator of :func:`decode_link_message`: layouts compiled from the first message
    of each shape (body length and the (length, type) word of every top-level and IFLA_LINKINFO
    attribute), so the next messages of that shape - the kernel writes every veth of a node, every
    NIC of a driver alike, but for the name's length - are decoded at known offsets without the
    attribute walk (2,000 veths: the dump's decode 40-45 ms -> ~12; docs/performance.md).

    A message is decoded through a layout only when its skeleton matches byte for byte (one
    big-integer AND, C speed); anything else, and tunnels (their IFLA_INFO_DATA is decoded per
    kind), goes through the generic decoder.  Kept equal to it by tests/unit/test_links_layouts.py.
    One per reader that lives across scrapes; at most ``max_templates`` layouts."""

    def __init__(self, max_templates: int = 64):
        self.templates: dict[int, list] = {}   # body length -> [(mask, skel, plan | None)]
        self.count = 0
        self.max = max_templates

    def decode(self, m: nl.Message) -> Link:
        if m.type != RTM_NEWLINK:
            return _decode_link(m)
        data, start, end = m.data, m.start, m.end
        n = end - start
        tpls = self.templates.get(n)
        if tpls:
            body = int.from_bytes(data[start:end], "little")
            for mask, skel, plan in tpls:
                if body & mask == skel:
                    return _decode_link(m) if plan is None else _by_plan(plan, data, start)
        if self.count < self.max and n >= _IFINFO.size:
            compiled = _compile_link(data, start, end)
            if compiled is not None:
                self.templates.setdefault(n, []).append(compiled)
                self.count += 1
        return _decode_link(m)


_S32 = struct.Struct("=i")


def _compile_link(data, start: int, end: int):
    """(mask, skeleton, plan) of the message body at ``data[start:end]``; plan None: decode
    generically (a tunnel); None: no layout (the generic decoder judges the bytes)."""
    n = end - start
    heads: list[tuple[int, int]] = []

    def walk(pos: int, stop: int) -> dict[int, tuple[int, int]] | None:
        out: dict[int, tuple[int, int]] = {}
        while stop - pos >= 4:
            ln, atype = nl.ATTR.unpack_from(data, start + pos)
            if ln < 4 or pos + ln > stop:
                return None
            heads.append((pos, pos + 4))
            out[atype & nl.NLA_TYPE_MASK] = (pos + 4, pos + ln)   # last wins, as attr_index
            pos = (pos + ln + 3) & ~3
        return out

    top = walk(_IFINFO.size, n)
    if top is None or IFLA_IFNAME not in top:
        return None
    plan = _plan(top)
    if plan is None:
        return None
    kind = None
    span = top.get(IFLA_LINKINFO)
    if span is not None:
        info = walk(*span)
        if info is None:
            return None
        for key, attr in (("kind", IFLA_INFO_KIND), ("slave_kind", IFLA_INFO_SLAVE_KIND)):
            plan[key] = info.get(attr)
        if plan["kind"] is not None:
            kind = _string(data, (start + plan["kind"][0], start + plan["kind"][1]))
            heads.append(plan["kind"])   # the kind decides the decoder: part of the shape
    mask = bytearray(n)
    for a, b in heads:
        mask[a:b] = b"\xff" * (b - a)
    mask_int = int.from_bytes(mask, "little")
    skel = int.from_bytes(data[start:end], "little") & mask_int
    return mask_int, skel, (None if kind in TUNNEL_KINDS else plan)


def _plan(top: dict[int, tuple[int, int]]) -> dict | None:
    """The offsets of the top-level values _decode_link_attrs reads; None if a payload is
    shorter than its getter needs (the generic decoder raises for those)."""
    plan: dict = {"name": top[IFLA_IFNAME], "u32": [], "u8": None, "s32": None,
                  "parent": top.get(IFLA_PARENT_DEV_NAME), "stats": None, "kind": None,
                  "slave_kind": None}
    for attr, slot, _what in _U32_ATTRS:
        span = top.get(attr)
        if span is not None:
            if span[1] - span[0] < 4:
                return None
            plan["u32"].append((slot, span[0]))
    for key, attr, size in (("u8", IFLA_OPERSTATE, 1), ("s32", IFLA_LINK_NETNSID, 4)):
        span = top.get(attr)
        if span is not None:
            if span[1] - span[0] < size:
                return None
            plan[key] = span[0]
    for attr, table, size in ((IFLA_STATS64, _STATS64, 8), (IFLA_STATS, _STATS32, 4)):
        span = top.get(attr)
        if span is not None:
            k = min((span[1] - span[0]) // size, len(STATS_FIELDS))
            if k < _STATS_MIN:
                return None
            plan["stats"] = (table[k], span[0], _STATS_PAD[k])
            break
    return plan


def _by_plan(plan: dict, data, start: int) -> Link:
    """A link decoded at the offsets of its compiled layout (what _decode_link_attrs gives)."""
    _family, itype, index, flags, _change = _IFINFO.unpack_from(data, start)
    s, e = plan["name"]
    link = Link(index, _string(data, (start + s, start + e)), itype, flags)
    for slot, off in plan["u32"]:
        setattr(link, slot, _U32.unpack_from(data, start + off)[0])
    off = plan["u8"]
    if off is not None:
        state = data[start + off]
        link.operstate = OPERSTATES[state] if state < len(OPERSTATES) else str(state)
    off = plan["s32"]
    if off is not None:
        link.link_netnsid = _S32.unpack_from(data, start + off)[0]
    span = plan["parent"]
    if span is not None:
        link.parent_dev = _string(data, (start + span[0], start + span[1]))
    stats = plan["stats"]
    if stats is not None:
        st, off, pad = stats
        link.stats = tuple.__new__(LinkStats, st.unpack_from(data, start + off) + pad)
    for slot in ("kind", "slave_kind"):
        span = plan[slot]
        if span is not None:
            setattr(link, slot, _string(data, (start + span[0], start + span[1])))
    return link


def _link(m: nl.Message) -> Link:
    if m.type != RTM_NEWLINK:
        raise ParseError(f"link dump: unexpected message type {m.type}")
    return decode_link_message(m.data, m.start, m.end)


def _route(m: nl.Message) -> Route:
    if m.type != RTM_NEWROUTE:
        raise ParseError(f"route reply: unexpected message type {m.type}")
    data, start, end = m.data, m.start, m.end
    if end - start < _RTMSG.size:
        raise ParseError(f"route reply: {end - start} bytes, shorter than rtmsg")
    family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = \
        _RTMSG.unpack_from(data, start)
    a = nl.attrs(data, start + _RTMSG.size, end, "route")
    if RTA_TABLE in a:
        table = _u32(data, a[RTA_TABLE], "route table")
    oif = _u32(data, a[RTA_OIF], "route oif") if RTA_OIF in a else 0
    if not oif and RTA_MULTIPATH in a:
        s, e = a[RTA_MULTIPATH]
        if e - s >= 8:  # struct rtnexthop: len, flags, hops, ifindex
            oif = _U32.unpack_from(data, s + 4)[0]
    prio = _u32(data, a[RTA_PRIORITY], "route priority") if RTA_PRIORITY in a else 0
    return Route(family, dst_len, table, rtype, oif, prio)


def _decoded(decode, context: str):
    def run(m: nl.Message):
        try:
            return decode(m)
        except struct.error as exc:  # defensive: a size the getters did not check
            raise ParseError(f"{context}: message at offset {m.start - 16}: {exc}") from None
    return run


_decode_link = _decoded(_link, "link dump")
_decode_route = _decoded(_route, "route reply")


def parse_link_messages(data) -> tuple[list[Link], bool, bool]:
    """Decodes one or more RTM_NEWLINK messages; returns (links, done, interrupted)."""
    reply = nl.Reply(None, context="link dump")
    links = [_decode_link(m) for m in reply.messages(data)]
    return links, reply.done, reply.interrupted


def parse_link_dump(data) -> list[Link]:
    """The complete reply of an RTM_GETLINK dump (all datagrams concatenated)."""
    links, done, _ = parse_link_messages(data)
    if not done:
        raise ParseError("link dump: ended without NLMSG_DONE")
    return links


def parse_route_messages(data) -> list[Route]:
    """RTM_NEWROUTE messages (a ``route get`` answer or a dump, NLMSG_DONE optional)."""
    reply = nl.Reply(None, context="route reply")
    return [_decode_route(m) for m in reply.messages(data)]


# --------------------------------------------------------------------------- requests


def link_dump_payload() -> bytes:
    return (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            + nl.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))


def route_get_payload(address: bytes) -> bytes:
    family = socket.AF_INET if len(address) == 4 else socket.AF_INET6
    return (_RTMSG.pack(family, len(address) * 8, 0, 0, 0, 0, 0, 0, 0)
            + nl.attr(RTA_DST, address))


def route_dump_payload(family: int) -> bytes:
    return _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)


def link_dump_request(seq: int) -> bytes:
    return nl.message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, link_dump_payload())


def route_get_request(seq: int, address: bytes) -> bytes:
    return nl.message(RTM_GETROUTE, NLM_F_REQUEST, seq, route_get_payload(address))


def route_dump_request(seq: int, family: int) -> bytes:
    return nl.message(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, route_dump_payload(family))


_ROUTE_GET_ABSENT = (_errno.ENETUNREACH, _errno.EHOSTUNREACH, _errno.EINVAL, _errno.ENETDOWN,
                     _errno.EACCES, _errno.EPERM, _errno.ENODEV, _errno.EAFNOSUPPORT,
                     _errno.ESRCH)


class RtNetlink:
    """One NETLINK_ROUTE socket in the caller's network namespace (use as a context manager).

    Every read is bounded: ``timeout`` seconds per recv, ``deadline`` seconds and
    ``max_bytes`` per request (:class:`netlink.NetlinkSocket`).
    """

    RECV_SIZE = 1 << 16  # dump datagrams are at most 32 KiB; one link without VFs ~1-3 KiB

    def __init__(self, timeout: float = 2.0, deadline: float = 10.0, max_bytes: int = 1 << 28,
                 transport: nl.Transport | None = None, layouts: LinkLayouts | None = None):
        self.layouts = layouts   # the accelerator, kept by the caller across scrapes
        # one recvmsg per datagram: a dump's datagrams come one at a time (see conntrack)
        self.sock = nl.NetlinkSocket(NETLINK_ROUTE, timeout=timeout, deadline=deadline,
                                     max_bytes=max_bytes, recv_size=self.RECV_SIZE,
                                     batched=False, transport=transport)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def dump_links(self) -> list[Link]:
        decode = _decode_link if self.layouts is None else self.layouts.decode
        return list(self.sock.dump(RTM_GETLINK, link_dump_payload(), decode,
                                   context="link dump"))

    def dump_links_raw(self) -> bytes:
        """The reply datagrams of one link dump, concatenated (for fixtures and bug reports)."""
        reply = self.sock.send(RTM_GETLINK, NLM_F_DUMP, link_dump_payload(), "link dump")
        chunks: list[bytes] = []
        for data in self.sock.datagrams(reply):
            reply.scan(data)
            chunks.append(bytes(data))
        return b"".join(chunks)

    def route_get(self, address: bytes) -> Route | None:
        """The kernel's route to ``address`` (packed, 4 or 16 bytes); None if unreachable."""
        try:
            msgs = self.sock.request(RTM_GETROUTE, route_get_payload(address),
                                     context="route reply")
        except NetlinkError as exc:
            if exc.errno in _ROUTE_GET_ABSENT:
                return None
            raise
        routes = [_decode_route(m) for m in msgs]
        return routes[0] if routes else None

    def dump_routes(self, family: int) -> list[Route]:
        try:
            return list(self.sock.dump(RTM_GETROUTE, route_dump_payload(family), _decode_route,
                                       context="route reply"))
        except NetlinkError as exc:
            if exc.errno == _errno.EAFNOSUPPORT:  # IPv6 disabled
                return []
            raise


def default_route(routes: list[Route]) -> Route | None:
    """The main table's default unicast route with the lowest metric, or None."""
    best = None
    for r in routes:
        if (r.dst_len == 0 and r.table == RT_TABLE_MAIN and r.type == RTN_UNICAST and r.oif
                and (best is None or r.priority < best.priority)):
            best = r
    return best
