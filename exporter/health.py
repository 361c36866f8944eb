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

``increase_above(metric, words)`` judges ``increase(...) > threshold`` (the increase between
the readings) and ``ratio_above(usage, limit, words, ignoring=("level",), level="pressure")``
a usage gauge over its limit gauge, paired on their labels (``and limit > 0``).  In ``words``
a ``{label}`` placeholder names a label of the series (``"{value} {family} drops/s"``); the
labels it does not name follow in parentheses.

One alert name may come in two severities (a warning at 80%, a critical at 90%: two rules of
the same name, which Alertmanager tells apart by ``severity``): two entries that differ in
severity, threshold and texts but not in group, collectors or inputs (:func:`validate` checks
this at import).  :func:`by_key` gives every entry by (name, severity), :func:`levels` the
entries of one name; :func:`by_name` leaves such a name out.  A check whose expression reads
the metrics of two collectors (``a >= 1 or increase(b[10m]) > 0``) names the second in
``also_collectors``; diagnose runs its judge when either is enabled.

An alert that two readings cannot decide (a prediction over 30 minutes, ``absent()`` of the
exporter itself) is still an entry - its threshold and window live here too - with
``judge=None`` and ``not_judged`` saying why; diagnose lists those as not judged.

Alert groups on another job's own metrics (the kube-proxy pack) are no checks: nodenet never
reads those series.  They stay plain ``alert(...)`` calls in the groups alerts/build.py lists
in ``OTHER_JOBS_GROUPS``, which the unit test skips (after checking they read no nodenet
series).

Alerts that are still written as plain ``alert(...)`` calls in alerts/build.py (during a
transition) are rendered as before; a unit test (tests/unit/test_health.py) names every alert
that has no entry here, so converting one means: move its numbers and texts into an entry,
delete the plain call, run ``python alerts/build.py``.
"""
from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Collection, Iterable, Iterator
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

    def increase(self, name: str, without: Iterable[str] = ()) -> dict[tuple, float]:
        """Increase of counter `name` between the readings, summed over the labels in
        `without`: {sorted (label, value) tuple: increase}.  Only series present in both
        readings count; a counter that went back is taken as reset to 0 (PromQL's rate)."""
        before = {_key(labels, ()): v for labels, v in self.prev.series(name)}
        out: dict[tuple, float] = {}
        for labels, v in self.cur.series(name):
            old = before.get(_key(labels, ()))
            if old is None:
                continue
            delta = v - old if v >= old else v
            key = _key(labels, without)
            out[key] = out.get(key, 0.0) + delta
        return out

    def rate(self, name: str, without: Iterable[str] = ()) -> dict[tuple, float]:
        """Per-second increase of counter `name` between the readings (see increase())."""
        dt = self.dt
        if dt <= 0:
            return {}
        return {key: delta / dt for key, delta in self.increase(name, without).items()}

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
    # Other collectors whose metrics the expression reads too (an `or` of two sources): the
    # judge runs when any of them is enabled; `collector` is the one findings name.
    also_collectors: tuple[str, ...] = ()

    def __post_init__(self):
        if self.severity not in SEVERITY_RANK:
            raise ValueError(f"{self.name}: severity {self.severity!r}")
        if (self.judge is None) == (not self.not_judged):
            raise ValueError(f"{self.name}: either a judge or a not_judged reason, not both")
        if not re.fullmatch(r"Nodenet[A-Z][A-Za-z0-9]*", self.name):
            raise ValueError(f"{self.name}: alert names are CamelCase with the Nodenet prefix")

    @property
    def key(self) -> tuple[str, str]:
        """(name, severity): unique in CHECKS (one alert name may come in two severities)."""
        return self.name, self.severity

    @property
    def collectors(self) -> tuple[str, ...]:
        return (self.collector, *self.also_collectors) if self.collector else ()

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
    info = {labels.get("interface"): labels for labels, _ in pair.gauge("nodenet_interface_info")}
    for direction, word in (("receive", "received"), ("transmit", "transmitted")):
        drops = pair.rate(f"nodenet_interface_{direction}_drops_total")
        packets = pair.rate(f"nodenet_interface_{direction}_packets_total")
        for key, dropped in drops.items():
            name = dict(key).get("interface", "")
            labels = info.get(name, {})
            # the alert's `unless ... kind="veth", operstate!="up"`: a veth whose other side
            # is down drops whatever reaches it (a pod being set up or torn down)
            if labels.get("kind") == "veth" and labels.get("operstate") != "up":
                continue
            sent = packets.get(key)
            if not sent:
                if dropped > 0:   # x/0 is +Inf in PromQL: the alert fires, so does this
                    yield Verdict(math.inf, f"interface {name} drops {num(dropped)}/s of its "
                                            f"{word} packets while none get through",
                                  {"interface": name, "direction": direction})
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


def _where(labels: Labels, words: str = "") -> str:
    """' (k v, ...)' of the labels that `words` does not name as a {k} placeholder."""
    rest = {k: v for k, v in labels.items() if "{" + k + "}" not in words}
    return f" ({', '.join(f'{k} {v}' for k, v in sorted(rest.items()))})" if rest else ""


def _say(words: str, labels: Labels, **values: str) -> str:
    """`words` with {value} (and the like) and any {label} placeholders filled."""
    return words.format(**{**labels, **values}) + _where(labels, words)


def rate_above(metric: str, words: str, without: tuple[str, ...] = ("cpu",),
               where: dict[str, Collection[str]] | None = None) -> Judge:
    """The judge of ``sum without(<without>) (rate(<metric>[5m])) > threshold`` (with
    ``without=()``: ``rate(<metric>[5m]) > threshold``): a verdict per label set left after
    summing; ``words`` says the value (``{value}``; a ``{label}`` placeholder names a label),
    e.g. "{value} listen queue overflows/s"; the other labels and the threshold follow.
    ``where={"reason": {"A", "B"}}`` keeps only series whose label is one of those values
    (the selector's ``reason=~"A|B"``; a label that is summed away cannot be one)."""
    if where and set(where) & set(without):
        raise ValueError(f"{metric}: where= on a label summed away: {set(where) & set(without)}")

    def judge(check: Check, pair: Pair) -> Iterator[Verdict]:
        rates = pair.rate(metric, without)
        if where:
            rates = {k: r for k, r in rates.items()
                     if all(dict(k).get(label) in values for label, values in where.items())}
        for key, rate in sorted(rates.items()):
            if rate > check.threshold:
                labels = dict(key)
                yield Verdict(rate, _say(words, labels, value=num(rate))
                              + f", threshold {num(check.threshold)}/s", labels)
    return judge


def increase_above(metric: str, words: str, without: tuple[str, ...] = ()) -> Judge:
    """The judge of ``increase(<metric>[5m]) > threshold``: the increase between the two
    readings (not extrapolated to the alert's window), a verdict per label set; ``words``
    says it (``{value}``, ``{label}`` placeholders), "in <interval> s" and the threshold
    follow."""
    def judge(check: Check, pair: Pair) -> Iterator[Verdict]:
        for key, delta in sorted(pair.increase(metric, without).items()):
            if delta > check.threshold:
                labels = dict(key)
                yield Verdict(delta, _say(words, labels, value=num(delta))
                              + f" in {num(pair.dt)} s, threshold {num(check.threshold)}",
                              labels)
    return judge


def gauge(metric: str, op: str, words: str) -> Judge:
    """The judge of ``<metric> <op> threshold`` (op one of > >= < <= == !=): a verdict per
    series; ``words`` says the value (``{value}``, ``{label}`` placeholders), e.g.
    "{value} free bytes"."""
    compare = _OPS[op]

    def judge(check: Check, pair: Pair) -> Iterator[Verdict]:
        for labels, value in pair.gauge(metric):
            if compare(value, check.threshold):
                yield Verdict(value, _say(words, labels, value=num(value))
                              + f", threshold {op} {num(check.threshold)}", labels)
    return judge


def ratio_above(usage: str, limit: str, words: str, op: str = ">",
                ignoring: tuple[str, ...] = (), **limit_match: str) -> Judge:
    """The judge of ``(<usage> / ignoring(<ignoring>) <limit>{<limit_match>}) <op> threshold
    and <limit> > 0``: usage and limit series are paired on their labels but those in
    `ignoring`, a verdict per pair; ``words`` says it with ``{value}`` (the ratio in %),
    ``{used}``, ``{limit}`` and ``{label}`` placeholders, e.g.
    "neighbour table {table} holds {value} of gc_thresh3 ({used} of {limit})"."""
    compare = _OPS[op]

    def judge(check: Check, pair: Pair) -> Iterator[Verdict]:
        limits = {_key(labels, ignoring): v for labels, v in pair.gauge(limit)
                  if all(labels.get(k) == want for k, want in limit_match.items())}
        for labels, used in pair.gauge(usage):
            most = limits.get(_key(labels, ignoring))
            if most is None or most <= 0:
                continue
            ratio = used / most
            if compare(ratio, check.threshold):
                yield Verdict(ratio, _say(words, labels, value=pct(ratio), used=num(used),
                                          limit=num(most))
                              + f", threshold {'' if op == '>' else op + ' '}"
                                f"{check.threshold_percent}", labels)
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


def ct_time_to_full_expr(sel: str) -> str:
    """Seconds until conntrack entries reach the limit at the last 30 minutes' growth; -1 when
    the table is not growing (the dashboards map it to "not growing")."""
    entries = f"nodenet_conntrack_entries{{{sel}}}"
    limit = f"nodenet_conntrack_entries_limit{{{sel}}}"
    return f"(({limit} - {entries}) / (deriv({entries}[30m]) > 0)) or ({entries} * 0 - 1)"


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


# ------------------------------------------------------------------------------ limits (issue 14)
# The sockets, netstat and neighbour collectors: kernel limits on the packet path beside their
# usage.  Thresholds and for: are explained in docs/runbook.md.

NB_ENTRIES = "nodenet_neighbour_entries"
NB_LIMIT = "nodenet_neighbour_entries_limit"
NB_FULLS = "nodenet_neighbour_table_fulls_total"
TCP_MEM = "nodenet_tcp_memory_bytes"
TCP_MEM_LIMIT = "nodenet_tcp_memory_limit_bytes"
TCP_MEM_PRESSURES = "nodenet_tcp_memory_pressures_total"
TW_OVERFLOWS = "nodenet_tcp_timewait_overflows_total"
ORPHANS = "nodenet_tcp_orphan_sockets"
ORPHANS_LIMIT = "nodenet_tcp_orphan_sockets_limit"
FILES = "nodenet_file_handles"
FILES_LIMIT = "nodenet_file_handles_limit"
LISTEN_OVERFLOWS = "nodenet_tcp_listen_overflows_total"
UDP_RCVBUF = "nodenet_udp_receive_buffer_errors_total"
REASM_FAILS = "nodenet_ip_reassembly_failures_total"
PORT_OVERLAP = "nodenet_ephemeral_ports_nodeport_overlap"


def _limit_ratio(sel: str, usage: str, limit: str, t: str) -> str:
    return (f"(\n  {usage}{{{sel}}}\n/\n  {limit}{{{sel}}}\n) > {t}\n"
            f"and {limit}{{{sel}}} > 0")


def _tcp_memory(sel: str, t: str) -> str:
    return (f"(\n  {TCP_MEM}{{{sel}}}\n/ ignoring(level)\n"
            f"  {TCP_MEM_LIMIT}{{{sel}, level=\"pressure\"}}\n) >= {t}\n"
            f"or\nincrease({TCP_MEM_PRESSURES}{{{sel}}}[10m]) > 0")


_tcp_memory_at_pressure = ratio_above(
    TCP_MEM, TCP_MEM_LIMIT, "TCP memory at {value} of the tcp_mem pressure level ({used} of "
    "{limit} bytes)", op=">=", ignoring=("level",), level="pressure")


def tcp_memory_pressure(check: Check, pair: Pair) -> Iterator[Verdict]:
    """``ratio >= threshold or increase(pressures[10m]) > 0``: the ratio when TCP memory is
    at the pressure level (tcp_mem is only visible in the initial namespace), else the times
    TCP entered pressure between the readings (TCPMemoryPressures, per namespace)."""
    at = list(_tcp_memory_at_pressure(check, pair))
    if at:
        yield from at
        return
    entered = pair.increase(TCP_MEM_PRESSURES)
    times = sum(entered.values())
    if times > 0:
        yield Verdict(times, f"TCP entered memory pressure {num(times)} times in "
                             f"{num(pair.dt)} s (TCPMemoryPressures), threshold 0")


_NB_FILL = ("Neighbour table {{ $labels.table }} on node {node} holds"
            " {{ $value | humanizePercentage }} of gc_thresh3 (permanent entries included).")
_FILES_TEXT = ("Node {node} uses {{ $value | humanizePercentage }} of fs.file-max"
               " (/proc/sys/fs/file-nr). At the limit every open(), socket() and accept() on"
               " the node fails with ENFILE.")


def _files_check(severity: str, threshold: float) -> Check:
    return Check(
        name="NodenetFileHandlesNearLimit", group="limits", collector="sockets",
        inputs=(FILES, FILES_LIMIT), severity=severity, threshold=threshold, for_="5m",
        expr=lambda sel, t: _limit_ratio(sel, FILES, FILES_LIMIT, t),
        summary="File handles are more than {threshold%} of fs.file-max.",
        description=_FILES_TEXT,
        judge=ratio_above(FILES, FILES_LIMIT, "file handles at {value} of fs.file-max ({used} "
                                              "of {limit})"))


LIMITS_CHECKS: tuple[Check, ...] = (
    Check(
        name="NodenetNeighbourTableNearFull", group="limits", collector="neighbour",
        inputs=(NB_ENTRIES, NB_LIMIT), severity=WARNING, threshold=0.8, for_="10m",
        expr=lambda sel, t: _limit_ratio(sel, NB_ENTRIES, NB_LIMIT, t),
        summary="A neighbour (ARP/ND) table is more than {threshold%} of gc_thresh3.",
        description=_NB_FILL + " At the limit the kernel refuses new neighbours (\"neighbor"
                    " table overflow!\") and traffic to new pods or nodes fails.",
        judge=ratio_above(NB_ENTRIES, NB_LIMIT, "neighbour table {table} holds {value} of "
                                                "gc_thresh3 ({used} of {limit})")),
    Check(
        name="NodenetNeighbourTableOverflow", group="limits", collector="neighbour",
        inputs=(NB_FULLS,), severity=CRITICAL, threshold=0, for_="1m",
        expr=lambda sel, t: f"increase({NB_FULLS}{{{sel}}}[5m]) > {t}",
        summary="The kernel refused new neighbour entries: the table is full.",
        description="Neighbour table {{ $labels.table }} on node {node} overflowed"
                    " {{ printf \"%.0f\" $value }} times in 5 minutes (\"neighbor table"
                    " overflow!\"): packets to hosts without an entry are dropped.",
        judge=increase_above(NB_FULLS, "neighbour table {table} full (a new entry refused) "
                                       "{value} times")),
    Check(
        name="NodenetTCPMemoryPressure", group="limits", collector="sockets",
        also_collectors=("netstat",), inputs=(TCP_MEM, TCP_MEM_LIMIT, TCP_MEM_PRESSURES),
        severity=WARNING, threshold=1, for_="5m",
        expr=_tcp_memory,
        summary="TCP memory is at the tcp_mem pressure level.",
        description="TCP on node {node} is under memory pressure (tcp_mem): the kernel shrinks"
                    " socket buffers, throughput drops, and at the high level connections are"
                    " reset (TCPAbortOnMemory).",
        judge=tcp_memory_pressure),
    Check(
        name="NodenetTimeWaitOverflow", group="limits", collector="netstat",
        inputs=(TW_OVERFLOWS,), severity=WARNING, threshold=0, for_="10m",
        expr=lambda sel, t: f"rate({TW_OVERFLOWS}{{{sel}}}[5m]) > {t}",
        summary="TIME_WAIT sockets are being destroyed early (tcp_max_tw_buckets reached).",
        description="Node {node} destroys {{ printf \"%.3g\" $value }} TIME_WAIT sockets per"
                    " second because net.ipv4.tcp_max_tw_buckets is reached: delayed segments"
                    " of old connections can corrupt new ones that reuse the 4-tuple.",
        judge=rate_above(TW_OVERFLOWS, "{value} TIME_WAIT sockets/s not kept "
                                       "(tcp_max_tw_buckets reached)", without=())),
    Check(
        name="NodenetOrphanSocketsNearLimit", group="limits", collector="sockets",
        inputs=(ORPHANS, ORPHANS_LIMIT), severity=WARNING, threshold=0.8, for_="5m",
        expr=lambda sel, t: _limit_ratio(sel, ORPHANS, ORPHANS_LIMIT, t),
        summary="Orphaned TCP sockets are more than {threshold%} of tcp_max_orphans.",
        description="Node {node} holds {{ $value | humanizePercentage }} of tcp_max_orphans"
                    " orphaned sockets; above the limit (lower under memory pressure) the"
                    " kernel resets connections (\"too many orphaned sockets\").",
        judge=ratio_above(ORPHANS, ORPHANS_LIMIT, "orphaned TCP sockets at {value} of "
                                                  "tcp_max_orphans ({used} of {limit})")),
    _files_check(WARNING, 0.8),
    _files_check(CRITICAL, 0.9),
    Check(
        name="NodenetTCPListenOverflows", group="limits", collector="netstat",
        inputs=(LISTEN_OVERFLOWS,), severity=WARNING, threshold=0, for_="2m",
        expr=lambda sel, t: f"rate({LISTEN_OVERFLOWS}{{{sel}}}[5m]) > {t}",
        summary="A TCP listener's accept queue is overflowing.",
        description="Node {node} drops {{ printf \"%.3g\" $value }} connections per second"
                    " because a listener's accept queue is full (ListenOverflows): clients see"
                    " timeouts and retransmitted SYNs.",
        judge=rate_above(LISTEN_OVERFLOWS, "{value} connections/s dropped at a full accept "
                                           "queue (ListenOverflows)", without=())),
    Check(
        name="NodenetUDPReceiveBufferErrors", group="limits", collector="netstat",
        inputs=(UDP_RCVBUF,), severity=WARNING, threshold=0, for_="2m",
        expr=lambda sel, t: f"rate({UDP_RCVBUF}{{{sel}}}[5m]) > {t}",
        summary="UDP datagrams are dropped because a socket's receive buffer is full.",
        description="Node {node} drops {{ printf \"%.3g\" $value }} {{ $labels.family }}"
                    " UDP datagrams per second because a receiving socket's buffer is full"
                    " (RcvbufErrors): DNS queries, VXLAN or QUIC packets are lost.",
        judge=rate_above(UDP_RCVBUF, "{value} {family} UDP datagrams/s dropped at a full "
                                     "receive buffer (RcvbufErrors)", without=())),
    Check(
        name="NodenetIPReassemblyFailures", group="limits", collector="netstat",
        inputs=(REASM_FAILS,), severity=WARNING, threshold=0, for_="15m",
        expr=lambda sel, t: f"rate({REASM_FAILS}{{{sel}}}[5m]) > {t}",
        summary="IP fragments are failing to reassemble.",
        description="Node {node} fails {{ printf \"%.3g\" $value }} {{ $labels.family }}"
                    " reassemblies per second (ReasmFails: lost fragments, timeouts, or"
                    " ipfrag_high_thresh reached): fragmented packets, often an MTU problem, are"
                    " dropped.",
        judge=rate_above(REASM_FAILS, "{value} {family} reassemblies/s failing (ReasmFails)",
                         without=())),
    Check(
        name="NodenetEphemeralPortsOverlapNodePorts", group="limits", collector="sockets",
        inputs=(PORT_OVERLAP,), severity=WARNING, threshold=0, for_="15m",
        expr=lambda sel, t: f"{PORT_OVERLAP}{{{sel}}} > {t}",
        summary="The ephemeral port range overlaps the Kubernetes NodePort range.",
        description="On node {node}, {{ printf \"%.0f\" $value }} NodePort numbers lie inside"
                    " net.ipv4.ip_local_port_range and are not reserved: an outgoing connection"
                    " can take a NodePort's number and that Service stops answering on this"
                    " node.",
        judge=gauge(PORT_OVERLAP, ">", "{value} NodePorts inside ip_local_port_range, not "
                                       "reserved")),
)


# ------------------------------------------------------------------------ drop reasons (issue 16)
# Kernel drop reasons (nodenet_packet_drops_total{reason}) that mean trouble on a node, in ONE
# place: the alert's regex and diagnose's judge are built from this list; docs/runbook.md and
# docs/dropreason.md explain each family, alerts/tests/dropreason.test.yaml tests it.
# Everything not listed is background or policy (NO_SOCKET scans, NETFILTER_DROP/TC_* from
# NetworkPolicy, TCP_* state noise, NOT_SPECIFIED): visible on the dashboards, never paged on.
DROP_REASONS_TROUBLE = (
    # neighbour (ARP/NDP) resolution failed: a next hop or pod IP does not answer
    "NEIGH_CREATEFAIL", "NEIGH_FAILED", "NEIGH_QUEUEFULL", "NEIGH_DEAD",
    # queueing disciplines full or shaping: egress congestion
    "QDISC_DROP", "QDISC_OVERLIMIT", "QDISC_CONGESTED", "CAKE_FLOOD",
    "FQ_BAND_LIMIT", "FQ_HORIZON_LIMIT", "FQ_FLOW_LIMIT",
    # the CPU's input backlog (netdev_max_backlog) overflowed
    "CPU_BACKLOG",
    # a socket could not take the packet: receive buffer, backlog, protocol memory, accept queue
    "SOCKET_RCVBUFF", "SOCKET_BACKLOG", "PROTO_MEM", "TCP_LISTEN_OVERFLOW",
    "TCP_OFO_QUEUE_PRUNE",
    # device ring full, no memory, device not ready
    "FULL_RING", "NOMEM", "DEV_READY",
    # too big for the path (MTU) and no route
    "PKT_TOO_BIG", "IP_OUTNOROUTES",
    # corrupted packets (checksums)
    "IP_CSUM", "TCP_CSUM", "UDP_CSUM", "SKB_CSUM", "ICMP_CSUM",
)
DROPS = "nodenet_packet_drops_total"

DROPREASON_CHECKS: tuple[Check, ...] = (
    Check(
        # drops per second (summed over protocols) that, sustained for 10m, alert
        name="NodenetPacketDropsByReason", group="dropreason", collector="dropreason",
        inputs=(DROPS,), severity=WARNING, threshold=1, for_="10m",
        expr=lambda sel, t: (f"sum without(protocol) (\n"
                             f"  rate({DROPS}{{{sel}, reason=~\"{'|'.join(DROP_REASONS_TROUBLE)}"
                             f"\"}}[5m])\n) > {t}"),
        summary="The kernel is dropping packets for a reason that means trouble.",
        description="Node {node} drops {{ printf \"%.3g\" $value }} packets per second with"
                    " kernel drop reason {{ $labels.reason }} (skb:kfree_skb); see the runbook"
                    " for what this reason means and how to confirm it.",
        judge=rate_above(DROPS, "{value} packets/s dropped with reason {reason}",
                         without=("protocol",), where={"reason": frozenset(DROP_REASONS_TROUBLE)})),
)


# --------------------------------------------------------------------------- netfilter (issue 19)
NF_RULES = "nodenet_netfilter_rules"
NF_COMMITS = "nodenet_netfilter_ruleset_commits_total"
NF_TABLE_BYTES = "nodenet_netfilter_table_bytes"


def _nf_churn(sel: str, t: str) -> str:
    legacy_bytes = f"{NF_TABLE_BYTES}{{{sel}}}"
    return (f"rate({NF_COMMITS}{{{sel}}}[10m]) > {t}\n"
            f"or\n"
            f"max without(backend, family, table) (\n"
            f"  changes({legacy_bytes}[10m])\n"
            f"  /\n"
            f"  count_over_time({legacy_bytes}[10m])\n"
            f") > 0.8")


_nf_commit_rate = rate_above(NF_COMMITS, "{value} nftables ruleset commits/s", without=())


def netfilter_churn(check: Check, pair: Pair) -> Iterator[Verdict]:
    """The nftables half of ``rate(commits[10m]) > threshold or <legacy tables changed in
    most of 10 minutes of scrapes>``: the commit rate between the readings.  The
    iptables-legacy half (the share of scrapes in which a table's size changed) needs the
    alert's 10 minutes of samples; two readings cannot give it, so it is not judged here."""
    yield from _nf_commit_rate(check, pair)


NETFILTER_CHECKS: tuple[Check, ...] = (
    Check(
        # rules per table above which kube-proxy's iptables mode slows (docs/runbook.md)
        name="NodenetNetfilterRulesetLarge", group="netfilter", collector="netfilter",
        inputs=(NF_RULES,), severity=WARNING, threshold=20000, for_="1h",
        expr=lambda sel, t: f"{NF_RULES}{{{sel}}} > {t}",
        summary="A packet filter table holds more rules than kube-proxy's iptables mode handles "
                "well.",
        description="Table {{ $labels.table }} ({{ $labels.backend }}, {{ $labels.family }})"
                    " on node {node} holds {{ printf \"%.0f\" $value }} rules. Every new"
                    " connection walks linear chains of this size and every rewrite of the table"
                    " takes longer; consider kube-proxy's nftables or IPVS mode.",
        judge=gauge(NF_RULES, ">", "table {table} ({backend}, {family}) holds {value} rules")),
    Check(
        name="NodenetNetfilterRulesetChurn", group="netfilter", collector="netfilter",
        inputs=(NF_COMMITS, NF_TABLE_BYTES), severity=WARNING, threshold=0.5, for_="30m",
        expr=_nf_churn,
        summary="The packet filter ruleset is rewritten continuously.",
        description="The packet filter on node {node} has been rewritten continuously for 30"
                    " minutes (nftables: more than one commit every 2 seconds; iptables-legacy: a"
                    " table changed size in most scrapes; value {{ printf \"%.2g\" $value }})."
                    " A controller is looping, or two agents are fighting over the same rules.",
        judge=netfilter_churn),
)


# ----------------------------------------------------------------------- driver (issue 17)
# Drops below the kernel (ethtool collector): NIC driver counters and the ENA allowances.
ALLOWANCE_EXCEEDED = "nodenet_interface_allowance_exceeded_total"
DRIVER_DROPS = "nodenet_interface_driver_drops_total"

DRIVER_CHECKS: tuple[Check, ...] = (
    Check(
        name="NodenetCloudAllowanceExceeded", group="driver", collector="ethtool",
        inputs=(ALLOWANCE_EXCEEDED,), severity=WARNING, threshold=0, for_="5m",
        expr=lambda sel, t: f"increase({ALLOWANCE_EXCEEDED}{{{sel}}}[5m]) > {t}",
        summary="The cloud is throttling a node's network interface (ENA allowance exceeded).",
        description="Interface {{ $labels.interface }} on node {node} exceeded its"
                    " {{ $labels.allowance }} allowance: {{ printf \"%.0f\" $value }} packets"
                    " queued or dropped by the hypervisor in the last 5 minutes.",
        judge=increase_above(ALLOWANCE_EXCEEDED, "interface {interface} exceeded its "
                                                 "{allowance} allowance: {value} packets "
                                                 "queued or dropped")),
    Check(
        name="NodenetDriverDrops", group="driver", collector="ethtool",
        inputs=(DRIVER_DROPS,), severity=WARNING, threshold=0, for_="15m",
        expr=lambda sel, t: f"rate({DRIVER_DROPS}{{{sel}}}[5m]) > {t}",
        summary="A NIC driver is dropping packets.",
        description="Driver counter {{ $labels.counter }} of interface {{ $labels.interface }}"
                    " on node {node} has been rising for 15 minutes"
                    " ({{ printf \"%.3g\" $value }} per second): packets are lost in the NIC or"
                    " its driver, below the kernel's interface counters.",
        judge=rate_above(DRIVER_DROPS, "driver counter {counter} of {interface} dropping "
                                       "{value} packets/s", without=())),
)


# ---------------------------------------------------------------------- pod view (issue 15)
# Per pod network namespace (collector netns) and per destination (sockets).  The pod alerts
# read recording rules (alerts/build.py's podview group: the counter's rate summed over family,
# joined to kube_pod_info for pod_namespace/pod_name); their judges read the counters those
# rules read, per namespace (netns, netns_inode, pod_uid: diagnose has no kube-state-metrics).
POD_LISTEN_OVERFLOWS = "nodenet_netns_tcp_listen_overflows_total"
POD_UDP_RCVBUF = "nodenet_netns_udp_receive_buffer_errors_total"
POD_RECORDS = (("nodenet:netns_tcp_listen_overflows:rate5m", POD_LISTEN_OVERFLOWS),
               ("nodenet:netns_udp_receive_buffer_errors:rate5m", POD_UDP_RCVBUF))
# The pod an alert is about: namespace/name when kube-state-metrics joined, else uid or netns.
POD = ("{{ with $labels.pod_name }}{{ $labels.pod_namespace }}/{{ . }}{{ else }}"
       "{{ with $labels.pod_uid }}uid {{ . }}{{ else }}netns {{ $labels.netns }}"
       "{{ $labels.netns_inode }}{{ end }}{{ end }}")
EPH_MAX = "nodenet_ephemeral_ports_max_in_use"
EPH_RANGE = "nodenet_ephemeral_ports_range_size"
EPH_IN_USE = "nodenet_ephemeral_ports_in_use"

_eph_ratio = ratio_above(EPH_MAX, EPH_RANGE, "{value} of the ephemeral port range in use "
                                             "towards one destination ({used} of {limit} ports)")


def ephemeral_exhaustion(check: Check, pair: Pair) -> Iterator[Verdict]:
    """max_in_use / range_size above the threshold, naming the busiest (source, destination)
    of nodenet_ephemeral_ports_in_use."""
    for v in _eph_ratio(check, pair):
        busiest = max(pair.gauge(EPH_IN_USE), key=lambda s: s[1], default=None)
        where = (f"; busiest {busiest[0].get('source', '?')} -> "
                 f"{busiest[0].get('destination', '?')} ({num(busiest[1])} ports)"
                 if busiest else "")
        yield Verdict(v.value, v.message + where, v.labels)


PODVIEW_CHECKS: tuple[Check, ...] = (
    Check(
        name="NodenetPodTCPListenOverflows", group="podview", collector="netns",
        inputs=(POD_LISTEN_OVERFLOWS,), severity=WARNING, threshold=0, for_="2m",
        expr=lambda sel, t: f"{POD_RECORDS[0][0]}{{{sel}}} > {t}",
        summary="A pod's TCP listener accept queue is overflowing.",
        description="Pod " + POD + " on node {node} drops {{ printf \"%.3g\" $value }}"
                    " connections per second because a listener's accept queue is full"
                    " (ListenOverflows in the pod's network namespace; the node's counters do"
                    " not show it).",
        judge=rate_above(POD_LISTEN_OVERFLOWS, "{value} connections/s dropped at a full accept "
                                               "queue in a pod's network namespace",
                         without=("family",))),
    Check(
        name="NodenetPodUDPReceiveBufferErrors", group="podview", collector="netns",
        inputs=(POD_UDP_RCVBUF,), severity=WARNING, threshold=0, for_="2m",
        expr=lambda sel, t: f"{POD_RECORDS[1][0]}{{{sel}}} > {t}",
        summary="A pod drops UDP datagrams because a socket's receive buffer is full.",
        description="Pod " + POD + " on node {node} drops {{ printf \"%.3g\" $value }} UDP"
                    " datagrams per second because a receiving socket's buffer is full"
                    " (RcvbufErrors in the pod's network namespace): DNS queries are lost.",
        judge=rate_above(POD_UDP_RCVBUF, "{value} UDP datagrams/s dropped at a full receive "
                                         "buffer in a pod's network namespace",
                         without=("family",))),
    Check(
        name="NodenetEphemeralPortsNearExhaustion", group="podview", collector="sockets",
        inputs=(EPH_MAX, EPH_RANGE, EPH_IN_USE), severity=WARNING, threshold=0.8, for_="5m",
        expr=lambda sel, t: _limit_ratio(sel, EPH_MAX, EPH_RANGE, t),
        summary="Connections to one destination use more than {threshold%} of the ephemeral "
                "ports.",
        description="On node {node}, {{ $value | humanizePercentage }} of the ephemeral port"
                    " range is in use towards one destination (see"
                    " nodenet_ephemeral_ports_in_use): new connect() calls to it will fail with"
                    " EADDRNOTAVAIL.",
        judge=ephemeral_exhaustion),
)


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
                             f"  nodenet_interface_info{{{sel}, kind=\"veth\", "
                             f"operstate!=\"up\"}}"),
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
    *LIMITS_CHECKS,
    *DROPREASON_CHECKS,
    *NETFILTER_CHECKS,
    *DRIVER_CHECKS,
    *PODVIEW_CHECKS,
)

# Metric names Prometheus makes itself, not read from any collector.
SYNTHETIC_INPUTS = frozenset({"up"})


def validate(checks: Iterable[Check]) -> None:
    """One entry per (name, severity); the entries of one name (an alert in two severities,
    e.g. a warning at 80% and a critical at 90%: two rules of the same name, which
    Alertmanager tells apart by their severity label) share group, collectors and inputs."""
    seen: dict[str, Check] = {}
    keys: set[tuple[str, str]] = set()
    for c in checks:
        if c.key in keys:
            raise ValueError(f"{c.name}: two entries of severity {c.severity}")
        keys.add(c.key)
        first = seen.setdefault(c.name, c)
        if (first.group, first.collectors, first.inputs) != (c.group, c.collectors, c.inputs):
            raise ValueError(f"{c.name}: entries of one name differ in group, collectors or "
                             f"inputs")


validate(CHECKS)


def by_key() -> dict[tuple[str, str], Check]:
    """(name, severity) -> check: every entry."""
    return {c.key: c for c in CHECKS}


def by_name() -> dict[str, Check]:
    """name -> check, for the names that have one entry.  A name in several severities is
    left out (there is no one threshold to give): use by_key() or levels()."""
    names = [c.name for c in CHECKS]
    return {c.name: c for c in CHECKS if names.count(c.name) == 1}


def levels(name: str) -> tuple[Check, ...]:
    """The entries of one alert name, least severe first."""
    return tuple(sorted((c for c in CHECKS if c.name == name),
                        key=lambda c: SEVERITY_RANK[c.severity]))


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
    """Runs the judge of every check one of whose collectors is in `collectors` (all when
    None; checks of the exporter itself, collector "", always run); worst first."""
    enabled = None if collectors is None else set(collectors)
    findings: list[Finding] = []
    order = {}
    for i, check in enumerate(CHECKS if checks is None else checks):
        if check.judge is None:
            continue
        ran = [c for c in check.collectors if enabled is None or c in enabled]
        if check.collector and not ran:
            continue
        order[check.key] = i
        for v in check.judge(check, pair):
            collector = ran[0] if ran else v.labels.get("collector", "")
            findings.append(Finding(check.name, check.severity, collector, v.value,
                                    check.threshold, v.message, dict(v.labels),
                                    check.runbook_url, check.for_))
    findings.sort(key=lambda f: (-SEVERITY_RANK[f.severity], order[f.check, f.severity],
                                 sorted(f.labels.items())))
    return findings


def exit_code(findings: Iterable[Finding]) -> int:
    """2 if any finding is critical, 1 if any is a warning, else 0 (check_* plugin codes)."""
    return max((SEVERITY_RANK[f.severity] for f in findings), default=0)
