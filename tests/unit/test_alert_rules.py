"""The alert rules: valid for the real promtool, unit-tested, generated, documented, and using
only metrics the exporter exports.

Needs Debian's `prometheus` package (promtool); fails, not skips, without it.
"""
from __future__ import annotations

import importlib.util
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "nodenet.rules.yaml"
OPERATOR = ROOT / "deploy" / "prometheusrule.yaml"
RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yaml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "metrics.prom"
JOB = 'job="nodenet-exporter"'

# Issue 5: alert name -> (for, severity). NodenetCPUStealCritical is the optional one.
EXPECTED_ALERTS = {
    "NodenetConntrackTableNearFull": ("5m", "warning"),
    "NodenetConntrackTableFull": ("2m", "critical"),
    "NodenetConntrackTablePredictedFull": ("15m", "warning"),
    "NodenetConntrackDropping": ("2m", "critical"),
    "NodenetConntrackInsertFailures": ("10m", "warning"),
    "NodenetIPVSServiceNoBackends": ("10m", "warning"),
    "NodenetCPUStealHigh": ("15m", "warning"),
    "NodenetCPUStealCritical": ("15m", "critical"),
    "NodenetSoftnetDrops": ("10m", "warning"),
    "NodenetInterfaceDrops": ("15m", "warning"),
    "NodenetOverlayMTUMismatch": ("5m", "warning"),
    "NodenetCollectorFailing": ("15m", "warning"),
    "NodenetExporterDown": ("5m", "warning"),
    # issue 16 (dropreason)
    "NodenetPacketDropsByReason": ("10m", "warning"),
    # issue 19: the packet filter, and the kube-proxy pack (its own group and job selector)
    "NodenetNetfilterRulesetLarge": ("1h", "warning"),
    "NodenetNetfilterRulesetChurn": ("30m", "warning"),
    "NodenetKubeProxySyncSlow": ("15m", "warning"),
    "NodenetKubeProxySyncStale": ("5m", "critical"),
    "NodenetKubeProxyIptablesRestoreFailures": ("15m", "warning"),
    "NodenetKubeProxyNftablesSyncFailures": ("15m", "warning"),
    # issue 17: drops below the kernel
    "NodenetCloudAllowanceExceeded": ("5m", "warning"),
    "NodenetDriverDrops": ("15m", "warning"),
}

# Issue 17: the recording rules the overview dashboard reads (per-node aggregates).
EXPECTED_RECORDS = {
    "nodenet:conntrack_utilisation:ratio", "nodenet:conntrack_drops:rate5m",
    "nodenet:conntrack_early_drops:rate5m",
    "nodenet:conntrack_insert_failed:rate5m", "nodenet:cpu_steal:ratio_rate5m",
    "nodenet:conntrack_time_to_full_seconds:deriv30m",
    "nodenet:softnet_dropped:rate5m", "nodenet:softnet_times_squeezed:rate5m",
    "nodenet:interface_drops:rate5m",
    "nodenet:interface_receive_drops:rate5m", "nodenet:interface_transmit_drops:rate5m",
    "nodenet:interface_receive_packets:rate5m", "nodenet:interface_transmit_packets:rate5m",
    # sparse: only the interfaces dropping now (the overview's "Interfaces with drops")
    "nodenet:interface_dropping_receive_drops:rate5m",
    "nodenet:interface_dropping_transmit_drops:rate5m",
    "nodenet:interface_dropping_receive_drops:ratio_rate5m",
    "nodenet:interface_dropping_transmit_drops:ratio_rate5m",
    # the exporter's own health: nodes with failing collectors (sparse), each node's slowest
    "nodenet:scrape_collectors_failing:count", "nodenet:scrape_collector_duration_seconds:topk1",
    # the pod view: per-pod rates joined to kube_pod_info (pod_namespace, pod_name)
    "nodenet:netns_tcp_listen_overflows:rate5m", "nodenet:netns_udp_receive_buffer_errors:rate5m",
    # each pod's own interface drops (sparse: only while they drop), per direction
    "nodenet:netns_interface_drops:rate5m",
}
# issue 19: the group on kube-proxy's own metrics (names from kube-proxy's metrics reference),
# selected by its own job selector instead of nodenet-exporter's.
KUBE_PROXY_GROUP = "nodenet-kube-proxy"
KUBE_PROXY_JOB = 'job="kube-proxy"'
KUBE_PROXY_METRICS = {
    "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
}
# Issue 14 (kernel limits). NodenetFileHandlesNearLimit has two rules: 0.8 warning, 0.9 critical.
EXPECTED_ALERTS.update({
    "NodenetNeighbourTableNearFull": ("10m", "warning"),
    "NodenetNeighbourTableOverflow": ("1m", "critical"),
    "NodenetTCPMemoryPressure": ("5m", "warning"),
    "NodenetTimeWaitOverflow": ("10m", "warning"),
    "NodenetOrphanSocketsNearLimit": ("5m", "warning"),
    "NodenetFileHandlesNearLimit": {("5m", "warning"), ("5m", "critical")},
    "NodenetTCPListenOverflows": ("2m", "warning"),
    "NodenetUDPReceiveBufferErrors": ("2m", "warning"),
    "NodenetIPReassemblyFailures": ("15m", "warning"),
    "NodenetEphemeralPortsOverlapNodePorts": ("15m", "warning"),
})
# Issue 15 (the pod view, ephemeral ports per destination).
EXPECTED_ALERTS.update({
    "NodenetPodTCPListenOverflows": ("2m", "warning"),
    "NodenetPodUDPReceiveBufferErrors": ("2m", "warning"),
    "NodenetEphemeralPortsNearExhaustion": ("5m", "warning"),
})
RULE_COUNT = sum(len(v) if isinstance(v, set) else 1 for v in EXPECTED_ALERTS.values())

# The metric names that issues 2, 3, 4 and 9 promise (sample names, counters with _total).
CONTRACT_METRICS = {
    # issue 2: framework, cpu, softnet, sysctl
    "nodenet_scrape_collector_success", "nodenet_scrape_collector_duration_seconds",
    "nodenet_build_info", "nodenet_cpu_steal_seconds_total", "nodenet_cpus",
    "nodenet_softnet_processed_total", "nodenet_softnet_dropped_total",
    "nodenet_softnet_times_squeezed_total", "nodenet_sysctl_value",
    # issue 3: conntrack
    "nodenet_conntrack_entries", "nodenet_conntrack_entries_limit", "nodenet_conntrack_buckets",
    "nodenet_conntrack_expect_entries", "nodenet_conntrack_found_total",
    "nodenet_conntrack_invalid_total", "nodenet_conntrack_inserts_total",
    "nodenet_conntrack_insert_failed_total", "nodenet_conntrack_drops_total",
    "nodenet_conntrack_early_drops_total", "nodenet_conntrack_errors_total",
    "nodenet_conntrack_search_restarts_total", "nodenet_conntrack_clash_resolves_total",
    "nodenet_conntrack_chain_too_long_total", "nodenet_conntrack_available",
    "nodenet_conntrack_source_info", "nodenet_conntrack_entries_by_state",
    # issue 4: ipvs
    "nodenet_ipvs_available", "nodenet_ipvs_services", "nodenet_ipvs_backends",
    "nodenet_ipvs_service_info", "nodenet_ipvs_service_connections_total",
    "nodenet_ipvs_service_incoming_packets_total", "nodenet_ipvs_service_outgoing_packets_total",
    "nodenet_ipvs_service_incoming_bytes_total", "nodenet_ipvs_service_outgoing_bytes_total",
    "nodenet_ipvs_service_backends", "nodenet_ipvs_service_backends_available",
    "nodenet_ipvs_backend_connections_active", "nodenet_ipvs_backend_connections_inactive",
    "nodenet_ipvs_backend_connections_persistent", "nodenet_ipvs_backend_weight",
    "nodenet_ipvs_backend_connections_total", "nodenet_ipvs_backend_incoming_packets_total",
    "nodenet_ipvs_backend_outgoing_packets_total", "nodenet_ipvs_backend_incoming_bytes_total",
    "nodenet_ipvs_backend_outgoing_bytes_total",
    # issue 9: interfaces
    "nodenet_interface_info", "nodenet_interface_mtu_bytes",
    "nodenet_interface_receive_bytes_total", "nodenet_interface_receive_packets_total",
    "nodenet_interface_receive_drops_total", "nodenet_interface_receive_errors_total",
    "nodenet_interface_transmit_bytes_total", "nodenet_interface_transmit_packets_total",
    "nodenet_interface_transmit_drops_total", "nodenet_interface_transmit_errors_total",
    "nodenet_overlay_mtu_headroom_bytes", "nodenet_interface_mtu_above_overlay_bytes",
    # issue 14: kernel limits
    "nodenet_neighbour_entries", "nodenet_neighbour_entries_limit",
    "nodenet_neighbour_table_fulls_total", "nodenet_tcp_memory_bytes",
    "nodenet_tcp_memory_limit_bytes", "nodenet_tcp_memory_pressures_total",
    "nodenet_tcp_timewait_overflows_total", "nodenet_tcp_orphan_sockets",
    "nodenet_tcp_orphan_sockets_limit", "nodenet_file_handles", "nodenet_file_handles_limit",
    "nodenet_tcp_listen_overflows_total", "nodenet_udp_receive_buffer_errors_total",
    "nodenet_ip_reassembly_failures_total", "nodenet_ephemeral_ports_nodeport_overlap",
    # issue 16: dropreason
    "nodenet_packet_drops_total", "nodenet_dropreason_available",
    # issue 19: netfilter
    "nodenet_netfilter_rules", "nodenet_netfilter_chains", "nodenet_netfilter_chain_rules",
    "nodenet_netfilter_table_bytes", "nodenet_netfilter_ruleset_commits_total",
    "nodenet_netfilter_available",
    # issue 17: ethtool
    "nodenet_interface_driver_drops_total", "nodenet_interface_driver_errors_total",
    "nodenet_interface_allowance_exceeded_total", "nodenet_interface_conntrack_allowance_available",
    "nodenet_interface_driver_info",
    # issue 15: the pod view (alerts use the recorded rates below), ephemeral ports
    "nodenet_ephemeral_ports_max_in_use", "nodenet_ephemeral_ports_range_size",
    "nodenet_netns_tcp_listen_overflows_total", "nodenet_netns_udp_receive_buffer_errors_total",
    # issue 17: each pod's own interface drops (recorded as nodenet:netns_interface_drops:rate5m)
    "nodenet_netns_interface_receive_drops_total", "nodenet_netns_interface_transmit_drops_total",
}
# Metrics only an AWS ENA NIC exports (no such NIC where the golden test runs); the driver
# fixtures of tests/unit/test_ethtool_collector.py pin them.
ENA_ONLY = {"nodenet_interface_allowance_exceeded_total",
            "nodenet_interface_conntrack_allowance_available"}
# Series Prometheus makes itself for every target (not in any exposition).
SYNTHETIC_METRICS = {"up"}
# Series the rule file records itself (level:metric:operation names), each from a recording rule.
RECORDED_METRICS = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"]
                    for r in g["rules"] if "record" in r}

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                "group_right", "bool", "offset", "inf", "nan"}


def load_build():
    spec = importlib.util.spec_from_file_location("nodenet_alerts_build", ROOT / "alerts" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def all_rules() -> list[dict]:
    """The alerting rules (recording rules: all_records())."""
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def all_records() -> list[dict]:
    return [r for g in rule_groups() for r in g["rules"] if "record" in r]


def kube_proxy_alerts() -> set[str]:
    return {r["alert"] for g in rule_groups() if g["name"] == KUBE_PROXY_GROUP
            for r in g["rules"]}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package "
                    "(apt-get install prometheus); tests/run.sh does this")
    return path


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (selectors), by elimination."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                     # string literals
    s = re.sub(r"\{[^}]*\}", "", s)                                     # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)                                    # range / subquery
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(", "(", s)               # function calls
    s = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b", " ", s)              # numbers
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s))
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$",
                                                           RUNBOOK.read_text(), re.MULTILINE)}


# ---------------------------------------------------------------------------- promtool
def test_promtool_check_rules():
    res = subprocess.run([promtool(), "check", "rules", str(RULES)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    n = RULE_COUNT + len(EXPECTED_RECORDS)
    assert f"SUCCESS: {n} rules found" in res.stdout, res.stdout


def test_promtool_check_rules_of_the_prometheusrule(tmp_path):
    spec = yaml.safe_load(OPERATOR.read_text())["spec"]
    extracted = tmp_path / "from-prometheusrule.yaml"
    extracted.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    res = subprocess.run([promtool(), "check", "rules", str(extracted)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_rules():
    assert RULE_TESTS, "no promtool test files in alerts/tests/"
    res = subprocess.run([promtool(), "test", "rules", *map(str, RULE_TESTS)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(RULE_TESTS), res.stdout


# ---------------------------------------------------------------------------- generator
def test_rule_files_are_what_the_generator_writes():
    build = load_build()
    rendered = build.render()
    assert set(rendered) == {RULES, OPERATOR}
    for path, text in rendered.items():
        assert path.read_text() == text, (
            f"{path.relative_to(ROOT)} differs from alerts/build.py's output: "
            f"run `python alerts/build.py` (do not edit the YAML by hand)")


def test_generator_check_mode_agrees():
    res = subprocess.run(["python", str(ROOT / "alerts" / "build.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_job_selector_is_configurable_in_one_place():
    build = load_build()
    other = build.rules('job="my-nodenet"')
    text = yaml.safe_dump(other)
    assert "nodenet-exporter\"" not in "".join(r["expr"] for g in other for r in g["rules"])
    assert text.count('job="my-nodenet"') == yaml.safe_dump(build.rules()).count(JOB)


def test_prometheusrule_carries_exactly_the_same_rules():
    doc = yaml.safe_load(OPERATOR.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["name"] == "nodenet-exporter"
    assert doc["metadata"]["namespace"] == "nodenet-exporter"
    assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "nodenet-exporter"
    assert doc["spec"]["groups"] == rule_groups()


# ---------------------------------------------------------------------------- rule contents
def test_exactly_the_alerts_of_the_issue_with_their_for_and_severity():
    got: dict = {}
    for r in all_rules():
        got.setdefault(r["alert"], set()).add((r.get("for"), r.get("labels", {}).get("severity")))
    assert len(all_rules()) == sum(map(len, got.values())), "duplicate alert name and severity"
    assert got == {k: v if isinstance(v, set) else {v} for k, v in EXPECTED_ALERTS.items()}


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r["alert"])
def test_every_rule_is_complete(rule):
    assert rule.get("for"), "no for:"
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    ann = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert ann.get(key), f"no {key}"
    # The description names the node (node label or instance) and is templated.
    assert "$labels.instance" in ann["description"] or "$labels.node" in ann["description"]
    assert "{{" not in ann["summary"], "summary is a fixed headline"


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r["alert"])
def test_job_selector_on_every_selector(rule):
    sels = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", rule["expr"])
    names = metric_names(rule["expr"])
    assert names, rule["expr"]
    # every metric is written with a matcher block, and every block carries the job selector
    assert {n for n, _ in sels} == names, f"selector without labels in {rule['expr']}"
    job = KUBE_PROXY_JOB if rule["alert"] in kube_proxy_alerts() else JOB
    for name, matchers in sels:
        assert job in matchers, f"{name}{{{matchers}}} lacks {job}"


def test_runbook_url_anchors_exist_in_the_runbook():
    build = load_build()
    anchors = runbook_anchors()
    for rule in all_rules():
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == build.RUNBOOK_URL and base.endswith("docs/runbook.md"), url
        assert anchor == rule["alert"].lower(), url
        assert anchor in anchors, f"docs/runbook.md has no section #{anchor}"


def test_runbook_sections_say_what_the_issue_asks():
    text = RUNBOOK.read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    by_name = {s.split("\n", 1)[0].strip(): s for s in sections}
    for name in EXPECTED_ALERTS:
        body = by_name.get(name)
        assert body, f"no section for {name}"
        for part in ("**Meaning.**", "**What breaks for users.**", "**Confirm on the node.**",
                     "**Fix.**", "**Why"):
            assert part in body, f"{name}: no {part}"
    for tool in ("conntrack -S", "sysctl", "ip -d link", "ipvsadm -Ln --stats", "curl",
                 "nf_conntrack_buckets", "50 bytes below", "70 on an IPv6"):
        assert tool in text, f"runbook never mentions {tool!r}"


# ---------------------------------------------------------------------------- recording rules
def test_exactly_the_recording_rules_each_with_the_job_selector_and_a_promtool_case():
    records = all_records()
    assert {r["record"] for r in records} == EXPECTED_RECORDS
    tested = set()
    for f in RULE_TESTS:
        for group in yaml.safe_load(f.read_text())["tests"]:
            tested |= {case["expr"] for case in group.get("promql_expr_test", [])
                       if case.get("exp_samples")}
    for r in records:
        assert r["record"].startswith("nodenet:") and r["record"].count(":") == 2, r["record"]
        sels = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", r["expr"])
        assert {n for n, _ in sels} == metric_names(r["expr"]), r["expr"]
        # kube_pod_info is kube-state-metrics' (the pod view's join): its own job
        for name, matchers in sels:
            if name != "kube_pod_info":
                assert JOB in matchers, f"{r['record']}: {name}{{{matchers}}} lacks {JOB}"
        assert metric_names(r["expr"]) - {"kube_pod_info"} <= CONTRACT_METRICS, r["expr"]
        assert r["record"] in tested, f"{r['record']}: no promtool promql_expr_test case"


# ---------------------------------------------------------------------------- promtool cases
def _cases():
    """alert name -> list of (test file, group index, eval_time minutes, firing?)."""
    out: dict[str, list[tuple[str, int, float, bool]]] = {}
    for f in RULE_TESTS:
        doc = yaml.safe_load(f.read_text())
        for gi, group in enumerate(doc["tests"]):
            for case in group.get("alert_rule_test", []):
                t = case["eval_time"]
                assert t.endswith("m"), f"{f.name}: use minutes for eval_time ({t})"
                out.setdefault(case["alertname"], []).append(
                    (f.name, gi, float(t[:-1]), bool(case.get("exp_alerts"))))
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_every_alert_has_firing_just_before_and_negative_cases(name):
    cases = _cases().get(name, [])
    firing = [c for c in cases if c[3]]
    quiet = [c for c in cases if not c[3]]
    assert firing, f"{name}: no case where it fires"
    just_before = [q for q in quiet for fc in firing
                   if q[:2] == fc[:2] and q[2] == fc[2] - 1]
    assert just_before, f"{name}: no non-firing case 1m before a firing case in the same series"
    negative = [q for q in quiet if q not in just_before]
    assert negative, f"{name}: no negative case"


def test_promtool_expectations_include_severity_and_runbook_url():
    for f in RULE_TESTS:
        for group in yaml.safe_load(f.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                for exp in case.get("exp_alerts") or []:
                    assert exp["exp_labels"].get("severity"), f"{f.name}: {case}"
                    ann = exp["exp_annotations"]
                    assert ann["runbook_url"].endswith("#" + case["alertname"].lower())
                    assert ann.get("summary") and ann.get("description")


# ---------------------------------------------------------------------------- metric names
def test_metric_name_parser_finds_selectors():
    expr = ('(sum without(cpu) (rate(a_total{job="x"}[5m])) / on(instance) b{job="x"}) > 0.1 '
            'and absent(up{job="x"}) unless ignoring(kind) c{kind="veth"} or label_replace('
            'd, "direction", "receive", "", "")')
    assert metric_names(expr) == {"a_total", "b", "up", "c", "d"}


def test_rules_use_only_contract_metric_names():
    used = set().union(*(metric_names(r["expr"]) for r in all_rules()))
    unknown = (used - CONTRACT_METRICS - SYNTHETIC_METRICS - KUBE_PROXY_METRICS
               - RECORDED_METRICS)
    assert not unknown, f"metrics not in the contract of issues 2/3/4/9: {sorted(unknown)}"


def _golden_names() -> set[str]:
    """Metric names the golden exposition declares (# TYPE lines are kept even for the series
    that the golden test drops as volatile)."""
    return {line.split()[2] for line in GOLDEN.read_text().splitlines()
            if line.startswith("# TYPE ")}


def test_rules_use_only_metrics_the_exporter_exports():
    """Every name must be declared by a collector, and be in the golden exposition unless its
    subsystem cannot exist where the golden test runs (IPVS: this host kernel has no ip_vs; those
    series are checked against a real IPVS kernel in tests/vm/test_ipvs_uml.py)."""
    from exporter import docs

    declared = docs.all_metrics()
    exported = _golden_names()
    used = (set().union(*(metric_names(r["expr"]) for r in all_rules()
                          if r["alert"] not in kube_proxy_alerts()))
            - SYNTHETIC_METRICS - RECORDED_METRICS)
    undeclared = used - set(declared)
    assert not undeclared, f"the rules use metrics no collector declares: {sorted(undeclared)}"
    # dropreason is off by default (needs CAP_BPF): its series are checked on the real kernel in
    # tests/integration/test_dropreason.py.
    missing = {n for n in used - exported - ENA_ONLY
               if declared[n][0] not in ("ipvs", "dropreason")}
    assert not missing, (f"the rules use metrics that {GOLDEN.relative_to(ROOT)} does not "
                         f"contain: {sorted(missing)}")


def test_recording_rules_are_named_and_read_only_declared_metrics():
    from exporter import docs

    declared = docs.all_metrics()
    for r in all_records():
        assert re.fullmatch(r"nodenet:[a-z0-9_]+:[a-z0-9_]+", r["record"]), r["record"]
        names = metric_names(r["expr"]) - {"kube_pod_info"}
        assert names and names <= set(declared), (r["record"], names - set(declared))
        assert JOB in r["expr"]
