"""The series budget of issue 17, on a namespace built like a real node (tests/helpers/podnode.py):
an underlay, a bridge, a VXLAN at 1450 and 110 pod veths with their peers in namespaces of their
own, conntrack entries; the exporter at default flags (plus --path.sysfs, so the underlay has a
driver link), node_exporter 1.5 at its defaults on the same namespace beside it.

Budget for a node with N CPUs: at most 600 + 8 x (N - 2) series in all, of which the per-CPU
families (a `cpu` label) at most 8 x N (600 on this 2-CPU machine; 1,096 on 64 CPUs).
Then a real Prometheus scrapes the exporter there with the rule file loaded: every alert and
recording rule must evaluate without error, and every metric a rule reads must have series,
except those that cannot exist on this node (IPVS: no ip_vs here; ENA: no AWS NIC).
"""
from __future__ import annotations

import json
import os
import time

import pytest
import yaml

from tests.helpers import alertstack as stack
from tests.helpers import dashboards as dh
from tests.helpers.exporter_proc import ExporterProcess
from tests.helpers.netns import call_in_netns
from tests.helpers.podnode import count_series, pod_node

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = os.path.join(ROOT, "alerts", "nodenet.rules.yaml")
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
CPUS = os.cpu_count() or 1
BUDGET_TOTAL = 600 + 8 * (CPUS - 2)
BUDGET_PER_CPU = 8
# metrics an alert reads that cannot have series on this node (and why)
ABSENT_HERE = {
    "nodenet_ipvs_service_backends_available": "no ip_vs module on this host kernel",
    "nodenet_interface_allowance_exceeded_total": "no ENA NIC outside AWS",
    # opt-in at default flags: collectors dropreason and netns (the pod view's recorded rates)
    # are off, --collector.sockets.ephemeral-ports is off
    "nodenet_packet_drops_total": "collector dropreason is off by default",
    "nodenet:netns_tcp_listen_overflows:rate5m": "collector netns is off by default",
    "nodenet:netns_udp_receive_buffer_errors:rate5m": "collector netns is off by default",
    "nodenet_netns_tcp_listen_overflows_total": "collector netns is off by default",
    "nodenet_netns_udp_receive_buffer_errors_total": "collector netns is off by default",
    "nodenet_netns_interface_receive_drops_total": "collector netns is off by default",
    "nodenet_netns_interface_transmit_drops_total": "collector netns is off by default",
    "nodenet_ephemeral_ports_max_in_use": "--collector.sockets.ephemeral-ports is off by default",
    # limits only the initial network namespace shows (the test node is a namespace)
    "nodenet_tcp_memory_limit_bytes": "tcp_mem is visible only in the initial namespace",
    "nodenet_udp_memory_limit_bytes": "udp_mem is visible only in the initial namespace",
    "nodenet_tcp_orphan_sockets_limit": "tcp_max_orphans is visible only in the initial namespace",
    # a namespace without packet filter tables has no table series (none are made here)
    "nodenet_netfilter_table_bytes": "no iptables-legacy table in the node namespace",
    "nodenet_netfilter_rules": "no iptables or nftables table in the node namespace",
}
# the kube-proxy pack reads kube-proxy's own job, the pod view's rules kube-state-metrics'
# kube_pod_info: neither runs here
OTHER_JOBS = ("kubeproxy_", "kube_pod_info")


@pytest.fixture(scope="module")
def node():
    with pod_node(pods=110) as built:
        yield built


def exporter_scrape(node, *flags) -> str:
    with ExporterProcess([f"--path.sysfs={node.sysfs}", *flags], netns=node.ns) as ex:
        ex.scrape()
        return ex.scrape()


def node_exporter_scrape(node) -> str:
    assert os.access(NODE_EXPORTER, os.X_OK), \
        f"{NODE_EXPORTER} missing (Debian prometheus-node-exporter; tests/run.sh installs it)"
    proc = stack.NetnsProcess(node.ns, [NODE_EXPORTER, "--web.listen-address=127.0.0.1:19101"],
                              log_path=os.path.join(node.sysfs, "node_exporter.log")).start()
    try:
        stack.wait_http(node.ns, "http://127.0.0.1:19101/metrics", 20, proc)
        return call_in_netns(node.ns, stack.http_get, "http://127.0.0.1:19101/metrics",
                             30).decode()
    finally:
        proc.stop()


def test_default_flags_stay_within_the_budget(node):
    text = exporter_scrape(node)
    total, per_cpu, families = count_series(text)
    full = exporter_scrape(node, "--collector.netdev.pod-interfaces=full")
    full_total, _, _ = count_series(full)
    # worst case: the top 10 pod veths (drops or errors) keep their own series
    per_veth = sum(1 for line in full.splitlines() if 'interface="veth00000001"' in line)
    kept = {line.split('interface="', 1)[1].split('"', 1)[0] for line in text.splitlines()
            if line.startswith("nodenet_interface_info{") and 'interface="veth' in line}
    worst = total + (10 - len(kept)) * per_veth
    ne_total, ne_cpu, _ = count_series(node_exporter_scrape(node))
    print(f"\nseries on a {node.pods}-pod node, {CPUS} CPUs: nodenet-exporter {total} "
          f"(per-CPU {per_cpu}; budget {BUDGET_TOTAL}, per-CPU {BUDGET_PER_CPU * CPUS}); "
          f"{len(kept)} pod veths with their own series; worst case with 10 {worst}; "
          f"with --collector.netdev.pod-interfaces=full {full_total}; "
          f"node_exporter 1.5 defaults {ne_total} (per-CPU {ne_cpu})")
    assert total <= BUDGET_TOTAL, sorted(families.items(), key=lambda kv: -kv[1])[:20]
    assert worst <= BUDGET_TOTAL, (worst, per_veth)
    assert per_cpu <= BUDGET_PER_CPU * CPUS
    assert families["nodenet_pod_interfaces"] == 1          # one master: cni0
    assert f'nodenet_pod_interfaces{{master="cni0",kind="veth"}} {node.pods}' in text
    assert full_total > total + 20 * node.pods              # every pod veth, one by one


def test_every_alert_expression_evaluates_on_the_node(node, tmp_path):
    stack.require_binaries(stack.PROMETHEUS)
    with ExporterProcess([f"--path.sysfs={node.sysfs}"], netns=node.ns) as ex:
        prom = stack.prometheus(node.ns, tmp_path, rule_files=[RULES], job="nodenet-exporter",
                                targets=[ex.address], alertmanager="127.0.0.1:1",
                                interval="1s", port=19090).start()
        try:
            base = "http://127.0.0.1:19090"
            stack.wait_http(node.ns, f"{base}/-/ready", 30, prom)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:       # three scrapes: rate() has samples
                got = stack.prom_query(node.ns, base,
                                       'count_over_time(up{job="nodenet-exporter"}[1m])')
                if got and float(got[0]["value"][1]) >= 3:
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"Prometheus did not scrape 3 times; log:\n{prom.log()[-2000:]}")
            time.sleep(2.5)                           # at least one rule evaluation after that
            body = json.loads(call_in_netns(node.ns, stack.http_get, f"{base}/api/v1/rules"))
            rules = [r for g in body["data"]["groups"] for r in g["rules"]]
            with open(RULES) as fh:
                want = [r.get("alert") or r["record"] for g in yaml.safe_load(fh)["groups"]
                        for r in g["rules"]]
            assert sorted(r["name"] for r in rules) == sorted(want)
            for r in rules:
                assert r["health"] == "ok" and not r.get("lastError"), (r["name"], r)
                stack.prom_query(node.ns, base, r["query"])      # raises on an error
                for metric in dh.metric_names(r["query"]) - {"up"}:
                    if metric in ABSENT_HERE or metric.startswith(OTHER_JOBS):
                        continue
                    q = f'count({metric}{{job="nodenet-exporter"}})'
                    assert stack.prom_query(node.ns, base, q), \
                        f"{r['name']}: no {metric} series on the node namespace"
        finally:
            prom.stop()
