"""Pod interfaces (veths whose peer is in another network namespace): summarised per master,
top N with drops or errors keep their own series, sums never go back, `full` restores them."""
from __future__ import annotations

import pytest
from nlbuild_netdev import done, newlink, u32
from test_netdev_collector import collector, scrape, values

from exporter.cli import all_options
from exporter.collectors.base import REGISTRY
from exporter.collectors.netdev import PodSums, is_pod_interface
from exporter.config import ConfigError, resolve
from exporter.sources.links import STATS_FIELDS, parse_link_dump


def stats(**kw) -> tuple:
    return tuple(kw.get(f, 0) for f in STATS_FIELDS[:25])


def vxlan_data():
    return [u32(1, 42), u32(5, 2)]


def node(pods, extra=()):
    """lo, eth0, cni0 (bridge), vx0 (VXLAN 1450 over eth0) and pod veths:
    pods = [(index, name, master index or None, mtu, stats)]."""
    msgs = [newlink(1, "lo", arphrd=772, flags=0x49, mtu=65536, min_mtu=0, max_mtu=0,
                    operstate=0),
            newlink(2, "eth0", mtu=1500),
            newlink(10, "cni0", kind="bridge", mtu=1450),
            newlink(11, "vx0", kind="vxlan", mtu=1450, data=vxlan_data())]
    for index, name, master, mtu, st in pods:
        msgs.append(newlink(index, name, kind="veth", mtu=mtu, master=master, link=3,
                            link_netnsid=index, stats=st))
    msgs.extend(extra)
    return parse_link_dump(b"".join(msgs) + done())


def pods(n, master=10, mtu=1450, drops=None):
    drops = drops or {}
    return [(100 + i, f"veth{i:03d}", master, mtu,
             stats(rx_packets=10 * i, rx_bytes=1000 * i, tx_dropped=drops.get(i, 0)))
            for i in range(n)]


def own(out):
    return {labels[0] for (n, labels) in out if n == "nodenet_interface_info"}


def test_pod_interface_is_a_veth_with_its_peer_elsewhere():
    links = node(pods(1), extra=[newlink(50, "vlocal", kind="veth", link=51),
                                 newlink(51, "vlocal-p", kind="veth", link=50)])
    by_name = {link.name: link for link in links}
    assert is_pod_interface(by_name["veth000"])
    assert not is_pod_interface(by_name["vlocal"])      # peer in this namespace
    assert not is_pod_interface(by_name["eth0"]) and not is_pod_interface(by_name["cni0"])


def test_summary_per_master_and_kind():
    ps = pods(5) + [(200, "lxc1", None, 1500, stats(rx_packets=7, tx_bytes=70)),
                    (201, "lxc2", None, 1480, stats(rx_packets=1))]
    _, out = scrape(collector(), node(ps))
    assert own(out) == {"lo", "eth0", "cni0", "vx0"}       # no pod veth of its own
    assert values(out, "nodenet_pod_interfaces") == {("cni0", "veth"): 5, ("", "veth"): 2}
    assert values(out, "nodenet_pod_interfaces_receive_packets_total") == {
        ("cni0", "veth"): sum(10 * i for i in range(5)), ("", "veth"): 8}
    assert values(out, "nodenet_pod_interfaces_receive_bytes_total")[("cni0", "veth")] == \
        sum(1000 * i for i in range(5))
    assert values(out, "nodenet_pod_interfaces_transmit_bytes_total")[("", "veth")] == 70
    assert values(out, "nodenet_pod_interfaces_mtu_min_bytes") == {("cni0", "veth"): 1450,
                                                                   ("", "veth"): 1480}
    assert values(out, "nodenet_pod_interfaces_mtu_max_bytes")[("", "veth")] == 1500
    # the overlay is 1450: lxc1 (50 above) and lxc2 (30 above)
    assert values(out, "nodenet_pod_interfaces_above_overlay") == {("cni0", "veth"): 0,
                                                                   ("", "veth"): 2}
    assert values(out, "nodenet_pod_interfaces_above_overlay_max_bytes") == {
        ("cni0", "veth"): 0, ("", "veth"): 50}
    assert values(out, "nodenet_interface_mtu_above_overlay_bytes") == {}


def test_top_n_pod_interfaces_with_drops_keep_their_series():
    drops = {3: 5, 7: 50, 8: 1, 9: 500}
    c = collector("--collector.netdev.pod-interfaces.top=2")
    _, out = scrape(c, node(pods(12, drops=drops)))
    assert own(out) == {"lo", "eth0", "cni0", "vx0", "veth009", "veth007"}
    assert values(out, "nodenet_interface_transmit_drops_total")[("veth009",)] == 500
    assert values(out, "nodenet_interface_info")[("veth007", "veth", "up", "cni0", "")] == 1
    # still in the summary too
    assert values(out, "nodenet_pod_interfaces_transmit_drops_total") == {("cni0", "veth"): 556}
    _, out = scrape(collector(), node(pods(12, drops=drops)))      # default top 10
    assert own(out) >= {"veth003", "veth007", "veth008", "veth009"}
    _, out = scrape(collector("--collector.netdev.pod-interfaces.top=0"),
                    node(pods(12, drops=drops)))
    assert not [n for n in own(out) if n.startswith("veth")]


def test_full_restores_every_pod_interface():
    c = collector("--collector.netdev.pod-interfaces=full")
    _, out = scrape(c, node(pods(4, mtu=1500)))
    assert own(out) == {"lo", "eth0", "cni0", "vx0", "veth000", "veth001", "veth002", "veth003"}
    assert values(out, "nodenet_interface_mtu_above_overlay_bytes") == {
        (f"veth{i:03d}",): 50 for i in range(4)}
    assert values(out, "nodenet_pod_interfaces") == {("cni0", "veth"): 4}


def test_sums_never_go_back_when_a_pod_leaves():
    c = collector()
    _, out = scrape(c, node(pods(3)))
    first = values(out, "nodenet_pod_interfaces_receive_packets_total")[("cni0", "veth")]
    assert first == 0 + 10 + 20
    # veth002 (20 packets) is deleted; veth000 receives 5 more; a new pod appears with 1
    ps = pods(2)
    ps[0] = (100, "veth000", 10, 1450, stats(rx_packets=5))
    ps.append((300, "vethnew", 10, 1450, stats(rx_packets=1)))
    _, out = scrape(c, node(ps))
    assert values(out, "nodenet_pod_interfaces_receive_packets_total")[("cni0", "veth")] == \
        first + 5 + 1
    assert values(out, "nodenet_pod_interfaces") == {("cni0", "veth"): 3}
    # every pod leaves: the master's series go; its pods come back later, the carry is kept
    _, out = scrape(c, node([]))
    assert values(out, "nodenet_pod_interfaces") == {}
    _, out = scrape(c, node([(400, "vethback", 10, 1450, stats(rx_packets=2))]))
    assert values(out, "nodenet_pod_interfaces_receive_packets_total")[("cni0", "veth")] == \
        first + 5 + 1 + 2


def test_pod_sums_member_recreated_under_the_same_index():
    sums = PodSums()
    key = ("cni0", "veth")
    zero = (0,) * 7
    assert sums.update({key: {5: (100,) + zero}})[key][0] == 100
    # ifindex 5 now counts from 3: a new device; what the old one counted stays
    assert sums.update({key: {5: (3,) + zero}})[key][0] == 103


@pytest.mark.parametrize("argv", [["--collector.netdev.pod-interfaces=some"],
                                  ["--collector.netdev.pod-interfaces.top=-1"],
                                  ["--collector.netdev.pod-interfaces.top=x"]])
def test_bad_flags_fail_at_start_up(argv):
    with pytest.raises(ConfigError):
        resolve(all_options(), argv, "t", "0", set(REGISTRY))


def test_a_veth_underlay_is_not_a_pod_interface():
    """A node whose uplink is a veth (peer in another namespace) carrying the VXLAN: not a pod."""
    links = parse_link_dump(b"".join([
        newlink(1, "lo", arphrd=772, flags=0x49, mtu=65536, min_mtu=0, max_mtu=0, operstate=0),
        newlink(2, "eth0", kind="veth", mtu=1500, link=7, link_netnsid=0),
        newlink(11, "vx0", kind="vxlan", mtu=1450, data=[u32(1, 42), u32(3, 2)]),
        newlink(12, "vethpod", kind="veth", mtu=1450, link=3, link_netnsid=1),
    ]) + done())
    _, out = scrape(collector(), links)
    assert "eth0" in own(out) and "vethpod" not in own(out)
    assert values(out, "nodenet_pod_interfaces") == {("", "veth"): 1}


def test_a_pod_dropping_now_wins_over_old_drops():
    """Ten veths dropped 34 packets once, when their pods started; veth011 drops now, a
    little: it takes a top-2 place on the scrape after its count rose, and keeps it for
    POD_LOSS_HOLD seconds after the last rise."""
    from exporter.collectors import netdev

    c = collector("--collector.netdev.pod-interfaces.top=2")
    old = {i: 34 for i in range(10)}
    _, out = scrape(c, node(pods(12, drops={**old, 11: 1})))
    assert own(out) & {"veth011"} == set()             # first sight: nothing rose yet
    _, out = scrape(c, node(pods(12, drops={**old, 11: 3})))
    assert "veth011" in own(out)
    c._pod_loss = {k: (v[0], v[1] - netdev.POD_LOSS_HOLD - 1 if v[1] else v[1])
                   for k, v in c._pod_loss.items()}   # the rise was long ago
    _, out = scrape(c, node(pods(12, drops={**old, 11: 3})))
    assert "veth011" not in own(out)
