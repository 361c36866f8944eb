"""The node's health checks: one table that yields both the alert rules and ``diagnose``.

Every alert of ``alerts/build.py`` that nodenet ships is a :class:`Check` in :data:`CHECKS`
below.  ``alerts/build.py`` renders the Prometheus rule (expression, ``for:``, severity,
summary, description, runbook link) from the entry; ``nodenet-exporter diagnose`` and the
exporter's ``/diagnose`` page run the entry's ``judge`` on two readings of the collectors taken
``--interval`` apart.  Both take the threshold and the ``for:`` window from the same entry, so
a threshold changed here changes the alert and the command at once.

Adding a check is one entry in :data:`CHECKS`::

    Check(
        name="NodenetConntrackTableNearFull",   # the alert's name (CamelCase, Nodenet prefix);
                                                # its runbook section is #<name, lower case>
        group="conntrack",                      # rule group: nodenet-<group> in the rule file
        collector="conntrack",                  # the collector whose metrics it judges
        inputs=("nodenet_conntrack_entries",    # every metric the expression reads (a unit
                "nodenet_conntrack_entries_limit"),  # test checks them against the collector)
        severity=WARNING,                       # CRITICAL (pages) / WARNING (ticket) / INFO
        threshold=0.75, threshold_format=".2f", # the number; how it is written in PromQL
        for_="5m",                              # the alert's for: window
        expr=lambda sel, t: f"nodenet_x{{{sel}}} > {t}",  # PromQL; sel = the job selector,
                                                      # t = the threshold as written
        summary="Conntrack table is more than {threshold%} full.",
        description="The conntrack table on node {node} is {{ $value | humanizePercentage }} ...",
        judge=ct_utilisation,                   # (check, Pair) -> iterable of Verdict
    )

Placeholders in ``summary`` and ``description`` (replaced literally, so Go templates such as
``{{ $value }}`` stay as they are): ``{node}`` (the node's name template), ``{sel}`` (the job
selector), ``{threshold}`` (as written in PromQL), ``{threshold%}`` (times 100, with %),
``{for}`` (``5m``) and ``{for_words}`` (``5 minutes``).

A judge gets a :class:`Pair` of readings (``pair.cur``, ``pair.prev``, ``pair.dt`` in seconds)
and yields a :class:`Verdict` (value, plain-words message, labels) for every series that
breaks the threshold now: ``pair.gauge(name)`` is the newest value of each series,
``pair.rate(name, without=("cpu",))`` the per-second increase between the readings (a counter
that went back counts from 0, as PromQL's rate()).  Judges never look at ``for:``: diagnose
judges the present; the alert additionally waits ``for:`` before it fires.

Most alerts need no judge of their own: ``judge=rate_above("nodenet_x_drops_total",
"{value} drops/s")`` judges ``sum without(cpu) (rate(...[5m])) > threshold`` per remaining
label set, ``judge=gauge("nodenet_x_free", "<", "{value} free")`` a gauge against the
threshold (see "judge makers" below).

An alert that two readings cannot decide (a prediction over 30 minutes, ``absent()`` of the
exporter itself) is still an entry - its threshold and window live here too - with
``judge=None`` and ``not_judged`` saying why; diagnose lists those as not judged.

Alerts that are still written as plain ``alert(...)`` calls in alerts/build.py (during a
transition) are rendered as before; a unit test (tests/unit/test_health.py) names every alert
that has no entry here, so converting one means: move its numbers and texts into an entry,
delete the plain call, run ``python alerts/build.py``.
"""
from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

# Where docs/runbook.md is published; each check links to its section (#<name, lower case>).
RUNBOOK_URL = "https://github.com/nodenet-exporter/nodenet-exporter/blob/main/docs/runbook.md"
# The node an alert is about: the `node` label when relabeling adds one (Kubernetes service
# discovery), else the scrape target's instance.
NODE = "{{ with $labels.node }}{{ . }}{{ else }}{{ $labels.instance }}{{ end }}"

CRITICAL = "critical"
WARNING = "warning"
INFO = "info"
SEVERITY_RANK = {CRITICAL: 2, WARNING: 1, INFO: 0}


# ------------------------------------------------------------------------------- readings

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_labelset(text: str) -> dict[str, str]:
    """'a="1",b="x\\"y"' (a rendered label set, as a Table row keeps it) -> dict."""
    return {k: _unescape(v) for k, v in _LABEL.findall(text)}


Labels = dict[str, str]


class Reading:
    """The samples of one collection, by metric name.

    Built from the families a collection returns (``Family`` and ``Table``).  Only the metrics
    in ``wanted`` are kept, and only as references to their families' sample lists (a table's
    label sets and value column): recording a reading costs a few microseconds per family, and
    series (labels dict, value) are made when a judge first asks for them.  Of every metric
    the number of series is counted.  ``t`` is a monotonic time in seconds (rates divide by the
    difference of two readings' ``t``), ``wall`` unix time.
    """

    def __init__(self, t: float, wall: float = 0.0,
                 series: dict[str, list[tuple[Labels, float]]] | None = None,
                 counts: dict[str, int] | None = None, errors: dict[str, str] | None = None):
        self.t = t
        self.wall = wall
        self._series = dict(series or {})
        self._raw: dict[str, list[tuple]] = {}     # name -> sources not yet turned into series
        self._parsed: dict[int, tuple[list, list[Labels]]] = {}   # id(table label sets) -> parsed
        self.counts = counts or {name: len(v) for name, v in self._series.items()}
        self.errors = errors or {}   # collector -> why its collection failed

    @classmethod
    def from_families(cls, families, t: float, wall: float = 0.0, wanted=None,
                      errors: dict[str, str] | None = None) -> Reading:
        self = cls(t, wall, errors=errors)
        counts, raw = self.counts, self._raw
        for fam in families:
            specs = getattr(fam, "specs", None)
            if specs is None:  # a Family
                name = fam.spec.name
                counts[name] = counts.get(name, 0) + len(fam.samples)
                if wanted is None or name in wanted:
                    raw.setdefault(name, []).append((fam.spec.labels, fam.samples))
                continue
            for i, spec in enumerate(specs):   # a Table: label sets are rendered strings
                name = spec.name
                counts[name] = counts.get(name, 0) + len(fam)
                if wanted is None or name in wanted:
                    raw.setdefault(name, []).append((fam.labelsets, fam.columns[i],
                                                     fam._extra[i]))
        return self

    def _materialise(self, name: str) -> list[tuple[Labels, float]]:
        out: list[tuple[Labels, float]] = []
        for source in self._raw.get(name, ()):
            if len(source) == 2:
                labels, samples = source
                out.extend((dict(zip(labels, lv, strict=False)), float(v)) for lv, v in samples)
                continue
            labelsets, column, extra = source
            hit = self._parsed.get(id(labelsets))
            if hit is None or hit[0] is not labelsets:
                hit = self._parsed[id(labelsets)] = (labelsets,
                                                     [parse_labelset(s) for s in labelsets])
            sets = hit[1]
            for labels, entry in zip(sets, column, strict=False):
                if extra:
                    more = dict(zip(extra, entry[1:], strict=False))
                    out.append(({**labels, **more}, float(entry[0])))
                else:
                    out.append((labels, float(entry)))
        return out

    def series(self, name: str) -> list[tuple[Labels, float]]:
        got = self._series.get(name)
        if got is None:
            if name not in self._raw:
                return []
            got = self._series[name] = self._materialise(name)   # idempotent: no lock needed
        return got

    def has(self, name: str) -> bool:
        return name in self._series or name in self._raw

    def value(self, name: str, **match: str) -> float | None:
        """The sum of the series of `name` whose labels include `match`; None if none."""
        values = [v for labels, v in self.series(name)
                  if all(labels.get(k) == want for k, want in match.items())]
        return sum(values) if values else None

    def metric_names(self) -> list[str]:
        return sorted(self.counts)


def _key(labels: Labels, without: Iterable[str]) -> tuple:
    drop = set(without)
    return tuple(sorted((k, v) for k, v in labels.items() if k not in drop))


@dataclass
class Pair:
    """Two readings of the same collectors, ``prev`` before ``cur``."""

    prev: Reading
    cur: Reading

    @property
    def dt(self) -> float:
        return self.cur.t - self.prev.t

    def gauge(self, name: str) -> list[tuple[Labels, float]]:
        return self.cur.series(name)

    def rate(self, name: str, without: Iterable[str] = ()) -> dict[tuple, float]:
        """Per-second increase of counter `name` between the readings, summed over the labels
        in `without`: {sorted (label, value) tuple: rate}.  Only series present in both
        readings count; a counter that went back is taken as reset to 0 (PromQL's rate)."""
        dt = self.dt
        if dt <= 0:
            return {}
        before = {_key(labels, ()): v for labels, v in self.prev.series(name)}
        out: dict[tuple, float] = {}
        for labels, v in self.cur.series(name):
            old = before.get(_key(labels, ()))
            if old is None:
                continue
            delta = v - old if v >= old else v
            key = _key(labels, without)
            out[key] = out.get(key, 0.0) + delta / dt
        return out

    def total_rate(self, name: str) -> float | None:
        """The rate of `name` summed over all its series; None when it was not read twice."""
        rates = self.rate(name)
        return sum(rates.values()) if rates else None


# ------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Verdict:
    """One series breaking a check's threshold, as a judge reports it."""

    value: float
    message: str                   # plain words: the value against the threshold
    labels: Labels = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    name: str
    group: str
    collector: str
    inputs: tuple[str, ...]
    severity: str
    threshold: float
    for_: str
    expr: Callable[[str, str], str]
    summary: str
    description: str
    judge: Callable[[Check, Pair], Iterable[Verdict]] | None = None
    not_judged: str = ""
    threshold_format: str = "g"

    def __post_init__(self):
        if self.severity not in SEVERITY_RANK:
            raise ValueError(f"{self.name}: severity {self.severity!r}")
        if (self.judge is None) == (not self.not_judged):
            raise ValueError(f"{self.name}: either a judge or a not_judged reason, not both")
        if not re.fullmatch(r"Nodenet[A-Z][A-Za-z0-9]*", self.name):
            raise ValueError(f"{self.name}: alert names are CamelCase with the Nodenet prefix")

    @property
    def anchor(self) -> str:
        return self.name.lower()

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK_URL}#{self.anchor}"

    @property
    def threshold_text(self) -> str:
        return format(self.threshold, self.threshold_format)

    @property
    def threshold_percent(self) -> str:
        return f"{round(self.threshold * 100, 6):g}%"

    def fill(self, text: str, sel: str) -> str:
        for placeholder, value in (("{node}", NODE), ("{sel}", sel),
                                   ("{threshold%}", self.threshold_percent),
                                   ("{threshold}", self.threshold_text),
                                   ("{for_words}", duration_words(self.for_)),
                                   ("{for}", self.for_)):
            text = text.replace(placeholder, value)
        return text

    def rule(self, sel: str) -> dict:
        """The Prometheus alerting rule (the dict alerts/build.py writes as YAML)."""
        return {
            "alert": self.name,
            "expr": self.expr(sel, self.threshold_text).strip() + "\n",
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.fill(self.summary, sel),
                "description": self.fill(self.description, sel),
                "runbook_url": self.runbook_url,
            },
        }


def duration_words(text: str) -> str:
    """'15m' -> '15 minutes', '1h' -> '1 hour', '30s' -> '30 seconds'."""
    m = re.fullmatch(r"(\d+)([smhd])", text)
    if not m:
        return text
    n = int(m.group(1))
    unit = {"s": "second", "m": "minute", "h": "hour", "d": "day"}[m.group(2)]
    return f"{n} {unit}{'' if n == 1 else 's'}"


# ------------------------------------------------------------------------------- words


def num(value: float) -> str:
    """1204.3 -> '1,204'; 0.25 -> '0.25'; 3.456 -> '3.46'."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.3g}" if abs(value) >= 1 else f"{value:.2g}"


def pct(ratio: float) -> str:
    """0.9187 -> '92%'; 0.0123 -> '1.2%'."""
    p = ratio * 100
    return f"{p:.0f}%" if abs(p) >= 10 or p == 0 else f"{p:.2g}%"


# ------------------------------------------------------------------------------- judges

CT_ENTRIES = "nodenet_conntrack_entries"
CT_LIMIT = "nodenet_conntrack_entries_limit"
CT_DROPS = "nodenet_conntrack_drops_total"
CT_EARLY = "nodenet_conntrack_early_drops_total"
CT_INSERT_FAILED = "nodenet_conntrack_insert_failed_total"


def ct_utilisation(check: Check, pair: Pair) -> Iterator[Verdict]:
    entries, limit = pair.cur.value(CT_ENTRIES), pair.cur.value(CT_LIMIT)
    if entries is None or not limit:
        return
    ratio = entries / limit
    if ratio > check.threshold:
        drops = (pair.total_rate(CT_DROPS) or 0.0) + (pair.total_rate(CT_EARLY) or 0.0)
        yield Verdict(ratio, f"conntrack table {pct(ratio)} full ({num(entries)} of "
                             f"{num(limit)}), threshold {check.threshold_percent}; "
                             f"{num(drops)} drops/s")


def ct_dropping(check: Check, pair: Pair) -> Iterator[Verdict]:
    drops, early = pair.total_rate(CT_DROPS), pair.total_rate(CT_EARLY)
    if drops is None and early is None:
        return
    total = (drops or 0.0) + (early or 0.0)
    if total > check.threshold:
        entries, limit = pair.cur.value(CT_ENTRIES), pair.cur.value(CT_LIMIT)
        fill = (f"; table {pct(entries / limit)} full ({num(entries)} of {num(limit)})"
                if entries is not None and limit else "")
        yield Verdict(total, f"conntrack dropping {num(total)} packets/s (drops "
                             f"{num(drops or 0)}/s + early drops {num(early or 0)}/s), "
                             f"threshold {num(check.threshold)}/s{fill}")


def ipvs_no_backends(check: Check, pair: Pair) -> Iterator[Verdict]:
    backends = {_key(labels, ()): v for labels, v in pair.gauge("nodenet_ipvs_service_backends")}
    for labels, available in pair.gauge("nodenet_ipvs_service_backends_available"):
        if available == check.threshold:
            total = backends.get(_key(labels, ()))
            of = f" of {num(total)}" if total is not None else ""
            yield Verdict(available, f"IPVS service {ipvs_service(labels)} has "
                                     f"{num(available)}{of} backends with weight > 0",
                          labels)


def ipvs_service(labels: Labels) -> str:
    if labels.get("fwmark"):
        return f"fwmark {labels['fwmark']} ({labels.get('family', '')})"
    address = labels.get("address", "")
    if labels.get("family") == "ipv6":
        address = f"[{address}]"
    return f"{labels.get('protocol', '')}/{address}:{labels.get('port', '')}"


def steal_fraction(pair: Pair) -> tuple[float, float] | None:
    """(fraction of the node's CPU time stolen, CPUs) between the readings, or None."""
    rate, cpus = pair.total_rate("nodenet_cpu_steal_seconds_total"), pair.cur.value("nodenet_cpus")
    if rate is None or not cpus:
        return None
    return rate / cpus, cpus


def cpu_steal(check: Check, pair: Pair) -> Iterator[Verdict]:
    got = steal_fraction(pair)
    if got is not None and got[0] > check.threshold:
        yield Verdict(got[0], f"CPU steal {pct(got[0])} of {num(got[1])} CPUs, threshold "
                              f"{check.threshold_percent}")


def softnet_drops(check: Check, pair: Pair) -> Iterator[Verdict]:
    per_cpu = pair.rate("nodenet_softnet_dropped_total")
    if not per_cpu:
        return
    total = sum(per_cpu.values())
    if total > check.threshold:
        worst = sorted(((r, dict(k).get("cpu", "?")) for k, r in per_cpu.items() if r > 0),
                       reverse=True)[:4]
        cpus = ", ".join(f"cpu{cpu} {num(r)}/s" for r, cpu in worst)
        yield Verdict(total, f"softnet backlog dropping {num(total)} packets/s ({cpus}), "
                             f"threshold {num(check.threshold)}/s")


def interface_drops(check: Check, pair: Pair) -> Iterator[Verdict]:
    kinds = {labels.get("interface"): labels.get("kind")
             for labels, _ in pair.gauge("nodenet_interface_info")}
    for direction, word in (("receive", "received"), ("transmit", "transmitted")):
        drops = pair.rate(f"nodenet_interface_{direction}_drops_total")
        packets = pair.rate(f"nodenet_interface_{direction}_packets_total")
        for key, dropped in drops.items():
            name = dict(key).get("interface", "")
            if kinds.get(name) == "veth":   # the alert's `unless ... kind="veth"`
                continue
            sent = packets.get(key)
            if not sent:
                continue     # 0/0: no ratio, as in PromQL
            ratio = dropped / sent
            if ratio > check.threshold:
                yield Verdict(ratio, f"interface {name} drops {pct(ratio)} of its {word} packets"
                                     f" ({num(dropped)}/s of {num(sent)}/s), threshold "
                                     f"{check.threshold_percent}",
                              {"interface": name, "direction": direction})


def overlay_mtu(check: Check, pair: Pair) -> Iterator[Verdict]:
    mtus = {labels.get("interface"): v for labels, v in pair.gauge("nodenet_interface_mtu_bytes")}
    for labels, headroom in pair.gauge("nodenet_overlay_mtu_headroom_bytes"):
        if headroom < check.threshold:
            name, under = labels.get("interface", ""), labels.get("underlay", "")
            detail = ""
            if name in mtus and under in mtus:
                detail = f" (tunnel MTU {num(mtus[name])}, underlay MTU {num(mtus[under])})"
            yield Verdict(headroom, f"{labels.get('kind', 'tunnel')} {name} has {num(headroom)}"
                                    f" bytes of MTU headroom over underlay {under}{detail},"
                                    f" threshold {num(check.threshold)}", labels)


def collector_failing(check: Check, pair: Pair) -> Iterator[Verdict]:
    for labels, ok in pair.gauge("nodenet_scrape_collector_success"):
        if ok == check.threshold:
            name = labels.get("collector", "")
            error = pair.cur.errors.get(name)
            yield Verdict(ok, f"collector {name} failed its collection"
                              f"{': ' + error if error else ''}", labels)


# ------------------------------------------------------------------------------- judge makers
# Most alerts are "a counter's rate above N" or "a gauge compared with N": these make their
# judge in one line, e.g. judge=rate_above("nodenet_x_drops_total", "{value} drops/s").

Judge = Callable[[Check, Pair], Iterable[Verdict]]
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
        "==": operator.eq, "!=": operator.ne}


def _where(labels: Labels) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in sorted(labels.items()))})" if labels else ""


def rate_above(metric: str, words: str, without: tuple[str, ...] = ("cpu",)) -> Judge:
    """The judge of ``sum without(<without>) (rate(<metric>[5m])) > threshold``: a verdict per
    label set left after summing; ``words`` says the value (``{value}``), e.g.
    "{value} listen queue overflows/s"; the series' labels and the threshold follow."""
    def judge(check: Check, pair: Pair) -> Iterator[Verdict]:
        for key, rate in sorted(pair.rate(metric, without).items()):
            if rate > check.threshold:
                labels = dict(key)
                yield Verdict(rate, words.format(value=num(rate)) + _where(labels)
                              + f", threshold {num(check.threshold)}/s", labels)
    return judge


def gauge(metric: str, op: str, words: str) -> Judge:
    """The judge of ``<metric> <op> threshold`` (op one of > >= < <= == !=): a verdict per
    series; ``words`` says the value (``{value}``), e.g. "{value} free bytes"."""
    compare = _OPS[op]

    def judge(check: Check, pair: Pair) -> Iterator[Verdict]:
        for labels, value in pair.gauge(metric):
            if compare(value, check.threshold):
                yield Verdict(value, words.format(value=num(value)) + _where(labels)
                              + f", threshold {op} {num(check.threshold)}", labels)
    return judge


# ------------------------------------------------------------------------------- PromQL parts
# (shared with the recording rules of alerts/build.py)


def ct_rate_expr(sel: str, metric: str) -> str:
    # Counters the conntrack collector can also export per CPU (label `cpu`): always aggregate
    # them with `sum without(cpu)`, which keeps every other label.
    return f"sum without(cpu) (rate({metric}{{{sel}}}[5m]))"


def ct_utilisation_expr(sel: str) -> str:
    return (f"  nodenet_conntrack_entries{{{sel}}}\n"
            f"/\n"
            f"  nodenet_conntrack_entries_limit{{{sel}}}")


def _ct_limit_set(sel: str) -> str:
    return f"nodenet_conntrack_entries_limit{{{sel}}} > 0"


def steal_fraction_expr(sel: str) -> str:
    return (f"  sum without(cpu) (rate(nodenet_cpu_steal_seconds_total{{{sel}}}[5m]))\n"
            f"/\n"
            f"  nodenet_cpus{{{sel}}}")


def _if_ratio(sel: str, direction: str, t: str) -> str:
    return (f"  label_replace(\n"
            f"    rate(nodenet_interface_{direction}_drops_total{{{sel}}}[5m])\n"
            f"    /\n"
            f"    rate(nodenet_interface_{direction}_packets_total{{{sel}}}[5m]),\n"
            f"    \"direction\", \"{direction}\", \"\", \"\"\n"
            f"  ) > {t}")


# ------------------------------------------------------------------------------- the table

_CT_FILL = ("The conntrack table on node {node} is {{ $value | humanizePercentage }} full"
            " (entries / nf_conntrack_max).")

CHECKS: tuple[Check, ...] = (
    # -- conntrack
    Check(
        name="NodenetConntrackTableNearFull", group="conntrack", collector="conntrack",
        inputs=(CT_ENTRIES, CT_LIMIT), severity=WARNING,
        threshold=0.75, threshold_format=".2f", for_="5m",
        expr=lambda sel, t: f"(\n{ct_utilisation_expr(sel)}\n) > {t}\nand {_ct_limit_set(sel)}",
        summary="Conntrack table is more than {threshold%} full.",
        description=_CT_FILL + " When it is full the kernel drops packets of new connections.",
        judge=ct_utilisation),
    Check(
        name="NodenetConntrackTableFull", group="conntrack", collector="conntrack",
        inputs=(CT_ENTRIES, CT_LIMIT), severity=CRITICAL,
        threshold=0.90, threshold_format=".2f", for_="2m",
        expr=lambda sel, t: f"(\n{ct_utilisation_expr(sel)}\n) > {t}\nand {_ct_limit_set(sel)}",
        summary="Conntrack table is more than {threshold%} full.",
        description=_CT_FILL + " New connections start failing when it reaches 100%.",
        judge=ct_utilisation),
    Check(
        name="NodenetConntrackTablePredictedFull", group="conntrack", collector="conntrack",
        inputs=(CT_ENTRIES, CT_LIMIT), severity=WARNING,
        threshold=0.50, threshold_format=".2f", for_="15m",
        expr=lambda sel, t: (
            f"(\n{ct_utilisation_expr(sel)}\n) > {t}\nand {_ct_limit_set(sel)}\nand\n"
            f"  predict_linear(nodenet_conntrack_entries{{{sel}}}[30m], 3600)\n"
            f">=\n"
            f"  nodenet_conntrack_entries_limit{{{sel}}}"),
        summary="Conntrack table is predicted to fill up within an hour.",
        description="The conntrack table on node {node} is {{ $value | humanizePercentage }}"
                    " full and, growing as it has over the last 30 minutes, will reach"
                    " nf_conntrack_max within an hour.",
        not_judged="a linear prediction over the last 30 minutes of entries: two readings "
                   "seconds apart give no trend (NodenetConntrackTableNearFull and "
                   "TableFull judge the present fill)"),
    Check(
        name="NodenetConntrackDropping", group="conntrack", collector="conntrack",
        inputs=(CT_DROPS, CT_EARLY, CT_ENTRIES, CT_LIMIT), severity=CRITICAL,
        threshold=0, for_="2m",
        expr=lambda sel, t: (f"(\n  {ct_rate_expr(sel, CT_DROPS)}\n+\n"
                             f"  {ct_rate_expr(sel, CT_EARLY)}\n) > {t}"),
        summary="The kernel is dropping connections because the conntrack table is full.",
        description="Node {node} has been dropping packets or evicting connections because of"
                    " conntrack ({{ printf \"%.3g\" $value }} per second over the last 5"
                    " minutes, drops + early drops). New connections are failing on this node.",
        judge=ct_dropping),
    Check(
        name="NodenetConntrackInsertFailures", group="conntrack", collector="conntrack",
        inputs=(CT_INSERT_FAILED,), severity=WARNING, threshold=0, for_="10m",
        expr=lambda sel, t: f"{ct_rate_expr(sel, CT_INSERT_FAILED)} > {t}",
        summary="Conntrack insertions are failing.",
        description="Node {node} fails {{ printf \"%.3g\" $value }} conntrack insertions per"
                    " second (clash races, typically parallel UDP DNS queries); each failure"
                    " drops the packet.",
        judge=rate_above(CT_INSERT_FAILED, "{value} conntrack insertions/s failing")),
    # -- ipvs
    Check(
        name="NodenetIPVSServiceNoBackends", group="ipvs", collector="ipvs",
        inputs=("nodenet_ipvs_service_backends_available",), severity=WARNING,
        threshold=0, for_="10m",
        expr=lambda sel, t: f"nodenet_ipvs_service_backends_available{{{sel}}} == {t}",
        summary="IPVS virtual service has no usable backend.",
        description="IPVS service {{ if $labels.fwmark }}fwmark {{ $labels.fwmark }}"
                    " ({{ $labels.family }}){{ else }}{{ $labels.protocol }}/"
                    "{{ if eq $labels.family \"ipv6\" }}[{{ $labels.address }}]"
                    "{{ else }}{{ $labels.address }}{{ end }}:{{ $labels.port }}{{ end }}"
                    " on node {node} has had no real server with weight > 0 for {for_words};"
                    " connections to it fail.",
        judge=ipvs_no_backends),
    # -- cpu
    Check(
        name="NodenetCPUStealHigh", group="cpu", collector="cpu",
        inputs=("nodenet_cpu_steal_seconds_total", "nodenet_cpus"), severity=WARNING,
        threshold=0.10, threshold_format=".2f", for_="15m",
        expr=lambda sel, t: f"(\n{steal_fraction_expr(sel)}\n) > {t}",
        summary="The hypervisor is stealing more than {threshold%} of the node's CPU time.",
        description="Node {node} has lost {{ $value | humanizePercentage }} of its CPU time to"
                    " steal over the last {for_words}; packet processing and latency suffer.",
        judge=cpu_steal),
    Check(
        name="NodenetCPUStealCritical", group="cpu", collector="cpu",
        inputs=("nodenet_cpu_steal_seconds_total", "nodenet_cpus"), severity=CRITICAL,
        threshold=0.25, threshold_format=".2f", for_="15m",
        expr=lambda sel, t: f"(\n{steal_fraction_expr(sel)}\n) > {t}",
        summary="The hypervisor is stealing more than {threshold%} of the node's CPU time.",
        description="Node {node} has lost {{ $value | humanizePercentage }} of its CPU time to"
                    " steal over the last {for_words}; the node cannot keep up with its load.",
        judge=cpu_steal),
    # -- network
    Check(
        name="NodenetSoftnetDrops", group="network", collector="softnet",
        inputs=("nodenet_softnet_dropped_total",), severity=WARNING, threshold=0, for_="10m",
        expr=lambda sel, t: (f"sum without(cpu) (rate(nodenet_softnet_dropped_total{{{sel}}}"
                             f"[5m])) > {t}"),
        summary="The kernel's network backlog is dropping packets.",
        description="Node {node} drops {{ printf \"%.3g\" $value }} packets per second because"
                    " a CPU's input backlog (net.core.netdev_max_backlog) is full.",
        judge=softnet_drops),
    Check(
        name="NodenetInterfaceDrops", group="network", collector="netdev",
        inputs=("nodenet_interface_receive_drops_total",
                "nodenet_interface_receive_packets_total",
                "nodenet_interface_transmit_drops_total",
                "nodenet_interface_transmit_packets_total", "nodenet_interface_info"),
        severity=WARNING, threshold=0.01, threshold_format=".2f", for_="15m",
        expr=lambda sel, t: (f"(\n{_if_ratio(sel, 'receive', t)}\nor\n"
                             f"{_if_ratio(sel, 'transmit', t)}\n)\n"
                             f"unless ignoring(direction, kind, operstate, master, underlay)\n"
                             f"  nodenet_interface_info{{{sel}, kind=\"veth\"}}"),
        summary="A network interface drops more than {threshold%} of its packets.",
        description="Interface {{ $labels.interface }} on node {node} drops"
                    " {{ $value | humanizePercentage }} of its {{ $labels.direction }}"
                    " packets.",
        judge=interface_drops),
    Check(
        name="NodenetOverlayMTUMismatch", group="network", collector="netdev",
        inputs=("nodenet_overlay_mtu_headroom_bytes", "nodenet_interface_mtu_bytes"),
        severity=WARNING, threshold=0, for_="5m",
        expr=lambda sel, t: f"nodenet_overlay_mtu_headroom_bytes{{{sel}}} < {t}",
        summary="An overlay interface's MTU is larger than its underlay can carry.",
        description="Overlay interface {{ $labels.interface }} ({{ $labels.kind }}) on node"
                    " {node} has {{ printf \"%.0f\" $value }} bytes of MTU headroom over"
                    " underlay {{ $labels.underlay }}: its full-size packets do not fit the"
                    " underlay once encapsulated and are fragmented or silently dropped.",
        judge=overlay_mtu),
    # -- exporter (collector "": runs whichever collectors are enabled)
    Check(
        name="NodenetCollectorFailing", group="exporter", collector="",
        inputs=("nodenet_scrape_collector_success",), severity=WARNING,
        threshold=0, for_="15m",
        expr=lambda sel, t: f"nodenet_scrape_collector_success{{{sel}}} == {t}",
        summary="A nodenet-exporter collector is failing.",
        description="Collector {{ $labels.collector }} of nodenet-exporter on node {node} has"
                    " failed every scrape for {for_words}; its metrics are missing.",
        judge=collector_failing),
    Check(
        name="NodenetExporterDown", group="exporter", collector="",
        inputs=("up",), severity=WARNING, threshold=0, for_="5m",
        expr=lambda sel, t: f"up{{{sel}}} == {t}\nor\nabsent(up{{{sel}}})",
        summary="nodenet-exporter is down or not scraped.",
        description="{{ if $labels.instance }}nodenet-exporter on node {node} has been down"
                    " for {for_words}.{{ else }}No nodenet-exporter target ({sel}) has been"
                    " scraped for {for_words}.{{ end }} Conntrack, IPVS and network alerts"
                    " cannot fire for the nodes it covers.",
        not_judged="`up` and absent() are Prometheus's view of the scrape target: the "
                   "exporter (or diagnose) reading the node is up by definition"),
)

# Metric names Prometheus makes itself, not read from any collector.
SYNTHETIC_INPUTS = frozenset({"up"})


def by_name() -> dict[str, Check]:
    return {c.name: c for c in CHECKS}


def groups() -> list[str]:
    """The checks' groups in first-appearance order."""
    seen: list[str] = []
    for c in CHECKS:
        if c.group not in seen:
            seen.append(c.group)
    return seen


def rules(group: str, sel: str) -> list[dict]:
    """The alerting rules of one group, in table order."""
    return [c.rule(sel) for c in CHECKS if c.group == group]


def inputs() -> frozenset[str]:
    """Every metric some check reads."""
    return frozenset(m for c in CHECKS for m in c.inputs) - SYNTHETIC_INPUTS


@dataclass(frozen=True)
class Finding:
    check: str
    severity: str
    collector: str
    value: float
    threshold: float
    message: str
    labels: Labels
    runbook_url: str
    alert_for: str


def evaluate(pair: Pair, collectors: Iterable[str] | None = None,
             checks: Iterable[Check] | None = None) -> list[Finding]:
    """Runs the judge of every check whose collector is in `collectors` (all when None;
    checks of the exporter itself, collector "", always run); worst first."""
    enabled = None if collectors is None else set(collectors)
    findings: list[Finding] = []
    order = {}
    for i, check in enumerate(CHECKS if checks is None else checks):
        if check.judge is None:
            continue
        if check.collector and enabled is not None and check.collector not in enabled:
            continue
        order[check.name] = i
        for v in check.judge(check, pair):
            collector = check.collector or v.labels.get("collector", "")
            findings.append(Finding(check.name, check.severity, collector, v.value,
                                    check.threshold, v.message, dict(v.labels),
                                    check.runbook_url, check.for_))
    findings.sort(key=lambda f: (-SEVERITY_RANK[f.severity], order[f.check],
                                 sorted(f.labels.items())))
    return findings


def exit_code(findings: Iterable[Finding]) -> int:
    """2 if any finding is critical, 1 if any is a warning, else 0 (check_* plugin codes)."""
    return max((SEVERITY_RANK[f.severity] for f in findings), default=0)
