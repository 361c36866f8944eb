"""The ipvs collector against a real IPVS kernel, in User-Mode Linux.

One guest boot builds a table with ipvsadm (TCP, UDP, SCTP, fwmark IPv4 and IPv6, an IPv6
service, rr/wrr/sh+persistence, a weight-0 backend, a service with no backends, NAT/DR/tunnel),
drives real traffic through the VIPs on the guest's loopback, then scrapes nodenet-exporter and
node_exporter 1.5 while ipvsadm and /proc/net/ip_vs are read before and after (the snapshot is
kept only when nothing moved in between), and finally unloads ip_vs while the exporter is being
scraped.  A second boot has no ip_vs at all.  The guest (tests/vm/guest/ipvs_suite.py) only acts
and records; every comparison is made here.

UML is fetched by tests/vm/setup_uml.sh (apt-get download, cached in tests/vm/.cache/).
If it cannot boot, these tests fail with the console; they never skip.
"""
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import ipvsadm_text  # noqa: E402
import uml  # noqa: E402
from tests.helpers.exporter_proc import parse_samples, sample  # noqa: E402


@pytest.fixture(scope="module")
def main_run():
    res = uml.run_guest("$PY $CODE/tests/vm/guest/ipvs_suite.py main", timeout=420, tag="ipvs-main")
    res.assert_ok()
    return res


@pytest.fixture(scope="module")
def absent_run():
    res = uml.run_guest("$PY $CODE/tests/vm/guest/ipvs_suite.py absent", timeout=240,
                        modules=uml.NO_IPVS_MODULES, tag="ipvs-absent")
    res.assert_ok()
    return res


def snap(res, name):
    return res.read(f"snap/{name}")


def ipvs_series(text):
    return {k: v for k, v in parse_samples(text).items() if k[0].startswith("nodenet_ipvs_")}


def test_traffic_went_through_every_service_that_carries_it(main_run):
    traffic = json.loads(main_run.read("traffic.json"))
    assert traffic["errors"] == []
    stats = {k: cols for k, cols, _ in ipvsadm_text.parse_ipvsadm(snap(main_run, "stats.txt"))}
    with_traffic = [("tcp", "127.10.0.1", 80, 0, "ipv4"), ("tcp", "127.10.0.2", 443, 0, "ipv4"),
                    ("tcp", "127.10.0.3", 8000, 0, "ipv4"), ("udp", "127.10.0.1", 53, 0, "ipv4"),
                    ("sctp", "127.10.0.5", 3868, 0, "ipv4"), ("fwmark", "", 0, 1, "ipv4"),
                    ("tcp", "::1", 80, 0, "ipv6"), ("fwmark", "", 0, 2, "ipv6")]
    for key in with_traffic:
        conns, inpkts, outpkts, inbytes, outbytes = map(int, stats[key])
        assert conns > 0 and inbytes > 0 and outbytes > 0, key
    assert len(stats) == 12


def test_every_exported_series_equals_ipvsadm_at_the_same_moment(main_run):
    got = ipvs_series(snap(main_run, "exporter.prom"))
    want = ipvsadm_text.expected_series(snap(main_run, "stats.txt"), snap(main_run, "Ln.txt"),
                                        snap(main_run, "persistent.txt"))
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted((k, got[k], want[k]) for k in set(got) & set(want) if got[k] != want[k])
    assert not missing and not extra and not wrong, (missing[:5], extra[:5], wrong[:5])
    assert len(got) == 3 + 12 * 8 + 22 * 10


def test_thresholds_active_inactive_match_proc_net_ip_vs(main_run):
    s = parse_samples(snap(main_run, "exporter.prom"))
    proc = ipvsadm_text.parse_proc_ip_vs(snap(main_run, "proc_ip_vs.txt"))
    assert len(proc) == 12
    n = 0
    for key, _cols, dests in proc:
        L = ipvsadm_text.service_labels(key)
        for (addr, port), (fwd, weight, active, inactive) in dests:
            B = dict(L, backend_address=addr, backend_port=str(port))
            assert sample(s, "nodenet_ipvs_backend_weight", **B) == int(weight)
            assert sample(s, "nodenet_ipvs_backend_connections_active", **B) == int(active)
            assert sample(s, "nodenet_ipvs_backend_connections_inactive", **B) == int(inactive)
            assert sample(s, "nodenet_ipvs_backend_info", forwarding=ipvsadm_text.FWD_WORDS[fwd],
                          **B) == 1
            n += 1
    assert n == 22


def test_table_features_as_built(main_run):
    s = parse_samples(snap(main_run, "exporter.prom"))
    text = snap(main_run, "exporter.prom")
    L = ipvsadm_text.service_labels
    assert sample(s, "nodenet_ipvs_service_backends", **L(("tcp", "127.10.0.9", 9999, 0, "ipv4"))) == 0
    assert sample(s, "nodenet_ipvs_service_backends_available",
                  **L(("tcp", "127.10.0.1", 80, 0, "ipv4"))) == 3   # the weight-0 one is not
    assert ('scheduler="sh",flags="persistent,sh-port"} 1') in text
    assert ('fwmark="2",family="ipv6",scheduler="rr",flags="persistent"} 1') in text
    assert ('address="2001:db8::10",port="53",fwmark="",family="ipv6",scheduler="sh",flags="ops"} 1') in text
    for fwd in ("masq", "route", "tunnel"):
        assert f'forwarding="{fwd}"' in text
    held = sum(v for (n, _), v in s.items() if n == "nodenet_ipvs_backend_connections_active")
    assert held == 4   # traffic.py holds 3 + 1 connections open
    persist = sum(v for (n, _), v in s.items() if n == "nodenet_ipvs_backend_connections_persistent")
    assert persist >= 2  # sh+persistence and the persistent IPv6 fwmark service


def test_a_second_scrape_gives_the_same_values(main_run):
    assert ipvs_series(snap(main_run, "exporter.prom")) == ipvs_series(snap(main_run, "exporter_again.prom"))


def _node_exporter_key(labels):
    """node_exporter's labels -> (our service labels, backend address, backend port)."""
    proto = labels["proto"]
    if proto == "FWM":
        svc = ("fwmark", "", "", str(int(labels["local_mark"], 16)))
    else:
        svc = (proto.lower(), labels["local_address"], labels["local_port"], "")
    return svc, labels["remote_address"], labels["remote_port"]


def test_common_series_match_node_exporter(main_run):
    ours = parse_samples(snap(main_run, "exporter.prom"))
    theirs = parse_samples(snap(main_run, "node_exporter.prom"))
    pairs = {"node_ipvs_backend_connections_active": "nodenet_ipvs_backend_connections_active",
             "node_ipvs_backend_connections_inactive": "nodenet_ipvs_backend_connections_inactive",
             "node_ipvs_backend_weight": "nodenet_ipvs_backend_weight"}
    index = {}
    for (name, ls), v in ours.items():
        if name in pairs.values():
            d = dict(ls)
            key = ((d["protocol"], d["address"], d["port"], d["fwmark"]), d["backend_address"],
                   d["backend_port"])
            index[(name, key)] = v
    compared, misattributed = 0, []
    for (name, ls), v in theirs.items():
        if name not in pairs:
            continue
        key = _node_exporter_key(dict(ls))
        if (pairs[name], key) not in index:
            misattributed.append(key)
            continue
        assert index[(pairs[name], key)] == v, (name, key)
        compared += 1
    assert compared == 3 * 20
    # node_exporter 1.5 does not know SCTP lines in /proc/net/ip_vs: it credits the SCTP
    # service's two backends to the service listed before it
    assert len(misattributed) == 3 * 2
    assert {(b, p) for _, b, p in misattributed} == {("127.20.0.1", "3868"), ("127.20.0.2", "3868")}
    # its node-wide totals (/proc/net/ip_vs_stats) equal the sums of our per-service counters
    for ne, metric in (("node_ipvs_connections_total", "connections"),
                       ("node_ipvs_incoming_packets_total", "incoming_packets"),
                       ("node_ipvs_outgoing_packets_total", "outgoing_packets"),
                       ("node_ipvs_incoming_bytes_total", "incoming_bytes"),
                       ("node_ipvs_outgoing_bytes_total", "outgoing_bytes")):
        total = sum(v for (n, _), v in ours.items() if n == f"nodenet_ipvs_service_{metric}_total")
        assert sample(theirs, ne) == total, ne


def test_ip_vs_unloaded_mid_run(main_run):
    u = json.loads(main_run.read("unload.json"))
    assert u["rmmod_rc"] == 0, u["rmmod_err"]
    assert u["modules_after"] == [] and not u["proc_ip_vs_exists"]
    scrapes = u["scrapes"]
    assert len(scrapes) >= 20
    assert [s for s in scrapes if "error" in s or s["status"] != 200] == []
    assert all(s["success"] == 1.0 for s in scrapes), [s for s in scrapes if s["success"] != 1.0]
    before = [s for s in scrapes if s["t"] < u["t_unload"]]
    after = [s for s in scrapes if s["t"] > u["t_unloaded"] + 0.2]
    assert before and after
    assert all(s["available"] == 1.0 for s in before)
    assert all(s["available"] == 0.0 and s["modules"] == [] for s in after)
    # the exporter never brought ip_vs back, did not crash, and followed its return
    assert u["exporter_alive"] and u["exporter_alive_end"] and u["exporter_rc"] == 0
    s = parse_samples(snap(main_run, "exporter_reloaded.prom"))
    assert sample(s, "nodenet_ipvs_available") == 1 and sample(s, "nodenet_ipvs_services") == 1
    assert sample(s, "nodenet_ipvs_backend_weight", protocol="tcp", address="127.10.0.1", port="80",
                  fwmark="", family="ipv4", backend_address="127.20.0.1", backend_port="8080") == 1


def test_absent_ipvs_is_reported_and_never_loaded(absent_run):
    r = json.loads(absent_run.read("absent/result.json"))
    assert r["modules_at_start"] == [] and not r["proc_ip_vs_at_start"]
    s = parse_samples(absent_run.read("absent/exporter.prom"))
    assert sample(s, "nodenet_ipvs_available") == 0
    assert sample(s, "nodenet_scrape_collector_success", collector="ipvs") == 1
    assert r["modules_after_scrapes"] == []
    # the reader's family lookup (a dump) does not load it either, even without the check
    assert r["dump_resolution_id"] is None and r["modules_after_dump_resolution"] == []
    assert r["exporter_rc"] == 0
    # control: in this guest the kernel does autoload ip_vs for a by-name family request,
    # so the checks above are meaningful
    assert "ip_vs" in r["modules_after_control"], r
