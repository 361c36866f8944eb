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

    return [
        {"name": "nodenet-conntrack", "rules": conntrack},
        {"name": "nodenet-ipvs", "rules": ipvs},
        {"name": "nodenet-cpu", "rules": cpu},
        {"name": "nodenet-network", "rules": network},
        {"name": "nodenet-exporter", "rules": exporter},
        {"name": "nodenet-limits", "rules": limits_rules(sel, alert)},
        {"name": "nodenet-podview", "rules": podview_rules(sel, alert)},
    ]


# --------------------------------------------------------------- issue 14: kernel limits
def limits_rules(sel: str, alert) -> list[dict]:
    """Kernel limits on the packet path beside their usage (sockets, netstat, neighbour
    collectors). Thresholds and `for:` are explained in docs/runbook.md."""

    def ratio(usage, limit, threshold, limit_extra=""):
        lsel = f"{sel}, {limit_extra}" if limit_extra else sel
        on = " ignoring(level)" if limit_extra else ""
        return (f"(\n  {usage}{{{sel}}}\n/{on}\n  {limit}{{{lsel}}}\n) > {threshold}\n"
                f"and{on} {limit}{{{lsel}}} > 0")

    def files(threshold, for_, severity):
        return alert("NodenetFileHandlesNearLimit",
                     ratio("nodenet_file_handles", "nodenet_file_handles_limit", threshold),
                     for_, severity,
                     f"File handles are more than {threshold:.0%} of fs.file-max.",
                     f"Node {NODE} uses {{{{ $value | humanizePercentage }}}} of fs.file-max"
                     f" (/proc/sys/fs/file-nr). At the limit every open(), socket() and"
                     f" accept() on the node fails with ENFILE.")

    return [
        alert("NodenetNeighbourTableNearFull",
              ratio("nodenet_neighbour_entries", "nodenet_neighbour_entries_limit", 0.8),
              "10m", "warning",
              "A neighbour (ARP/ND) table is more than 80% of gc_thresh3.",
              f"Neighbour table {{{{ $labels.table }}}} on node {NODE} holds"
              f" {{{{ $value | humanizePercentage }}}} of gc_thresh3 (permanent entries"
              f" included). At the limit the kernel refuses new neighbours (\"neighbor table"
              f" overflow!\") and traffic to new pods or nodes fails."),
        alert("NodenetNeighbourTableOverflow",
              f"increase(nodenet_neighbour_table_fulls_total{{{sel}}}[5m]) > 0",
              "1m", "critical",
              "The kernel refused new neighbour entries: the table is full.",
              f"Neighbour table {{{{ $labels.table }}}} on node {NODE} overflowed"
              f" {{{{ printf \"%.0f\" $value }}}} times in 5 minutes (\"neighbor table"
              f" overflow!\"): packets to hosts without an entry are dropped."),
        alert("NodenetTCPMemoryPressure",
              f"(\n  nodenet_tcp_memory_bytes{{{sel}}}\n/ ignoring(level)\n"
              f"  nodenet_tcp_memory_limit_bytes{{{sel}, level=\"pressure\"}}\n) >= 1\n"
              f"or\nincrease(nodenet_tcp_memory_pressures_total{{{sel}}}[10m]) > 0",
              "5m", "warning",
              "TCP memory is at the tcp_mem pressure level.",
              f"TCP on node {NODE} is under memory pressure (tcp_mem): the kernel shrinks"
              f" socket buffers, throughput drops, and at the high level connections are"
              f" reset (TCPAbortOnMemory)."),
        alert("NodenetTimeWaitOverflow",
              f"rate(nodenet_tcp_timewait_overflows_total{{{sel}}}[5m]) > 0",
              "10m", "warning",
              "TIME_WAIT sockets are being destroyed early (tcp_max_tw_buckets reached).",
              f"Node {NODE} destroys {{{{ printf \"%.3g\" $value }}}} TIME_WAIT sockets per"
              f" second because net.ipv4.tcp_max_tw_buckets is reached: delayed segments of"
              f" old connections can corrupt new ones that reuse the 4-tuple."),
        alert("NodenetOrphanSocketsNearLimit",
              ratio("nodenet_tcp_orphan_sockets", "nodenet_tcp_orphan_sockets_limit", 0.8),
              "5m", "warning",
              "Orphaned TCP sockets are more than 80% of tcp_max_orphans.",
              f"Node {NODE} holds {{{{ $value | humanizePercentage }}}} of tcp_max_orphans"
              f" orphaned sockets; above the limit (lower under memory pressure) the kernel"
              f" resets connections (\"too many orphaned sockets\")."),
        files(0.8, "5m", "warning"),
        files(0.9, "5m", "critical"),
        alert("NodenetTCPListenOverflows",
              f"rate(nodenet_tcp_listen_overflows_total{{{sel}}}[5m]) > 0",
              "2m", "warning",
              "A TCP listener's accept queue is overflowing.",
              f"Node {NODE} drops {{{{ printf \"%.3g\" $value }}}} connections per second"
              f" because a listener's accept queue is full (ListenOverflows): clients see"
              f" timeouts and retransmitted SYNs."),
        alert("NodenetUDPReceiveBufferErrors",
              f"rate(nodenet_udp_receive_buffer_errors_total{{{sel}}}[5m]) > 0",
              "2m", "warning",
              "UDP datagrams are dropped because a socket's receive buffer is full.",
              f"Node {NODE} drops {{{{ printf \"%.3g\" $value }}}} {{{{ $labels.family }}}}"
              f" UDP datagrams per second because a receiving socket's buffer is full"
              f" (RcvbufErrors): DNS queries, VXLAN or QUIC packets are lost."),
        alert("NodenetIPReassemblyFailures",
              f"rate(nodenet_ip_reassembly_failures_total{{{sel}}}[5m]) > 0",
              "15m", "warning",
              "IP fragments are failing to reassemble.",
              f"Node {NODE} fails {{{{ printf \"%.3g\" $value }}}} {{{{ $labels.family }}}}"
              f" reassemblies per second (ReasmFails: lost fragments, timeouts, or"
              f" ipfrag_high_thresh reached): fragmented packets, often an MTU problem, are"
              f" dropped."),
        alert("NodenetEphemeralPortsOverlapNodePorts",
              f"nodenet_ephemeral_ports_nodeport_overlap{{{sel}}} > 0",
              "15m", "warning",
              "The ephemeral port range overlaps the Kubernetes NodePort range.",
              f"On node {NODE}, {{{{ printf \"%.0f\" $value }}}} NodePort numbers lie inside"
              f" net.ipv4.ip_local_port_range and are not reserved: an outgoing connection can"
              f" take a NodePort's number and that Service stops answering on this node."),
    ]


# --------------------------------------------------------------- issue 15: the pod view
# kube-state-metrics' kube_pod_info{uid, namespace, pod}, renamed so that the exporter pod's own
# target labels `namespace`/`pod` (prometheus-operator) are never overwritten.
POD_INFO = ('max by (pod_uid, pod_namespace, pod_name) (label_replace(label_replace('
            'label_replace(kube_pod_info{uid!=""}, "pod_uid", "$1", "uid", "(.+)"), '
            '"pod_namespace", "$1", "namespace", "(.*)"), "pod_name", "$1", "pod", "(.*)"))')
POD_RECORDS = (("nodenet:netns_tcp_listen_overflows:rate5m",
                "nodenet_netns_tcp_listen_overflows_total"),
               ("nodenet:netns_udp_receive_buffer_errors:rate5m",
                "nodenet_netns_udp_receive_buffer_errors_total"))
POD = ("{{ with $labels.pod_name }}{{ $labels.pod_namespace }}/{{ . }}{{ else }}"
       "{{ with $labels.pod_uid }}uid {{ . }}{{ else }}netns {{ $labels.netns }}"
       "{{ $labels.netns_inode }}{{ end }}{{ end }}")


def podview_rules(sel: str, alert) -> list[dict]:
    """Per pod network namespace (collector netns) and per destination (sockets): recording
    rules that join pod_uid to kube_pod_info (pod_namespace, pod_name; without
    kube-state-metrics the rate is recorded unjoined), then the alerts on them."""
    out: list[dict] = []
    for record, metric in POD_RECORDS:
        rate = f"sum without(family) (rate({metric}{{{sel}}}[5m]))"
        out.append({"record": record,
                    "expr": f"{rate}\n* on(pod_uid) group_left(pod_namespace, pod_name)\n"
                            f"{POD_INFO}\nor ignoring(pod_namespace, pod_name)\n{rate}\n"})
    out += [
        alert("NodenetPodTCPListenOverflows",
              f"{POD_RECORDS[0][0]}{{{sel}}} > 0",
              "2m", "warning",
              "A pod's TCP listener accept queue is overflowing.",
              f"Pod {POD} on node {NODE} drops {{{{ printf \"%.3g\" $value }}}} connections"
              f" per second because a listener's accept queue is full (ListenOverflows in the"
              f" pod's network namespace; the node's counters do not show it)."),
        alert("NodenetPodUDPReceiveBufferErrors",
              f"{POD_RECORDS[1][0]}{{{sel}}} > 0",
              "2m", "warning",
              "A pod drops UDP datagrams because a socket's receive buffer is full.",
              f"Pod {POD} on node {NODE} drops {{{{ printf \"%.3g\" $value }}}} UDP datagrams"
              f" per second because a receiving socket's buffer is full (RcvbufErrors in the"
              f" pod's network namespace): DNS queries are lost."),
        alert("NodenetEphemeralPortsNearExhaustion",
              f"(\n  nodenet_ephemeral_ports_max_in_use{{{sel}}}\n/\n"
              f"  nodenet_ephemeral_ports_range_size{{{sel}}}\n) > 0.8\n"
              f"and nodenet_ephemeral_ports_range_size{{{sel}}} > 0",
              "5m", "warning",
              "Connections to one destination use more than 80% of the ephemeral ports.",
              f"On node {NODE}, {{{{ $value | humanizePercentage }}}} of the ephemeral port"
              f" range is in use towards one destination (see"
              f" nodenet_ephemeral_ports_in_use): new connect() calls to it will fail with"
              f" EADDRNOTAVAIL."),
    ]
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
