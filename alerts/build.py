#!/usr/bin/env python3
"""Generate nodenet-exporter's alert rules in both forms from one source.

Writes
  alerts/nodenet.rules.yaml       Prometheus rule file (rule_files: in prometheus.yml)
  deploy/prometheusrule.yaml      the same groups as a prometheus-operator PrometheusRule

Change the job selector (or the runbook location) HERE, in one place, then run
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

# ----------------------------------------------------------------- the one place to configure
# Label matchers that select the exporter's series: the job name of the README's scrape config
# and of deploy/'s ServiceMonitor.
JOB_SELECTOR = 'job="nodenet-exporter"'
# Where docs/runbook.md is published; each alert links to its section (#<alert name, lower case>).
RUNBOOK_URL = "https://github.com/nodenet-exporter/nodenet-exporter/blob/main/docs/runbook.md"
# PrometheusRule metadata.
OPERATOR_NAMESPACE = "nodenet-exporter"
OPERATOR_NAME = "nodenet-exporter"
OPERATOR_LABELS = {"app.kubernetes.io/name": "nodenet-exporter"}
# ----------------------------------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parent.parent
RULES_PATH = ROOT / "alerts" / "nodenet.rules.yaml"
OPERATOR_PATH = ROOT / "deploy" / "prometheusrule.yaml"

# The node an alert is about: the `node` label when relabeling adds one (Kubernetes service
# discovery), else the scrape target's instance.
NODE = "{{ with $labels.node }}{{ . }}{{ else }}{{ $labels.instance }}{{ end }}"


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

    # Counters that the conntrack collector can also export per CPU (label `cpu`):
    # always aggregate them with `sum without(cpu)`, which keeps every other label.
    def ct_rate(metric):
        return f"sum without(cpu) (rate({metric}{{{sel}}}[5m]))"

    utilisation = (f"  nodenet_conntrack_entries{{{sel}}}\n"
                   f"/\n"
                   f"  nodenet_conntrack_entries_limit{{{sel}}}")
    limit_set = f"nodenet_conntrack_entries_limit{{{sel}}} > 0"

    conntrack = [
        alert("NodenetConntrackTableNearFull",
              f"(\n{utilisation}\n) > 0.75\nand {limit_set}",
              "5m", "warning",
              "Conntrack table is more than 75% full.",
              f"The conntrack table on node {NODE} is {{{{ $value | humanizePercentage }}}} full"
              f" (entries / nf_conntrack_max). When it is full the kernel drops packets of new"
              f" connections."),
        alert("NodenetConntrackTableFull",
              f"(\n{utilisation}\n) > 0.90\nand {limit_set}",
              "2m", "critical",
              "Conntrack table is more than 90% full.",
              f"The conntrack table on node {NODE} is {{{{ $value | humanizePercentage }}}} full"
              f" (entries / nf_conntrack_max). New connections start failing when it reaches"
              f" 100%."),
        alert("NodenetConntrackTablePredictedFull",
              f"(\n{utilisation}\n) > 0.50\nand {limit_set}\nand\n"
              f"  predict_linear(nodenet_conntrack_entries{{{sel}}}[30m], 3600)\n"
              f">=\n"
              f"  nodenet_conntrack_entries_limit{{{sel}}}",
              "15m", "warning",
              "Conntrack table is predicted to fill up within an hour.",
              f"The conntrack table on node {NODE} is {{{{ $value | humanizePercentage }}}} full"
              f" and, growing as it has over the last 30 minutes, will reach nf_conntrack_max"
              f" within an hour."),
        alert("NodenetConntrackDropping",
              f"(\n  {ct_rate('nodenet_conntrack_drops_total')}\n+\n"
              f"  {ct_rate('nodenet_conntrack_early_drops_total')}\n) > 0",
              "2m", "critical",
              "The kernel is dropping connections because the conntrack table is full.",
              f"Node {NODE} has been dropping packets or evicting connections because of"
              f" conntrack ({{{{ printf \"%.3g\" $value }}}} per second over the last 5"
              f" minutes, drops + early drops). New connections are failing on this node."),
        alert("NodenetConntrackInsertFailures",
              f"{ct_rate('nodenet_conntrack_insert_failed_total')} > 0",
              "10m", "warning",
              "Conntrack insertions are failing.",
              f"Node {NODE} fails {{{{ printf \"%.3g\" $value }}}} conntrack insertions per"
              f" second (clash races, typically parallel UDP DNS queries); each failure drops"
              f" the packet."),
    ]

    ipvs = [
        alert("NodenetIPVSServiceNoBackends",
              f"nodenet_ipvs_service_backends_available{{{sel}}} == 0",
              "10m", "warning",
              "IPVS virtual service has no usable backend.",
              "IPVS service {{ if $labels.fwmark }}fwmark {{ $labels.fwmark }}"
              " ({{ $labels.family }}){{ else }}{{ $labels.protocol }}/"
              "{{ if eq $labels.family \"ipv6\" }}[{{ $labels.address }}]"
              "{{ else }}{{ $labels.address }}{{ end }}:{{ $labels.port }}{{ end }}"
              f" on node {NODE} has had no real server with weight > 0 for 10 minutes;"
              " connections to it fail."),
    ]

    steal_fraction = (f"  sum without(cpu) (rate(nodenet_cpu_steal_seconds_total{{{sel}}}[5m]))\n"
                      f"/\n"
                      f"  nodenet_cpus{{{sel}}}")
    cpu = [
        alert("NodenetCPUStealHigh",
              f"(\n{steal_fraction}\n) > 0.10",
              "15m", "warning",
              "The hypervisor is stealing more than 10% of the node's CPU time.",
              f"Node {NODE} has lost {{{{ $value | humanizePercentage }}}} of its CPU time to"
              f" steal over the last 15 minutes; packet processing and latency suffer."),
        alert("NodenetCPUStealCritical",
              f"(\n{steal_fraction}\n) > 0.25",
              "15m", "critical",
              "The hypervisor is stealing more than 25% of the node's CPU time.",
              f"Node {NODE} has lost {{{{ $value | humanizePercentage }}}} of its CPU time to"
              f" steal over the last 15 minutes; the node cannot keep up with its load."),
    ]

    def if_ratio(direction):
        return (f"  label_replace(\n"
                f"    rate(nodenet_interface_{direction}_drops_total{{{sel}}}[5m])\n"
                f"    /\n"
                f"    rate(nodenet_interface_{direction}_packets_total{{{sel}}}[5m]),\n"
                f"    \"direction\", \"{direction}\", \"\", \"\"\n"
                f"  ) > 0.01")

    network = [
        alert("NodenetSoftnetDrops",
              f"sum without(cpu) (rate(nodenet_softnet_dropped_total{{{sel}}}[5m])) > 0",
              "10m", "warning",
              "The kernel's network backlog is dropping packets.",
              f"Node {NODE} drops {{{{ printf \"%.3g\" $value }}}} packets per second because a"
              f" CPU's input backlog (net.core.netdev_max_backlog) is full."),
        alert("NodenetInterfaceDrops",
              f"(\n{if_ratio('receive')}\nor\n{if_ratio('transmit')}\n)\n"
              f"unless ignoring(direction, kind, operstate, master, underlay)\n"
              f"  nodenet_interface_info{{{sel}, kind=\"veth\"}}",
              "15m", "warning",
              "A network interface drops more than 1% of its packets.",
              f"Interface {{{{ $labels.interface }}}} on node {NODE} drops"
              f" {{{{ $value | humanizePercentage }}}} of its {{{{ $labels.direction }}}}"
              f" packets."),
        alert("NodenetOverlayMTUMismatch",
              f"nodenet_overlay_mtu_headroom_bytes{{{sel}}} < 0",
              "5m", "warning",
              "An overlay interface's MTU is larger than its underlay can carry.",
              f"Overlay interface {{{{ $labels.interface }}}} ({{{{ $labels.kind }}}}) on node"
              f" {NODE} has {{{{ printf \"%.0f\" $value }}}} bytes of MTU headroom over"
              f" underlay {{{{ $labels.underlay }}}}: its full-size packets do not fit the"
              f" underlay once encapsulated and are fragmented or silently dropped."),
    ]

    exporter = [
        alert("NodenetCollectorFailing",
              f"nodenet_scrape_collector_success{{{sel}}} == 0",
              "15m", "warning",
              "A nodenet-exporter collector is failing.",
              f"Collector {{{{ $labels.collector }}}} of nodenet-exporter on node {NODE} has"
              f" failed every scrape for 15 minutes; its metrics are missing."),
        alert("NodenetExporterDown",
              f"up{{{sel}}} == 0\nor\nabsent(up{{{sel}}})",
              "5m", "warning",
              "nodenet-exporter is down or not scraped.",
              f"{{{{ if $labels.instance }}}}nodenet-exporter on node {NODE} has been down for"
              f" 5 minutes.{{{{ else }}}}No nodenet-exporter target ({sel}) has been scraped"
              f" for 5 minutes.{{{{ end }}}} Conntrack, IPVS and network alerts cannot fire"
              f" for the nodes it covers."),
    ]

    # ---- issue 17: drops below the kernel (ethtool collector): NIC driver and ENA allowances
    driver = [
        alert("NodenetCloudAllowanceExceeded",
              f"increase(nodenet_interface_allowance_exceeded_total{{{sel}}}[5m]) > 0",
              "5m", "warning",
              "The cloud is throttling a node's network interface (ENA allowance exceeded).",
              f"Interface {{{{ $labels.interface }}}} on node {NODE} exceeded its"
              f" {{{{ $labels.allowance }}}} allowance: {{{{ printf \"%.0f\" $value }}}} packets"
              f" queued or dropped by the hypervisor in the last 5 minutes."),
        alert("NodenetDriverDrops",
              f"rate(nodenet_interface_driver_drops_total{{{sel}}}[5m]) > 0",
              "15m", "warning",
              "A NIC driver is dropping packets.",
              f"Driver counter {{{{ $labels.counter }}}} of interface {{{{ $labels.interface }}}}"
              f" on node {NODE} has been rising for 15 minutes"
              f" ({{{{ printf \"%.3g\" $value }}}} per second): packets are lost in the NIC or"
              f" its driver, below the kernel's interface counters."),
    ]

    # ---- issue 17: the fleet view - per-node aggregates the overview dashboard reads. At
    # 5,000 nodes the overview's panels would otherwise sum per-CPU and per-interface series of
    # every node on every refresh; these keep job/instance (and interface) and nothing else.
    def record(name, expr):
        return {"record": name, "expr": expr.strip() + "\n"}

    fleet = [
        record("nodenet:conntrack_utilisation:ratio", utilisation.replace("  ", "")),
        record("nodenet:conntrack_drops:rate5m", ct_rate("nodenet_conntrack_drops_total")),
        record("nodenet:conntrack_early_drops:rate5m",
               ct_rate("nodenet_conntrack_early_drops_total")),
        record("nodenet:conntrack_insert_failed:rate5m",
               ct_rate("nodenet_conntrack_insert_failed_total")),
        record("nodenet:cpu_steal:ratio_rate5m", steal_fraction.replace("  ", "")),
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

    return [
        {"name": "nodenet-conntrack", "rules": conntrack},
        {"name": "nodenet-ipvs", "rules": ipvs},
        {"name": "nodenet-cpu", "rules": cpu},
        {"name": "nodenet-network", "rules": network},
        {"name": "nodenet-exporter", "rules": exporter},
        {"name": "nodenet-driver", "rules": driver},
        {"name": "nodenet-fleet", "rules": fleet},
    ]


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
