"""Tunnel kinds captured from a real kernel: Debian's User-Mode Linux 6.1 (not this machine's).

tests/fixtures/netlink/links_uml_tunnels.* hold one RTM_GETLINK dump of the topology
tests/vm/guest/netdev_topology.sh builds (geneve v4/v6/metadata/inner_proto_inherit, vxlan,
ipip, sit, ip6tnl, gre, gretap, ip6gre, ip6gretap with and without key/csum/seq and the
encapsulation limit option, the modules' fallback devices, vlan, bond), `ip -d -s -s -j link`
at the same moment, and the kernel's raw answers to the route requests the exporter makes
(regenerate with `python tests/vm/capture_netdev_fixtures.py`).  The generic comparison with
iproute2 (index, MTUs, flags, counters...) is in test_links_fixtures.py; here: the tunnel data,
the overhead table, and the collector's kind/underlay/headroom, offline.

Expected values come from iproute2's view through tests/helpers/iproute_tunnels.py (the
documented table and underlay rule, written apart from the collector) and from the topology's
design.  WireGuard is absent from that kernel: see test_netdev_tunnels.py (hand-built bytes).
"""
from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import socket

import pytest
from nlbuild_netdev import FIXTURES, load_hex

from exporter import log as logmod
from exporter.cli import all_options
from exporter.collectors.base import REGISTRY, Context
from exporter.collectors.netdev import NetdevCollector, UnderlayResolver, encap_overhead
from exporter.config import resolve
from exporter.sources.links import parse_link_dump, parse_route_messages
from tests.helpers import iproute_tunnels as T
from tests.helpers.families import samples as _samples

GRE_CSUM, GRE_KEY, GRE_SEQ = 0x8000, 0x2000, 0x1000


def _load():
    links = parse_link_dump(load_hex("links_uml_tunnels.hex"))
    with open(os.path.join(FIXTURES, "links_uml_tunnels.ip.json")) as fh:
        witness = {w["ifname"]: w for w in json.load(fh)}
    with open(os.path.join(FIXTURES, "links_uml_tunnels.routes.json")) as fh:
        routes = json.load(fh)
    return {link.name: link for link in links}, witness, routes


LINKS, WITNESS, ROUTES = _load()
TUNNELS = sorted(n for n, w in WITNESS.items() if T.kind(w) in T.TUNNEL_KINDS)


def _packed(text):
    return None if text in (None, "any") else ipaddress.ip_address(text).packed


def test_the_capture_has_every_kind_of_the_table_but_wireguard():
    kinds = {T.kind(w) for w in WITNESS.values()}
    assert T.TUNNEL_KINDS - kinds == {"wireguard"}
    assert {"vlan", "bond", "dummy", "erspan"} <= kinds
    # every captured tunnel has a designed headroom, except the metadata-mode Geneve (none)
    assert set(TUNNELS) == set(T.DESIGN_HEADROOM) | {"gnx"} and len(TUNNELS) == 38


@pytest.mark.parametrize("name", TUNNELS)
def test_tunnel_data_matches_iproute2(name):
    link, w = LINKS[name], WITNESS[name]
    d = T.info_data(w)
    tun = link.tunnel
    assert tun is not None
    assert link.kind == T.kind(w)
    assert tun.family == T.family(w)
    assert tun.remote == _packed(T.remote_of(w))
    assert tun.local == _packed(d.get("local") or d.get("local6"))
    assert tun.link == (WITNESS[d["link"]]["ifindex"] if "link" in d else 0)
    assert tun.external == bool(d.get("external"))
    assert tun.inner_l3 == bool(d.get("inner_proto_inherit"))
    if link.kind in ("gre", "gretap", "ip6gre", "ip6gretap"):
        assert tun.gre_oflags == (GRE_KEY * ("okey" in d) | GRE_CSUM * bool(d.get("ocsum"))
                                  | GRE_SEQ * bool(d.get("oseq")))
    assert tun.encap_limit_option == (T.family(w) == 6 and link.kind not in ("vxlan", "geneve")
                                      and not d.get("ip6_tnl_f_ign_encap_limit"))
    assert tun.encap_type == 0


@pytest.mark.parametrize("name", TUNNELS)
def test_overhead_is_the_documented_table(name):
    assert encap_overhead(LINKS[name]) == T.overhead(WITNESS[name])


def test_what_the_kernel_chose_agrees_with_the_table():
    """Tunnels the kernel sized itself (no mtu given) over d1500: 1500 - their MTU is the
    kernel's own overhead; the decoder + table give the same figure."""
    for name in ("vx0", "vx60", "gn0", "gn60", "ii0", "gr0", "grk0", "gt0", "gtk0", "g60",
                 "g6n0", "g6t0", "g6tn0", "st0", "t60", "t6n0", "t6l0"):
        assert 1500 - LINKS[name].mtu == encap_overhead(LINKS[name]), name
    assert {LINKS[n].kind for n in ("grk0", "g6tn0", "t6l0")} == {"gre", "ip6gretap", "ip6tnl"}
    assert LINKS["grk0"].tunnel.gre_oflags == GRE_KEY | GRE_CSUM | GRE_SEQ   # 1500 - 36
    assert LINKS["t6l0"].tunnel.encap_limit_option                     # "encaplimit 0": 48
    assert not LINKS["t6n0"].tunnel.encap_limit_option                 # "encaplimit none": 40


def test_non_tunnels_have_no_tunnel_info():
    for name, w in WITNESS.items():
        if T.kind(w) not in T.TUNNEL_KINDS:
            assert LINKS[name].tunnel is None and encap_overhead(LINKS[name]) is None, name
    assert LINKS["vl9"].link == WITNESS["d9000"]["ifindex"]
    assert LINKS["ds1"].master == WITNESS["bd"]["ifindex"] and LINKS["ds1"].slave_kind == "bond"


class CapturedRoutes:
    """The kernel's own replies to the exporter's route requests, decoded by the real decoder."""

    def __init__(self, routes):
        self.get = {_packed(addr): bytes.fromhex(a["hex"]) for addr, a in routes["route_get"].items()}
        self.dumps = {socket.AF_INET: bytes.fromhex(routes["default"]["-4"]["hex"]),
                      socket.AF_INET6: bytes.fromhex(routes["default"]["-6"]["hex"])}
        self.asked = []

    def route_get(self, address):
        self.asked.append(address)
        found = parse_route_messages(self.get[address])
        return found[0] if found else None

    def dump_routes(self, family):
        self.asked.append(family)
        return parse_route_messages(self.dumps[family])


def test_captured_route_replies_match_iproute2():
    by_index = {w["ifindex"]: n for n, w in WITNESS.items()}
    routes = CapturedRoutes(ROUTES)
    for addr, answer in ROUTES["route_get"].items():
        assert by_index[routes.route_get(_packed(addr)).oif] == answer["ip"][0]["dev"], addr
    for fam, af in (("-4", socket.AF_INET), ("-6", socket.AF_INET6)):
        from exporter.sources.links import default_route
        assert by_index[default_route(routes.dump_routes(af)).oif] == \
            ROUTES["default"][fam]["ip"][0]["dev"]




def test_collector_on_the_capture_kinds_underlays_headroom():
    settings = resolve(all_options(), [], "test", "0", set(REGISTRY))
    log = logmod.setup("error", "json", stream=io.StringIO())
    c = NetdevCollector(Context(settings=settings, log=log.bind(collector="netdev")))
    links = list(LINKS.values())
    routes = CapturedRoutes(ROUTES)
    resolver = UnderlayResolver(routes, {link.index: link for link in links})
    underlays = {link.index: resolver.underlay(link) for link in links
                 if link.tunnel is not None or (link.link and link.link != link.index)}
    out = {}
    for fam in c.families(links, underlays):
        for name, labels, value in _samples(fam):
            out.setdefault(name, {})[labels] = value
    info = {labels[0]: (labels[1], labels[4]) for labels in out["nodenet_interface_info"]}
    assert info == T.DESIGN_INFO
    masters = {labels[0]: labels[3] for labels in out["nodenet_interface_info"] if labels[3]}
    assert masters == T.DESIGN_MASTER
    headroom = {labels[0]: v for labels, v in out["nodenet_overlay_mtu_headroom_bytes"].items()}
    assert headroom == T.DESIGN_HEADROOM
    for labels, v in out["nodenet_overlay_mtu_headroom_bytes"].items():
        name, kind, underlay = labels
        w = WITNESS[name]
        assert (kind, underlay) == (T.kind(w), T.expected_underlay(w, ROUTES))
        assert v == T.expected_headroom(w, WITNESS, ROUTES)
    # route lookups only for the tunnels without a lower device, each address once
    assert len([a for a in routes.asked if isinstance(a, bytes)]) == len(ROUTES["route_get"])


def test_geneve_option_bytes_on_the_capture():
    for name in ("gn0", "gn60", "gnl3", "gnx"):
        link, w = LINKS[name], WITNESS[name]
        assert encap_overhead(link, geneve_option_bytes=8) == T.overhead(w, 8) == \
            T.overhead(w) + 8
