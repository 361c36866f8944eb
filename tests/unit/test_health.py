"""exporter/health.py: one table for alerts and diagnose; the judges on synthetic readings."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import re

import pytest

from exporter import health
from exporter.collectors import load_all
from exporter.collectors.base import REGISTRY
from exporter.health import Pair, Reading
from exporter.metrics import COUNTER, GAUGE, Metric, Table

ROOT = pathlib.Path(__file__).resolve().parents[2]
META = {"nodenet_scrape_collector_success", "nodenet_scrape_collector_duration_seconds"}
# The alerts two readings cannot decide, and nothing else.
NOT_JUDGED = {"NodenetConntrackTablePredictedFull", "NodenetExporterDown"}


def load_build():
    spec = importlib.util.spec_from_file_location("nodenet_alerts_build_h",
                                                  ROOT / "alerts" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def alerts(groups) -> dict[str, dict]:
    """The alerting rules by name (recording rules, which groups may hold too, left out)."""
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


# ------------------------------------------------------------------ one source of truth

def test_every_alert_is_a_check_and_every_check_an_alert():
    # keyed by (name, severity): one alert name may come in two severities (two rules)
    build = load_build()
    groups = [g for g in build.rules() if g["name"] not in build.OTHER_JOBS_GROUPS]
    rendered = {(r["alert"], r["labels"]["severity"]): r for g in groups for r in g["rules"]
                if "alert" in r}
    assert len(rendered) == sum(1 for g in groups for r in g["rules"] if "alert" in r), (
        "a rule rendered twice")
    checks = health.by_key()
    plain = sorted({name for name, _ in set(rendered) - set(checks)})
    assert not plain, (
        f"alerts written as plain alert(...) in alerts/build.py, not checks in "
        f"exporter/health.py: {plain}. Convert each into a Check (see health.py's docstring); "
        f"one two readings cannot judge gets judge=None and a not_judged reason")
    assert set(checks) - set(rendered) == set(), "a check that renders no alert"
    for key, check in checks.items():
        assert rendered[key] == check.rule('job="nodenet-exporter"')


def test_the_groups_on_other_jobs_metrics_read_no_nodenet_series():
    """The one documented exception: groups on another job's own metrics (the kube-proxy
    pack) are plain alerts, as nodenet never reads those series."""
    build = load_build()
    other = [g for g in build.rules() if g["name"] in build.OTHER_JOBS_GROUPS]
    assert [g["name"] for g in other] == list(build.OTHER_JOBS_GROUPS)
    for group in other:
        for rule in group["rules"]:
            assert rule["alert"] not in {c.name for c in health.CHECKS}
            assert "nodenet_" not in rule["expr"] and build.JOB_SELECTOR not in rule["expr"]
            assert re.search(r'\{job="[^"]+"', rule["expr"]), rule["expr"]


def test_one_name_in_two_severities_is_two_entries_of_one_shape():
    files = health.levels("NodenetFileHandlesNearLimit")
    assert [(c.severity, c.threshold) for c in files] == [("warning", 0.8), ("critical", 0.9)]
    assert "NodenetFileHandlesNearLimit" not in health.by_name()   # no one threshold to give
    assert health.by_key()["NodenetFileHandlesNearLimit", "critical"] is files[1]
    with pytest.raises(ValueError, match="two entries of severity warning"):
        health.validate([files[0], dataclasses.replace(files[0], threshold=0.7)])
    with pytest.raises(ValueError, match="differ in group"):
        health.validate([files[0], dataclasses.replace(files[1], group="other")])


def test_only_the_documented_alerts_are_not_judged_and_each_says_why():
    not_judged = {c.name: c.not_judged for c in health.CHECKS if c.judge is None}
    assert set(not_judged) == NOT_JUDGED
    for name, reason in not_judged.items():
        assert len(reason) > 30, (name, reason)


def test_every_check_group_is_rendered_by_build():
    names = [g["name"] for g in load_build().rules()]
    for group in health.groups():
        assert f"nodenet-{group}" in names, f"health group {group} missing from alerts/build.py"


def test_inputs_are_exactly_the_metrics_the_expression_reads_and_the_collector_has():
    load_all()
    for check in health.CHECKS:
        expr = check.expr('job="x"', check.threshold_text)
        used = set(re.findall(r"\b(nodenet_[a-z0-9_]+|up)\{", expr))
        extra = set(check.inputs) - used
        # a judge may read more (e.g. MTUs for its message): those must be real metrics too
        assert used <= set(check.inputs), (check.name, used - set(check.inputs))
        declared = ({m.name for c in check.collectors for m in REGISTRY[c].metrics}
                    if check.collector else META | health.SYNTHETIC_INPUTS)
        assert set(check.inputs) <= declared, (check.name, set(check.inputs) - declared)
        if check.collector:
            assert extra <= declared


def test_a_threshold_changed_once_changes_the_alert_and_the_judge(monkeypatch):
    old = health.by_name()["NodenetConntrackTableNearFull"]
    new = dataclasses.replace(old, threshold=0.6, for_="7m")
    monkeypatch.setattr(health, "CHECKS",
                        tuple(new if c is old else c for c in health.CHECKS))
    rule = alerts(load_build().rules())["NodenetConntrackTableNearFull"]
    assert ") > 0.60\n" in rule["expr"] and rule["for"] == "7m"
    assert rule["annotations"]["summary"] == "Conntrack table is more than 60% full."
    pair = ct_pair(entries=170, limit=262)   # 65%: above 0.6, below the shipped 0.75
    got = health.evaluate(pair, ["conntrack"], health.CHECKS)
    assert [f.check for f in got] == ["NodenetConntrackTableNearFull"]
    assert got[0].alert_for == "7m" and "threshold 60%" in got[0].message
    assert health.evaluate(pair, ["conntrack"]) != []  # module default now the new table
    assert old.judge is not None
    assert list(old.judge(old, pair)) == []


def test_placeholders_are_replaced_and_go_templates_kept():
    c = health.by_name()["NodenetIPVSServiceNoBackends"]
    text = c.fill(c.description, 'job="j"')
    assert "for 10 minutes" in text and "{{ $labels.port }}" in text and "{node}" not in text
    assert health.duration_words("1h") == "1 hour" and health.duration_words("90s") == "90 seconds"


# ------------------------------------------------------------------ readings

def reading(t: float, **series) -> Reading:
    """reading(0, nodenet_x=[({"a": "1"}, 5)], nodenet_y=3)"""
    out = {}
    for name, value in series.items():
        out[name] = value if isinstance(value, list) else [({}, float(value))]
    return Reading(t, 1_700_000_000 + t, out)


def ct_pair(entries, limit, drops=(0, 0), early=(0, 0), failed=(0, 0), dt=2.0) -> Pair:
    prev = reading(0, nodenet_conntrack_entries=entries, nodenet_conntrack_entries_limit=limit,
                   nodenet_conntrack_drops_total=drops[0],
                   nodenet_conntrack_early_drops_total=early[0],
                   nodenet_conntrack_insert_failed_total=failed[0])
    cur = reading(dt, nodenet_conntrack_entries=entries, nodenet_conntrack_entries_limit=limit,
                  nodenet_conntrack_drops_total=drops[1],
                  nodenet_conntrack_early_drops_total=early[1],
                  nodenet_conntrack_insert_failed_total=failed[1])
    return Pair(prev, cur)


def judge(name: str, pair: Pair, severity: str | None = None):
    check = health.by_name()[name] if severity is None else health.by_key()[name, severity]
    return list(check.judge(check, pair))


def test_reading_from_families_and_tables_keeps_wanted_series_and_counts_the_rest():
    a = Metric("nodenet_a", GAUGE, "a", ("x",))
    b = Metric("nodenet_b_total", COUNTER, "b", ("x", "y"))
    c = Metric("nodenet_c", GAUGE, "c", ("x", "y", "extra"))
    fam = a.family()
    fam.add(("1",), 5)
    fam.add(("2",), 7)
    table = Table((b, c), ("x", "y"))
    table.add(('q"uo\\te', "line\nbreak"), 3, (1, "e1"))
    r = Reading.from_families([fam, table], t=1.0, wanted={"nodenet_a", "nodenet_c",
                                                           "nodenet_b_total"})
    assert r.series("nodenet_a") == [({"x": "1"}, 5.0), ({"x": "2"}, 7.0)]
    assert r.series("nodenet_b_total") == [({"x": 'q"uo\\te', "y": "line\nbreak"}, 3.0)]
    assert r.series("nodenet_c") == [({"x": 'q"uo\\te', "y": "line\nbreak", "extra": "e1"}, 1.0)]
    assert r.value("nodenet_a") == 12 and r.value("nodenet_a", x="2") == 7
    few = Reading.from_families([fam, table], t=1.0, wanted={"nodenet_a"})
    assert few.series("nodenet_b_total") == [] and few.counts == {
        "nodenet_a": 2, "nodenet_b_total": 1, "nodenet_c": 1}


def test_rate_sums_without_labels_and_treats_a_counter_going_back_as_a_reset():
    prev = reading(10, nodenet_x_total=[({"cpu": "0", "k": "a"}, 100), ({"cpu": "1", "k": "a"}, 50),
                                        ({"cpu": "0", "k": "b"}, 7)])
    cur = reading(12, nodenet_x_total=[({"cpu": "0", "k": "a"}, 110), ({"cpu": "1", "k": "a"}, 4),
                                       ({"cpu": "0", "k": "b"}, 7), ({"cpu": "9", "k": "b"}, 99)])
    pair = Pair(prev, cur)
    assert pair.rate("nodenet_x_total", without=("cpu",)) == {
        (("k", "a"),): (10 + 4) / 2, (("k", "b"),): 0.0}   # the new series (cpu 9) counts not
    assert pair.total_rate("nodenet_x_total") == 7.0
    assert pair.total_rate("nodenet_missing_total") is None
    assert Pair(cur, cur).rate("nodenet_x_total") == {}    # dt 0: no rate


# ------------------------------------------------------------------ the judges

def test_conntrack_fill_judges_at_and_above_their_thresholds():
    assert judge("NodenetConntrackTableNearFull", ct_pair(750, 1000)) == []   # > 0.75, not ==
    near = judge("NodenetConntrackTableNearFull", ct_pair(751, 1000, drops=(10, 2418)))
    assert len(near) == 1 and near[0].value == pytest.approx(0.751)
    assert near[0].message == ("conntrack table 75% full (751 of 1,000), threshold 75%; "
                               "1,204 drops/s")
    assert judge("NodenetConntrackTableFull", ct_pair(751, 1000)) == []
    full = judge("NodenetConntrackTableFull", ct_pair(241_172, 262_144))
    assert full[0].message.startswith("conntrack table 92% full (241,172 of 262,144), "
                                      "threshold 90%")
    assert judge("NodenetConntrackTableFull", ct_pair(900, 0)) == []   # limit unknown / 0


def test_conntrack_drops_and_insert_failures_are_rates_over_the_interval():
    assert judge("NodenetConntrackDropping", ct_pair(1, 10)) == []
    got = judge("NodenetConntrackDropping", ct_pair(10, 10, drops=(5, 9), early=(0, 2), dt=2))
    assert got[0].value == 3.0
    assert got[0].message.startswith("conntrack dropping 3 packets/s (drops 2/s + early drops "
                                     "1/s), threshold 0/s; table 100% full")
    failed = judge("NodenetConntrackInsertFailures", ct_pair(1, 10, failed=(0, 1), dt=4))
    assert failed[0].value == 0.25
    assert judge("NodenetConntrackInsertFailures", ct_pair(1, 10, failed=(3, 3))) == []


def test_ipvs_service_without_usable_backend():
    svc = {"protocol": "tcp", "address": "10.0.0.1", "port": "80", "fwmark": "", "family": "ipv4"}
    v6 = {"protocol": "udp", "address": "fd00::1", "port": "53", "fwmark": "", "family": "ipv6"}
    fw = {"protocol": "fwmark", "address": "", "port": "", "fwmark": "7", "family": "ipv4"}
    cur = reading(2, nodenet_ipvs_service_backends_available=[(svc, 0), (v6, 0), (fw, 2)],
                  nodenet_ipvs_service_backends=[(svc, 3), (v6, 0), (fw, 2)])
    got = judge("NodenetIPVSServiceNoBackends", Pair(reading(0), cur))
    assert [v.message for v in got] == [
        "IPVS service tcp/10.0.0.1:80 has 0 of 3 backends with weight > 0",
        "IPVS service udp/[fd00::1]:53 has 0 of 0 backends with weight > 0"]
    assert got[0].labels == svc


def test_cpu_steal_fraction_of_the_node():
    def pair(steal0, steal1, cpus=2, dt=10):
        def steal(s0):
            return [({"cpu": "0"}, s0), ({"cpu": "1"}, 0)]
        return Pair(reading(0, nodenet_cpu_steal_seconds_total=steal(steal0), nodenet_cpus=cpus),
                    reading(dt, nodenet_cpu_steal_seconds_total=steal(steal1), nodenet_cpus=cpus))
    assert judge("NodenetCPUStealHigh", pair(0, 2)) == []         # 2 s of 20 CPU-s: 0.10
    high = judge("NodenetCPUStealHigh", pair(0, 3))
    assert high[0].message == "CPU steal 15% of 2 CPUs, threshold 10%"
    assert judge("NodenetCPUStealCritical", pair(0, 3)) == []
    assert judge("NodenetCPUStealCritical", pair(0, 6))[0].value == pytest.approx(0.3)


def test_softnet_drops_any_cpu():
    prev = reading(0, nodenet_softnet_dropped_total=[({"cpu": "0"}, 0), ({"cpu": "1"}, 4)])
    quiet = reading(2, nodenet_softnet_dropped_total=[({"cpu": "0"}, 0), ({"cpu": "1"}, 4)])
    busy = reading(2, nodenet_softnet_dropped_total=[({"cpu": "0"}, 60), ({"cpu": "1"}, 14)])
    assert judge("NodenetSoftnetDrops", Pair(prev, quiet)) == []
    got = judge("NodenetSoftnetDrops", Pair(prev, busy))
    assert got[0].message == ("softnet backlog dropping 35 packets/s (cpu0 30/s, cpu1 5/s), "
                              "threshold 0/s")


def test_interface_drops_ratio_per_direction_down_veths_left_out_x_over_0_as_in_promql():
    def iface(name, kind, operstate="up"):
        return ({"interface": name, "kind": kind, "operstate": operstate, "master": "",
                 "underlay": ""}, 1)

    # veth1: a pod veth kept by the netdev summary, both sides up: judged like any interface;
    # veth2: its other side is down (the alert's `unless ... operstate!="up"`): left out
    info = [iface("eth0", "physical"), iface("veth1", "veth"), iface("eth1", "physical"),
            iface("veth2", "veth", "lowerlayerdown")]

    def series(**per_if):
        return [({"interface": k}, v) for k, v in per_if.items()]

    zero = dict(eth0=0, veth1=0, eth1=0, veth2=0)
    prev = reading(0, nodenet_interface_info=info,
                   nodenet_interface_receive_packets_total=series(**zero),
                   nodenet_interface_receive_drops_total=series(**zero),
                   nodenet_interface_transmit_packets_total=series(**zero),
                   nodenet_interface_transmit_drops_total=series(**zero))
    cur = reading(2, nodenet_interface_info=info,
                  nodenet_interface_receive_packets_total=series(eth0=2000, veth1=1000, eth1=0,
                                                                 veth2=1000),
                  nodenet_interface_receive_drops_total=series(eth0=42, veth1=500, eth1=0,
                                                               veth2=500),
                  nodenet_interface_transmit_packets_total=series(eth0=1000, veth1=0, eth1=0,
                                                                  veth2=0),
                  nodenet_interface_transmit_drops_total=series(eth0=10, veth1=0, eth1=5,
                                                                veth2=0))
    got = judge("NodenetInterfaceDrops", Pair(prev, cur))
    assert [(v.labels, v.message) for v in got] == [
        ({"interface": "eth0", "direction": "receive"},
         "interface eth0 drops 2.1% of its received packets (21/s of 1,000/s), threshold 1%"),
        ({"interface": "veth1", "direction": "receive"},
         "interface veth1 drops 50% of its received packets (250/s of 500/s), threshold 1%"),
        # eth1 transmit: drops while no packet gets through: x/0 is +Inf in PromQL, the alert
        # fires, and so does the judge (its value has no finite number: null in JSON)
        ({"interface": "eth1", "direction": "transmit"},
         "interface eth1 drops 2.5/s of its transmitted packets while none get through")]
    assert got[-1].value == math.inf
    # eth0 transmit: exactly 1% (not above); eth1 receive and veth1 transmit: 0/0, no ratio


def test_overlay_negative_headroom_names_both_mtus():
    labels = {"interface": "vx0", "kind": "vxlan", "underlay": "dum0"}
    ok = {"interface": "vx1", "kind": "vxlan", "underlay": "dum0"}
    cur = reading(2, nodenet_overlay_mtu_headroom_bytes=[(labels, -100), (ok, 0)],
                  nodenet_interface_mtu_bytes=[({"interface": "vx0"}, 1450),
                                               ({"interface": "dum0"}, 1400)])
    got = judge("NodenetOverlayMTUMismatch", Pair(reading(0), cur))
    assert [v.message for v in got] == [
        "vxlan vx0 has -100 bytes of MTU headroom over underlay dum0 (tunnel MTU 1,450, "
        "underlay MTU 1,400), threshold 0"]


def test_collector_failing_names_the_error():
    cur = reading(2, nodenet_scrape_collector_success=[({"collector": "ipvs"}, 0),
                                                       ({"collector": "cpu"}, 1)])
    cur.errors["ipvs"] = "timed out after 4s"
    got = judge("NodenetCollectorFailing", Pair(reading(0), cur))
    assert [v.message for v in got] == ["collector ipvs failed its collection: timed out after 4s"]


def test_evaluate_orders_worst_first_skips_disabled_collectors_and_sets_the_exit_code():
    pair = ct_pair(950, 1000, drops=(0, 10))
    cur = pair.cur
    cur._series["nodenet_overlay_mtu_headroom_bytes"] = [
        ({"interface": "vx0", "kind": "vxlan", "underlay": "e"}, -1)]
    got = health.evaluate(pair, ["conntrack", "netdev"])
    assert [(f.check, f.severity) for f in got] == [
        ("NodenetConntrackTableFull", "critical"), ("NodenetConntrackDropping", "critical"),
        ("NodenetConntrackTableNearFull", "warning"), ("NodenetOverlayMTUMismatch", "warning")]
    assert got[0].runbook_url == health.RUNBOOK_URL + "#nodenetconntracktablefull"
    assert health.exit_code(got) == 2
    assert health.exit_code(got[2:]) == 1 and health.exit_code([]) == 0
    only_netdev = health.evaluate(pair, ["netdev"])
    assert [f.check for f in only_netdev] == ["NodenetOverlayMTUMismatch"]


def test_plain_words():
    assert health.num(241172) == "241,172" and health.num(0) == "0" and health.num(2.5) == "2.5"
    assert health.num(0.25) == "0.25" and health.num(-100) == "-100"
    assert health.pct(0.92) == "92%" and health.pct(0.0123) == "1.2%" and health.pct(0) == "0%"


def test_a_reading_keeps_no_family_alive_only_the_wanted_sample_lists():
    import gc
    import weakref

    a = Metric("nodenet_a", GAUGE, "a", ("x",))
    big = Metric("nodenet_big", GAUGE, "big", ("x",))
    wanted, unwanted = a.family(), big.family()
    wanted.add(("1",), 5)
    for i in range(1000):
        unwanted.add((str(i),), i)
    refs = [weakref.ref(wanted), weakref.ref(unwanted)]
    r = Reading.from_families([wanted, unwanted], t=0.0, wanted={"nodenet_a"})
    del wanted, unwanted
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    assert r.counts == {"nodenet_a": 1, "nodenet_big": 1000}
    assert r.series("nodenet_a") == [({"x": "1"}, 5.0)] and r.series("nodenet_big") == []


def test_judge_makers_rate_above_and_gauge():
    check = dataclasses.replace(health.by_name()["NodenetSoftnetDrops"], threshold=1)
    prev = reading(0, nodenet_q_total=[({"cpu": "0", "port": "80"}, 0),
                                       ({"cpu": "1", "port": "80"}, 0),
                                       ({"cpu": "0", "port": "443"}, 0)])
    cur = reading(2, nodenet_q_total=[({"cpu": "0", "port": "80"}, 4),
                                      ({"cpu": "1", "port": "80"}, 2),
                                      ({"cpu": "0", "port": "443"}, 2)])
    judge_rate = health.rate_above("nodenet_q_total", "{value} overflows/s")
    got = list(judge_rate(check, Pair(prev, cur)))
    assert [(v.value, v.labels, v.message) for v in got] == [
        (3.0, {"port": "80"}, "3 overflows/s (port 80), threshold 1/s")]   # 443: 1/s, not > 1
    judge_gauge = health.gauge("nodenet_free", "<", "{value} free")
    g = Pair(reading(0), reading(2, nodenet_free=[({"pool": "a"}, 0.5), ({"pool": "b"}, 1)]))
    assert [v.message for v in judge_gauge(check, g)] == ["0.5 free (pool a), threshold < 1"]


# ------------------------------------------------------------------ kernel limits (issue 14)

def counters(name: str, before, after, dt: float = 2.0, labels=None) -> Pair:
    """A pair of readings of one counter (a list of (labels, value) or one unlabelled value)."""
    def series(v):
        return v if isinstance(v, list) else [(labels or {}, v)]
    return Pair(reading(0, **{name: series(before)}), reading(dt, **{name: series(after)}))


def test_neighbour_table_fill_per_table_against_its_own_gc_thresh3():
    def pair(arp, ndisc, limit_ndisc=1024):
        cur = reading(2, nodenet_neighbour_entries=[({"table": "arp_cache"}, arp),
                                                    ({"table": "ndisc_cache"}, ndisc)],
                      nodenet_neighbour_entries_limit=[({"table": "arp_cache"}, 1024),
                                                       ({"table": "ndisc_cache"}, limit_ndisc)])
        return Pair(reading(0), cur)
    got = judge("NodenetNeighbourTableNearFull", pair(900, 100))
    assert [(v.labels, v.message) for v in got] == [
        ({"table": "arp_cache"}, "neighbour table arp_cache holds 88% of gc_thresh3 (900 of "
                                 "1,024), threshold 80%")]
    assert got[0].value == pytest.approx(900 / 1024)
    assert judge("NodenetNeighbourTableNearFull", pair(819, 100)) == []   # 79.98%
    # a 0 limit (and limit > 0 in the rule) or a table without a limit: no ratio
    assert judge("NodenetNeighbourTableNearFull", pair(100, 900, limit_ndisc=0)) == []
    only = Pair(reading(0), reading(2, nodenet_neighbour_entries=[({"table": "x"}, 9)]))
    assert judge("NodenetNeighbourTableNearFull", only) == []


def test_neighbour_table_overflow_is_the_increase_between_the_readings():
    before = [({"table": "arp_cache"}, 10), ({"table": "ndisc_cache"}, 5)]
    after = [({"table": "arp_cache"}, 13), ({"table": "ndisc_cache"}, 5)]
    got = judge("NodenetNeighbourTableOverflow",
                counters("nodenet_neighbour_table_fulls_total", before, after))
    assert [(v.value, v.labels, v.message) for v in got] == [
        (3.0, {"table": "arp_cache"}, "neighbour table arp_cache full (a new entry refused) "
                                      "3 times in 2 s, threshold 0")]
    assert judge("NodenetNeighbourTableOverflow",
                 counters("nodenet_neighbour_table_fulls_total", before, before)) == []


def test_tcp_memory_at_the_pressure_level_or_entering_pressure():
    limits = [({"level": "low"}, 100), ({"level": "pressure"}, 200), ({"level": "high"}, 300)]

    def pair(mem, pressures=(7, 7), with_limits=True):
        extra = {"nodenet_tcp_memory_limit_bytes": limits} if with_limits else {}
        return Pair(reading(0, nodenet_tcp_memory_pressures_total=pressures[0]),
                    reading(2, nodenet_tcp_memory_bytes=mem,
                            nodenet_tcp_memory_pressures_total=pressures[1], **extra))
    assert judge("NodenetTCPMemoryPressure", pair(199)) == []
    at = judge("NodenetTCPMemoryPressure", pair(200, pressures=(7, 9)))   # >= 1: the ratio
    assert [(v.value, v.message) for v in at] == [
        (1.0, "TCP memory at 100% of the tcp_mem pressure level (200 of 200 bytes), "
              "threshold >= 100%")]
    # outside the initial namespace tcp_mem is not visible: the counter alone decides
    entered = judge("NodenetTCPMemoryPressure", pair(50, pressures=(7, 9), with_limits=False))
    assert [(v.value, v.message) for v in entered] == [
        (2.0, "TCP entered memory pressure 2 times in 2 s (TCPMemoryPressures), threshold 0")]
    assert judge("NodenetTCPMemoryPressure", pair(50, with_limits=False)) == []


def test_tcp_memory_pressure_runs_with_either_of_its_collectors():
    pair = Pair(reading(0, nodenet_tcp_memory_pressures_total=0),
                reading(2, nodenet_tcp_memory_pressures_total=1))
    for enabled in (["netstat"], ["sockets"], ["sockets", "netstat"]):
        got = health.evaluate(pair, enabled)
        assert [(f.check, f.collector) for f in got] == [
            ("NodenetTCPMemoryPressure", enabled[0])], enabled
    assert health.evaluate(pair, ["cpu"]) == []


def test_orphans_and_file_handles_against_their_limits():
    def pair(**gauges):
        return Pair(reading(0), reading(2, **gauges))
    orphans = judge("NodenetOrphanSocketsNearLimit",
                    pair(nodenet_tcp_orphan_sockets=52_000,
                         nodenet_tcp_orphan_sockets_limit=65_536))
    assert orphans == []   # 79.3%: below
    orphans = judge("NodenetOrphanSocketsNearLimit",
                    pair(nodenet_tcp_orphan_sockets=60_000,
                         nodenet_tcp_orphan_sockets_limit=65_536))
    assert [v.message for v in orphans] == [
        "orphaned TCP sockets at 92% of tcp_max_orphans (60,000 of 65,536), threshold 80%"]
    # outside the initial namespace tcp_max_orphans is absent: nothing to compare with
    assert judge("NodenetOrphanSocketsNearLimit", pair(nodenet_tcp_orphan_sockets=60_000)) == []

    files = pair(nodenet_file_handles=850, nodenet_file_handles_limit=1000)
    warn = judge("NodenetFileHandlesNearLimit", files, "warning")
    assert [(v.value, v.message) for v in warn] == [
        (0.85, "file handles at 85% of fs.file-max (850 of 1,000), threshold 80%")]
    assert judge("NodenetFileHandlesNearLimit", files, "critical") == []
    crit = judge("NodenetFileHandlesNearLimit",
                 pair(nodenet_file_handles=901, nodenet_file_handles_limit=1000), "critical")
    assert [v.message for v in crit] == [
        "file handles at 90% of fs.file-max (901 of 1,000), threshold 90%"]
    got = health.evaluate(pair(nodenet_file_handles=950, nodenet_file_handles_limit=1000),
                          ["sockets"])
    assert [(f.check, f.severity, f.threshold) for f in got] == [
        ("NodenetFileHandlesNearLimit", "critical", 0.9),
        ("NodenetFileHandlesNearLimit", "warning", 0.8)]


def test_protocol_counters_are_rates_over_the_interval():
    tw = judge("NodenetTimeWaitOverflow",
               counters("nodenet_tcp_timewait_overflows_total", 100, 140, dt=4))
    assert [(v.value, v.message) for v in tw] == [
        (10.0, "10 TIME_WAIT sockets/s not kept (tcp_max_tw_buckets reached), threshold 0/s")]
    listen = judge("NodenetTCPListenOverflows",
                   counters("nodenet_tcp_listen_overflows_total", 3, 39))
    assert [(v.value, v.message) for v in listen] == [
        (18.0, "18 connections/s dropped at a full accept queue (ListenOverflows), "
               "threshold 0/s")]
    assert judge("NodenetTCPListenOverflows",
                 counters("nodenet_tcp_listen_overflows_total", 3, 3)) == []
    udp = judge("NodenetUDPReceiveBufferErrors", counters(
        "nodenet_udp_receive_buffer_errors_total",
        [({"family": "ipv4"}, 0), ({"family": "ipv6"}, 5)],
        [({"family": "ipv4"}, 41), ({"family": "ipv6"}, 5)]))
    assert [(v.labels, v.message) for v in udp] == [
        ({"family": "ipv4"}, "20.5 ipv4 UDP datagrams/s dropped at a full receive buffer "
                             "(RcvbufErrors), threshold 0/s")]
    reasm = judge("NodenetIPReassemblyFailures", counters(
        "nodenet_ip_reassembly_failures_total", [({"family": "ipv6"}, 0)],
        [({"family": "ipv6"}, 1)], dt=2))
    assert [v.message for v in reasm] == [
        "0.5 ipv6 reassemblies/s failing (ReasmFails), threshold 0/s"]


def test_ephemeral_ports_overlapping_nodeports():
    def pair(overlap):
        return Pair(reading(0), reading(2, nodenet_ephemeral_ports_nodeport_overlap=overlap))
    assert judge("NodenetEphemeralPortsOverlapNodePorts", pair(0)) == []
    got = judge("NodenetEphemeralPortsOverlapNodePorts", pair(2768))
    assert [v.message for v in got] == [
        "2,768 NodePorts inside ip_local_port_range, not reserved, threshold > 0"]


def test_a_label_named_in_the_words_is_not_repeated_after_them():
    check = health.by_name()["NodenetUDPReceiveBufferErrors"]
    j = health.rate_above("nodenet_u_total", "{value} {family} drops/s", without=())
    got = list(j(check, counters("nodenet_u_total", [({"family": "ipv4", "x": "1"}, 0)],
                                 [({"family": "ipv4", "x": "1"}, 2)])))
    assert [v.message for v in got] == ["1 ipv4 drops/s (x 1), threshold 0/s"]


# ------------------------------------------------------------------ drop reasons, netfilter

def test_packet_drops_by_a_trouble_reason_summed_over_protocols():
    before = [({"reason": "QDISC_DROP", "protocol": "ipv4"}, 0),
              ({"reason": "QDISC_DROP", "protocol": "ipv6"}, 0),
              ({"reason": "NO_SOCKET", "protocol": "ipv4"}, 0),          # background
              ({"reason": "CPU_BACKLOG", "protocol": "ipv4"}, 0)]
    after = [({"reason": "QDISC_DROP", "protocol": "ipv4"}, 3),
             ({"reason": "QDISC_DROP", "protocol": "ipv6"}, 2),
             ({"reason": "NO_SOCKET", "protocol": "ipv4"}, 5000),
             ({"reason": "CPU_BACKLOG", "protocol": "ipv4"}, 2)]
    got = judge("NodenetPacketDropsByReason",
                counters("nodenet_packet_drops_total", before, after, dt=2))
    # QDISC_DROP 2.5/s over both protocols; CPU_BACKLOG 1/s is not above 1; NO_SOCKET not listed
    assert [(v.value, v.labels, v.message) for v in got] == [
        (2.5, {"reason": "QDISC_DROP"}, "2.5 packets/s dropped with reason QDISC_DROP, "
                                        "threshold 1/s")]
    assert "NO_SOCKET" not in health.DROP_REASONS_TROUBLE
    rule = health.by_name()["NodenetPacketDropsByReason"].rule('job="j"')
    assert '|'.join(health.DROP_REASONS_TROUBLE) in rule["expr"]
    with pytest.raises(ValueError, match="summed away"):
        health.rate_above("nodenet_x_total", "{value}", without=("reason",),
                          where={"reason": {"A"}})


def test_netfilter_ruleset_large_per_table():
    t = {"backend": "legacy", "family": "ipv4", "table": "nat"}
    small = {"backend": "nftables", "family": "ip", "table": "kube-proxy"}
    pair = Pair(reading(0), reading(2, nodenet_netfilter_rules=[(t, 24_310), (small, 20_000)]))
    got = judge("NodenetNetfilterRulesetLarge", pair)
    assert [(v.labels, v.message) for v in got] == [
        (t, "table nat (legacy, ipv4) holds 24,310 rules, threshold > 20,000")]


def test_netfilter_churn_is_the_nftables_commit_rate():
    busy = judge("NodenetNetfilterRulesetChurn",
                 counters("nodenet_netfilter_ruleset_commits_total", 41, 45, dt=4))
    assert [(v.value, v.message) for v in busy] == [
        (1.0, "1 nftables ruleset commits/s, threshold 0.5/s")]
    assert judge("NodenetNetfilterRulesetChurn",
                 counters("nodenet_netfilter_ruleset_commits_total", 41, 43, dt=4)) == []  # 0.5
    # legacy table sizes alone: the alert's 10-minute share of changes, not judged here
    t = {"backend": "legacy", "family": "ipv4", "table": "filter"}
    legacy = Pair(reading(0, nodenet_netfilter_table_bytes=[(t, 1000)]),
                  reading(2, nodenet_netfilter_table_bytes=[(t, 2000)]))
    assert judge("NodenetNetfilterRulesetChurn", legacy) == []


# ------------------------------------------------------------------ driver (ethtool)

def test_cloud_allowance_exceeded_is_the_increase_per_interface_and_allowance():
    pps = {"interface": "eth0", "allowance": "pps"}
    bw = {"interface": "eth0", "allowance": "bw_in"}
    got = judge("NodenetCloudAllowanceExceeded", counters(
        "nodenet_interface_allowance_exceeded_total", [(pps, 100), (bw, 7)],
        [(pps, 160), (bw, 7)]))
    assert [(v.value, v.labels, v.message) for v in got] == [
        (60.0, pps, "interface eth0 exceeded its pps allowance: 60 packets queued or dropped "
                    "in 2 s, threshold 0")]


def test_driver_drops_per_counter_and_interface():
    rx = {"interface": "eth0", "counter": "rx_dropped"}
    tx = {"interface": "eth0", "counter": "tx_queue_dropped"}
    got = judge("NodenetDriverDrops", counters(
        "nodenet_interface_driver_drops_total", [(rx, 0), (tx, 5)], [(rx, 9), (tx, 5)], dt=3))
    assert [(v.value, v.labels, v.message) for v in got] == [
        (3.0, rx, "driver counter rx_dropped of eth0 dropping 3 packets/s, threshold 0/s")]
    # a counter that went back (driver reset): counted from 0, as rate() does
    reset = judge("NodenetDriverDrops", counters(
        "nodenet_interface_driver_drops_total", [(rx, 1000)], [(rx, 4)], dt=2))
    assert [v.value for v in reset] == [2.0]


# ------------------------------------------------------------------ pod view

POD_A = {"netns": "", "netns_inode": "4026532301", "pod_uid": "0b5c-a"}
POD_B = {"netns": "cni-1", "netns_inode": "4026532302", "pod_uid": ""}


def test_pod_listen_overflows_per_network_namespace():
    got = judge("NodenetPodTCPListenOverflows", counters(
        "nodenet_netns_tcp_listen_overflows_total", [(POD_A, 10), (POD_B, 3)],
        [(POD_A, 30), (POD_B, 3)]))
    assert [(v.value, v.labels, v.message) for v in got] == [
        (10.0, POD_A, "10 connections/s dropped at a full accept queue in a pod's network "
                      "namespace (netns , netns_inode 4026532301, pod_uid 0b5c-a), "
                      "threshold 0/s")]
    # the alert reads the recorded rate; the check names the counter that rule reads
    check = health.by_name()["NodenetPodTCPListenOverflows"]
    assert check.rule('job="j"')["expr"] == (
        'nodenet:netns_tcp_listen_overflows:rate5m{job="j"} > 0\n')
    assert health.POD_RECORDS[0] == ("nodenet:netns_tcp_listen_overflows:rate5m",
                                     check.inputs[0])


def test_pod_udp_receive_buffer_errors_summed_over_families():
    v4, v6 = {**POD_B, "family": "ipv4"}, {**POD_B, "family": "ipv6"}
    got = judge("NodenetPodUDPReceiveBufferErrors", counters(
        "nodenet_netns_udp_receive_buffer_errors_total", [(v4, 0), (v6, 0)], [(v4, 3), (v6, 1)]))
    assert [(v.value, v.labels) for v in got] == [(2.0, POD_B)]
    assert got[0].message.startswith("2 UDP datagrams/s dropped at a full receive buffer in a "
                                     "pod's network namespace (netns cni-1, ")


def test_ephemeral_ports_near_exhaustion_names_the_busiest_destination():
    def pair(most):
        return Pair(reading(0), reading(
            2, nodenet_ephemeral_ports_max_in_use=most,
            nodenet_ephemeral_ports_range_size=28_232,
            nodenet_ephemeral_ports_in_use=[
                ({"source": "10.0.0.5", "destination": "10.96.0.10:53"}, 100),
                ({"source": "10.0.0.5", "destination": "10.1.2.3:443"}, most)]))
    assert judge("NodenetEphemeralPortsNearExhaustion", pair(22_000)) == []   # 78%
    got = judge("NodenetEphemeralPortsNearExhaustion", pair(25_000))
    assert [(v.value, v.message) for v in got] == [
        (pytest.approx(25_000 / 28_232),
         "89% of the ephemeral port range in use towards one destination (25,000 of 28,232 "
         "ports), threshold 80%; busiest 10.0.0.5 -> 10.1.2.3:443 (25,000 ports)")]
