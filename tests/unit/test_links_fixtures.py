"""Decoding of RTM_GETLINK dumps captured from this machine's kernel (tests/fixtures/netlink).

Every value is compared with ``ip -d -s -s -j link`` of the same namespace at the same moment
(links_<scenario>.ip.json, written by capture_links.py), an independent decoder.
"""
from __future__ import annotations

import ipaddress
import json
import os

import pytest

from exporter.sources import ParseError
from exporter.sources.links import parse_link_dump
from nlbuild_netdev import FIXTURES, load_hex

SCENARIOS = ["veth", "vxlan4", "vxlan6", "bridge", "macvlan", "tun", "uml_tunnels"]

RX = {"bytes": "rx_bytes", "packets": "rx_packets", "errors": "rx_errors",
      "dropped": "rx_dropped", "over_errors": "rx_over_errors", "multicast": "multicast",
      "length_errors": "rx_length_errors", "crc_errors": "rx_crc_errors",
      "frame_errors": "rx_frame_errors", "fifo_errors": "rx_fifo_errors",
      "missed_errors": "rx_missed_errors", "nohandler": "rx_nohandler",
      "otherhost_dropped": "rx_otherhost_dropped", "compressed": "rx_compressed"}
TX = {"bytes": "tx_bytes", "packets": "tx_packets", "errors": "tx_errors",
      "dropped": "tx_dropped", "carrier_errors": "tx_carrier_errors",
      "collisions": "collisions", "aborted_errors": "tx_aborted_errors",
      "fifo_errors": "tx_fifo_errors", "window_errors": "tx_window_errors",
      "heartbeat_errors": "tx_heartbeat_errors", "compressed": "tx_compressed"}


def load(scenario):
    links = parse_link_dump(load_hex(f"links_{scenario}.hex"))
    with open(os.path.join(FIXTURES, f"links_{scenario}.ip.json")) as fh:
        witness = json.load(fh)
    return links, witness


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_decoded_links_match_iproute2(scenario):
    links, witness = load(scenario)
    by_name = {link.name: link for link in links}
    assert sorted(by_name) == sorted(w["ifname"] for w in witness)
    index_of = {w["ifname"]: w["ifindex"] for w in witness}
    for w in witness:
        link = by_name[w["ifname"]]
        name = w["ifname"]
        assert link.index == w["ifindex"], name
        assert link.mtu == w["mtu"], name
        assert link.min_mtu == w["min_mtu"], name
        assert link.max_mtu == w["max_mtu"], name
        assert link.operstate == w["operstate"].lower(), name
        assert link.up == ("UP" in w["flags"]), name
        assert link.master == (index_of[w["master"]] if "master" in w else 0), name
        if "link_netnsid" in w:
            assert link.link_netnsid == w["link_netnsid"], name
            assert link.link == w["link_index"], name
        elif "link" in w and w["link"] is not None:
            assert link.link_netnsid is None
            assert link.link == index_of[w["link"]], name
        else:
            assert link.link == 0, name
        info = w.get("linkinfo", {})
        assert link.kind == info.get("info_kind"), name
        assert link.slave_kind == info.get("info_slave_kind"), name
        # counters: every field iproute2 prints
        assert link.stats is not None, name
        for key, field in RX.items():
            if key in w["stats64"]["rx"]:
                assert getattr(link.stats, field) == w["stats64"]["rx"][key], (name, key)
        for key, field in TX.items():
            if key in w["stats64"]["tx"]:
                assert getattr(link.stats, field) == w["stats64"]["tx"][key], (name, key)


def test_the_captures_hold_real_counts():
    """The capture made the kernel count drops and errors: the fixtures are not all zeros."""
    veth = {link.name: link for link in load("veth")[0]}
    assert veth["vb"].stats.rx_dropped == 3 and veth["vb"].stats.rx_packets == 3
    assert veth["vdown"].stats.tx_dropped == 2
    assert veth["vdown"].operstate == "lowerlayerdown"
    vx = {link.name: link for link in load("vxlan4")[0]}
    assert vx["vx1450"].stats.rx_frame_errors == 3 and vx["vx1450"].stats.rx_errors == 3
    # this kernel reports rx_nohandler and rx_otherhost_dropped (200-byte IFLA_STATS64)
    assert vx["vx1450"].stats.rx_nohandler == 0
    assert vx["vx1450"].stats.rx_otherhost_dropped == 0


def _family(addr_text):
    return ipaddress.ip_address(addr_text).version


@pytest.mark.parametrize("scenario", ["vxlan4", "vxlan6"])
def test_vxlan_data_matches_iproute2(scenario):
    links, witness = load(scenario)
    by_name = {link.name: link for link in links}
    index_of = {w["ifname"]: w["ifindex"] for w in witness}
    seen = 0
    for w in witness:
        if w.get("linkinfo", {}).get("info_kind") != "vxlan":
            assert by_name[w["ifname"]].tunnel is None
            continue
        seen += 1
        data = w["linkinfo"]["info_data"]
        tun = by_name[w["ifname"]].tunnel
        assert tun is not None
        assert tun.link == (index_of[data["link"]] if "link" in data else 0)
        remote = data.get("group") or data.get("remote") or data.get("group6") or data.get("remote6")
        local = data.get("local") or data.get("local6")
        assert tun.remote == (ipaddress.ip_address(remote).packed if remote else None)
        assert tun.local == (ipaddress.ip_address(local).packed if local else None)
        expected_family = _family(remote or local) if (remote or local) else None
        assert tun.family == expected_family
        assert tun.external == bool(data.get("external", False))
    assert seen >= 1


def test_vxlan4_scenario_kinds_of_address():
    vx = {link.name: link for link in load("vxlan4")[0]}
    assert vx["vx1450"].tunnel.family == 4 and vx["vx1450"].tunnel.remote is None
    assert vx["vxgrp"].tunnel.remote == bytes([239, 1, 1, 1])
    assert vx["vxext"].tunnel.external and vx["vxext"].tunnel.family is None
    vx6 = {link.name: link for link in load("vxlan6")[0]}["vx6"]
    assert vx6.tunnel.family == 6 and vx6.mtu == 1430


def test_non_tunnel_kinds_have_no_tunnel_info():
    for scenario in ("veth", "bridge", "macvlan", "tun"):
        for link in load(scenario)[0]:
            assert link.tunnel is None, (scenario, link.name)


def test_parent_device_and_loopback():
    for scenario in SCENARIOS:
        lo = {link.name: link for link in load(scenario)[0]}["lo"]
        assert lo.type == 772 and lo.kind is None and lo.parent_dev is None


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_truncation_of_a_capture_raises_the_parsers_error(scenario):
    data = load_hex(f"links_{scenario}.hex")
    step = max(1, len(data) // 300)
    for cut in range(0, len(data) - 1, step):
        with pytest.raises(ParseError):
            parse_link_dump(data[:cut])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_reader_over_the_replay_transport_equals_the_pure_decoder(scenario):
    """RtNetlink on netlink.ReplayTransport (the seam every family's tests share): the
    request asks for a dump without VF/inet6 stats, and the links equal parse_link_dump's."""
    from exporter.sources import netlink as nl
    from exporter.sources.links import IFLA_EXT_MASK, RTM_GETLINK, RtNetlink

    data = load_hex(f"links_{scenario}.hex")
    replay = nl.ReplayTransport({RTM_GETLINK: [data]})
    with RtNetlink(transport=replay) as rt:
        assert rt.dump_links() == parse_link_dump(data)
    (req,) = replay.sent
    a = nl.attrs(req, 16 + 16, len(req))
    assert nl.HDR.unpack_from(req)[2] & nl.NLM_F_DUMP == nl.NLM_F_DUMP
    assert nl.u32(req, a[IFLA_EXT_MASK]) == 1 << 3


def test_netdev_collector_over_the_replay_transport():
    """The whole collector on a captured dump: one series per captured interface."""
    import io

    from exporter import log as logmod
    from exporter.cli import all_options
    from exporter.collectors.base import REGISTRY, Context
    from exporter.collectors.netdev import NetdevCollector
    from exporter.config import resolve
    from exporter.sources import netlink as nl
    from exporter.sources.links import RTM_GETLINK

    data = load_hex("links_veth.hex")
    settings = resolve(all_options(), [], "test", "0", set(REGISTRY))
    coll = NetdevCollector(Context(settings=settings, log=logmod.setup(
        "error", "json", stream=io.StringIO()).bind(collector="netdev")))
    coll.transport_factory = lambda: nl.ReplayTransport({RTM_GETLINK: [data]})
    fams = {f.spec.name: f for f in coll.collect()}
    names = sorted(lv[0] for lv, _v in fams["nodenet_interface_mtu_bytes"].samples)
    assert names == sorted(link.name for link in parse_link_dump(data))
