#!/usr/bin/env python3
"""Generate nodenet-exporter's Grafana dashboards from one source.

Writes
  grafana/nodenet-overview.json   the cluster at a glance (uid nodenet-overview)
  grafana/nodenet-node.json       one node in depth        (uid nodenet-node)

    python grafana/build.py           # rewrite both files
    python grafana/build.py --check   # exit 1 if a file is not what this script makes

Conventions kept here in one place (and checked by tests/unit/test_dashboards.py):
- every panel and every query takes its datasource from the `datasource` template variable;
- every series selector carries the job selector (`job="$job"`) and the node selector;
- every panel has a unit; utilisation panels carry the alert rules' thresholds (THRESHOLDS).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "grafana"

UID_OVERVIEW = "nodenet-overview"
UID_NODE = "nodenet-node"
DEFAULT_JOB = "nodenet-exporter"  # the job name of the README's scrape config and ServiceMonitor
TAGS = ["nodenet", "network", "conntrack", "ipvs"]
SCHEMA_VERSION = 39

# The alert rules' thresholds, from the checks of exporter/health.py (the one place they are
# set, shared by the rules and `diagnose`); the tests compare them with the rule file.
sys.path.insert(0, str(ROOT))
from exporter.health import by_name as _checks  # noqa: E402
from exporter.health import ct_time_to_full_expr  # noqa: E402

_T = {name: check.threshold for name, check in _checks().items()}
THRESHOLDS = {
    "conntrack_utilisation": {"warning": _T["NodenetConntrackTableNearFull"],
                              "critical": _T["NodenetConntrackTableFull"]},
    "cpu_steal": {"warning": _T["NodenetCPUStealHigh"],
                  "critical": _T["NodenetCPUStealCritical"]},
    "interface_drop_ratio": {"warning": _T["NodenetInterfaceDrops"]},
    "overlay_mtu_headroom": {"critical_below": _T["NodenetOverlayMTUMismatch"]},
}

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SERVICE_LABELS = "protocol, address, port, fwmark, family"
BACKEND_LABELS = SERVICE_LABELS + ", backend_address, backend_port"
SERVICE_LEGEND = "{{protocol}} {{address}}:{{port}}{{fwmark}}"
BACKEND_LEGEND = SERVICE_LEGEND + " -> {{backend_address}}:{{backend_port}}"
NODE_LINK_TITLE = "Open this node's dashboard"
NODE_LINK = ("/d/" + UID_NODE + "/nodenet-node?${datasource:queryparam}&var-job=${job}"
             "&var-instance=${__data.fields.instance}&${__url_time_range}")


# ------------------------------------------------------------------------------- thresholds
def steps(*pairs):
    """steps(("green", None), ("orange", 0.75), ...) -> a Grafana thresholds object."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in pairs]}


def utilisation_thresholds():
    t = THRESHOLDS["conntrack_utilisation"]
    return steps(("green", None), ("orange", t["warning"]), ("red", t["critical"]))


def steal_thresholds():
    t = THRESHOLDS["cpu_steal"]
    return steps(("green", None), ("orange", t["warning"]), ("red", t["critical"]))


def drop_ratio_thresholds():
    return steps(("green", None), ("orange", THRESHOLDS["interface_drop_ratio"]["warning"]))


def headroom_thresholds():
    # red below 0 bytes of headroom, green from 0 up
    return steps(("red", None), ("green", THRESHOLDS["overlay_mtu_headroom"]["critical_below"]))


def nonzero_bad():
    return steps(("green", None), ("red", 1))


def zero_bad():
    return steps(("red", None), ("green", 1))


NEUTRAL = steps(("green", None))


# ------------------------------------------------------------------------------- queries
class Q:
    """Builds selectors that always carry the job and node matchers."""

    def __init__(self, node_matcher: str):
        self.sel = f'job="$job", {node_matcher}'

    def m(self, metric: str, extra: str = "") -> str:
        return f"{metric}{{{self.sel}{', ' + extra if extra else ''}}}"

    def rate(self, metric: str, extra: str = "") -> str:
        return f"rate({self.m(metric, extra)}[{RATE}])"

    def srate(self, metric: str, extra: str = "") -> str:
        """Node-wide rate of a counter that may carry a per-CPU `cpu` label."""
        return f"sum without(cpu) ({self.rate(metric, extra)})"

    def utilisation(self) -> str:
        return f"{self.m('nodenet_conntrack_entries')} / {self.m('nodenet_conntrack_entries_limit')}"

    def time_to_full(self) -> str:
        return ct_time_to_full_expr(self.sel)   # the same as the recorded one

    def steal_fraction(self) -> str:
        return f"{self.srate('nodenet_cpu_steal_seconds_total')} / {self.m('nodenet_cpus')}"

    def failing_collectors(self) -> str:
        return f"count({self.m('nodenet_scrape_collector_success')} == 0) or vector(0)"

    def slowest_collectors(self) -> str:
        per_node = (f"topk by (job, instance) "
                    f"(1, {self.m('nodenet_scrape_collector_duration_seconds')})")
        return f"max by (collector) ({per_node})"

    def dropping_interfaces(self) -> list[tuple[str, str]]:
        """(column, expr) of the "Interfaces with drops" table: drops/s and drop ratio per
        direction, only for interfaces whose receive + transmit drops are above 0."""
        rx, tx = "nodenet_interface_receive_drops_total", "nodenet_interface_transmit_drops_total"
        dropping = f"({self.rate(rx)} + {self.rate(tx)} > 0)"
        return [(name, f"{expr} and on (job, instance, interface) {dropping}")
                for name, expr in (
                    ("Receive drops/s", self.rate(rx)),
                    ("Transmit drops/s", self.rate(tx)),
                    ("Receive drop ratio", f"{self.rate(rx)} / "
                                           f"{self.rate('nodenet_interface_receive_packets_total')}"),
                    ("Transmit drop ratio", f"{self.rate(tx)} / "
                                            f"{self.rate('nodenet_interface_transmit_packets_total')}"))]


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False,
           hide: bool = False) -> dict:
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant}
    if table:
        t["format"] = "table"
    if hide:
        t["hide"] = True
    return t


def assign_refs(targets):
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return targets


# ------------------------------------------------------------------------------- panels
def _base(kind, title, description, targets, unit, thresholds=None, **defaults):
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": assign_refs(targets),
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": thresholds or NEUTRAL,
                         "color": {"mode": "thresholds"}, "mappings": [], **defaults},
            "overrides": [],
        },
    }


def timeseries(title, description, targets, unit, *, thresholds=None, min_=None, max_=None,
               stack=False, legend="right", overrides=()):
    p = _base("timeseries", title, description, targets, unit, thresholds)
    d = p["fieldConfig"]["defaults"]
    d["color"] = {"mode": "palette-classic"}
    d["custom"] = {
        "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 30,
        "gradientMode": "none", "showPoints": "never", "spanNulls": False,
        "axisPlacement": "auto", "axisSoftMin": 0,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "line+area" if thresholds else "off"},
    }
    if min_ is not None:
        d["min"] = min_
    if max_ is not None:
        d["max"] = max_
    p["fieldConfig"]["overrides"] = list(overrides)
    p["options"] = {
        "legend": {"showLegend": True, "displayMode": "table", "placement": legend,
                   "calcs": ["lastNotNull", "max"], "sortBy": "Max", "sortDesc": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return p


def stat(title, description, targets, unit, *, thresholds=None, mappings=(), text_mode="auto",
         color_mode="background", decimals=None):
    p = _base("stat", title, description, targets, unit, thresholds)
    p["fieldConfig"]["defaults"]["mappings"] = list(mappings)
    if decimals is not None:
        p["fieldConfig"]["defaults"]["decimals"] = decimals
    p["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": color_mode, "graphMode": "none", "justifyMode": "auto",
        "orientation": "auto", "textMode": text_mode,
    }
    return p


def gauge(title, description, targets, unit, *, thresholds, min_=0, max_=1):
    p = _base("gauge", title, description, targets, unit, thresholds, min=min_, max=max_)
    p["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showThresholdLabels": False, "showThresholdMarkers": True, "orientation": "auto",
    }
    return p


def bargauge(title, description, targets, unit, *, thresholds, min_=0, max_=None):
    p = _base("bargauge", title, description, targets, unit, thresholds, min=min_)
    if max_ is not None:
        p["fieldConfig"]["defaults"]["max"] = max_
    p["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
        "valueMode": "color", "namePlacement": "auto", "sizing": "auto", "minVizHeight": 10,
        "minVizWidth": 0,
    }
    return p


def col(name, unit=None, *, thresholds=None, cell="auto", mappings=None, link=False,
        width=None):
    """One table column's field override (matched by its display name after renaming)."""
    props = []
    if unit:
        props.append({"id": "unit", "value": unit})
    if thresholds:
        props.append({"id": "thresholds", "value": thresholds})
        props.append({"id": "custom.cellOptions",
                      "value": {"type": "color-background", "mode": "basic"}
                      if cell == "auto" else {"type": cell}})
    if mappings:
        props.append({"id": "mappings", "value": mappings})
    if link:
        props.append({"id": "links", "value": [{"title": NODE_LINK_TITLE, "url": NODE_LINK}]})
    if width:
        props.append({"id": "custom.width", "value": width})
    return {"matcher": {"id": "byName", "options": name}, "properties": props}


def table(title, description, columns, *, unit="short", labels=("instance",), hidden=(),
          sort=None, sort_desc=True, overrides=()):
    """columns: list of (display name, target). Instant queries merged into one row per label
    set; `labels` are the label columns shown first (others hidden by `hidden`)."""
    targets = assign_refs([t for _, t in columns])
    for t in targets:
        t.update({"instant": True, "range": False, "format": "table"})
    single = len(targets) == 1
    rename, index = {}, {}
    for i, label in enumerate(labels):
        index[label] = i
    for i, (name, t) in enumerate(columns):
        src = "Value" if single else f"Value #{t['refId']}"
        rename[src] = name
        index[src] = len(labels) + i
    exclude = {"Time": True, "__name__": True, "job": True}
    for h in hidden:
        exclude[h] = True
    p = _base("table", title, description, targets, unit)
    p["fieldConfig"]["defaults"]["custom"] = {"align": "auto", "cellOptions": {"type": "auto"},
                                              "inspect": False, "filterable": False}
    p["fieldConfig"]["overrides"] = list(overrides)
    p["options"] = {"showHeader": True, "cellHeight": "sm",
                    "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": ""}}
    transformations = []
    if not single:
        transformations.append({"id": "merge", "options": {}})
    transformations.append({"id": "organize", "options": {
        "excludeByName": exclude, "indexByName": index, "renameByName": rename}})
    if sort:
        transformations.append({"id": "sortBy", "options": {
            "fields": {}, "sort": [{"field": sort, "desc": sort_desc}]}})
    p["transformations"] = transformations
    return p


def info_table(title, description, tgt, labels, *, hidden=()):
    """A table of one info-style series' labels (its value column hidden)."""
    p = table(title, description, [("value", tgt)], unit="none", labels=labels,
              hidden=("Value", *hidden))
    return p


NOT_GROWING = [{"type": "value", "options": {"-1": {"text": "not growing", "color": "green"}}}]
AVAILABLE = [{"type": "value", "options": {"0": {"text": "absent", "color": "blue"},
                                           "1": {"text": "present", "color": "green"}}}]
SUCCESS = [{"type": "value", "options": {"0": {"text": "failing", "color": "red"},
                                         "1": {"text": "ok", "color": "green"}}}]


# ------------------------------------------------------------------------------- layout
class Board:
    def __init__(self):
        self.panels: list[dict] = []
        self.x = self.y = self.line_h = 0

    def _newline(self):
        self.y += self.line_h
        self.x = self.line_h = 0

    def row(self, title):
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def add(self, panel, w, h):
        if self.x + w > 24:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.line_h = max(self.line_h, h)
        self.panels.append(panel)

    def finish(self):
        for i, p in enumerate(self.panels, start=1):
            p["id"] = i
        return self.panels


# ------------------------------------------------------------------------------- variables
def variables(multi_instance: bool) -> list[dict]:
    job_q = "label_values(nodenet_build_info, job)"
    inst_q = 'label_values(nodenet_build_info{job="$job"}, instance)'
    ds = {"name": "datasource", "label": "Data source", "type": "datasource",
          "query": "prometheus", "current": {}, "hide": 0, "includeAll": False, "multi": False,
          "options": [], "refresh": 1, "regex": "", "skipUrlSync": False}
    job = {"name": "job", "label": "Job", "type": "query", "datasource": DS,
           "query": {"query": job_q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
           "definition": job_q, "current": {"selected": True, "text": DEFAULT_JOB,
                                            "value": DEFAULT_JOB},
           "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 2,
           "regex": "", "skipUrlSync": False, "sort": 1}
    inst = {"name": "instance", "label": "Node", "type": "query", "datasource": DS,
            "query": {"query": inst_q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": inst_q, "current": {}, "hide": 0, "includeAll": multi_instance,
            "multi": multi_instance, "options": [], "refresh": 2, "regex": "",
            "skipUrlSync": False, "sort": 1}
    if multi_instance:
        inst["allValue"] = ".+"
        inst["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return [ds, job, inst]


def dashboard(uid, title, description, panels, multi_instance, refresh="30s"):
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": False, "icon": "external link", "includeVars": False,
                   "keepTime": True, "tags": ["nodenet"], "targetBlank": False,
                   "title": "nodenet dashboards", "type": "dashboards"}],
        "liveNow": False,
        "panels": panels,
        "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS,
        "templating": {"list": variables(multi_instance)},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ------------------------------------------------------------------------------- overview
def overview() -> dict:
    q = RecordedQ('instance=~"$instance"')  # issue 17: per-node aggregates are recorded
    b = Board()
    util = q.utilisation()

    b.row("At a glance")
    b.add(stat("Worst conntrack utilisation",
               "Highest conntrack table fill (entries / nf_conntrack_max) of the selected nodes. "
               "Alerts: NodenetConntrackTableNearFull at 75%, NodenetConntrackTableFull at 90%.",
               [target(f"max({util})", instant=True)], "percentunit",
               thresholds=utilisation_thresholds()), 4, 4)
    b.add(stat("Nodes dropping (conntrack)",
               "Nodes where the kernel dropped or early-dropped connections because the table "
               "was full (NodenetConntrackDropping).",
               [target(f"count(({q.srate('nodenet_conntrack_drops_total')} + "
                       f"{q.srate('nodenet_conntrack_early_drops_total')}) > 0) or vector(0)",
                       instant=True)], "short", thresholds=nonzero_bad()), 4, 4)
    b.add(stat("Worst CPU steal",
               "Highest share of CPU time stolen by the hypervisor on a selected node "
               "(NodenetCPUStealHigh at 10%, NodenetCPUStealCritical at 25%).",
               [target(f"max({q.steal_fraction()})", instant=True)], "percentunit",
               thresholds=steal_thresholds()), 4, 4)
    b.add(stat("IPVS services without backend",
               "Distinct virtual services that have no real server of weight > 0 on at least "
               "one selected node (NodenetIPVSServiceNoBackends).",
               [target(f"count(count by ({SERVICE_LABELS}) "
                       f"({q.m('nodenet_ipvs_service_backends_available')} == 0)) "
                       f"or vector(0)", instant=True)], "short", thresholds=nonzero_bad()), 4, 4)
    b.add(stat("Overlay tunnels with negative headroom",
               "Tunnel interfaces whose MTU leaves negative headroom over their underlay "
               "(NodenetOverlayMTUMismatch).",
               [target(f"count({q.m('nodenet_overlay_mtu_headroom_bytes')} < 0) or vector(0)",
                       instant=True)], "short", thresholds=nonzero_bad()), 4, 4)
    b.add(stat("Failing collectors and targets",
               "Collectors whose last scrape failed, and targets that are down "
               "(NodenetCollectorFailing, NodenetExporterDown).",
               [target(q.failing_collectors(), "collectors", instant=True),
                target(f"count({q.m('up')} == 0) or vector(0)", "targets down", instant=True)],
               "short", thresholds=nonzero_bad(), text_mode="value_and_name"), 4, 4)

    b.row("Conntrack")
    b.add(table(
        "Conntrack per node (worst first)",
        "One row per node, sorted by utilisation. Time to full extrapolates the last 30 minutes' "
        "growth (deriv); 'not growing' when the table is flat or shrinking. Click a node for its "
        "dashboard.",
        [("Utilisation", target(util)),
         ("Entries", target(q.m("nodenet_conntrack_entries"))),
         ("Limit", target(q.m("nodenet_conntrack_entries_limit"))),
         ("Time to full", target(q.time_to_full())),
         ("Drops/s", target(q.srate("nodenet_conntrack_drops_total"))),
         ("Early drops/s", target(q.srate("nodenet_conntrack_early_drops_total"))),
         ("Insert failures/s", target(q.srate("nodenet_conntrack_insert_failed_total")))],
        sort="Utilisation",
        overrides=[col("instance", link=True),
                   col("Utilisation", "percentunit", thresholds=utilisation_thresholds(),
                       cell="gauge"),
                   col("Time to full", "s", mappings=NOT_GROWING),
                   col("Drops/s", "cps", thresholds=steps(("green", None), ("red", 1e-9))),
                   col("Early drops/s", "cps", thresholds=steps(("green", None), ("red", 1e-9))),
                   col("Insert failures/s", "cps",
                       thresholds=steps(("green", None), ("orange", 1e-9)))]), 24, 8)
    b.add(timeseries("Conntrack utilisation per node",
                     "entries / nf_conntrack_max; the bands are the alert thresholds.",
                     [target(util, "{{instance}}")], "percentunit",
                     thresholds=utilisation_thresholds(), min_=0, max_=1), 12, 8)
    b.add(timeseries("Conntrack drops and insert failures per node",
                     "Packets dropped because the table was full (drops), connections evicted to "
                     "make room (early drops) and insertions lost to clash races (insert "
                     "failures, e.g. parallel UDP DNS).",
                     [target(q.srate("nodenet_conntrack_drops_total"), "{{instance}} drops"),
                      target(q.srate("nodenet_conntrack_early_drops_total"),
                             "{{instance}} early drops"),
                      target(q.srate("nodenet_conntrack_insert_failed_total"),
                             "{{instance}} insert failures")], "cps", min_=0), 12, 8)
    b.add(timeseries("Conntrack utilisation predicted in 1 hour",
                     "predict_linear over the last 30 minutes, divided by the limit "
                     "(NodenetConntrackTablePredictedFull fires above 50% now and 100% "
                     "predicted).",
                     [target(f"predict_linear({q.m('nodenet_conntrack_entries')}[30m], 3600) / "
                             f"{q.m('nodenet_conntrack_entries_limit')}", "{{instance}}")],
                     "percentunit", thresholds=utilisation_thresholds(), min_=0), 24, 7)

    b.row("IPVS (kube-proxy)")
    b.add(table(
        "IPVS services without a usable backend",
        "Virtual services whose real servers all have weight 0 or that have none; connections "
        "to them fail. Empty on healthy nodes and on nodes without IPVS.",
        [("Usable backends", target(f"{q.m('nodenet_ipvs_service_backends_available')} == 0")),
         ("Backends", target(f"{q.m('nodenet_ipvs_service_backends')} and "
                             f"({q.m('nodenet_ipvs_service_backends_available')} == 0)"))],
        labels=("instance", "protocol", "address", "port", "fwmark", "family"),
        overrides=[col("instance", link=True),
                   col("Usable backends", "short", thresholds=zero_bad())]), 12, 8)
    b.add(table(
        "IPVS per node",
        "Whether IPVS is loaded, how many virtual services and real servers it has, and how "
        "many services have no usable backend.",
        [("IPVS", target(q.m("nodenet_ipvs_available"))),
         ("Services", target(q.m("nodenet_ipvs_services"))),
         ("Backends", target(q.m("nodenet_ipvs_backends"))),
         ("Services without usable backend",
          target(f"sum without({SERVICE_LABELS}) "
                 f"({q.m('nodenet_ipvs_service_backends_available')} == bool 0)"))],
        sort="Services without usable backend",
        overrides=[col("instance", link=True), col("IPVS", "none", mappings=AVAILABLE),
                   col("Services without usable backend", "short",
                       thresholds=nonzero_bad())]), 12, 8)
    b.add(timeseries("Top 10 IPVS services by traffic",
                     "Bytes per second in + out through each virtual service, summed over the "
                     "selected nodes.",
                     [target(f"topk(10, sum by ({SERVICE_LABELS}) "
                             f"({q.rate('nodenet_ipvs_service_incoming_bytes_total')} + "
                             f"{q.rate('nodenet_ipvs_service_outgoing_bytes_total')}))",
                             SERVICE_LEGEND)], "Bps", min_=0), 12, 8)
    b.add(timeseries("Top 10 IPVS services by new connections",
                     "Connections per second scheduled by each virtual service, summed over the "
                     "selected nodes.",
                     [target(f"topk(10, sum by ({SERVICE_LABELS}) "
                             f"({q.rate('nodenet_ipvs_service_connections_total')}))",
                             SERVICE_LEGEND)], "cps", min_=0), 12, 8)

    b.row("CPU steal and softnet")
    b.add(timeseries("CPU steal per node",
                     "Share of the node's CPU time taken by the hypervisor: steal seconds per "
                     "second / online CPUs. The bands are the alert thresholds.",
                     [target(q.steal_fraction(), "{{instance}}")], "percentunit",
                     thresholds=steal_thresholds(), min_=0), 12, 8)
    b.add(bargauge("CPU steal now (worst first)", "Current steal share per node.",
                   [target(f"sort_desc({q.steal_fraction()})", "{{instance}}", instant=True)],
                   "percentunit", thresholds=steal_thresholds(), max_=1), 12, 8)
    b.add(timeseries("Softnet backlog drops per node",
                     "Packets dropped because a CPU's input backlog (net.core.netdev_max_backlog) "
                     "was full (NodenetSoftnetDrops).",
                     [target(q.srate("nodenet_softnet_dropped_total"), "{{instance}}")], "pps",
                     min_=0), 12, 8)
    b.add(timeseries("Softnet squeezes per node",
                     "Times net_rx_action ran out of budget (net.core.netdev_budget) with work "
                     "left: sustained squeezing precedes backlog drops.",
                     [target(q.srate("nodenet_softnet_times_squeezed_total"), "{{instance}}")],
                     "cps", min_=0), 12, 8)

    b.row("Interfaces and MTU")
    b.add(table(
        "Interfaces with drops",
        "Interfaces dropping packets now, with the share of their packets dropped "
        "(NodenetInterfaceDrops fires above 1%; pod veths only while both sides are up). Empty "
        "when no interface drops.",
        [(name, target(expr)) for name, expr in q.dropping_interfaces()],
        labels=("instance", "interface"), sort="Receive drops/s",
        overrides=[col("instance", link=True), col("Receive drops/s", "pps"),
                   col("Transmit drops/s", "pps"),
                   col("Receive drop ratio", "percentunit", thresholds=drop_ratio_thresholds()),
                   col("Transmit drop ratio", "percentunit",
                       thresholds=drop_ratio_thresholds())]), 12, 8)
    b.add(timeseries("Top 10 interfaces by drops",
                     "Receive + transmit drops per second, the 10 worst interfaces of the "
                     "selected nodes.",
                     [target(f"topk(10, {q.m('nodenet:interface_drops:rate5m')})",
                             "{{instance}} {{interface}}")], "pps", min_=0), 12, 8)
    b.add(table(
        "Overlay MTU mismatches",
        "Tunnel interfaces whose MTU plus encapsulation overhead exceeds the underlay's MTU "
        "(negative headroom): full-size packets are fragmented or black-holed. Fix: overlay MTU "
        "= underlay MTU - overhead (50 for VXLAN over IPv4). Empty when every overlay fits.",
        [("Headroom", target(f"{q.m('nodenet_overlay_mtu_headroom_bytes')} < 0"))],
        labels=("instance", "interface", "kind", "underlay"), sort="Headroom", sort_desc=False,
        overrides=[col("instance", link=True),
                   col("Headroom", "suffix: B", thresholds=headroom_thresholds())]), 12, 7)
    b.add(table(
        "Pod-facing links larger than the overlay",
        "veth/bridge interfaces whose MTU exceeds the smallest overlay MTU they route into, by "
        "this many bytes. Empty when every link fits.",
        [("Bytes above overlay MTU",
          target(f"{q.m('nodenet_interface_mtu_above_overlay_bytes')} > 0"))],
        labels=("instance", "interface"), sort="Bytes above overlay MTU",
        overrides=[col("instance", link=True),
                   col("Bytes above overlay MTU", "suffix: B",
                       thresholds=steps(("green", None), ("red", 1)))]), 12, 7)

    limits_panels(b, q, overview=True)
    netfilter_overview(b, q)
    pod_overview_panels(b, q)
    driver_overview_panels(b, q)

    b.row("Exporter")
    b.add(table(
        "Failing collectors",
        "Collectors whose last collection failed (their metrics are missing). Empty when all "
        "succeed.",
        [("Success", target(f"{q.m('nodenet_scrape_collector_success')} == 0"))],
        labels=("instance", "collector"),
        overrides=[col("instance", link=True),
                   col("Success", "none", thresholds=zero_bad(), mappings=SUCCESS)]), 12, 7)
    b.add(timeseries("Slowest collectors",
                     "Each selected node's slowest collector, the longest time per collector "
                     "(a collector that is the slowest on no node is not drawn; the node "
                     "dashboard shows every collector of one node).",
                     [target(q.slowest_collectors(), "{{collector}}")], "s", min_=0), 12, 7)

    dropreason_overview(b, q)

    return dashboard(UID_OVERVIEW, "nodenet / Overview",
                     "Node network health across the cluster: conntrack saturation, IPVS "
                     "services, CPU steal, softnet and interface drops, overlay MTU.",
                     b.finish(), multi_instance=True)


# ------------------------------------------------------------------------------- node
def node() -> dict:
    q = Q('instance="$instance"')
    b = Board()
    util = q.utilisation()

    b.row("Summary")
    b.add(gauge("Conntrack table fill", "entries / nf_conntrack_max.",
                [target(util, instant=True)], "percentunit",
                thresholds=utilisation_thresholds()), 4, 5)
    b.add(stat("Conntrack time to full",
               "At the last 30 minutes' growth; 'not growing' when flat or shrinking.",
               [target(q.time_to_full(), instant=True)], "s", mappings=NOT_GROWING,
               color_mode="value"), 4, 5)
    b.add(stat("Conntrack drops",
               "Drops + early drops per second (NodenetConntrackDropping).",
               [target(f"{q.srate('nodenet_conntrack_drops_total')} + "
                       f"{q.srate('nodenet_conntrack_early_drops_total')}", instant=True)],
               "cps", thresholds=steps(("green", None), ("red", 1e-9))), 4, 5)
    b.add(gauge("CPU steal", "Steal seconds per second / online CPUs.",
                [target(q.steal_fraction(), instant=True)], "percentunit",
                thresholds=steal_thresholds()), 4, 5)
    b.add(stat("CPUs", "Online CPUs.", [target(q.m("nodenet_cpus"), instant=True)], "short",
               color_mode="none"), 2, 5)
    b.add(stat("Subsystems", "Whether conntrack and IPVS are present on this node.",
               [target(q.m("nodenet_conntrack_available"), "conntrack", instant=True),
                target(q.m("nodenet_ipvs_available"), "IPVS", instant=True)], "none",
               mappings=AVAILABLE, text_mode="value_and_name", color_mode="value"), 3, 5)
    b.add(stat("Exporter", "nodenet-exporter version on this node.",
               [target(q.m("nodenet_build_info"), "{{version}}", instant=True)], "none",
               text_mode="name", color_mode="none"), 3, 5)

    b.row("Conntrack")
    b.add(timeseries("Conntrack entries and limit",
                     "Tracked connections, nf_conntrack_max, the hash table size and "
                     "expectations.",
                     [target(q.m("nodenet_conntrack_entries"), "entries"),
                      target(q.m("nodenet_conntrack_entries_limit"), "limit"),
                      target(q.m("nodenet_conntrack_buckets"), "buckets"),
                      target(q.m("nodenet_conntrack_expect_entries"), "expectations")],
                     "short", min_=0), 12, 8)
    b.add(timeseries("Conntrack utilisation",
                     "entries / nf_conntrack_max, and the value predicted in 1 hour from the "
                     "last 30 minutes; the bands are the alert thresholds.",
                     [target(util, "now"),
                      target(f"predict_linear({q.m('nodenet_conntrack_entries')}[30m], 3600) / "
                             f"{q.m('nodenet_conntrack_entries_limit')}", "in 1 hour")],
                     "percentunit", thresholds=utilisation_thresholds(), min_=0), 12, 8)
    b.add(timeseries("Conntrack drops and failures",
                     "Per second: drops (table full), early drops (evictions), insert failures "
                     "(clash races), ICMP errors, invalid packets.",
                     [target(q.srate("nodenet_conntrack_drops_total"), "drops"),
                      target(q.srate("nodenet_conntrack_early_drops_total"), "early drops"),
                      target(q.srate("nodenet_conntrack_insert_failed_total"), "insert failed"),
                      target(q.srate("nodenet_conntrack_errors_total"), "ICMP errors"),
                      target(q.srate("nodenet_conntrack_invalid_total"), "invalid")],
                     "cps", min_=0), 12, 8)
    b.add(timeseries("Conntrack table activity",
                     "Per second: lookups that found an entry, insertions, search restarts, "
                     "clashes resolved, chains found too long.",
                     [target(q.srate("nodenet_conntrack_found_total"), "found"),
                      target(q.srate("nodenet_conntrack_inserts_total"), "inserts"),
                      target(q.srate("nodenet_conntrack_search_restarts_total"),
                             "search restarts"),
                      target(q.srate("nodenet_conntrack_clash_resolves_total"),
                             "clash resolves"),
                      target(q.srate("nodenet_conntrack_chain_too_long_total"),
                             "chain too long")],
                     "cps", min_=0), 12, 8)
    b.add(table("Conntrack entries by protocol and state",
                "Needs --collector.conntrack.states (off by default).",
                [("Entries", target(q.m("nodenet_conntrack_entries_by_state")))],
                labels=("protocol", "state"), hidden=("instance",), sort="Entries"), 12, 8)
    b.add(info_table("Conntrack source", "Where the collector read conntrack from (netlink, "
                     "or /proc when netlink is not permitted).",
                     target(q.m("nodenet_conntrack_source_info")), ("source",),
                     hidden=("instance",)), 12, 8)

    b.row("CPU steal")
    b.add(timeseries("Steal per CPU",
                     "Share of each CPU's time taken by the hypervisor (steal seconds per "
                     "second).",
                     [target(q.rate("nodenet_cpu_steal_seconds_total"), "cpu {{cpu}}")],
                     "percentunit", min_=0), 12, 8)
    b.add(timeseries("Steal share of the node",
                     "Steal seconds per second / online CPUs; the bands are the alert "
                     "thresholds.",
                     [target(q.steal_fraction(), "steal")], "percentunit",
                     thresholds=steal_thresholds(), min_=0), 12, 8)

    b.row("Softnet (per CPU)")
    b.add(timeseries("Packets processed per CPU", "From /proc/net/softnet_stat.",
                     [target(q.rate("nodenet_softnet_processed_total"), "cpu {{cpu}}")], "pps",
                     min_=0), 8, 8)
    b.add(timeseries("Backlog drops per CPU",
                     "Packets dropped because this CPU's backlog was full "
                     "(net.core.netdev_max_backlog).",
                     [target(q.rate("nodenet_softnet_dropped_total"), "cpu {{cpu}}")], "pps",
                     min_=0), 8, 8)
    b.add(timeseries("Time squeezes per CPU",
                     "net_rx_action ran out of budget with work left (net.core.netdev_budget).",
                     [target(q.rate("nodenet_softnet_times_squeezed_total"), "cpu {{cpu}}")],
                     "cps", min_=0), 8, 8)
    b.add(timeseries("RPS and flow limit per CPU",
                     "Packets steered to this CPU by RPS, and packets hit by the flow limit.",
                     [target(q.rate("nodenet_softnet_received_rps_total"), "cpu {{cpu}} rps"),
                      target(q.rate("nodenet_softnet_flow_limit_count_total"),
                             "cpu {{cpu}} flow limit")], "pps", min_=0), 12, 8)
    b.add(timeseries("Backlog length per CPU", "Packets waiting in each CPU's input backlog.",
                     [target(q.m("nodenet_softnet_backlog_packets"), "cpu {{cpu}}")],
                     "short", min_=0), 12, 8)

    b.row("Interfaces and MTU")
    info = q.m("nodenet_interface_info")

    def with_info(expr):
        # same label set on every query of the table so Grafana's merge lines the rows up
        return (f"({expr}) * on (job, instance, interface) "
                f"group_left (kind, operstate, master, underlay) {info}")

    b.add(table(
        "Interfaces",
        "Every link of the node's network namespace: kind, state, master, underlay, MTU, "
        "overlay headroom (negative: mismatch; only tunnels), bytes above the overlay MTU "
        "(veth/bridge on a node with an overlay) and current rates.",
        [("MTU", target(with_info(q.m("nodenet_interface_mtu_bytes")))),
         ("Overlay headroom",
          target(f"{q.m('nodenet_overlay_mtu_headroom_bytes')} * on (job, instance, interface) "
                 f"group_left (operstate, master) {info}")),
         ("Above overlay MTU", target(with_info(q.m("nodenet_interface_mtu_above_overlay_bytes")))),
         ("Receive", target(with_info(q.rate("nodenet_interface_receive_bytes_total")))),
         ("Transmit", target(with_info(q.rate("nodenet_interface_transmit_bytes_total")))),
         ("Receive drops/s", target(with_info(q.rate("nodenet_interface_receive_drops_total")))),
         ("Transmit drops/s",
          target(with_info(q.rate("nodenet_interface_transmit_drops_total")))),
         ("Receive errors/s",
          target(with_info(q.rate("nodenet_interface_receive_errors_total")))),
         ("Transmit errors/s",
          target(with_info(q.rate("nodenet_interface_transmit_errors_total"))))],
        labels=("interface", "kind", "operstate", "master", "underlay"), hidden=("instance",),
        sort="interface", sort_desc=False,
        overrides=[col("MTU", "suffix: B"),
                   col("Overlay headroom", "suffix: B", thresholds=headroom_thresholds()),
                   col("Above overlay MTU", "suffix: B",
                       thresholds=steps(("green", None), ("red", 1))),
                   col("Receive", "Bps"), col("Transmit", "Bps"),
                   col("Receive drops/s", "pps", thresholds=steps(("green", None),
                                                                  ("orange", 1e-9))),
                   col("Transmit drops/s", "pps", thresholds=steps(("green", None),
                                                                   ("orange", 1e-9))),
                   col("Receive errors/s", "pps"), col("Transmit errors/s", "pps")]), 24, 10)
    b.add(timeseries("Receive throughput", "Bytes per second received per interface.",
                     [target(q.rate("nodenet_interface_receive_bytes_total"), "{{interface}}")],
                     "Bps", min_=0), 12, 8)
    b.add(timeseries("Transmit throughput", "Bytes per second sent per interface.",
                     [target(q.rate("nodenet_interface_transmit_bytes_total"), "{{interface}}")],
                     "Bps", min_=0), 12, 8)
    b.add(timeseries("Packets", "Packets per second per interface.",
                     [target(q.rate("nodenet_interface_receive_packets_total"),
                             "{{interface}} receive"),
                      target(q.rate("nodenet_interface_transmit_packets_total"),
                             "{{interface}} transmit")], "pps", min_=0), 8, 8)
    b.add(timeseries("Drops", "Packets dropped per second per interface.",
                     [target(q.rate("nodenet_interface_receive_drops_total"),
                             "{{interface}} receive"),
                      target(q.rate("nodenet_interface_transmit_drops_total"),
                             "{{interface}} transmit")], "pps", min_=0), 8, 8)
    b.add(timeseries("Errors", "Packets with errors per second per interface.",
                     [target(q.rate("nodenet_interface_receive_errors_total"),
                             "{{interface}} receive"),
                      target(q.rate("nodenet_interface_transmit_errors_total"),
                             "{{interface}} transmit")], "pps", min_=0), 8, 8)
    pod_node_panels(b, q)

    b.row("IPVS (kube-proxy)")
    svc_info = q.m("nodenet_ipvs_service_info")

    def with_svc(expr):
        return (f"({expr}) * on (job, instance, {SERVICE_LABELS}) "
                f"group_left (scheduler, flags) {svc_info}")

    b.add(table(
        "Virtual services",
        "Every IPVS virtual service with its scheduler, real servers (all / weight > 0) and "
        "current traffic. Empty on a node without IPVS.",
        [("Backends", target(with_svc(q.m("nodenet_ipvs_service_backends")))),
         ("Usable backends", target(with_svc(q.m("nodenet_ipvs_service_backends_available")))),
         ("Connections/s", target(with_svc(q.rate("nodenet_ipvs_service_connections_total")))),
         ("In", target(with_svc(q.rate("nodenet_ipvs_service_incoming_bytes_total")))),
         ("Out", target(with_svc(q.rate("nodenet_ipvs_service_outgoing_bytes_total"))))],
        labels=("protocol", "address", "port", "fwmark", "family", "scheduler", "flags"),
        hidden=("instance",), sort="Usable backends", sort_desc=False,
        overrides=[col("Usable backends", "short", thresholds=zero_bad()),
                   col("Connections/s", "cps"), col("In", "Bps"), col("Out", "Bps")]), 24, 9)
    b.add(timeseries("Service traffic",
                     "Bytes per second per virtual service; outgoing drawn below the axis.",
                     [target(q.rate("nodenet_ipvs_service_incoming_bytes_total"),
                             SERVICE_LEGEND + " in"),
                      target(q.rate("nodenet_ipvs_service_outgoing_bytes_total"),
                             SERVICE_LEGEND + " out")], "Bps",
                     overrides=[{"matcher": {"id": "byFrameRefID", "options": "B"},
                                 "properties": [{"id": "custom.transform",
                                                 "value": "negative-Y"}]}]), 12, 8)
    b.add(timeseries("Service packets and connections",
                     "Packets in/out and new connections per second per virtual service.",
                     [target(q.rate("nodenet_ipvs_service_incoming_packets_total"),
                             SERVICE_LEGEND + " packets in"),
                      target(q.rate("nodenet_ipvs_service_outgoing_packets_total"),
                             SERVICE_LEGEND + " packets out"),
                      target(q.rate("nodenet_ipvs_service_connections_total"),
                             SERVICE_LEGEND + " connections")], "ops", min_=0), 12, 8)
    b.add(table(
        "Real servers (backends)",
        "Every real server of every virtual service: weight, connections and traffic. Empty on "
        "a node without IPVS.",
        [("Weight", target(q.m("nodenet_ipvs_backend_weight"))),
         ("Active", target(q.m("nodenet_ipvs_backend_connections_active"))),
         ("Inactive", target(q.m("nodenet_ipvs_backend_connections_inactive"))),
         ("Persistent", target(q.m("nodenet_ipvs_backend_connections_persistent"))),
         ("Connections/s", target(q.rate("nodenet_ipvs_backend_connections_total"))),
         ("In", target(q.rate("nodenet_ipvs_backend_incoming_bytes_total"))),
         ("Out", target(q.rate("nodenet_ipvs_backend_outgoing_bytes_total"))),
         ("Packets in/s", target(q.rate("nodenet_ipvs_backend_incoming_packets_total"))),
         ("Packets out/s", target(q.rate("nodenet_ipvs_backend_outgoing_packets_total")))],
        labels=("protocol", "address", "port", "fwmark", "family", "backend_address",
                "backend_port"),
        hidden=("instance",), sort="address", sort_desc=False,
        overrides=[col("Weight", "short", thresholds=zero_bad()), col("Connections/s", "cps"),
                   col("In", "Bps"), col("Out", "Bps"), col("Packets in/s", "pps"),
                   col("Packets out/s", "pps")]), 24, 10)
    b.add(timeseries("Backend traffic",
                     "Bytes per second in + out per real server.",
                     [target(f"{q.rate('nodenet_ipvs_backend_incoming_bytes_total')} + "
                             f"{q.rate('nodenet_ipvs_backend_outgoing_bytes_total')}",
                             BACKEND_LEGEND)], "Bps", min_=0), 12, 8)
    b.add(timeseries("Backend active connections",
                     "Active connections per real server.",
                     [target(q.m("nodenet_ipvs_backend_connections_active"), BACKEND_LEGEND)],
                     "short", min_=0), 12, 8)

    limits_panels(b, q, overview=False)
    netfilter_node(b, q)
    driver_node_panels(b, q)
    podview_panels(b, q)

    b.row("Kernel tunables and exporter")
    b.add(table("Kernel tunables", "Values of the sysctls the sysctl collector reads.",
                [("Value", target(q.m("nodenet_sysctl_value")))], labels=("name", "bound"),
                hidden=("instance",), sort="name", sort_desc=False), 12, 9)
    b.add(table("Collectors", "Last collection's success and duration per collector.",
                [("Success", target(q.m("nodenet_scrape_collector_success"))),
                 ("Duration", target(q.m("nodenet_scrape_collector_duration_seconds")))],
                labels=("collector",), hidden=("instance",), sort="Success", sort_desc=False,
                overrides=[col("Success", "none", thresholds=zero_bad(), mappings=SUCCESS),
                           col("Duration", "s")]), 12, 9)
    b.add(timeseries("Collector duration", "Time each collector took per scrape.",
                     [target(q.m("nodenet_scrape_collector_duration_seconds"), "{{collector}}")],
                     "s", min_=0), 12, 7)
    b.add(timeseries("Target up", "1 while Prometheus can scrape this node's exporter.",
                     [target(q.m("up"), "up")], "none", min_=0, max_=1), 12, 7)

    dropreason_node(b, q)

    return dashboard(UID_NODE, "nodenet / Node",
                     "One node's network health in depth: conntrack, CPU steal and softnet per "
                     "CPU, interfaces and MTU, IPVS services and backends, tunables.",
                     b.finish(), multi_instance=False)


# ------------------------------------------------------------------------------- issue 14: limits
def limits_panels(b: Board, q: Q, *, overview: bool) -> None:
    """Kernel limits beside their usage (sockets, netstat, neighbour collectors): one row on
    each dashboard. Ratios carry the job/node matchers on both sides."""
    def fill(usage, limit, extra=""):
        on = " ignoring(level)" if extra else ""
        return f"{q.m(usage)} /{on} {q.m(limit, extra)}"

    neigh = "max by (instance) (" + fill("nodenet_neighbour_entries",
                                         "nodenet_neighbour_entries_limit") + ")"
    files = fill("nodenet_file_handles", "nodenet_file_handles_limit")
    orphans = fill("nodenet_tcp_orphan_sockets", "nodenet_tcp_orphan_sockets_limit")
    tcpmem = fill("nodenet_tcp_memory_bytes", "nodenet_tcp_memory_limit_bytes",
                  'level="pressure"')
    tw = fill("nodenet_tcp_timewait_sockets", "nodenet_tcp_timewait_sockets_limit")
    refused = [
        target(q.rate("nodenet_tcp_listen_overflows_total"), "listen overflows"
               + (" {{instance}}" if overview else "")),
        target(f"sum by (instance) ({q.rate('nodenet_udp_receive_buffer_errors_total')})",
               "UDP receive buffer errors" + (" {{instance}}" if overview else "")),
        target(f"sum by (instance) ({q.rate('nodenet_ip_reassembly_failures_total')})",
               "reassembly failures" + (" {{instance}}" if overview else "")),
        target(f"sum by (instance) ({q.rate('nodenet_neighbour_table_fulls_total')})",
               "neighbour table full" + (" {{instance}}" if overview else "")),
    ]
    b.row("Kernel limits (sockets, neighbour tables, file handles)")
    if overview:
        b.add(table(
            "Limits: fill per node",
            "Usage / limit per node (NodenetNeighbourTableNearFull, NodenetFileHandlesNearLimit, "
            "NodenetOrphanSocketsNearLimit, NodenetTCPMemoryPressure): the fullest neighbour "
            "table, file handles, orphans, TCP memory vs tcp_mem pressure, TIME_WAIT vs "
            "tcp_max_tw_buckets. Empty cells: the limit is not visible (exporter without "
            "hostNetwork).",
            [("Neighbour", target(neigh)), ("File handles", target(files)),
             ("Orphans", target(orphans)), ("TCP memory", target(tcpmem)),
             ("TIME_WAIT", target(tw))],
            labels=("instance",), sort="Neighbour",
            overrides=[col("instance", link=True)] + [
                col(c, "percentunit", thresholds=utilisation_thresholds())
                for c in ("Neighbour", "File handles", "Orphans", "TCP memory", "TIME_WAIT")]),
            12, 8)
        b.add(timeseries("Traffic refused by kernel limits",
                         "Per second: listen queue overflows, UDP receive buffer errors, IP "
                         "reassembly failures, neighbour table overflows (each has an alert).",
                         refused, "short", min_=0), 12, 8)
        b.add(table(
            "NodePorts inside the ephemeral port range",
            "Nodes whose ip_local_port_range covers NodePorts that are not reserved "
            "(NodenetEphemeralPortsOverlapNodePorts). Empty when none.",
            [("Ports", target(f"{q.m('nodenet_ephemeral_ports_nodeport_overlap')} > 0"))],
            labels=("instance",),
            overrides=[col("instance", link=True),
                       col("Ports", "short", thresholds=steps(("green", None), ("red", 1)))]),
            24, 6)
        return
    b.add(timeseries("Neighbour tables",
                     "Entries (permanent included) and gc_thresh3 per table; machine-wide.",
                     [target(q.m("nodenet_neighbour_entries"), "{{table}} entries"),
                      target(q.m("nodenet_neighbour_entries_limit"), "{{table}} gc_thresh3")],
                     "short", min_=0), 8, 8)
    b.add(timeseries("TCP sockets",
                     "In use per family, TIME_WAIT and its limit, orphans.",
                     [target(q.m("nodenet_tcp_sockets_in_use"), "in use {{family}}"),
                      target(q.m("nodenet_tcp_timewait_sockets"), "TIME_WAIT"),
                      target(q.m("nodenet_tcp_timewait_sockets_limit"), "tcp_max_tw_buckets"),
                      target(q.m("nodenet_tcp_orphan_sockets"), "orphans")],
                     "short", min_=0), 8, 8)
    b.add(timeseries("Socket memory",
                     "TCP and UDP buffer memory and their tcp_mem/udp_mem pressure level "
                     "(machine-wide).",
                     [target(q.m("nodenet_tcp_memory_bytes"), "TCP"),
                      target(q.m("nodenet_tcp_memory_limit_bytes", 'level="pressure"'),
                             "tcp_mem pressure"),
                      target(q.m("nodenet_udp_memory_bytes"), "UDP"),
                      target(q.m("nodenet_udp_memory_limit_bytes", 'level="pressure"'),
                             "udp_mem pressure")],
                     "bytes", min_=0), 8, 8)
    b.add(gauge("File handles", "Allocated file handles / fs.file-max.",
                [target(files, instant=True)], "percentunit",
                thresholds=utilisation_thresholds()), 4, 6)
    b.add(stat("NodePorts in ephemeral range",
               "NodePort-range ports that ip_local_port_range covers and that are not "
               "reserved; should be 0.",
               [target(q.m("nodenet_ephemeral_ports_nodeport_overlap"), instant=True)],
               "short", thresholds=steps(("green", None), ("red", 1))), 4, 6)
    b.add(timeseries("Traffic refused by kernel limits",
                     "Per second: listen overflows, UDP receive buffer errors, reassembly "
                     "failures, neighbour table overflows.", refused, "short", min_=0), 16, 6)
# ------------------------------------------------------------------------------- dropreason
# Issue 16: nodenet_packet_drops_total{reason,protocol} from the opt-in dropreason collector
# (empty panels on nodes without it; see nodenet_dropreason_available).
DROPS_NOTE = ("Kernel drop reasons counted on skb:kfree_skb by the dropreason collector "
              "(opt-in: deploy/components/dropreason); all network namespaces of the node. "
              "Reasons that mean trouble are listed in exporter/health.py "
              "(NodenetPacketDropsByReason); NO_SOCKET, NETFILTER_DROP and TCP_* are usually "
              "background or policy.")


def dropreason_overview(b, q):
    rate = f"sum without(protocol) ({q.rate('nodenet_packet_drops_total')})"
    b.row("Drops by reason")
    b.add(table("Top drop reasons per node",
                "The 20 highest (node, reason) drop rates of the selected nodes. " + DROPS_NOTE,
                [("Drops/s", target(f"topk(20, {rate} > 0)"))],
                labels=("instance", "reason"), sort="Drops/s",
                overrides=[col("instance", link=True), col("Drops/s", "pps")]), 12, 8)
    b.add(timeseries("Drops by reason",
                     "Drops per second by reason, summed over the selected nodes (top 10). "
                     + DROPS_NOTE,
                     [target(f"topk(10, sum by (reason) ({rate}))", "{{reason}}")],
                     "pps", min_=0), 12, 8)
    b.add(stat("Nodes counting drop reasons",
               "Selected nodes whose exporter has the dropreason program loaded "
               "(nodenet_dropreason_available 1).",
               [target(f"count({q.m('nodenet_dropreason_available')} == 1) or vector(0)",
                       instant=True)], "short"), 4, 4)


def dropreason_node(b, q):
    rate = q.rate("nodenet_packet_drops_total")
    b.row("Drops by reason")
    b.add(timeseries("Drops by reason",
                     "This node's drops per second by kernel drop reason (protocols summed). "
                     + DROPS_NOTE,
                     [target(f"sum without(protocol) ({rate})", "{{reason}}")],
                     "pps", min_=0), 16, 8)
    b.add(table("Drops by reason and protocol",
                "Current drop rate per reason and L3 protocol (ipv4, ipv6, arp, other = "
                "non-IP: AF_UNIX, netlink...).",
                [("Drops/s", target(f"{rate} > 0"))], labels=("reason", "protocol"),
                hidden=("instance",), sort="Drops/s",
                overrides=[col("Drops/s", "pps")]), 8, 8)
    b.add(stat("Drop reasons counted",
               "1 when the dropreason program is loaded on this node; 0 with the reason in the "
               "exporter's log (kernel < 5.17, no CAP_BPF/CAP_PERFMON, seccomp...).",
               [target(q.m("nodenet_dropreason_available"), instant=True)], "none",
               thresholds=zero_bad()), 4, 4)
    b.add(stat("Drop-reason runs missed",
               "Runs the kernel skipped (another BPF program on the CPU): drops not counted.",
               [target(q.rate("nodenet_dropreason_missed_total"), instant=True)], "cps",
               thresholds=nonzero_bad()), 4, 4)
# ------------------------------------------------------------------------------- netfilter
# The packet filter (issue 19): its own panels, added to both dashboards.
NETFILTER_RULES_LARGE = _T["NodenetNetfilterRulesetLarge"]  # exporter/health.py
NETFILTER_TABLE = "backend, family, table"
NETFILTER_LEGEND = "{{backend}} {{family}} {{table}}"


def netfilter_overview(b: Board, q: Q) -> None:
    b.row("Packet filter (iptables / nftables)")
    b.add(table(
        "Largest packet filter tables",
        "Rules per table (iptables-legacy as iptables-save counts -A lines; nftables tables incl. "
        "iptables-nft's). Above 20,000 NodenetNetfilterRulesetLarge fires.",
        [("Rules", target(f"topk(20, {q.m('nodenet_netfilter_rules')})")),
         ("Chains", target(q.m("nodenet_netfilter_chains")))],
        labels=("instance", "backend", "family", "table"), sort="Rules",
        overrides=[col("instance", link=True),
                   col("Rules", "short", thresholds=steps(("green", None),
                                                          ("orange", NETFILTER_RULES_LARGE)))]),
        12, 8)
    b.add(timeseries("Ruleset commits per second",
                     "nftables ruleset commits (the kernel's generation counter) per node; "
                     "sustained > 0.5/s is NodenetNetfilterRulesetChurn.",
                     [target(f"topk(10, {q.rate('nodenet_netfilter_ruleset_commits_total')})",
                             "{{instance}}")], "ops", min_=0), 12, 8)


def netfilter_node(b: Board, q: Q) -> None:
    b.row("Packet filter (iptables / nftables)")
    b.add(timeseries("Rules per table",
                     "Rules per table; churn shows as steps (legacy tables also in bytes).",
                     [target(q.m("nodenet_netfilter_rules"), NETFILTER_LEGEND)], "short",
                     min_=0, thresholds=steps(("green", None), ("orange", NETFILTER_RULES_LARGE))),
          12, 8)
    b.add(timeseries("Ruleset commits per second",
                     "nftables ruleset commits per second (the kernel's generation counter).",
                     [target(q.rate("nodenet_netfilter_ruleset_commits_total"), "commits")],
                     "ops", min_=0), 6, 8)
    b.add(timeseries("Legacy table rewrites",
                     "Size changes of each iptables-legacy table over 10 minutes (legacy "
                     "tables have no generation counter).",
                     [target(f"changes({q.m('nodenet_netfilter_table_bytes')}[10m])",
                             NETFILTER_LEGEND)], "short", min_=0), 6, 8)
    b.add(table("Selected chains",
                "Rules in the chains matched by --collector.netfilter.chains (KUBE-SERVICES, "
                "builtin hooks, ...).",
                [("Rules", target(q.m("nodenet_netfilter_chain_rules")))],
                labels=("backend", "family", "table", "chain"), hidden=("instance",),
                sort="Rules"), 12, 8)
    b.add(table("Tables",
                "Per table: chains, nftables sets and their elements, legacy blob size; "
                "'partial' means the last count was cut by --collector.netfilter.timeout.",
                [("Chains", target(q.m("nodenet_netfilter_chains"))),
                 ("Sets", target(q.m("nodenet_netfilter_sets"))),
                 ("Set elements", target(q.m("nodenet_netfilter_set_elements"))),
                 ("Bytes", target(q.m("nodenet_netfilter_table_bytes")))],
                labels=("backend", "family", "table"), hidden=("instance",), sort="Chains",
                overrides=[col("Bytes", "bytes")]), 12, 8)
# ------------------------------------------------------------------------------- issue 17
# The fleet view: recording rules of alerts/build.py (group nodenet-fleet) that the overview
# reads instead of aggregating per-CPU series of every node on each refresh (5m windows).
RECORDED_RATES = {
    "nodenet_conntrack_drops_total": "nodenet:conntrack_drops:rate5m",
    "nodenet_conntrack_early_drops_total": "nodenet:conntrack_early_drops:rate5m",
    "nodenet_conntrack_insert_failed_total": "nodenet:conntrack_insert_failed:rate5m",
    "nodenet_softnet_dropped_total": "nodenet:softnet_dropped:rate5m",
    "nodenet_softnet_times_squeezed_total": "nodenet:softnet_times_squeezed:rate5m",
}
RECORDED_INTERFACE_RATES = {
    f"nodenet_interface_{d}_{what}_total": f"nodenet:interface_{d}_{what}:rate5m"
    for d in ("receive", "transmit") for what in ("drops", "packets")}


class RecordedQ(Q):
    """Q whose node-wide aggregates read the recorded series (same job and node matchers)."""

    def srate(self, metric: str, extra: str = "") -> str:
        recorded = RECORDED_RATES.get(metric)
        return self.m(recorded, extra) if recorded else super().srate(metric, extra)

    def rate(self, metric: str, extra: str = "") -> str:
        recorded = RECORDED_INTERFACE_RATES.get(metric)
        return self.m(recorded, extra) if recorded else super().rate(metric, extra)

    def utilisation(self) -> str:
        return self.m("nodenet:conntrack_utilisation:ratio")

    def steal_fraction(self) -> str:
        return self.m("nodenet:cpu_steal:ratio_rate5m")

    def time_to_full(self) -> str:
        return self.m("nodenet:conntrack_time_to_full_seconds:deriv30m")

    def failing_collectors(self) -> str:
        return f"sum({self.m('nodenet:scrape_collectors_failing:count')}) or vector(0)"

    def slowest_collectors(self) -> str:
        return f"max by (collector) ({self.m('nodenet:scrape_collector_duration_seconds:topk1')})"

    def dropping_interfaces(self) -> list[tuple[str, str]]:
        """The sparse records of group nodenet-fleet: only the interfaces dropping now."""
        return [(f"{d.capitalize()} {col}", self.m(f"nodenet:interface_dropping_{d}_drops:{op}"))
                for col, op in (("drops/s", "rate5m"), ("drop ratio", "ratio_rate5m"))
                for d in ("receive", "transmit")]


POD_COLUMNS = (("Pods", "nodenet_pod_interfaces", "short"),
               ("MTU min", "nodenet_pod_interfaces_mtu_min_bytes", "suffix: B"),
               ("MTU max", "nodenet_pod_interfaces_mtu_max_bytes", "suffix: B"),
               ("Above overlay", "nodenet_pod_interfaces_above_overlay", "short"),
               ("Max excess", "nodenet_pod_interfaces_above_overlay_max_bytes", "suffix: B"))


def pod_overview_panels(b: "Board", q: Q) -> None:
    """Pod interfaces (summarised per master by default) whose MTU is above the overlay."""
    b.add(table(
        "Pod interfaces larger than the overlay",
        "Per node and master (bridge; empty for CNIs without one): pod interfaces whose MTU "
        "exceeds the smallest overlay MTU, and the largest excess. Empty when every pod fits.",
        [("Above overlay", target(f"{q.m('nodenet_pod_interfaces_above_overlay')} > 0")),
         ("Max excess", target(f"{q.m('nodenet_pod_interfaces_above_overlay_max_bytes')} > 0"))],
        labels=("instance", "master", "kind"), sort="Above overlay",
        overrides=[col("instance", link=True), col("Above overlay", "short"),
                   col("Max excess", "suffix: B", thresholds=steps(("green", None),
                                                                   ("red", 1)))]), 12, 7)


def pod_node_panels(b: "Board", q: Q) -> None:
    """One node's pod interfaces per master: count, MTUs, overlay excess, traffic, drops."""
    b.add(table(
        "Pod interfaces per master",
        "Pod interfaces (veths whose peer is in another namespace) summed per master: count, "
        "MTU range, how many are above the overlay MTU, traffic and drops (the top 10 veths "
        "with drops or errors also appear one by one in Interfaces).",
        [(name, target(q.m(metric))) for name, metric, _ in POD_COLUMNS]
        + [("Receive", target(q.rate("nodenet_pod_interfaces_receive_bytes_total"))),
           ("Transmit", target(q.rate("nodenet_pod_interfaces_transmit_bytes_total"))),
           ("Drops/s", target(f"{q.rate('nodenet_pod_interfaces_receive_drops_total')} + "
                              f"{q.rate('nodenet_pod_interfaces_transmit_drops_total')}"))],
        labels=("master", "kind"), hidden=("instance",), sort="Pods",
        overrides=[col(name, unit) for name, _, unit in POD_COLUMNS]
        + [col("Receive", "Bps"), col("Transmit", "Bps"),
           col("Drops/s", "pps", thresholds=steps(("green", None), ("orange", 1e-9)))]), 24, 7)


def driver_overview_panels(b: "Board", q: Q) -> None:
    """NIC driver drops and ENA allowances across nodes (ethtool collector)."""
    b.row("NIC drivers and cloud allowances")
    b.add(table(
        "Cloud allowances exceeded",
        "ENA allowance counters that rose in the last 5 minutes: packets the hypervisor queued "
        "or dropped because the instance went over its bandwidth, PPS, conntrack or link-local "
        "allowance (NodenetCloudAllowanceExceeded). Empty when no node is throttled.",
        [("Packets in 5m", target(
            f"increase({q.m('nodenet_interface_allowance_exceeded_total')}[5m]) > 0"))],
        labels=("instance", "interface", "allowance"), sort="Packets in 5m",
        overrides=[col("instance", link=True),
                   col("Packets in 5m", "short", thresholds=nonzero_bad())]), 12, 8)
    b.add(timeseries("Top 10 driver drop counters",
                     "Driver drop counters per second (ethtool -S names, per-queue names "
                     "folded), the 10 worst of the selected nodes (NodenetDriverDrops).",
                     [target(f"topk(10, {q.rate('nodenet_interface_driver_drops_total')} > 0)",
                             "{{instance}} {{interface}} {{counter}}")], "pps", min_=0), 12, 8)


def driver_node_panels(b: "Board", q: Q) -> None:
    """One node's NIC drivers: info, drops and errors by counter, ENA allowances."""
    b.row("NIC driver (ethtool)")
    b.add(info_table("Drivers", "Driver, version and firmware of each device with a driver.",
                     target(q.m("nodenet_interface_driver_info"), instant=True, table=True),
                     ("interface", "driver", "version", "firmware"), hidden=("instance",)),
          8, 7)
    b.add(timeseries("Driver drops", "Driver drop counters per second, by counter "
                     "(ethtool -S names, per-queue names folded).",
                     [target(q.rate("nodenet_interface_driver_drops_total"),
                             "{{interface}} {{counter}}")], "pps", min_=0), 8, 7)
    b.add(timeseries("Driver errors", "Driver error counters per second, by counter.",
                     [target(q.rate("nodenet_interface_driver_errors_total"),
                             "{{interface}} {{counter}}")], "pps", min_=0), 8, 7)
    b.add(timeseries("ENA allowances exceeded",
                     "Packets per second queued or dropped by the hypervisor, per allowance "
                     "(bw_in, bw_out, pps, conntrack, linklocal). ENA only.",
                     [target(q.rate("nodenet_interface_allowance_exceeded_total"),
                             "{{interface}} {{allowance}}")], "pps", min_=0), 12, 7)
    b.add(timeseries("ENA conntrack allowance available",
                     "Connections the instance can still track before the hypervisor's "
                     "conntrack allowance is reached. ENA only.",
                     [target(q.m("nodenet_interface_conntrack_allowance_available"),
                             "{{interface}}")], "short", min_=0), 12, 7)


# ------------------------------------------------------------------------------- issue 15: pods
def podview_panels(b: Board, q: Q) -> None:
    """The pod view (collector netns, opt-in): the pod namespaces that refuse traffic on this
    node. Labelled by pod_uid (join kube_pod_info, or use the recorded
    nodenet:netns_*:rate5m series for pod_namespace/pod_name) and netns."""
    by = "sum by (netns, netns_inode, pod_uid)"
    legend = "{{pod_uid}}{{netns}} "
    b.row("Pods (collector netns)")
    b.add(timeseries("pods refusing traffic",
                     "Per pod network namespace, per second: listen queue overflows and UDP "
                     "receive buffer errors (NodenetPodTCPListenOverflows, "
                     "NodenetPodUDPReceiveBufferErrors), the top 10 of each; empty unless "
                     "--collector.netns is on. Legend: pod UID (or the /run/netns name).",
                     [target(f"topk(10, {by} "
                             f"({q.rate('nodenet_netns_tcp_listen_overflows_total')}) > 0)",
                             legend + "listen overflows"),
                      target(f"topk(10, {by} "
                             f"({q.rate('nodenet_netns_udp_receive_buffer_errors_total')}) > 0)",
                             legend + "UDP receive buffer errors")],
                     "short", min_=0), 12, 8)
    b.add(timeseries("pod interfaces dropping",
                     "Drops per second on each pod's own interfaces (its eth0, counted inside its "
                     "network namespace), per direction, the 10 worst; the recorded "
                     "nodenet:netns_interface_drops:rate5m, joined to kube_pod_info, holds only "
                     "those dropping now. Every pod, not only the top 10 host-side veths the "
                     "netdev pod summary keeps; empty unless --collector.netns is on. Legend: "
                     "namespace/pod (without kube-state-metrics: the pod UID or /run/netns "
                     "name), interface, direction.",
                     [target(f"topk(10, {q.m('nodenet:netns_interface_drops:rate5m')})",
                             "{{pod_namespace}}/{{pod_name}} {{pod_uid}}{{netns}} {{interface}} "
                             "{{direction}}")],
                     "pps", min_=0), 12, 8)


# ------------------------------------------------------------------------------- output
def render() -> dict[pathlib.Path, str]:
    return {OUT / "nodenet-overview.json": json.dumps(overview(), indent=2) + "\n",
            OUT / "nodenet-node.json": json.dumps(node(), indent=2) + "\n"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true",
                   help="do not write; exit 1 if a file differs from what would be written")
    args = p.parse_args(argv)
    stale = []
    for path, text in render().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    for path in stale:
        verb = "out of date" if args.check else "written"
        print(f"{path.relative_to(ROOT)}: {verb}", file=sys.stderr if args.check else sys.stdout)
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
