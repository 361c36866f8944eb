"""The netdev collector against the real kernel, in network namespaces these tests create.

- issue 9's topology: a veth pair at 9000/1500, a bridge, a VXLAN at 1450 on a 1500 underlay
  (headroom 0), a VXLAN left at 1500 when its underlay shrank from 1550 to 1500 (headroom -50),
  a VXLAN over an IPv6 underlay, a macvlan; every kind/MTU/underlay/headroom exactly, and all
  of it cross-checked with ``ip -d -j link``;
- underlays found through the routing table (route to the remote, default route, unreachable);
- real drops and errors made by the kernel, each counter rising by exactly what was sent;
- counters equal to node_exporter 1.5's netdev/netclass output and to ``ip -s -s -j link``;
- interfaces created and deleted in a loop while scraping: every scrape 200, collector success 1.

Run as root: ``python -m pytest tests/integration/test_netdev_netns.py``.
"""
from __future__ import annotations

import ipaddress
import json
import threading
import time

import pytest

from netns_netdev import (SEND_BAD_VXLAN, SEND_FRAMES, Netns, node_exporter, nodenet,
                          require_root_tools, series)

PORT = 19850      # inside our own namespaces: no clash with anything else on the machine
NE_PORT = 19851

require_root_tools()


# --------------------------------------------------------------------------- issue 9 topology

@pytest.fixture(scope="module")
def topo():
    ns = Netns("topo")
    try:
        ip = ns.ip
        ip("link", "add", "va", "mtu", 9000, "type", "veth", "peer", "name", "vb", "mtu", 1500)
        ip("link", "add", "br0", "type", "bridge")
        ip("link", "set", "vb", "master", "br0")
        # VXLAN at 1450 on a 1500 underlay: headroom 0
        ip("link", "add", "u1", "type", "veth", "peer", "name", "u1p")
        ip("addr", "add", "10.9.1.1/24", "dev", "u1")
        ip("link", "add", "vx1450", "mtu", 1450, "type", "vxlan", "id", 10, "dev", "u1",
           "local", "10.9.1.1", "dstport", 4789)
        # VXLAN at 1500 over 1550, then the underlay shrinks to 1500: headroom -50
        ip("link", "add", "u2", "mtu", 1550, "type", "veth", "peer", "name", "u2p", "mtu", 1550)
        ip("link", "add", "vxneg", "type", "vxlan", "id", 11, "dev", "u2", "dstport", 4790)
        ip("link", "set", "vxneg", "mtu", 1500)
        ip("link", "set", "u2", "mtu", 1500)
        # VXLAN over IPv6 (kernel default MTU: 1500 - 70)
        ip("link", "add", "u6", "type", "veth", "peer", "name", "u6p")
        ip("addr", "add", "fd00:9::1/64", "dev", "u6", "nodad")
        ip("link", "add", "vx6", "type", "vxlan", "id", 12, "dev", "u6", "local", "fd00:9::1",
           "remote", "fd00:9::2", "dstport", 4791)
        # macvlan on its own lower device
        ip("link", "add", "mlow", "type", "veth", "peer", "name", "mlowp")
        ip("link", "add", "mv0", "link", "mlow", "type", "macvlan", "mode", "bridge")
        for dev in ("va", "vb", "br0", "u1", "u1p", "u2", "u2p", "u6", "u6p", "vx1450",
                    "vxneg", "vx6", "mlow", "mlowp", "mv0"):
            ip("link", "set", dev, "up")
        exporter = nodenet(ns, PORT)
        try:
            yield ns, exporter
        finally:
            exporter.stop()
    finally:
        ns.delete()


def test_the_kernel_really_kept_the_minus_50_case(topo):
    ns, _ = topo
    links = ns.links()
    assert links["u2"]["mtu"] == 1500 and links["vxneg"]["mtu"] == 1500
    assert links["vxneg"]["linkinfo"]["info_data"]["link"] == "u2"
    assert links["vx6"]["mtu"] == 1430


EXPECTED_INFO = {  # interface: (kind, master, underlay)
    "lo": ("loopback", "", ""),
    "va": ("veth", "", ""), "vb": ("veth", "br0", ""), "br0": ("bridge", "", ""),
    "u1": ("veth", "", ""), "u1p": ("veth", "", ""), "vx1450": ("vxlan", "", "u1"),
    "u2": ("veth", "", ""), "u2p": ("veth", "", ""), "vxneg": ("vxlan", "", "u2"),
    "u6": ("veth", "", ""), "u6p": ("veth", "", ""), "vx6": ("vxlan", "", "u6"),
    "mlow": ("veth", "", ""), "mlowp": ("veth", "", ""), "mv0": ("macvlan", "", "mlow"),
}
EXPECTED_MTU = {"lo": 65536, "va": 9000, "vb": 1500, "br0": 1500, "u1": 1500, "u1p": 1500,
                "vx1450": 1450, "u2": 1500, "u2p": 1550, "vxneg": 1500, "u6": 1500,
                "u6p": 1500, "vx6": 1430, "mlow": 1500, "mlowp": 1500, "mv0": 1500}
EXPECTED_HEADROOM = {("vx1450", "vxlan", "u1"): 0, ("vxneg", "vxlan", "u2"): -50,
                     ("vx6", "vxlan", "u6"): 0}
# smallest up tunnel MTU is vx6's 1430; underlays (u1, u2, u6, mlow) are left out
EXPECTED_ABOVE = {"va": 7570, "vb": 70, "br0": 70, "u1p": 70, "u2p": 120, "u6p": 70,
                  "mlowp": 70}


def _info(parsed):
    out = {}
    for (name, labels), value in parsed.items():
        if name == "nodenet_interface_info":
            d = dict(labels)
            assert value == 1
            out[d["interface"]] = (d["kind"], d["master"], d["underlay"], d["operstate"])
    return out


def test_kinds_mtus_underlays_headroom_exactly(topo):
    _, exporter = topo
    parsed = exporter.scrape()
    info = _info(parsed)
    assert {k: v[:3] for k, v in info.items()} == EXPECTED_INFO
    assert series(parsed, "nodenet_interface_mtu_bytes") == EXPECTED_MTU
    headroom = {(dict(l)["interface"], dict(l)["kind"], dict(l)["underlay"]): v
                for (n, l), v in parsed.items() if n == "nodenet_overlay_mtu_headroom_bytes"}
    assert headroom == EXPECTED_HEADROOM
    assert series(parsed, "nodenet_interface_mtu_above_overlay_bytes") == EXPECTED_ABOVE
    assert parsed[("nodenet_scrape_collector_success", (("collector", "netdev"),))] == 1


def test_everything_agrees_with_iproute2(topo):
    ns, exporter = topo
    parsed = exporter.scrape()
    links = ns.links()
    info = _info(parsed)
    assert set(info) == set(links)
    mtu = series(parsed, "nodenet_interface_mtu_bytes")
    min_mtu = series(parsed, "nodenet_interface_min_mtu_bytes")
    max_mtu = series(parsed, "nodenet_interface_max_mtu_bytes")
    headroom = series(parsed, "nodenet_overlay_mtu_headroom_bytes")
    for name, w in links.items():
        kind, master, underlay, operstate = info[name]
        linkinfo = w.get("linkinfo", {})
        assert kind == linkinfo.get("info_kind", "loopback" if name == "lo" else "physical")
        assert master == w.get("master", "")
        assert operstate == w["operstate"].lower()
        assert mtu[name] == w["mtu"] and min_mtu[name] == w["min_mtu"]
        assert max_mtu.get(name, 0) == w["max_mtu"]
        if kind == "vxlan":
            data = linkinfo["info_data"]
            assert underlay == data["link"]
            v6 = "local6" in data or "remote6" in data or "group6" in data
            expected = links[data["link"]]["mtu"] - (70 if v6 else 50) - w["mtu"]
            assert headroom[name] == expected
        elif kind == "macvlan":
            assert underlay == w["link"]
        else:
            assert underlay == ""


def test_include_exclude_on_the_real_namespace(topo):
    ns, _ = topo
    exporter = nodenet(ns, PORT + 5, "--collector.netdev.device-include=^(v|u)",
                       "--collector.netdev.device-exclude=p$")
    try:
        parsed = exporter.scrape()
    finally:
        exporter.stop()
    names = set(_info(parsed))
    assert names == {"va", "vb", "vx1450", "vxneg", "vx6", "u1", "u2", "u6"}
    assert set(series(parsed, "nodenet_interface_receive_bytes_total")) == names
    # the filtered-out interfaces still count for the kept ones' values
    assert series(parsed, "nodenet_interface_mtu_above_overlay_bytes") == {"va": 7570, "vb": 70}


# --------------------------------------------------------------------------- route underlays

@pytest.fixture(scope="module")
def routed():
    ns = Netns("route")
    try:
        ip = ns.ip
        ip("link", "add", "r1", "type", "veth", "peer", "name", "r1p")
        ip("link", "add", "r2", "mtu", 9000, "type", "veth", "peer", "name", "r2p", "mtu", 9000)
        for dev in ("r1", "r1p", "r2", "r2p"):
            ip("link", "set", dev, "up")
        ip("addr", "add", "10.20.0.1/24", "dev", "r1")
        ip("addr", "add", "10.30.0.1/24", "dev", "r2")
        ip("route", "add", "default", "via", "10.30.0.254", "dev", "r2")
        ip("route", "add", "unreachable", "10.99.0.0/24")
        # no `dev`: the underlay comes from the routing table
        ip("link", "add", "vr", "mtu", 1450, "type", "vxlan", "id", 31, "remote", "10.20.0.7",
           "local", "10.20.0.1", "dstport", 4789)
        ip("link", "add", "vext", "type", "vxlan", "external", "dstport", 4790)
        ip("link", "add", "vunr", "type", "vxlan", "id", 33, "remote", "10.99.0.2",
           "dstport", 4791)
        for dev in ("vr", "vext", "vunr"):
            ip("link", "set", dev, "up")
        exporter = nodenet(ns, PORT)
        try:
            yield ns, exporter
        finally:
            exporter.stop()
    finally:
        ns.delete()


def test_underlays_from_the_routing_table(routed):
    ns, exporter = routed
    parsed = exporter.scrape()
    info = _info(parsed)
    # witnesses: the kernel's own answers through iproute2
    to_remote = json.loads(ns.ip("-j", "route", "get", "10.20.0.7"))[0]["dev"]
    default = json.loads(ns.ip("-j", "route", "show", "default"))[0]["dev"]
    unreachable = ns.ip("route", "get", "10.99.0.2", check=False)
    assert (to_remote, default, unreachable) == ("r1", "r2", "")
    assert info["vr"][2] == "r1"       # route to the remote
    assert info["vext"][2] == "r2"     # metadata mode, no address: the default route
    assert info["vunr"][2] == ""       # no route: unknown
    headroom = series(parsed, "nodenet_overlay_mtu_headroom_bytes")
    links = ns.links()
    # vext is a metadata-mode VXLAN: per-route MTUs, so no static headroom series
    assert headroom == {"vr": links["r1"]["mtu"] - 50 - 1450}
    assert headroom == {"vr": 0}


# --------------------------------------------------------------------------- real drops

@pytest.fixture(scope="module")
def drops():
    ns = Netns("drops")
    try:
        ns.disable_ipv6()
        ip = ns.ip
        ip("link", "add", "eA", "type", "veth", "peer", "name", "eB")     # eB stays down
        ip("link", "add", "dA", "type", "veth", "peer", "name", "dB")
        ip("link", "add", "u1", "type", "veth", "peer", "name", "u1p")
        ip("addr", "add", "10.9.1.1/24", "dev", "u1")
        ip("link", "add", "vxd", "type", "vxlan", "id", 10, "dev", "u1", "local", "10.9.1.1",
           "dstport", 4789)
        ip("link", "add", "vxu", "type", "vxlan", "id", 20, "remote", "10.99.0.2",
           "local", "10.9.1.1", "dstport", 4790)           # no route to the remote at all
        for dev in ("eA", "dA", "dB", "u1", "u1p", "vxd", "vxu"):
            ip("link", "set", dev, "up")
        exporter = nodenet(ns, PORT)
        try:
            yield ns, exporter
        finally:
            exporter.stop()
    finally:
        ns.delete()


def _delta(before, after, name, ifname):
    return series(after, name)[ifname] - series(before, name)[ifname]


def test_veth_peer_down_counts_transmit_drops(drops):
    ns, exporter = drops
    before = exporter.scrape()
    sent = int(ns.python(SEND_FRAMES, "eA", 17, "88b5"))
    after = exporter.scrape()
    assert sent == 17
    assert _delta(before, after, "nodenet_interface_transmit_drops_total", "eA") == 17
    assert _delta(before, after, "nodenet_interface_transmit_packets_total", "eA") == 0


def test_unhandled_ethertype_counts_receive_drops(drops):
    ns, exporter = drops
    before = exporter.scrape()
    sent = int(ns.python(SEND_FRAMES, "dA", 11, "88b5"))
    after = exporter.scrape()
    assert sent == 11
    assert _delta(before, after, "nodenet_interface_transmit_packets_total", "dA") == 11
    assert _delta(before, after, "nodenet_interface_receive_packets_total", "dB") == 11
    assert _delta(before, after, "nodenet_interface_receive_drops_total", "dB") == 11
    assert _delta(before, after, "nodenet_interface_receive_bytes_total", "dB") == 11 * 60


def test_malformed_vxlan_header_counts_receive_frame_errors(drops):
    ns, exporter = drops
    before = exporter.scrape()
    sent = int(ns.python(SEND_BAD_VXLAN, "10.9.1.1", 4789, 10, 5))
    after = exporter.scrape()
    assert sent == 5
    assert _delta(before, after, "nodenet_interface_receive_errors_total", "vxd") == 5
    assert _delta(before, after, "nodenet_interface_receive_frame_errors_total", "vxd") == 5
    assert _delta(before, after, "nodenet_interface_receive_packets_total", "vxd") == 0


def test_unroutable_vxlan_remote_counts_transmit_carrier_errors(drops):
    ns, exporter = drops
    before = exporter.scrape()
    sent = int(ns.python(SEND_FRAMES, "vxu", 6, "88b5"))
    after = exporter.scrape()
    assert sent == 6
    assert _delta(before, after, "nodenet_interface_transmit_errors_total", "vxu") == 6
    assert _delta(before, after, "nodenet_interface_transmit_carrier_errors_total", "vxu") == 6


NE_MAP = {  # nodenet metric -> node_exporter 1.5 metric (netdev collector, netlink mode)
    "nodenet_interface_receive_bytes_total": "node_network_receive_bytes_total",
    "nodenet_interface_receive_packets_total": "node_network_receive_packets_total",
    "nodenet_interface_receive_drops_total": "node_network_receive_drop_total",
    "nodenet_interface_receive_errors_total": "node_network_receive_errs_total",
    "nodenet_interface_transmit_bytes_total": "node_network_transmit_bytes_total",
    "nodenet_interface_transmit_packets_total": "node_network_transmit_packets_total",
    "nodenet_interface_transmit_drops_total": "node_network_transmit_drop_total",
    "nodenet_interface_transmit_errors_total": "node_network_transmit_errs_total",
    "nodenet_interface_receive_frame_errors_total": "node_network_receive_frame_total",
    "nodenet_interface_receive_fifo_errors_total": "node_network_receive_fifo_total",
    "nodenet_interface_transmit_carrier_errors_total": "node_network_transmit_carrier_total",
    "nodenet_interface_transmit_fifo_errors_total": "node_network_transmit_fifo_total",
    "nodenet_interface_receive_nohandler_total": "node_network_receive_nohandler_total",
    "nodenet_interface_mtu_bytes": "node_network_mtu_bytes",
}
IP_MAP = {  # the detailed kinds node_exporter does not export -> ip -s -s -j stats64
    "nodenet_interface_receive_length_errors_total": ("rx", "length_errors"),
    "nodenet_interface_receive_over_errors_total": ("rx", "over_errors"),
    "nodenet_interface_receive_crc_errors_total": ("rx", "crc_errors"),
    "nodenet_interface_receive_missed_errors_total": ("rx", "missed_errors"),
    "nodenet_interface_transmit_aborted_errors_total": ("tx", "aborted_errors"),
    "nodenet_interface_receive_frame_errors_total": ("rx", "frame_errors"),
    "nodenet_interface_transmit_carrier_errors_total": ("tx", "carrier_errors"),
    "nodenet_interface_receive_drops_total": ("rx", "dropped"),
    "nodenet_interface_transmit_drops_total": ("tx", "dropped"),
}


def test_counters_equal_node_exporter_and_iproute2(drops):
    ns, exporter = drops
    # make sure there is something non-zero to compare (the other tests may run alone)
    ns.python(SEND_FRAMES, "eA", 3, "88b5")
    ns.python(SEND_FRAMES, "dA", 4, "88b5")
    ns.python(SEND_BAD_VXLAN, "10.9.1.1", 4789, 10, 2)
    ne = node_exporter(ns, NE_PORT)
    try:
        ours = exporter.scrape()
        theirs = ne.scrape()
        links = ns.links()
        again = exporter.scrape()
    finally:
        ne.stop()
    devices = set(links) - {"lo"}  # loopback carries the scrapes themselves
    nonzero = 0
    for name, ne_name in NE_MAP.items():
        a, b = series(ours, name), series(theirs, ne_name, key="device")
        c = series(again, name)
        for dev in devices:
            assert a[dev] == c[dev], f"{name}{{{dev}}} moved between scrapes"
            assert a[dev] == b[dev], f"{name}{{{dev}}}: nodenet {a[dev]} node_exporter {b[dev]}"
            nonzero += a[dev] > 0 and "mtu" not in name
    for name, (direction, key) in IP_MAP.items():
        a = series(ours, name)
        for dev in devices:
            assert a[dev] == links[dev]["stats64"][direction][key], (name, dev)
    assert nonzero >= 8  # drops, errors, packets and bytes really were compared
    # operstate and MTU agree with netclass too
    ne_info = {dict(l)["device"]: dict(l)["operstate"] for (n, l), _ in theirs.items()
               if n == "node_network_info"}
    for dev, (_, _, _, operstate) in _info(ours).items():
        if dev in devices:
            assert operstate == ne_info[dev]


# --------------------------------------------------------------------------- churn

CHURN = "".join(
    f"link add ch{i} type veth peer name ch{i}p\n"
    f"link add vxc{i} type vxlan id {100 + i} dev ch{i} dstport 4789\n"
    f"link set ch{i} up\nlink set vxc{i} up\n"
    f"link del ch{i}\n"       # takes its peer and the VXLAN bound to it along
    for i in range(60))


def test_interfaces_created_and_deleted_during_scrapes():
    ns = Netns("churn")
    stop = threading.Event()
    rounds = [0]

    def churn():
        t_end = time.monotonic() + 60
        while not stop.is_set() and rounds[0] < 200 and time.monotonic() < t_end:
            ns.ip("-force", "-batch", "-", input=CHURN, check=False)
            rounds[0] += 1

    try:
        ns.ip("link", "add", "base", "type", "veth", "peer", "name", "basep")
        exporter = nodenet(ns, PORT)
        worker = threading.Thread(target=churn, daemon=True)
        try:
            worker.start()
            seen_churn = scrapes = 0
            deadline = time.monotonic() + 50
            # at least 40 scrapes, and on until a few overlapped the churn (bounded in time)
            while scrapes < 40 or (seen_churn < 3 and time.monotonic() < deadline
                                   and not stop.is_set() and worker.is_alive()):
                scrapes += 1
                parsed = exporter.scrape()   # asserts HTTP 200
                assert parsed[("nodenet_scrape_collector_success",
                               (("collector", "netdev"),))] == 1
                names = set(_info(parsed))
                assert {"lo", "base", "basep"} <= names
                seen_churn += any(n.startswith(("ch", "vxc")) for n in names)
                # every interface that is reported is reported whole
                for metric in ("nodenet_interface_mtu_bytes",
                               "nodenet_interface_receive_bytes_total"):
                    assert set(series(parsed, metric)) == names
        finally:
            stop.set()
            worker.join(70)
            exporter.stop()
        assert rounds[0] >= 1
        assert seen_churn >= 1, "no scrape overlapped the churn: the test proved nothing"
    finally:
        stop.set()
        ns.delete()
