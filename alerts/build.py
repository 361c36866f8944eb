#!/usr/bin/env python3
"""Generate nodenet-exporter's alert rules in both forms from one source.

Writes
  alerts/nodenet.rules.yaml       Prometheus rule file (rule_files: in prometheus.yml)
  deploy/prometheusrule.yaml      the same groups as a prometheus-operator PrometheusRule

The thresholds, for: windows, expressions and texts of the alerts that diagnose also judges
are checks in exporter/health.py (one entry each; its docstring says how to add one); alerts
not (yet) converted are plain alert(...) calls in rules() below.  Change the job selector HERE,
in one place, then run
    python alerts/build.py           # rewrite both files
    python alerts/build.py --check   # exit 1 if either file is not what this script makes
The selector is put on both sides of every ratio. The promtool tests in alerts/tests/ use the
default selector's job label, so they only hold for the default.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from exporter import health  # noqa: E402 - thresholds, for: windows and texts of the checks

# ----------------------------------------------------------------- the one place to configure
# Label matchers that select the exporter's series: the job name of the README's scrape config
# and of deploy/'s ServiceMonitor.
JOB_SELECTOR = 'job="nodenet-exporter"'
# Where docs/runbook.md is published (each alert links to its section, #<alert name, lower
# case>): exporter/health.py's RUNBOOK_URL, which diagnose prints too.
RUNBOOK_URL = health.RUNBOOK_URL
# PrometheusRule metadata.
OPERATOR_NAMESPACE = "nodenet-exporter"
OPERATOR_NAME = "nodenet-exporter"
OPERATOR_LABELS = {"app.kubernetes.io/name": "nodenet-exporter"}
# ----------------------------------------------------------------------------------------------

RULES_PATH = ROOT / "alerts" / "nodenet.rules.yaml"
OPERATOR_PATH = ROOT / "deploy" / "prometheusrule.yaml"

# The node an alert is about (the `node` label, else the instance), as health.py writes it.
NODE = health.NODE


def rules(sel: str = JOB_SELECTOR) -> list[dict]:
    """The rule groups. ``sel`` is spliced into every selector."""

    def alert(name, expr, for_, severity, summary, description):
        return {
            "alert": name,
            "expr": expr.strip() + "\n",
            "for": for_,
            "labels": {"severity": severity},
            "annotations": {
                "summary": summary,
                "description": description,
                "runbook_url": f"{RUNBOOK_URL}#{name.lower()}",
            },
        }

    # The alerts that are checks in exporter/health.py (threshold, for:, texts and the
    # expression live there, shared with `nodenet-exporter diagnose`), one list per group.
    conntrack = health.rules("conntrack", sel)
    ipvs = health.rules("ipvs", sel)
    cpu = health.rules("cpu", sel)
    network = health.rules("network", sel)
    exporter = health.rules("exporter", sel)
    limits = health.rules("limits", sel)   # issue 14: kernel limits (sockets, netstat, neighbour)

    # Plain alerts (not yet checks in exporter/health.py) are written here as before:
    #     mygroup = [alert("NodenetSomething", expr, "5m", "warning", summary, description)]
    # and appended to the list below; see exporter/health.py to turn one into a check.

    # ---- issue 17: drops below the kernel (ethtool collector): NIC driver and ENA allowances
    driver = health.rules("driver", sel)

    # ---- issue 17: the fleet view - per-node aggregates the overview dashboard reads. At
    # 5,000 nodes the overview's panels would otherwise sum per-CPU and per-interface series of
    # every node on every refresh; these keep job/instance (and interface) and nothing else.
    def record(name, expr):
        return {"record": name, "expr": expr.strip() + "\n"}

    def ct_rate(metric):
        return health.ct_rate_expr(sel, metric)

    fleet = [
        record("nodenet:conntrack_utilisation:ratio",
               health.ct_utilisation_expr(sel).replace("  ", "")),
        record("nodenet:conntrack_drops:rate5m", ct_rate("nodenet_conntrack_drops_total")),
        record("nodenet:conntrack_early_drops:rate5m",
               ct_rate("nodenet_conntrack_early_drops_total")),
        record("nodenet:conntrack_insert_failed:rate5m",
               ct_rate("nodenet_conntrack_insert_failed_total")),
        # the overview's time to full: deriv over 30 minutes of every node's entries was the
        # slowest unrecorded panel (0.9 s p95 over 15 minutes at 5,000 nodes); -1: not growing
        record("nodenet:conntrack_time_to_full_seconds:deriv30m",
               health.ct_time_to_full_expr(sel)),
        record("nodenet:cpu_steal:ratio_rate5m",
               health.steal_fraction_expr(sel).replace("  ", "")),
        record("nodenet:softnet_dropped:rate5m",
               f"sum without(cpu) (rate(nodenet_softnet_dropped_total{{{sel}}}[5m]))"),
        record("nodenet:softnet_times_squeezed:rate5m",
               f"sum without(cpu) (rate(nodenet_softnet_times_squeezed_total{{{sel}}}[5m]))"),
        record("nodenet:interface_drops:rate5m",
               f"rate(nodenet_interface_receive_drops_total{{{sel}}}[5m])\n+\n"
               f"rate(nodenet_interface_transmit_drops_total{{{sel}}}[5m])"),
    ] + [record(f"nodenet:interface_{d}_{what}:rate5m",
                f"rate(nodenet_interface_{d}_{what}_total{{{sel}}}[5m])")
         for d in ("receive", "transmit") for what in ("drops", "packets")]

    # The overview's "Interfaces with drops" table reads only the interfaces dropping now
    # (receive + transmit drops > 0): a handful of series instead of every interface of every
    # node (20,000 per metric at 5,000 nodes, 1.4-2.7 s over 15 minutes even recorded).
    def if_rate(direction, what):
        return f"rate(nodenet_interface_{direction}_{what}_total{{{sel}}}[5m])"

    dropping = f"(\n  {if_rate('receive', 'drops')}\n  +\n  {if_rate('transmit', 'drops')}\n) > 0"
    fleet += [record(f"nodenet:interface_dropping_{d}_drops:rate5m",
                     f"{if_rate(d, 'drops')}\nand\n{dropping}")
              for d in ("receive", "transmit")]
    fleet += [record(f"nodenet:interface_dropping_{d}_drops:ratio_rate5m",
                     f"(\n  {if_rate(d, 'drops')}\n  /\n  {if_rate(d, 'packets')}\n)\n"
                     f"and\n{dropping}")
              for d in ("receive", "transmit")]

    # The exporter's own health at fleet scale: 5,000 nodes x ~12 collectors is 60,000 series
    # per metric, 0.6-1.3 s for the overview's two collector panels. Failing collectors are
    # recorded as a count per node (0 when none fails) and each node's slowest collector
    # once (topk 1 per node keeps its collector label).
    fleet += [
        record("nodenet:scrape_collectors_failing:count",
               f"sum by (job, instance) (1 - nodenet_scrape_collector_success{{{sel}}})"),
        record("nodenet:scrape_collector_duration_seconds:topk1",
               f"topk by (job, instance) (1, nodenet_scrape_collector_duration_seconds{{{sel}}})"),
    ]

    return [
        {"name": "nodenet-conntrack", "rules": conntrack},
        {"name": "nodenet-ipvs", "rules": ipvs},
        {"name": "nodenet-cpu", "rules": cpu},
        {"name": "nodenet-network", "rules": network},
        {"name": "nodenet-exporter", "rules": exporter},
        {"name": "nodenet-limits", "rules": limits},
        {"name": "nodenet-dropreason", "rules": health.rules("dropreason", sel)},
        {"name": "nodenet-netfilter", "rules": health.rules("netfilter", sel)},
        *other_jobs_groups(alert),
        {"name": "nodenet-driver", "rules": driver},
        {"name": "nodenet-fleet", "rules": fleet},
        {"name": "nodenet-podview", "rules": podview_rules(sel)},
    ]


# ------------------------------------------------------------------ netfilter (issue 19)
# kube-proxy's own metrics endpoint (:10249), for users who scrape it: its job selector, in one
# place. The group is separate from ours; nodenet-exporter's selector is never spliced into it.
KUBE_PROXY_SELECTOR = 'job="kube-proxy"'
# Rules per table above which NodenetNetfilterRulesetLarge fires (docs/runbook.md explains why):
# the check's threshold in exporter/health.py.
NETFILTER_RULES_LARGE = health.by_name()["NodenetNetfilterRulesetLarge"].threshold


# Rule groups on OTHER jobs' metrics (not nodenet-exporter's): nodenet never reads those
# series, so they are no checks of exporter/health.py and diagnose cannot judge them; the test
# that every alert is a check skips exactly these groups (and checks that they read no nodenet
# series).
OTHER_JOBS_GROUPS = ("nodenet-kube-proxy",)


def other_jobs_groups(alert, kp: str = KUBE_PROXY_SELECTOR) -> list[dict]:
    """The kube-proxy pack, on kube-proxy's own metrics (issue 19)."""
    def p99(metric):
        return f"histogram_quantile(0.99, rate({metric}_bucket{{{kp}}}[5m]))"

    last = f"kubeproxy_sync_proxy_rules_last_timestamp_seconds{{{kp}}}"
    queued = f"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{{{kp}}}"
    kube_proxy = [
        alert("NodenetKubeProxySyncSlow",
              f"{p99('kubeproxy_sync_proxy_rules_duration_seconds')} > 10",
              "15m", "warning",
              "kube-proxy takes more than 10 seconds to sync its rules.",
              f"kube-proxy on node {NODE} ({{{{ $labels.ip_family }}}}) needs"
              f" {{{{ printf \"%.3g\" $value }}}}s per rule sync (p99 over 5 minutes): Service"
              f" and endpoint changes reach this node late."),
        alert("NodenetKubeProxySyncStale",
              f"(\n  {queued}\n>\n  {last}\n)\n"
              f"and\n(\n  time() - {last}\n) > 60",
              "5m", "critical",
              "kube-proxy has pending changes it has not synced.",
              f"kube-proxy on node {NODE} ({{{{ $labels.ip_family }}}}) has had Service or"
              f" endpoint changes queued and no successful rule sync for more than 5 minutes"
              f" (kube-proxy's own /healthz reports unhealthy after 2 x syncPeriod): this node"
              f" routes Services to stale endpoints."),
        alert("NodenetKubeProxyIptablesRestoreFailures",
              f"rate(kubeproxy_sync_proxy_rules_iptables_restore_failures_total{{{kp}}}[5m]) > 0",
              "15m", "warning",
              "kube-proxy's iptables-restore keeps failing.",
              f"kube-proxy on node {NODE} ({{{{ $labels.ip_family }}}}) has failed"
              f" iptables-restore {{{{ printf \"%.2g\" $value }}}} times per second for 15"
              f" minutes: its rules on this node are not updated."),
        alert("NodenetKubeProxyNftablesSyncFailures",
              f"rate(kubeproxy_sync_proxy_rules_nftables_sync_failures_total{{{kp}}}[5m]) > 0",
              "15m", "warning",
              "kube-proxy's nftables sync keeps failing.",
              f"kube-proxy on node {NODE} ({{{{ $labels.ip_family }}}}) has failed its nftables"
              f" sync {{{{ printf \"%.2g\" $value }}}} times per second for 15 minutes: its"
              f" rules on this node are not updated."),
    ]
    return [{"name": "nodenet-kube-proxy", "rules": kube_proxy}]


# ----------------------------------------------------------------- dropreason (issue 16)
# The trouble list, the rate and the for: are exporter/health.py's (DROP_REASONS_TROUBLE and the
# NodenetPacketDropsByReason check), shared with diagnose; these names stay for readers of this
# file.
DROP_REASONS_TROUBLE = health.DROP_REASONS_TROUBLE
DROP_REASONS_RATE = health.by_name()["NodenetPacketDropsByReason"].threshold
DROP_REASONS_FOR = health.by_name()["NodenetPacketDropsByReason"].for_


# --------------------------------------------------------------- issue 15: the pod view
# kube-state-metrics' kube_pod_info{uid, namespace, pod}, renamed so that the exporter pod's own
# target labels `namespace`/`pod` (prometheus-operator) are never overwritten.
POD_INFO = ('max by (pod_uid, pod_namespace, pod_name) (label_replace(label_replace('
            'label_replace(kube_pod_info{uid!=""}, "pod_uid", "$1", "uid", "(.+)"), '
            '"pod_namespace", "$1", "namespace", "(.*)"), "pod_name", "$1", "pod", "(.*)"))')
# The recorded rates the pod alerts read, and the pod template: exporter/health.py's.
POD_RECORDS = health.POD_RECORDS
POD = health.POD
# Each pod's own interface drops (collector netns: the pod's eth0 counted inside its namespace,
# labelled with its UID), per direction, joined like the records above. Sparse: only the pod
# interfaces dropping now are recorded (a node's 110 pods would otherwise add 220 series of
# zeros per node). The per-pod source of interface drops; the netdev pod summary
# (--collector.netdev.pod-interfaces=summary) keeps only the top N host-side veths.
POD_INTERFACE_DROPS_RECORD = "nodenet:netns_interface_drops:rate5m"
POD_INTERFACE_DROPS = tuple((d, f"nodenet_netns_interface_{d}_drops_total")
                            for d in ("receive", "transmit"))


def pod_interface_drops(sel: str) -> str:
    rates = "\n  or\n".join(
        f'  label_replace(rate({metric}{{{sel}}}[5m]), "direction", "{d}", "", "")'
        for d, metric in POD_INTERFACE_DROPS)
    return f"(\n{rates}\n) > 0"


def podview_rules(sel: str) -> list[dict]:
    """Per pod network namespace (collector netns) and per destination (sockets): recording
    rules that join pod_uid to kube_pod_info (pod_namespace, pod_name; without
    kube-state-metrics the rate is recorded unjoined), then the alerts on them."""
    out: list[dict] = []
    for record, metric in POD_RECORDS:
        rate = f"sum without(family) (rate({metric}{{{sel}}}[5m]))"
        out.append({"record": record,
                    "expr": f"{rate}\n* on(pod_uid) group_left(pod_namespace, pod_name)\n"
                            f"{POD_INFO}\nor ignoring(pod_namespace, pod_name)\n{rate}\n"})
    drops = pod_interface_drops(sel)
    out.append({"record": POD_INTERFACE_DROPS_RECORD,
                "expr": f"(\n{drops}\n)\n* on(pod_uid) group_left(pod_namespace, pod_name)\n"
                        f"{POD_INFO}\nor ignoring(pod_namespace, pod_name)\n{drops}\n"})
    # the alerts on them: checks in exporter/health.py (diagnose judges the counters)
    out += health.rules("podview", sel)
    return out


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, data):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)
HEADER = ("# Generated by alerts/build.py - do not edit; change alerts/build.py and run\n"
          "# `python alerts/build.py`.\n")


def dump(doc) -> str:
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=10_000,
                              default_flow_style=False, allow_unicode=True)


def render(sel: str = JOB_SELECTOR) -> dict[pathlib.Path, str]:
    groups = rules(sel)
    operator = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": OPERATOR_NAME, "namespace": OPERATOR_NAMESPACE,
                     "labels": dict(OPERATOR_LABELS)},
        "spec": {"groups": groups},
    }
    return {RULES_PATH: dump({"groups": groups}), OPERATOR_PATH: dump(operator)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true",
                   help="do not write; exit 1 if a file differs from what would be written")
    args = p.parse_args(argv)
    stale = []
    for path, text in render().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        verb = "out of date" if args.check else "written"
        print(f"{path.relative_to(ROOT)}: {verb}", file=sys.stderr if args.check else sys.stdout)
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
