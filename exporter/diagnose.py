"""``nodenet-exporter diagnose``: the node's network health in one command, and ``/diagnose``.

The command reads every enabled collector twice, ``--interval`` apart (so rates are real),
runs the judges of :mod:`exporter.health` (the same thresholds as the alert rules) on the two
readings and prints the findings, worst first, then a one-screen summary of the node.  The
exporter serves the same report at ``/diagnose`` from the readings its scrapes keep
(:class:`History`).  The report is one JSON document (:func:`report`, schema in
docs/diagnose.schema.json); the text form is rendered from it, so both always agree.

Exit status: 0 no finding, 1 warnings, 2 critical, 3 diagnose itself failed, 64 usage error
(unknown ``--only`` name, bad ``--interval``, any bad flag or config file).

The node summary is driven by what was collected: a collector with an entry in
:data:`SUMMARIES` gets its own line; any other collector that ran gets a generic line (its
series count), so collectors added later show up without a change here.
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from . import __version__, health
from .config import ConfigError, Option, parse_duration, parse_list, resolve
from .health import Pair, Reading, num, pct

PROG = "nodenet-exporter diagnose"
USAGE_EXIT = 64          # EX_USAGE (sysexits.h): distinct from the health codes 0/1/2
FAILED_EXIT = 3          # diagnose could not run (the check_* plugins' UNKNOWN)
DEFAULT_INTERVAL = 2.0
MAX_INTERVAL = 600.0
SCHEMA_ID = "nodenet-diagnose/v1"
STATUS = {0: "ok", 1: "warning", 2: "critical"}


class UsageError(Exception):
    """A bad flag for diagnose; str() is the one-line reason."""


def _interval(value) -> float:
    seconds = parse_duration(value)
    if seconds > MAX_INTERVAL:
        raise ValueError(f"at most {MAX_INTERVAL:g}s, not {value!r}")
    return seconds


def _output(value) -> str:
    text = str(value).strip().lower()
    if text not in ("text", "json"):
        raise ValueError(f"must be text or json, not {value!r}")
    return text


OPTIONS = [
    Option("interval", _interval, DEFAULT_INTERVAL,
           "Time between the two readings of every collector (rates are over it)", "DURATION"),
    Option("output", _output, "text", "Report format: text|json", "FORMAT"),
    Option("only", parse_list, [],
           "Run only these collectors (comma-separated names, as --collector.<name>)", "NAMES"),
]


# ------------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Summary:
    """How one collector's readings are summed up in a line (plus the values behind it)."""

    inputs: tuple[str, ...]
    line: Callable[[Pair], tuple[str, dict]]


def _conntrack(pair: Pair) -> tuple[str, dict]:
    cur = pair.cur
    if cur.value("nodenet_conntrack_available") == 0:
        return "not available on this node (nf_conntrack not loaded)", {"available": False}
    entries, limit = cur.value("nodenet_conntrack_entries"), cur.value(
        "nodenet_conntrack_entries_limit")
    rates = {k: pair.total_rate(m) for k, m in (
        ("drops_per_second", health.CT_DROPS), ("early_drops_per_second", health.CT_EARLY),
        ("insert_failures_per_second", health.CT_INSERT_FAILED))}
    source = next((lb.get("source", "") for lb, v in cur.series("nodenet_conntrack_source_info")
                   if v), "")
    fill = ""
    if entries is not None:
        fill = f"{num(entries)} entries"
        if limit:
            fill = f"{num(entries)} of {num(limit)} entries ({pct(entries / limit)})"
    words = ", ".join(f"{k.replace('_per_second', '').replace('_', ' ')} {num(v)}/s"
                      for k, v in rates.items() if v is not None)
    text = "; ".join(p for p in (fill, words, f"source {source}" if source else "") if p)
    return text, {"available": True, "entries": entries, "limit": limit, "source": source,
                  **rates}


def _netdev(pair: Pair) -> tuple[str, dict]:
    kinds: dict[str, int] = {}
    for labels, _ in pair.gauge("nodenet_interface_info"):
        kind = labels.get("kind", "")
        kinds[kind] = kinds.get(kind, 0) + 1
    total = sum(kinds.values())
    dropping = []
    for direction, short in (("receive", "rx"), ("transmit", "tx")):
        for key, rate in pair.rate(f"nodenet_interface_{direction}_drops_total").items():
            if rate > 0:
                dropping.append((rate, dict(key).get("interface", ""), short))
    dropping.sort(reverse=True)
    negative = sorted((v, lb.get("interface", ""), lb.get("underlay", ""))
                      for lb, v in pair.gauge("nodenet_overlay_mtu_headroom_bytes") if v < 0)
    parts = [f"{num(total)} interfaces (" + ", ".join(
        f"{k or '?'} {n}" for k, n in sorted(kinds.items())) + ")"]
    if dropping:
        shown = ", ".join(f"{name} {d} {num(r)}/s" for r, name, d in dropping[:5])
        more = f" and {len(dropping) - 5} more" if len(dropping) > 5 else ""
        parts.append(f"dropping: {shown}{more}")
    else:
        parts.append("none dropping")
    if negative:
        parts.append("negative overlay headroom: " + ", ".join(
            f"{name} {num(v)} bytes (underlay {under})" for v, name, under in negative))
    return "; ".join(parts), {
        "interfaces": total, "by_kind": kinds,
        "dropping": [{"interface": n, "direction": d, "per_second": r} for r, n, d in dropping],
        "negative_headroom": [{"interface": n, "underlay": u, "bytes": v}
                              for v, n, u in negative]}


def _cpu(pair: Pair) -> tuple[str, dict]:
    cpus = pair.cur.value("nodenet_cpus")
    got = health.steal_fraction(pair)
    steal = got[0] if got else None
    text = f"{num(cpus)} CPUs" if cpus is not None else "CPU count unknown"
    if steal is not None:
        text += f"; steal {pct(steal)}"
    return text, {"cpus": cpus, "steal_fraction": steal}


def _softnet(pair: Pair) -> tuple[str, dict]:
    drops = pair.total_rate("nodenet_softnet_dropped_total")
    squeezed = pair.total_rate("nodenet_softnet_times_squeezed_total")
    processed = pair.total_rate("nodenet_softnet_processed_total")
    cpus = len(pair.cur.series("nodenet_softnet_dropped_total"))
    text = (f"{num(processed or 0)} packets/s processed, drops {num(drops or 0)}/s, "
            f"time squeezes {num(squeezed or 0)}/s over {cpus} CPUs")
    return text, {"processed_per_second": processed, "drops_per_second": drops,
                  "squeezes_per_second": squeezed, "cpus": cpus}


def _ipvs(pair: Pair) -> tuple[str, dict]:
    cur = pair.cur
    if cur.value("nodenet_ipvs_available") == 0:
        return "not available on this node (ip_vs not loaded)", {"available": False}
    services, backends = cur.value("nodenet_ipvs_services"), cur.value("nodenet_ipvs_backends")
    empty = sum(1 for _, v in cur.series("nodenet_ipvs_service_backends_available") if v == 0)
    return (f"{num(services or 0)} services, {num(backends or 0)} backends; {empty} services "
            f"without a usable backend"), {"available": True, "services": services,
                                          "backends": backends, "services_without_backend": empty}


def _sysctl(pair: Pair) -> tuple[str, dict]:
    values: dict[str, float] = {}
    for labels, v in pair.gauge("nodenet_sysctl_value"):
        name = labels.get("name", "")
        if labels.get("bound"):
            name = f"{name}[{labels['bound']}]"
        values[name] = v
    shown = ", ".join(f"{k}={num(v)}" for k, v in sorted(values.items())[:6])
    more = f" and {len(values) - 6} more" if len(values) > 6 else ""
    return shown + more if values else "no sysctl read", {"values": values}


# -- kernel limits (issue 14): sockets, netstat, neighbour

def _bytes(value: float) -> str:
    """1536 -> '1.5 KiB'; 5_400_000 -> '5.1 MiB'."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= size:
            return f"{num(value / size)} {unit}"
    return f"{num(value)} B"


def _of(used: float | None, limit: float | None, percent: bool = False) -> str:
    """'250 of 262,144' (with the share when `percent`), '250' without a limit."""
    if used is None:
        return "?"
    if not limit:
        return num(used)
    return f"{num(used)} of {num(limit)}" + (f" ({pct(used / limit)})" if percent else "")


def _sockets(pair: Pair) -> tuple[str, dict]:
    cur = pair.cur
    v = {k: cur.value(m) for k, m in (
        ("tcp_in_use", "nodenet_tcp_sockets_in_use"), ("udp_in_use", "nodenet_udp_sockets_in_use"),
        ("timewait", "nodenet_tcp_timewait_sockets"),
        ("timewait_limit", "nodenet_tcp_timewait_sockets_limit"),
        ("orphans", health.ORPHANS), ("orphans_limit", health.ORPHANS_LIMIT),
        ("file_handles", health.FILES), ("file_handles_limit", health.FILES_LIMIT),
        ("tcp_memory_bytes", health.TCP_MEM),
        ("ephemeral_ports", "nodenet_ephemeral_ports_range_size"),
        ("nodeport_overlap", health.PORT_OVERLAP))}
    v["tcp_memory_pressure_bytes"] = cur.value(health.TCP_MEM_LIMIT, level="pressure")
    parts = []
    if v["tcp_in_use"] is not None:
        parts.append(f"{num(v['tcp_in_use'])} TCP in use, TIME_WAIT "
                     f"{_of(v['timewait'], v['timewait_limit'])}")
    if v["udp_in_use"] is not None:
        parts.append(f"{num(v['udp_in_use'])} UDP")
    if v["orphans"] is not None:
        parts.append(f"orphans {_of(v['orphans'], v['orphans_limit'])}")
    if v["file_handles"] is not None:
        parts.append(f"file handles {_of(v['file_handles'], v['file_handles_limit'], True)}")
    if v["tcp_memory_bytes"] is not None:
        mem, pressure = v["tcp_memory_bytes"], v["tcp_memory_pressure_bytes"]
        at = f" ({pct(mem / pressure)} of tcp_mem pressure)" if pressure else ""
        parts.append(f"TCP memory {_bytes(mem)}{at}")
    if v["ephemeral_ports"] is not None:
        parts.append(f"{num(v['ephemeral_ports'])} ephemeral ports, "
                     f"{num(v['nodeport_overlap'] or 0)} NodePorts among them")
    return "; ".join(parts) or "nothing read", v


NETSTAT_RATES = (("listen_overflows", health.LISTEN_OVERFLOWS, "listen overflows"),
                 ("udp_receive_buffer_errors", health.UDP_RCVBUF, "UDP receive buffer errors"),
                 ("reassembly_failures", health.REASM_FAILS, "reassembly failures"),
                 ("timewait_overflows", health.TW_OVERFLOWS, "TIME_WAIT overflows"),
                 ("tcp_memory_pressures", health.TCP_MEM_PRESSURES, "TCP memory pressures"))
NETSTAT_RETRANS = ("nodenet_tcp_retransmitted_segments_total", "nodenet_tcp_sent_segments_total")


def _netstat(pair: Pair) -> tuple[str, dict]:
    values: dict = {f"{k}_per_second": pair.total_rate(m) for k, m, _ in NETSTAT_RATES}
    words = [f"{w} {num(values[f'{k}_per_second'])}/s" for k, _, w in NETSTAT_RATES
             if values[f"{k}_per_second"] is not None]
    retrans, sent = (pair.total_rate(m) for m in NETSTAT_RETRANS)
    values["retransmitted_fraction"] = retrans / sent if retrans is not None and sent else None
    if values["retransmitted_fraction"] is not None:
        words.append(f"{pct(values['retransmitted_fraction'])} of TCP segments retransmitted")
    return ", ".join(words) or "no protocol counters read", values


def _neighbour(pair: Pair) -> tuple[str, dict]:
    cur = pair.cur
    if cur.value("nodenet_neighbour_available") == 0:
        return "not available on this node", {"available": False}
    limits = {lb.get("table"): v for lb, v in cur.series(health.NB_LIMIT)}
    fulls = {dict(k).get("table"): n for k, n in pair.increase(health.NB_FULLS).items()}
    tables = {}
    for labels, entries in sorted(cur.series(health.NB_ENTRIES), key=lambda s: str(s[0])):
        name = labels.get("table", "")
        tables[name] = {"entries": entries, "limit": limits.get(name), "fulls": fulls.get(name)}
    shown = ", ".join(f"{name} {_of(t['entries'], t['limit'])}" for name, t in tables.items())
    full = sum(n for n in fulls.values())
    source = next((lb.get("source", "") for lb, v in cur.series("nodenet_neighbour_source_info")
                   if v), "")
    parts = [p for p in (shown, f"table fulls {num(full)} in {num(pair.dt)} s" if fulls else "",
                         f"source {source}" if source else "") if p]
    return "; ".join(parts) or "no neighbour table read", {
        "available": True, "tables": tables, "source": source}


SUMMARIES: dict[str, Summary] = {
    "conntrack": Summary(("nodenet_conntrack_available", "nodenet_conntrack_entries",
                          "nodenet_conntrack_entries_limit", "nodenet_conntrack_source_info",
                          health.CT_DROPS, health.CT_EARLY, health.CT_INSERT_FAILED), _conntrack),
    "netdev": Summary(("nodenet_interface_info", "nodenet_interface_receive_drops_total",
                       "nodenet_interface_transmit_drops_total",
                       "nodenet_overlay_mtu_headroom_bytes"), _netdev),
    "cpu": Summary(("nodenet_cpus", "nodenet_cpu_steal_seconds_total"), _cpu),
    "softnet": Summary(("nodenet_softnet_dropped_total", "nodenet_softnet_times_squeezed_total",
                        "nodenet_softnet_processed_total"), _softnet),
    "ipvs": Summary(("nodenet_ipvs_available", "nodenet_ipvs_services", "nodenet_ipvs_backends",
                     "nodenet_ipvs_service_backends_available"), _ipvs),
    "sysctl": Summary(("nodenet_sysctl_value",), _sysctl),
    "sockets": Summary((
        "nodenet_tcp_sockets_in_use", "nodenet_udp_sockets_in_use",
        "nodenet_tcp_timewait_sockets", "nodenet_tcp_timewait_sockets_limit", health.ORPHANS,
        health.ORPHANS_LIMIT, health.FILES, health.FILES_LIMIT, health.TCP_MEM,
        health.TCP_MEM_LIMIT, "nodenet_ephemeral_ports_range_size", health.PORT_OVERLAP),
        _sockets),
    "netstat": Summary(tuple(m for _, m, _ in NETSTAT_RATES) + NETSTAT_RETRANS, _netstat),
    "neighbour": Summary(("nodenet_neighbour_available", "nodenet_neighbour_source_info",
                          health.NB_ENTRIES, health.NB_LIMIT, health.NB_FULLS), _neighbour),
}
META = ("nodenet_scrape_collector_success", "nodenet_scrape_collector_duration_seconds",
        "nodenet_ipvs_service_backends")
WANTED = frozenset(health.inputs()) | {m for s in SUMMARIES.values() for m in s.inputs} | set(META)


def _generic(collector: str, pair: Pair, metrics: Iterable[str]) -> tuple[str, dict]:
    counts = {m: pair.cur.counts[m] for m in metrics if m in pair.cur.counts}
    for m in counts:
        if m.endswith("_available") and pair.cur.value(m) == 0:
            return "not available on this node", {"available": False}
    series = sum(counts.values())
    return (f"{num(series)} series in {len(counts)} metrics",
            {"series": series, "metrics": len(counts)})


# ------------------------------------------------------------------------------- the report


def reading(result_families, gatherer=None, t: float | None = None) -> Reading:
    """A Reading of one collection's families (errors from the gatherer's status)."""
    errors = {}
    if gatherer is not None:
        errors = {name: st.last_error for name, st in gatherer.status.items()
                  if st.enabled and st.last_error}
    return Reading.from_families(result_families, time.monotonic() if t is None else t,
                                 time.time(), WANTED, errors)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return _finite(obj)


def collector_metrics() -> dict[str, tuple[str, ...]]:
    from .collectors import load_all
    from .collectors.base import REGISTRY

    load_all()
    return {name: tuple(m.name for m in cls.metrics) for name, cls in REGISTRY.items()}


def report(pair: Pair, collectors: list[str], node: str | None = None) -> dict:
    """The diagnose document (docs/diagnose.schema.json) of two readings of `collectors`."""
    findings = health.evaluate(pair, collectors)
    code = health.exit_code(findings)
    success = {lb.get("collector"): v for lb, v in pair.cur.series(META[0])}
    duration = {lb.get("collector"): v for lb, v in pair.cur.series(META[1])}
    metrics = collector_metrics()
    summary = []
    for name in collectors:
        if success.get(name) == 0:
            text = f"failed: {pair.cur.errors.get(name, 'see the exporter log')}"
            values: dict = {}
        elif name in SUMMARIES:
            text, values = SUMMARIES[name].line(pair)
        else:
            text, values = _generic(name, pair, metrics.get(name, ()))
        summary.append({"collector": name, "text": text, "values": values})
    return _clean({
        "schema": SCHEMA_ID,
        "version": __version__,
        "node": node or socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pair.cur.wall or time.time())),
        "interval_seconds": round(pair.dt, 3),
        "status": STATUS[code],
        "exit_code": code,
        "findings": [{
            "check": f.check, "severity": f.severity, "collector": f.collector,
            "value": f.value, "threshold": f.threshold, "message": f.message,
            "labels": f.labels, "runbook_url": f.runbook_url, "alert_for": f.alert_for,
        } for f in findings],
        "not_judged": [{"check": c.name, "reason": c.not_judged}
                       for c in health.CHECKS if c.judge is None],
        "collectors": [{"name": name, "success": success.get(name) == 1,
                        "duration_seconds": duration.get(name),
                        "error": pair.cur.errors.get(name)} for name in collectors],
        "summary": summary,
    })


def render_text(doc: dict) -> str:
    findings = doc["findings"]
    counts = {s: sum(1 for f in findings if f["severity"] == s)
              for s in (health.CRITICAL, health.WARNING, health.INFO)}
    plural = {health.CRITICAL: "critical", health.WARNING: "warnings", health.INFO: "info"}
    tally = ", ".join(f"{n} {s if n == 1 else plural[s]}"
                      for s, n in counts.items() if n) or "no finding"
    lines = [f"{doc['status'].upper()}: {tally} on {doc['node']} (readings "
             f"{doc['interval_seconds']:g} s apart, {doc['time']})", ""]
    width = max((len(f["check"]) for f in findings), default=0)
    for f in findings:
        lines.append(f"{f['severity'].upper():<8}  {f['check']:<{width}}  {f['message']}  "
                     f"[{f['collector'] or 'exporter'}; runbook {f['runbook_url']}]")
    if findings:
        lines.append("")
    lines.append("Node summary")
    cw = max((len(s["collector"]) for s in doc["summary"]), default=0)
    for s in doc["summary"]:
        lines.append(f"  {s['collector']:<{cw}}  {s['text']}")
    failed = [c["name"] for c in doc["collectors"] if not c["success"]]
    lines.append(f"  {'':<{cw}}  {len(doc['collectors'])} collectors read, "
                 + (f"failed: {', '.join(failed)}" if failed else "all succeeded"))
    lines.append("")
    lines.append("Not judged from two readings (alerts only):")
    lines += [f"  {n['check']}: {n['reason']}" for n in doc["not_judged"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- the command


def parse(argv: list[str]):
    """(settings, collector names) of the command line; raises UsageError."""
    from .cli import all_options, enabled_collectors
    from .collectors.base import REGISTRY

    options = [replace(o, default="warn") if o.key == "log.level" else o
               for o in all_options()] + OPTIONS
    try:
        settings = resolve(options, argv, PROG, __version__, set(REGISTRY))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    only = settings["only"]
    unknown = [n for n in only if n not in REGISTRY]
    if unknown:
        raise UsageError(f"--only: unknown collector {unknown[0]!r} "
                         f"(known: {', '.join(sorted(REGISTRY))})")
    names = sorted(set(only)) if only else enabled_collectors(settings)
    return settings, names


def gatherer_for(settings, names: list[str], log):
    from .collectors.base import REGISTRY, Context
    from .scrape import Gatherer

    collectors = {name: REGISTRY[name](Context(settings=settings, log=log.bind(collector=name)))
                  for name in names}
    return Gatherer(collectors, log, settings["collector.timeout"], all_names=names)


def main(argv: list[str] | None = None, argv_from_process: bool = False) -> int:
    """The command; ``argv`` without the program and ``diagnose``.  ``argv_from_process``:
    this is the process itself (not a test calling main()), which may exit hard."""
    argv = sys.argv[2:] if argv is None else argv
    try:
        settings, names = parse(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    from . import log as logmod

    log = logmod.setup(settings["log.level"], settings["log.format"])
    try:
        gatherer = gatherer_for(settings, names, log)
    except Exception as exc:  # noqa: BLE001 - a collector refusing its settings
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    try:
        t0 = time.monotonic()
        first = reading(gatherer.collect().families, gatherer, t0)
        time.sleep(max(0.0, t0 + settings["interval"] - time.monotonic()))
        t1 = time.monotonic()
        second = reading(gatherer.collect().families, gatherer, t1)
        doc = report(Pair(first, second), names)
    except Exception as exc:  # noqa: BLE001 - report, do not trace back
        print(f"{PROG}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return FAILED_EXIT
    finally:
        gatherer.close()
    if settings["output"] == "json":
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    else:
        sys.stdout.write(render_text(doc))
    sys.stdout.flush()
    code = int(doc["exit_code"])
    if argv_from_process and _stuck_collectors():
        # a collector stuck in a read that never returns (reported as failing above) would
        # make the interpreter wait for its worker thread at exit: leave without it
        sys.stderr.flush()
        os._exit(code)
    return code


def _stuck_collectors() -> bool:
    workers = [t for t in threading.enumerate() if t.name.startswith("collector")]
    deadline = time.monotonic() + 0.3
    for t in workers:   # idle ones end at once after gatherer.close()
        t.join(max(0.0, deadline - time.monotonic()))
    return any(t.is_alive() for t in workers)


# ------------------------------------------------------------------------------- /diagnose


class History:
    """The last readings of the exporter's scrapes, for ``/diagnose``.

    Every shared collection (a Prometheus scrape, or one this class asks for) is recorded as a
    compact :class:`Reading`.  A report pairs the newest reading with the newest one at least
    ``min_interval`` older.  When the newest reading is ``min_interval`` old or more, a report
    first takes the shared collection (joining a scrape in flight); with only one reading it
    waits for a second ``min_interval`` later.  So the kernel is read for /diagnose at most once
    per ``min_interval``, however many requests arrive.
    """

    def __init__(self, gatherer, min_interval: float = DEFAULT_INTERVAL, keep: int = 4):
        self.gatherer = gatherer
        self.min_interval = min_interval
        self.collectors = sorted(gatherer.collectors)
        self._readings: deque[Reading] = deque(maxlen=keep)
        self._lock = threading.Lock()       # the deque
        self._refresh = threading.Lock()    # one refresh at a time
        gatherer.on_collect.append(self.record)

    def record(self, result) -> None:
        r = reading(result.families, self.gatherer)
        with self._lock:
            self._readings.append(r)

    def _newest(self) -> Reading | None:
        with self._lock:
            return self._readings[-1] if self._readings else None

    def pair(self) -> Pair:
        with self._refresh:
            newest = self._newest()
            if newest is None or time.monotonic() - newest.t >= self.min_interval:
                self.gatherer.shared_collection()
            with self._lock:
                if not self._readings:
                    raise RuntimeError("no collection could be made")
                first = self._readings[0]
                single = len(self._readings) < 2
            if single:
                time.sleep(max(0.0, first.t + self.min_interval - time.monotonic()))
                self.gatherer.shared_collection()
            with self._lock:
                readings = list(self._readings)
        cur = readings[-1]
        older = [r for r in readings[:-1] if cur.t - r.t >= self.min_interval]
        return Pair(older[-1] if older else readings[0], cur)

    def report(self) -> dict:
        return report(self.pair(), self.collectors)
