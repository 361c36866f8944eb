"""Helpers for the netdev unit tests: fixture loading and a small rtnetlink message builder.

The builder writes RTM_NEWLINK messages the way the kernel's ``rtnl_fill_ifinfo`` and the
kinds' ``fill_info`` callbacks lay them out (attribute order and sizes from Linux 6.x
``net/core/rtnetlink.c``, ``drivers/net/geneve.c``, ``net/ipv4/ipip.c``, ``net/ipv4/ip_gre.c``,
``net/ipv6/ip6_tunnel.c``, ``net/ipv6/ip6_gre.c``).  It is used for the kinds this machine's
kernel cannot create (geneve, ipip, sit, ip6tnl, gre, gretap, ip6gre, ip6gretap, wireguard):
those are hand-built bytes, not captures.  Captures of all of them but WireGuard, from
Debian's User-Mode Linux 6.1, are tests/fixtures/netlink/links_uml_tunnels.*; the builder's
IFLA_INFO_DATA layouts are checked against them (tests/unit/test_netdev_tunnels.py).
"""
from __future__ import annotations

import os
import struct

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "fixtures", "netlink")
NLA_F_NESTED = 0x8000


def load_hex(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name)) as fh:
        return bytes.fromhex("".join(line.strip() for line in fh if not line.startswith("#")))


def attr(atype: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, atype) + payload + b"\0" * (-length % 4)


def u8(atype, v):
    return attr(atype, struct.pack("=B", v))


def u16(atype, v):
    return attr(atype, struct.pack("=H", v))


def be16(atype, v):
    return attr(atype, struct.pack(">H", v))


def u32(atype, v):
    return attr(atype, struct.pack("=I", v))


def be32(atype, v):
    return attr(atype, struct.pack(">I", v))


def s32(atype, v):
    return attr(atype, struct.pack("=i", v))


def string(atype, s: str):
    return attr(atype, s.encode() + b"\0")


def flag(atype):
    return attr(atype, b"")


def nest(atype, *attrs):
    return attr(atype | NLA_F_NESTED, b"".join(attrs))


def ipv4(text: str) -> bytes:
    return bytes(int(p) for p in text.split("."))


def ipv6(text: str) -> bytes:
    import ipaddress
    return ipaddress.IPv6Address(text).packed


def nlmsg(mtype: int, body: bytes, flags: int = 0x2, seq: int = 1) -> bytes:
    length = 16 + len(body)
    return struct.pack("=IHHII", length, mtype, flags, seq, 4242) + body + b"\0" * (-length % 4)


def done(seq: int = 1) -> bytes:
    return nlmsg(3, struct.pack("=i", 0), seq=seq)


def error(err: int, seq: int = 1) -> bytes:
    return nlmsg(2, struct.pack("=i", -err) + struct.pack("=IHHII", 32, 18, 0x301, seq, 0),
                 seq=seq)


STATS_ZERO = (0,) * 25


def newlink(index: int, name: str, *, arphrd: int = 1, flags: int = 0x1043, mtu: int = 1500,
            min_mtu: int = 68, max_mtu: int = 65535, operstate: int = 6, link: int | None = None,
            master: int | None = None, link_netnsid: int | None = None,
            kind: str | None = None, data: list[bytes] | None = None,
            stats: tuple = STATS_ZERO) -> bytes:
    body = struct.pack("=BxHiII", 0, arphrd, index, flags, 0)
    attrs = [string(3, name), u32(13, 1000), u8(16, operstate), u8(17, 0), u32(4, mtu),
             u32(50, min_mtu), u32(51, max_mtu), u32(27, 0), u32(30, 0)]
    if link is not None:
        attrs.append(u32(5, link))
    if master is not None:
        attrs.append(u32(10, master))
    attrs.append(attr(23, struct.pack(f"={len(stats)}Q", *stats)))            # IFLA_STATS64
    attrs.append(attr(7, struct.pack(f"={len(stats)}I", *(v & 0xFFFFFFFF for v in stats))))
    if kind is not None:
        info = [string(1, kind)]
        if data is not None:
            info.append(nest(2, *data))
        attrs.append(nest(18, *info))
    if link_netnsid is not None:
        attrs.append(s32(37, link_netnsid))
    return nlmsg(16, body + b"".join(attrs))


def route(family: int, dst_len: int, oif: int, table: int = 254, rtype: int = 1,
          priority: int | None = None, multipath_oif: int | None = None) -> bytes:
    body = struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, min(table, 252), 3, 0, rtype, 0)
    attrs = [u32(15, table)]
    if oif:
        attrs.append(u32(4, oif))
    if priority is not None:
        attrs.append(u32(6, priority))
    if multipath_oif is not None:
        attrs.append(attr(9, struct.pack("=HBBi", 8, 0, 0, multipath_oif)))
    return nlmsg(24, body + b"".join(attrs))
