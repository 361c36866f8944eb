"""Tunnel variants from HAND-BUILT netlink bytes: what no kernel at hand can make.

This machine's kernel has none of geneve, ipip, sit, ip6tnl, gre, gretap, ip6gre, ip6gretap,
wireguard.  Real captures of all of them but WireGuard, from Debian's User-Mode Linux 6.1, are
in tests/fixtures/netlink/links_uml_tunnels.* (tests/unit/test_links_uml_fixtures.py), and
tests/vm/test_netdev_tunnels_uml.py checks them live.  What stays hand-built here: WireGuard
(not in Debian's UML kernel), FOU/GUE encapsulation (that kernel lacks
CONFIG_NET_FOU_IP_TUNNELS), and the variants a test wants side by side.  The builder's layouts
are checked against the captured kernel's at the end of this file
(test_handbuilt_layout_is_the_real_kernels).
"""
from __future__ import annotations

import socket

import pytest

from exporter.collectors.netdev import encap_overhead
from exporter.sources.links import parse_link_dump
from nlbuild_netdev import (be16, be32, done, flag, ipv4, ipv6, newlink, attr, u8, u16, u32)

AF4, AF6 = socket.AF_INET, socket.AF_INET6


def geneve(remote=None, remote6=None, external=False, l3=False):
    data = [u32(1, 7)]                                  # IFLA_GENEVE_ID
    if remote:
        data.append(attr(2, ipv4(remote)))              # IFLA_GENEVE_REMOTE
    if remote6:
        data.append(attr(7, ipv6(remote6)))             # IFLA_GENEVE_REMOTE6
    data += [u8(3, 0), u8(4, 0), u8(13, 0), be32(11, 0), be16(5, 6081)]
    # as Linux 6.1 (captured): UDP_CSUM after an IPv4 remote, UDP_ZERO_CSUM6_TX after an IPv6
    # one, neither in metadata mode
    if remote and not external:
        data.append(u8(8, 0))                           # IFLA_GENEVE_UDP_CSUM
    if remote6 and not external:
        data.append(u8(9, 0))                           # IFLA_GENEVE_UDP_ZERO_CSUM6_TX
    data += [u8(10, 0), u8(12, 0)]
    if external:
        data.append(flag(6))                            # IFLA_GENEVE_COLLECT_METADATA
    if l3:
        data.append(flag(14))                           # IFLA_GENEVE_INNER_PROTO_INHERIT
    return data


def iptun(link=0, local=None, remote=None, v6=False, flags=None, encap=0,
          encap_flags=0, external=False):
    addr = ipv6 if v6 else ipv4
    local = local or ("::" if v6 else "0.0.0.0")
    remote = remote or ("::" if v6 else "0.0.0.0")
    data = [u32(1, link), attr(2, addr(local)), attr(3, addr(remote)), u8(4, 0)]
    if v6:
        data += [u8(6, 4), be32(7, 0), u32(8, flags or 0), u8(9, 41)]
    else:
        data += [u8(5, 0), u8(9, 4), u8(10, 1)]
        if flags is not None:  # sit puts a u16 IFLA_IPTUN_FLAGS
            data.append(u16(8, flags))
    data += [u32(20, 0), u16(15, encap), be16(17, 0), be16(18, 0), u16(16, encap_flags)]
    if external:
        data.append(flag(19))
    return data


def gre(link=0, oflags=0, v6=False, local=None, remote=None, flags=0, encap=0):
    addr = ipv6 if v6 else ipv4
    data = [u32(1, link), be16(2, oflags), be16(3, oflags), be32(4, 0), be32(5, 0),
            attr(6, addr(local or ("::" if v6 else "0.0.0.0"))),
            attr(7, addr(remote or ("::" if v6 else "0.0.0.0"))), u8(8, 0)]
    if v6:
        data += [u8(11, 4), be32(12, 0), u32(13, flags)]
    else:
        data += [u8(9, 0), u8(10, 1)]
    data += [u32(20, 0), u16(14, encap), be16(16, 0), be16(17, 0), u16(15, 0)]
    if not v6:
        data.append(u8(19, 0))                          # IFLA_GRE_IGNORE_DF: IPv4 GRE only
    return data


def one(kind, data=None, **kw):
    links = parse_link_dump(newlink(9, "t0", kind=kind, data=data, **kw) + done())
    assert len(links) == 1
    return links[0]


# (kind, data, expected family, expected overhead)
CASES = [
    ("geneve v4", "geneve", geneve(remote="10.0.0.2"), 4, 50),
    ("geneve v6", "geneve", geneve(remote6="fd00::2"), 6, 70),
    ("geneve metadata mode", "geneve", geneve(external=True), None, 50),
    ("geneve inner_proto_inherit", "geneve", geneve(remote="10.0.0.2", l3=True), 4, 36),
    ("wireguard", "wireguard", None, None, 80),
    ("ipip", "ipip", iptun(link=2, local="10.0.0.1", remote="10.0.0.2"), 4, 20),
    ("ipip over FOU", "ipip", iptun(remote="10.0.0.2", encap=1), 4, 28),
    ("ipip over GUE", "ipip", iptun(remote="10.0.0.2", encap=2), 4, 32),
    ("ipip over GUE remcsum", "ipip", iptun(remote="10.0.0.2", encap=2, encap_flags=4), 4, 40),
    ("sit", "sit", iptun(remote="10.0.0.2", flags=0), 4, 20),
    ("ip6tnl with encap limit", "ip6tnl", iptun(v6=True, remote="fd00::2", flags=0), 6, 48),
    ("ip6tnl ignore encap limit", "ip6tnl", iptun(v6=True, remote="fd00::2", flags=1), 6, 40),
    ("gre", "gre", gre(remote="10.0.0.2"), 4, 24),
    ("gre key", "gre", gre(oflags=0x2000), 4, 28),
    ("gre csum key seq", "gre", gre(oflags=0x8000 | 0x2000 | 0x1000), 4, 36),
    ("gretap", "gretap", gre(), 4, 38),
    ("gre over FOU", "gre", gre(encap=1), 4, 32),
    ("ip6gre with encap limit", "ip6gre", gre(v6=True), 6, 52),
    ("ip6gre ignore encap limit", "ip6gre", gre(v6=True, flags=1), 6, 44),
    ("ip6gre key ignore limit", "ip6gre", gre(v6=True, flags=1, oflags=0x2000), 6, 48),
    ("ip6gretap ignore encap limit", "ip6gretap", gre(v6=True, flags=1), 6, 58),
]


@pytest.mark.parametrize("label,kind,data,family,overhead", CASES, ids=[c[0] for c in CASES])
def test_handbuilt_tunnel_decoding_and_overhead(label, kind, data, family, overhead):
    link = one(kind, data)
    assert link.kind == kind
    assert link.tunnel is not None
    assert link.tunnel.family == family
    assert encap_overhead(link) == overhead


def test_geneve_option_bytes_are_added():
    link = one("geneve", geneve(remote="10.0.0.2"))
    assert encap_overhead(link, geneve_option_bytes=8) == 58


def test_tunnel_fields():
    link = one("ipip", iptun(link=2, local="10.0.0.1", remote="10.0.0.2"))
    assert link.tunnel.link == 2
    assert link.tunnel.remote == ipv4("10.0.0.2") and link.tunnel.local == ipv4("10.0.0.1")
    any_remote = one("gre", gre(link=3))
    assert any_remote.tunnel.remote is None and any_remote.tunnel.link == 3
    assert one("gre", gre(oflags=0x3000)).tunnel.gre_oflags == 0x3000
    six = one("ip6gre", gre(v6=True, remote="fd00::9"))
    assert six.tunnel.remote == ipv6("fd00::9") and six.tunnel.encap_limit_option
    assert one("ipip", iptun(external=True)).tunnel.external
    assert one("geneve", geneve(external=True)).tunnel.external


def test_tunnel_kind_without_info_data_is_still_a_tunnel():
    link = one("gre", None)
    assert link.tunnel is not None and encap_overhead(link) == 24


def test_non_tunnels_have_no_overhead():
    for kind in ("veth", "bridge", "macvlan", "vlan", "bond", "dummy", "tun"):
        link = one(kind, None)
        assert link.tunnel is None and encap_overhead(link) is None


# --------------------------------------------------- hand-built bytes against the real kernel's


def _info_data_layouts(data: bytes) -> dict:
    """{ifname: {IFLA_<KIND>_* type: payload length}} of every link in a dump."""
    import struct
    out = {}
    pos = 0
    while pos < len(data):
        mlen, mtype = struct.unpack_from("=IH", data, pos)
        if mtype == 16:
            attrs = _attrs(data, pos + 32, pos + mlen)
            name = data[attrs[3][0]:attrs[3][0] + attrs[3][1]].split(b"\0")[0].decode()
            layout = {}
            if 18 in attrs:
                info = _attrs(data, attrs[18][0], sum(attrs[18]))
                if 2 in info:
                    layout = {t: ln for t, (_, ln) in _attrs(data, info[2][0], sum(info[2])).items()}
            out[name] = layout
        pos += (mlen + 3) & ~3
    return out


def _attrs(data, pos, end):
    import struct
    found = {}
    while end - pos >= 4:
        alen, atype = struct.unpack_from("=HH", data, pos)
        found[atype & 0x3FFF] = (pos + 4, alen - 4)
        pos += (alen + 3) & ~3
    return found


# hand-built message -> the captured link (tests/fixtures/netlink/links_uml_tunnels.*,
# Debian's UML 6.1) made with the same options
SAME_AS_CAPTURED = [
    ("geneve", geneve(remote="10.0.0.2"), "gn0"),
    ("geneve", geneve(remote6="fd00::2"), "gn60"),
    ("geneve", geneve(external=True), "gnx"),
    ("geneve", geneve(remote="10.0.0.2", l3=True), "gnl3"),
    ("ipip", iptun(link=2, local="10.0.0.1", remote="10.0.0.2"), "ii0"),
    ("sit", iptun(remote="10.0.0.2", flags=0), "st0"),
    ("ip6tnl", iptun(v6=True, remote="fd00::2", flags=0), "t60"),
    ("gre", gre(remote="10.0.0.2"), "gr0"),
    ("gretap", gre(), "gt0"),
    ("ip6gre", gre(v6=True), "g60"),
    ("ip6gretap", gre(v6=True, flags=1, oflags=0x2000), "g6tn0"),
]


@pytest.mark.parametrize("kind,data,captured", SAME_AS_CAPTURED,
                         ids=[c[2] for c in SAME_AS_CAPTURED])
def test_handbuilt_layout_is_the_real_kernels(kind, data, captured):
    """Every attribute the builder writes is one the real kernel sends for that kind, with the
    same payload size (the kernel may send more: those are not read)."""
    from nlbuild_netdev import load_hex
    real = _info_data_layouts(load_hex("links_uml_tunnels.hex"))[captured]
    built = _info_data_layouts(newlink(9, "t0", kind=kind, data=data) + done())["t0"]
    assert real, captured
    assert {t: real.get(t) for t in built} == built
    # and both decode to the same overhead
    links = {link.name: link for link in parse_link_dump(load_hex("links_uml_tunnels.hex"))}
    assert encap_overhead(one(kind, data)) == encap_overhead(links[captured])
