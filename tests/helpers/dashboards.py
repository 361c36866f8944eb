"""Reading the Grafana dashboards in grafana/: their queries, variables, and the PromQL in them.

Shared by tests/unit/test_dashboards.py (static checks, real promtool) and
tests/e2e/test_dashboards_live.py (every query against a real Prometheus).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRAFANA = os.path.join(ROOT, "grafana")
DASHBOARD_FILES = {"nodenet-overview": "nodenet-overview.json", "nodenet-node": "nodenet-node.json"}

# Series that Prometheus itself makes for every target; dashboards may use them.
PROMETHEUS_SYNTHETIC = {"up"}

# The metric contract of the issues (2 foundation, 3 conntrack, 4 IPVS, 9 interfaces):
# name -> label names. Conntrack counters may carry `cpu` (a flag exports them per CPU).
_SVC = ("protocol", "address", "port", "fwmark", "family")
_BACKEND = _SVC + ("backend_address", "backend_port")
_CT_COUNTERS = ("found", "invalid", "inserts", "insert_failed", "drops", "early_drops",
                "errors", "search_restarts", "clash_resolves", "chain_too_long")
_IF_COUNTERS = ("receive_bytes", "receive_packets", "receive_drops", "receive_errors",
                "transmit_bytes", "transmit_packets", "transmit_drops", "transmit_errors")
CONTRACT: dict[str, tuple[str, ...]] = {
    # issue 2
    "nodenet_scrape_collector_success": ("collector",),
    "nodenet_scrape_collector_duration_seconds": ("collector",),
    "nodenet_build_info": ("version", "python_version"),
    "nodenet_cpu_steal_seconds_total": ("cpu",),
    "nodenet_cpus": (),
    "nodenet_softnet_processed_total": ("cpu",),
    "nodenet_softnet_dropped_total": ("cpu",),
    "nodenet_softnet_times_squeezed_total": ("cpu",),
    "nodenet_sysctl_value": ("name", "bound"),
    # issue 3
    "nodenet_conntrack_entries": (),
    "nodenet_conntrack_entries_limit": (),
    "nodenet_conntrack_buckets": (),
    "nodenet_conntrack_expect_entries": (),
    **{f"nodenet_conntrack_{c}_total": ("cpu",) for c in _CT_COUNTERS},
    "nodenet_conntrack_available": (),
    "nodenet_conntrack_source_info": ("source",),
    "nodenet_conntrack_entries_by_state": ("protocol", "state"),
    # issue 4
    "nodenet_ipvs_available": (),
    "nodenet_ipvs_services": (),
    "nodenet_ipvs_backends": (),
    "nodenet_ipvs_service_info": _SVC + ("scheduler", "flags"),
    "nodenet_ipvs_service_connections_total": _SVC,
    "nodenet_ipvs_service_incoming_packets_total": _SVC,
    "nodenet_ipvs_service_outgoing_packets_total": _SVC,
    "nodenet_ipvs_service_incoming_bytes_total": _SVC,
    "nodenet_ipvs_service_outgoing_bytes_total": _SVC,
    "nodenet_ipvs_service_backends": _SVC,
    "nodenet_ipvs_service_backends_available": _SVC,
    **{f"nodenet_ipvs_backend_{m}": _BACKEND for m in (
        "connections_active", "connections_inactive", "connections_persistent", "weight",
        "connections_total", "incoming_packets_total", "outgoing_packets_total",
        "incoming_bytes_total", "outgoing_bytes_total")},
    # issue 9
    "nodenet_interface_info": ("interface", "kind", "operstate", "master", "underlay"),
    "nodenet_interface_mtu_bytes": ("interface",),
    **{f"nodenet_interface_{c}_total": ("interface",) for c in _IF_COUNTERS},
    "nodenet_overlay_mtu_headroom_bytes": ("interface", "kind", "underlay"),
    "nodenet_interface_mtu_above_overlay_bytes": ("interface",),
}
# Labels every series has once Prometheus scraped it (target labels).
TARGET_LABELS = {"job", "instance"}

# Values the tests give Grafana's variables. $__rate_interval is what Grafana computes for a
# 15 s scrape interval; the live test overrides it to suit its 1 s scrapes.
STATIC_VALUES = {"job": "nodenet-exporter", "instance": "node-1:9834",
                 "__rate_interval": "1m"}


@dataclass
class Query:
    uid: str            # dashboard uid
    panel: str          # panel title ("variable <name>" for a template variable's query)
    ref: str            # refId
    expr: str           # PromQL, with Grafana variables still in it
    instant: bool

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.uid, self.panel, self.ref)

    def __str__(self):
        return f"{self.uid} / {self.panel} / {self.ref}"


def load_dashboards() -> dict[str, dict]:
    out = {}
    for uid, name in DASHBOARD_FILES.items():
        path = os.path.join(GRAFANA, name)
        if not os.path.exists(path):
            raise AssertionError(f"{path} missing: run python grafana/build.py")
        with open(path, encoding="utf-8") as fh:
            out[uid] = json.load(fh)
    return out


def all_panels(dash: dict):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])  # collapsed rows keep their panels inside


def panel_queries(dashboards: dict[str, dict]) -> list[Query]:
    out = []
    for uid, dash in dashboards.items():
        for p in all_panels(dash):
            for t in p.get("targets", []):
                out.append(Query(uid, p["title"], t["refId"], t["expr"],
                                 bool(t.get("instant")) and not t.get("range")))
    return out


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<sel>.+),\s*)?(?P<label>\w+)\)$")


def variable_queries(dashboards: dict[str, dict]) -> list[tuple[str, dict, str | None, str]]:
    """(uid, variable, series selector or None, label) for every query variable."""
    out = []
    for uid, dash in dashboards.items():
        for v in dash["templating"]["list"]:
            if v["type"] != "query":
                continue
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = _LABEL_VALUES.match(q.strip())
            if not m:
                raise AssertionError(f"{uid}: variable {v['name']}: unsupported query {q!r}")
            out.append((uid, v, m.group("sel"), m.group("label")))
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replaces $name / ${name} Grafana variables; fails on a variable it has no value for."""
    def repl(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]
    out = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)
    return out


# ------------------------------------------------------------------------------- PromQL lexing
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2"}
_SELECTOR = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")\s*,?')


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and labels removed)."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", "{}", s)
    s = re.sub(r"\[[^\]]*\]", "[]", s)
    s = _GROUPING.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        ident, call = m.group(1), m.group(2)
        if call or ident.lower() in KEYWORDS:
            continue
        names.add(ident)
    return names


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """[(metric, {label: (op, quoted value)})] for every `metric{...}` selector."""
    out = []
    for m in _SELECTOR.finditer(expr):
        body, matchers, pos = m.group(2), {}, 0
        while pos < len(body):
            mm = _MATCHER.match(body, pos)
            if not mm:
                raise AssertionError(f"cannot read matchers {body!r} in {expr!r}")
            matchers[mm.group(1)] = (mm.group(2), mm.group(3))
            pos = mm.end()
        out.append((m.group(1), matchers))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by/without/on/ignoring/group_left/group_right clauses."""
    s = _STRING.sub('""', expr)
    out = set()
    for m in _GROUPING.finditer(s):
        out.update(x.strip() for x in m.group(2).split(",") if x.strip())
    return out


# ------------------------------------------------------------------------------- promtool
def promtool_check(exprs: dict[str, str]) -> tuple[bool, str]:
    """Runs the real `promtool check rules` on a rule file recording each expression.
    exprs: {record name: PromQL}. Returns (ok, promtool's output)."""
    promtool = shutil.which("promtool")
    if not promtool:
        raise AssertionError("promtool not installed: tests/run.sh installs Debian's "
                             "prometheus package")
    rules = [{"record": name, "expr": expr} for name, expr in exprs.items()]
    with tempfile.TemporaryDirectory(prefix="nodenet-dash-") as tmp:
        path = os.path.join(tmp, "dashboards.rules.yaml")
        with open(path, "w") as fh:
            yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, fh,
                           sort_keys=False, width=10_000)
        res = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True,
                             timeout=60)
    return res.returncode == 0, res.stdout + res.stderr
