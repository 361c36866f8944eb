"""Overlay MTU headroom of the tunnel kinds this machine's kernel lacks, on a real kernel (UML).

One guest boot (Debian's user-mode-linux 6.1, modules uml.TUNNEL_MODULES) builds
tests/vm/guest/netdev_topology.sh: dummy underlays at 1500/1550/9000 with IPv4 and IPv6
addresses, default routes on the 9000 one, and geneve (IPv4 and IPv6 remote, metadata mode,
inner_proto_inherit), vxlan, ipip, gre (with key/csum/seq), gretap, ip6gre, ip6gretap (with and
without the encapsulation limit option), sit and ip6tnl devices: at the kernel's own default
MTU (headroom 0), created over d1550 which then shrinks to 1500 (issue 9's -50 recipe), set
above their underlay (ip tunnels allow it), over the 9000 underlay, plus the fallback devices
the modules create (tunl0, gre0, ...), a vlan, a bond with two dummy slaves.  The exporter runs
in the guest (`--collector.disable-defaults --collector.netdev`); tests/vm/guest/netdev_suite.py
records its scrapes and the witnesses (`ip -d -s -s -j link`, `ip -j route`), every comparison
is made here.

Each interface's kind, master, underlay and headroom are checked exactly against
(a) the topology's design (tests/helpers/iproute_tunnels.py DESIGN_*), and (b) the documented
overhead table and underlay rule applied to iproute2's view (the same helper module, written
from docs/interfaces.md, not from the collector).  Since most tunnels sit at the MTU the kernel
chose itself, headroom 0 there also says the table's figures are the kernel's.

WireGuard: Debian's UML kernel is built without CONFIG_WIREGUARD; a test pins that, so it fails
(and asks for WireGuard cases) the day the kernel has it.

UML is fetched by tests/vm/setup_uml.sh.  A guest that cannot boot fails these tests; never a skip.
"""
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import uml  # noqa: E402
from exporter.sources.links import parse_link_dump  # noqa: E402
from tests.helpers import iproute_tunnels as T  # noqa: E402
from tests.helpers.exporter_proc import parse_samples  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "netlink" / "links_uml_tunnels"


@pytest.fixture(scope="module")
def run():
    res = uml.run_guest("$PY $CODE/tests/vm/guest/netdev_suite.py", timeout=180,
                        modules=uml.NO_IPVS_MODULES, extra_modules=uml.TUNNEL_MODULES,
                        tag="netdev-tunnels")
    res.assert_ok()
    return res


@pytest.fixture(scope="module")
def guest(run):
    links = json.loads(run.read("ip.json"))
    return {
        "links": {w["ifname"]: w for w in links},
        "routes": json.loads(run.read("routes.json")),
        "scrape": parse_samples(run.read("exporter.prom")),
        "again": parse_samples(run.read("exporter_again.prom")),
    }


def by_interface(parsed, name):
    out = {}
    for (n, labels), v in parsed.items():
        if n == name:
            d = dict(labels)
            out[d.pop("interface")] = (d, v)
    return out


def test_the_kernel_kept_the_designed_mtus(guest):
    links = guest["links"]
    assert links["d1550"]["mtu"] == 1500            # shrank after its tunnels were made
    for name in ("vxneg", "gnneg", "gnneg6", "iineg", "grneg", "gtneg", "g6neg", "stneg", "t6neg"):
        # the kernel did not follow the shrinking underlay: still 50 bytes too big
        w = links[name]
        assert w["mtu"] == 1550 - T.overhead(w), name
    assert links["iibig"]["mtu"] == 1500 and links["g6big"]["mtu"] == 1500
    assert links["gnx"]["mtu"] == 65465              # metadata-mode Geneve: the kernel's max
    assert links["gnl3"]["linkinfo"]["info_data"]["inner_proto_inherit"] is True
    assert links["ds1"]["master"] == "bd" and links["ds2"]["master"] == "bd"
    assert set(links) == set(T.DESIGN_INFO)


def test_kind_master_underlay_of_every_interface(guest):
    info = by_interface(guest["scrape"], "nodenet_interface_info")
    assert set(info) == set(guest["links"])
    got = {name: (labels["kind"], labels["underlay"]) for name, (labels, v) in info.items()}
    assert got == T.DESIGN_INFO
    for name, (labels, value) in info.items():
        w = guest["links"][name]
        assert value == 1
        assert labels["kind"] == (T.kind(w) or "loopback"), name
        assert labels["master"] == w.get("master", "") == T.DESIGN_MASTER.get(name, ""), name
        assert labels["operstate"] == w["operstate"].lower(), name
        assert labels["underlay"] == T.expected_underlay(w, guest["routes"]), name


def test_headroom_of_every_tunnel_exactly(guest):
    links = guest["links"]
    series = by_interface(guest["scrape"], "nodenet_overlay_mtu_headroom_bytes")
    assert {n: v for n, (_, v) in series.items()} == T.DESIGN_HEADROOM
    for name, (labels, value) in series.items():
        w = links[name]
        assert labels == {"kind": T.kind(w), "underlay": T.DESIGN_INFO[name][1]}, name
        assert value == T.expected_headroom(w, links, guest["routes"]), name
    # every tunnel kind of the table except WireGuard was really made and measured
    assert {T.kind(links[n]) for n in series} == T.TUNNEL_KINDS - {"wireguard"}
    # kinds that are not overlay tunnels get no headroom
    for name in ("vl9", "vlb", "bd", "bond0", "ds1", "d1500", "dummy0", "erspan0", "lo"):
        assert name not in series


def test_at_the_kernels_own_default_mtu_the_table_is_the_kernels(guest):
    """The kernel sized these tunnels itself from their underlay (no mtu given): underlay MTU
    minus tunnel MTU is the kernel's own overhead figure, and equals the documented table."""
    links = guest["links"]
    checked = 0
    for name, design in T.DESIGN_HEADROOM.items():
        if design != 0:
            continue
        w = links[name]
        under = links[T.expected_underlay(w, guest["routes"])]
        assert under["mtu"] - w["mtu"] == T.overhead(w), name
        checked += 1
    assert checked == 18
    # the fallback devices are sized for a 1500 underlay: 1500 - their MTU is the table too
    for name in ("tunl0", "gre0", "gretap0", "sit0", "ip6tnl0", "ip6gre0"):
        assert 1500 - links[name]["mtu"] == T.overhead(links[name]), name
    # the one place the kernel is more cautious than the wire: Geneve without an inner
    # Ethernet header still gets 1500 - 50 (the table says 36 bytes are sent: headroom 14)
    assert links["gnl3"]["mtu"] == 1450 and T.overhead(links["gnl3"]) == 36


def test_mtus_match_iproute2(guest):
    links = guest["links"]
    mtu = by_interface(guest["scrape"], "nodenet_interface_mtu_bytes")
    mn = by_interface(guest["scrape"], "nodenet_interface_min_mtu_bytes")
    mx = by_interface(guest["scrape"], "nodenet_interface_max_mtu_bytes")
    for name, w in links.items():
        assert mtu[name][1] == w["mtu"], name
        assert mn[name][1] == w["min_mtu"], name
        assert (mx[name][1] if name in mx else 0) == w["max_mtu"], name


def test_second_scrape_agrees_and_the_collector_succeeded(run, guest):
    for parsed in (guest["scrape"], guest["again"]):
        assert parsed[("nodenet_scrape_collector_success", frozenset({("collector", "netdev")}))] == 1
    for metric in ("nodenet_interface_info", "nodenet_overlay_mtu_headroom_bytes",
                   "nodenet_interface_mtu_bytes"):
        assert by_interface(guest["scrape"], metric) == by_interface(guest["again"], metric)
    assert json.loads(run.read("result.json"))["exporter_rc"] == 0
    after = {w["ifname"]: w["mtu"] for w in json.loads(run.read("ip_after.json"))}
    assert after == {n: w["mtu"] for n, w in guest["links"].items()}


def test_wireguard_is_not_in_this_kernel(run):
    """Pinned so it fails the day Debian's UML kernel has WireGuard: then add wg devices to
    netdev_topology.sh (only `ip link add wg0 type wireguard` is needed).  Until then WireGuard
    is checked only from hand-built bytes (tests/unit/test_netdev_tunnels.py)."""
    wg = json.loads(run.read("wireguard.json"))
    assert wg["ip_rc"] != 0 and "Unknown device type" in wg["ip_stderr"], wg
    assert wg["modprobe_rc"] != 0 and "not found" in wg["modprobe_stderr"], wg


def test_the_checked_in_fixture_is_this_topology(guest):
    """tests/fixtures/netlink/links_uml_tunnels.* were captured from this same topology
    (tests/vm/capture_netdev_fixtures.py): same interfaces, kinds, MTUs and tunnel data."""
    captured = parse_link_dump(bytes.fromhex("".join(
        line.strip() for line in (FIXTURE.parent / (FIXTURE.name + ".hex")).read_text().splitlines()
        if not line.startswith("#"))))
    witness = json.loads((FIXTURE.parent / (FIXTURE.name + ".ip.json")).read_text())

    def shape(w):
        return (w["ifindex"], T.kind(w), w["mtu"], w.get("master"), w.get("link"),
                json.dumps(T.info_data(w), sort_keys=True))

    assert {w["ifname"]: shape(w) for w in witness} == \
        {n: shape(w) for n, w in guest["links"].items()}
    assert {link.name: (link.kind, link.mtu) for link in captured} == \
        {n: (T.kind(w), w["mtu"]) for n, w in guest["links"].items()}
