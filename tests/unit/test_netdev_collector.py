"""The netdev collector on decoded dumps: labels, headroom, the above-overlay rule, filters.

Links come from captured fixtures or hand-built messages; route answers (for tunnels without a
lower device) come from hand-built RTM_NEWROUTE bytes through the real route decoder.
"""
from __future__ import annotations

import io
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import log as logmod
from exporter.cli import all_options
from exporter.collectors.base import REGISTRY, Context
from exporter.collectors.netdev import NetdevCollector, UnderlayResolver
from exporter.config import ConfigError, resolve
from exporter.metrics import ExpositionWriter
from exporter.sources.links import default_route, parse_link_dump, parse_route_messages
from nlbuild_netdev import (attr, done, ipv4, ipv6, load_hex, newlink, route, u32)

CONTRACT = {
    "nodenet_interface_info", "nodenet_interface_mtu_bytes", "nodenet_interface_min_mtu_bytes",
    "nodenet_interface_max_mtu_bytes",
    "nodenet_interface_receive_bytes_total", "nodenet_interface_receive_packets_total",
    "nodenet_interface_receive_drops_total", "nodenet_interface_receive_errors_total",
    "nodenet_interface_transmit_bytes_total", "nodenet_interface_transmit_packets_total",
    "nodenet_interface_transmit_drops_total", "nodenet_interface_transmit_errors_total",
    "nodenet_interface_receive_length_errors_total", "nodenet_interface_receive_over_errors_total",
    "nodenet_interface_receive_crc_errors_total", "nodenet_interface_receive_frame_errors_total",
    "nodenet_interface_receive_fifo_errors_total", "nodenet_interface_receive_missed_errors_total",
    "nodenet_interface_transmit_aborted_errors_total",
    "nodenet_interface_transmit_carrier_errors_total",
    "nodenet_interface_transmit_fifo_errors_total", "nodenet_interface_receive_nohandler_total",
    "nodenet_overlay_mtu_headroom_bytes", "nodenet_interface_mtu_above_overlay_bytes",
    # issue 17: pod interfaces summarised per master
    "nodenet_pod_interfaces", "nodenet_pod_interfaces_receive_bytes_total",
    "nodenet_pod_interfaces_receive_packets_total", "nodenet_pod_interfaces_receive_drops_total",
    "nodenet_pod_interfaces_receive_errors_total", "nodenet_pod_interfaces_transmit_bytes_total",
    "nodenet_pod_interfaces_transmit_packets_total",
    "nodenet_pod_interfaces_transmit_drops_total", "nodenet_pod_interfaces_transmit_errors_total",
    "nodenet_pod_interfaces_mtu_min_bytes", "nodenet_pod_interfaces_mtu_max_bytes",
    "nodenet_pod_interfaces_above_overlay", "nodenet_pod_interfaces_above_overlay_max_bytes",
}


def collector(*argv):
    settings = resolve(all_options(), list(argv), "test", "0", set(REGISTRY))
    log = logmod.setup("error", "json", stream=io.StringIO())
    return NetdevCollector(Context(settings=settings, log=log.bind(collector="netdev")))


class Routes:
    """Answers route lookups from hand-built RTM_NEWROUTE bytes (decoded for real)."""

    def __init__(self, get=None, dumps=None):
        self.get = get or {}        # packed address -> reply bytes
        self.dumps = dumps or {}    # family -> reply bytes
        self.asked = []

    def route_get(self, address):
        self.asked.append(address)
        reply = self.get.get(address)
        routes = parse_route_messages(reply) if reply else []
        return routes[0] if routes else None

    def dump_routes(self, family):
        self.asked.append(family)
        return parse_route_messages(self.dumps.get(family, done()))


def scrape(c, links, routes=None):
    """(families, {(metric name, label values in the metric's label order): value}), read back
    from the rendered exposition (the collector yields tables and families)."""
    by_index = {link.index: link for link in links}
    resolver = UnderlayResolver(routes or Routes(), by_index)
    underlays = {link.index: resolver.underlay(link) for link in links
                 if link.tunnel is not None or link.link}
    fams = list(c.families(links, underlays))
    specs = {m.name: m for m in NetdevCollector.metrics}
    out = {}
    text = ExpositionWriter().render(fams).decode()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            spec = specs[sample.name]
            key = (spec.name, tuple(sample.labels[k] for k in spec.labels))
            assert key not in out, f"duplicate series {key}"
            value = sample.value
            out[key] = int(value) if float(value).is_integer() else value
    return fams, out


def values(out, name):
    return {labels: v for (n, labels), v in out.items() if n == name}


def test_metric_names_are_the_contract():
    assert {m.name for m in NetdevCollector.metrics} == CONTRACT
    assert REGISTRY["netdev"] is NetdevCollector and NetdevCollector.default_enabled


def test_captured_vxlan4_headroom_underlay_and_info():
    links = parse_link_dump(load_hex("links_vxlan4.hex"))
    _, out = scrape(collector(), links)
    info = values(out, "nodenet_interface_info")
    assert info[("vx1450", "vxlan", "unknown", "", "u1")] == 1
    assert info[("vxgrp", "vxlan", "unknown", "", "u1")] == 1
    assert info[("vxext", "vxlan", "unknown", "", "")] == 1      # no default route: unknown
    assert info[("u1", "veth", "up", "", "")] == 1              # veth: IFLA_LINK is the peer
    assert info[("lo", "loopback", "unknown", "", "")] == 1
    headroom = values(out, "nodenet_overlay_mtu_headroom_bytes")
    assert headroom == {("vx1450", "vxlan", "u1"): 1500 - 50 - 1450,
                        ("vxgrp", "vxlan", "u1"): 1500 - 50 - 1450}
    errors = values(out, "nodenet_interface_receive_frame_errors_total")
    assert errors[("vx1450",)] == 3
    assert values(out, "nodenet_interface_receive_errors_total")[("vx1450",)] == 3


def test_captured_vxlan6_headroom_uses_the_ipv6_overhead():
    links = parse_link_dump(load_hex("links_vxlan6.hex"))
    _, out = scrape(collector(), links)
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {("vx6", "vxlan", "u6"): 0}


def test_captured_veth_counters_and_kinds():
    links = parse_link_dump(load_hex("links_veth.hex"))
    _, out = scrape(collector(), links)
    assert values(out, "nodenet_interface_receive_drops_total")[("vb",)] == 3
    assert values(out, "nodenet_interface_transmit_drops_total")[("vdown",)] == 2
    assert values(out, "nodenet_interface_mtu_bytes")[("va",)] == 9000
    # no tunnel in this namespace: no above-overlay series, no headroom
    assert values(out, "nodenet_interface_mtu_above_overlay_bytes") == {}
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {}
    info = values(out, "nodenet_interface_info")
    # vpod's peer is in another netns: a pod interface, summarised (no drops: no own series)
    assert not [k for k in info if k[0] == "vpod"]
    assert values(out, "nodenet_pod_interfaces") == {("", "veth"): 1}
    _, out = scrape(collector("--collector.netdev.pod-interfaces=full"), links)
    assert values(out, "nodenet_interface_info")[("vpod", "veth", "down", "", "")] == 1


def test_captured_macvlan_bridge_tun_labels():
    _, out = scrape(collector(), parse_link_dump(load_hex("links_macvlan.hex")))
    info = values(out, "nodenet_interface_info")
    assert info[("mv0", "macvlan", "up", "", "low")] == 1
    assert info[("mv1", "macvlan", "down", "", "low")] == 1
    assert values(out, "nodenet_interface_mtu_bytes")[("mv1",)] == 1400
    _, out = scrape(collector(), parse_link_dump(load_hex("links_bridge.hex")))
    info = values(out, "nodenet_interface_info")
    assert info[("vp", "veth", "up", "br0", "")] == 1
    assert info[("br0", "bridge", "up", "", "")] == 1
    _, out = scrape(collector(), parse_link_dump(load_hex("links_tun.hex")))
    assert {labels[:2] for labels in values(out, "nodenet_interface_info")} == {
        ("lo", "loopback"), ("tap0", "tun"), ("tun0", "tun")}


# --- underlay resolution ---------------------------------------------------------------------

def topology(*extra):
    base = [newlink(1, "lo", arphrd=772, flags=0x49, mtu=65536, min_mtu=0, max_mtu=0,
                    operstate=0),
            newlink(2, "eth0", mtu=1500),
            newlink(3, "eth1", mtu=9000)]
    return parse_link_dump(b"".join(base) + b"".join(extra) + done())


def vxlan(remote=None, link=None, local=None):
    data = [u32(1, 42)]
    if remote:
        data.append(attr(2, ipv4(remote)))
    if link:
        data.append(u32(3, link))
    if local:
        data.append(attr(4, ipv4(local)))
    return data


def test_underlay_from_the_route_to_the_remote():
    links = topology(newlink(10, "vx0", kind="vxlan", mtu=8950, data=vxlan(remote="10.1.0.2")))
    routes = Routes(get={ipv4("10.1.0.2"): route(2, 32, oif=3)})
    _, out = scrape(collector(), links, routes)
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {("vx0", "vxlan", "eth1"): 0}
    assert routes.asked == [ipv4("10.1.0.2")]


def test_unreachable_remote_leaves_underlay_unknown_and_no_headroom():
    links = topology(newlink(10, "vx0", kind="vxlan", mtu=1450, data=vxlan(remote="10.1.0.2")))
    _, out = scrape(collector(), links, Routes())
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {}
    assert ("vx0", "vxlan", "up", "", "") in values(out, "nodenet_interface_info")


def test_no_remote_uses_the_default_route_with_the_lowest_metric():
    dump4 = (route(2, 0, oif=3, priority=200) + route(2, 0, oif=2, priority=100)
             + route(2, 24, oif=3) + route(2, 0, oif=3, table=255, rtype=2) + done())
    links = topology(newlink(10, "wg0", kind="wireguard", mtu=1420))
    _, out = scrape(collector(), links, Routes(dumps={socket_af(4): dump4}))
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {
        ("wg0", "wireguard", "eth0"): 1500 - 80 - 1420}


def test_default_route_multipath_first_hop_and_ipv6_family():
    dump6 = route(10, 0, oif=0, multipath_oif=3) + done()
    data = [u32(1, 1), attr(7, ipv6("fd00::2"))]
    links = topology(newlink(10, "gnv0", kind="geneve", mtu=8930, data=data))
    # the remote itself has no route (ENETUNREACH): nothing more is tried
    _, out = scrape(collector(), links, Routes(dumps={socket_af(6): dump6}))
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {}
    links = topology(newlink(10, "gnv0", kind="geneve", mtu=8930, data=[u32(1, 1)]))
    routes = Routes(dumps={socket_af(6): dump6})
    _, out = scrape(collector(), links, routes)
    # family unknown: IPv4 default first (none here), then IPv6 (multipath first hop eth1)
    assert routes.asked == [socket_af(4), socket_af(6)]
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {
        ("gnv0", "geneve", "eth1"): 9000 - 50 - 8930}


def test_route_back_into_the_tunnel_itself_is_unknown():
    links = topology(newlink(10, "vx0", kind="vxlan", mtu=1450, data=vxlan(remote="10.1.0.2")))
    routes = Routes(get={ipv4("10.1.0.2"): route(2, 32, oif=10)})
    _, out = scrape(collector(), links, routes)
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {}


def test_lower_device_in_another_namespace_is_unknown():
    links = topology(newlink(10, "vx0", kind="vxlan", mtu=1450, data=vxlan(link=2),
                             link_netnsid=0))
    routes = Routes(get={}, dumps={socket_af(4): route(2, 0, oif=2) + done()})
    _, out = scrape(collector(), links, routes)
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {}
    assert routes.asked == []  # no lookup in this namespace for a foreign tunnel


def test_vanished_lower_device_is_unknown():
    links = topology(newlink(10, "vx0", kind="vxlan", mtu=1450, data=vxlan(link=77)))
    _, out = scrape(collector(), links)
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {}


def test_default_route_helper():
    routes = parse_route_messages(route(2, 0, oif=0) + route(2, 0, oif=5, rtype=7) + done())
    assert default_route(routes) is None


def socket_af(version):
    import socket
    return socket.AF_INET if version == 4 else socket.AF_INET6


# --- above-overlay rule ----------------------------------------------------------------------

def overlay_node(tunnel_up=True):
    return topology(
        newlink(10, "vx0", kind="vxlan", mtu=1450, data=vxlan(link=2),
                flags=0x1043 if tunnel_up else 0x1002),
        newlink(11, "vxbig", kind="vxlan", mtu=8950, data=vxlan(link=3)),
        newlink(20, "cni0", kind="bridge", mtu=1500),
        newlink(21, "veth-a", kind="veth", mtu=1450, master=20, link=22),
        newlink(22, "veth-b", kind="veth", mtu=9000, link=21),
        newlink(23, "veth-c", kind="veth", mtu=1400, link=99, link_netnsid=1),
        newlink(30, "uveth", kind="veth", mtu=1500, link=31),
        newlink(31, "uveth-p", kind="veth", mtu=1500, link=30),
        newlink(32, "vx-over-veth", kind="vxlan", mtu=1450, data=vxlan(link=30)),
        newlink(40, "mv0", kind="macvlan", mtu=1500, link=3),
    )


def test_mtu_above_smallest_up_overlay():
    _, out = scrape(collector(), overlay_node())
    # only the interfaces above (0 is the absence); uveth carries a tunnel: left out
    assert values(out, "nodenet_interface_mtu_above_overlay_bytes") == {
        ("cni0",): 50, ("veth-b",): 7550, ("uveth-p",): 50}
    # veth-c is a pod interface (1400, below the overlay): in the summary only
    assert values(out, "nodenet_pod_interfaces_above_overlay") == {("", "veth"): 0}
    assert values(out, "nodenet_pod_interfaces_above_overlay_max_bytes") == {("", "veth"): 0}


def test_down_tunnels_do_not_count_as_overlay():
    _, out = scrape(collector(), overlay_node(tunnel_up=False))
    above = values(out, "nodenet_interface_mtu_above_overlay_bytes")
    # smallest up tunnel is now vx-over-veth (1450): same numbers; now take it down too
    assert above[("veth-b",)] == 7550
    links = [link for link in overlay_node(tunnel_up=False) if link.name != "vx-over-veth"]
    _, out = scrape(collector(), links)
    above = values(out, "nodenet_interface_mtu_above_overlay_bytes")
    assert above[("veth-b",)] == 9000 - 8950 and ("cni0",) not in above  # 1500 < 8950


def test_no_up_tunnel_no_series():
    links = [link for link in overlay_node() if link.kind != "vxlan"]
    _, out = scrape(collector(), links)
    assert values(out, "nodenet_interface_mtu_above_overlay_bytes") == {}


# --- filters, options, exposition -----------------------------------------------------------

def test_include_exclude_filter_exported_interfaces_only():
    c = collector("--collector.netdev.device-include=^(veth|vx)",
                  "--collector.netdev.device-exclude=-b$")
    _, out = scrape(c, overlay_node())
    names = {labels[0] for (n, labels) in out if n == "nodenet_interface_info"}
    assert names == {"veth-a", "vx0", "vxbig", "vx-over-veth"}   # veth-c: a pod interface
    # values of the kept interfaces do not depend on the filtered ones
    assert values(out, "nodenet_interface_mtu_above_overlay_bytes") == {}
    assert values(out, "nodenet_pod_interfaces") == {("", "veth"): 1}
    assert values(out, "nodenet_overlay_mtu_headroom_bytes")[("vx0", "vxlan", "eth0")] == 0


def test_include_is_a_search_like_node_exporter():
    c = collector("--collector.netdev.device-include=th1")  # not anchored: matches inside
    _, out = scrape(c, overlay_node())
    assert {labels[0] for (n, labels) in out if n == "nodenet_interface_info"} == {"eth1"}


def test_bad_regex_is_a_config_error():
    with pytest.raises(ConfigError, match="device-include"):
        collector("--collector.netdev.device-include=(")


def test_detailed_errors_can_be_switched_off():
    c = collector("--no-collector.netdev.detailed-errors")
    _, out = scrape(c, overlay_node())
    names = {n for (n, _) in out}
    assert "nodenet_interface_receive_errors_total" in names
    assert "nodenet_interface_receive_crc_errors_total" not in names
    assert "nodenet_interface_receive_nohandler_total" not in names


def test_geneve_option_bytes_flag():
    links = topology(newlink(10, "gnv0", kind="geneve", mtu=1450,
                             data=[u32(1, 1), u32(3, 0)]))
    routes = Routes(dumps={socket_af(4): route(2, 0, oif=2) + done()})
    _, out = scrape(collector("--collector.netdev.geneve-option-bytes=8"), links, routes)
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {("gnv0", "geneve", "eth0"): -8}


def test_metadata_mode_tunnels_have_no_static_headroom():
    # OVS/OVN genev_sys_6081 (collect_metadata) at 65000 over a 1500 underlay: per-flow/route
    # MTUs decide there, so no headroom series (it would read -63550) and no above-overlay base.
    links = topology(newlink(10, "genev_sys_6081", kind="geneve", mtu=65000,
                             data=[u32(1, 0), u32(3, 0), u32(6, 0)]),
                     newlink(11, "pod0", kind="veth", mtu=1500))
    routes = Routes(dumps={socket_af(4): route(2, 0, oif=2) + done()})
    _, out = scrape(collector(), links, routes)
    assert values(out, "nodenet_overlay_mtu_headroom_bytes") == {}
    assert values(out, "nodenet_interface_mtu_above_overlay_bytes") == {}
    info = values(out, "nodenet_interface_info")
    assert ("genev_sys_6081", "geneve", "up", "", "eth0") in info  # underlay still shown
    with pytest.raises(ConfigError):
        collector("--collector.netdev.geneve-option-bytes=-1")


def test_stats_exact_above_2_to_the_53():
    big = tuple([2 ** 63 + 7] + [0] * 24)
    links = parse_link_dump(newlink(5, "big0", stats=big) + done())
    fams, out = scrape(collector(), links)
    assert values(out, "nodenet_interface_receive_packets_total")[("big0",)] == 2 ** 63 + 7
    text = ExpositionWriter().render(fams).decode()
    assert 'nodenet_interface_receive_packets_total{interface="big0"} 9223372036854775815' in text


def test_old_kernel_stats_without_nohandler():
    links = parse_link_dump(newlink(5, "old0", stats=tuple(range(1, 24))) + done())
    assert links[0].stats.rx_nohandler is None and links[0].stats.tx_compressed == 23
    _, out = scrape(collector(), links)
    assert values(out, "nodenet_interface_receive_nohandler_total") == {}
    assert values(out, "nodenet_interface_receive_bytes_total") == {("old0",): 3}


def test_exposition_parses_and_passes_promtool():
    fams, _ = scrape(collector(), overlay_node() + parse_link_dump(load_hex("links_veth.hex"))[1:])
    text = ExpositionWriter().render(fams).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["nodenet_interface_receive_bytes"].type == "counter"
    assert parsed["nodenet_overlay_mtu_headroom_bytes"].type == "gauge"
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian prometheus) is needed to lint the exposition"
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_non_utf8_interface_names_render():
    links = parse_link_dump(newlink(5, "x", kind="veth").replace(b"x\0\0\0", b"\xff\0\0\0") + done())
    assert links[0].name == "\\xff"
    fams, _ = scrape(collector(), links)
    assert b'interface="\\\\xff"' in ExpositionWriter().render(fams)
