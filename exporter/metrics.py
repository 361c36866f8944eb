"""Metric specifications, per-scrape families and a fast exposition writer.

Collectors describe each metric once as a module-level :class:`Metric` (name, type, help,
label names) and, on every scrape, build a fresh :class:`Family` from it with
``spec.family()`` and ``family.add(label_values, value)``.  Nothing survives between
scrapes.  Big families sharing label names (one series per IPVS backend, 10 metrics each)
go into a :class:`Table` instead: one rendered label set per row, one value column per metric.

Why not prometheus_client's renderer: it costs ~13-15 us per sample (300k samples ~4.5 s on
this machine kind); this writer renders each label set once per scrape (not once per sample)
and streams the exposition in chunks (``render_chunks``), so a 540k-sample scrape never holds
its whole text (84 MiB) in memory.  Both the Prometheus text format 0.0.4 and OpenMetrics 1.0 are
written here; tests parse the output with prometheus_client's parsers.
"""
from __future__ import annotations

import math
import re
from itertools import chain
from dataclasses import dataclass, field

COUNTER = "counter"
GAUGE = "gauge"

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class Metric:
    """The static description of one metric; counters are named with their ``_total``."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()

    def __post_init__(self):
        if not _NAME_RE.match(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.type not in (COUNTER, GAUGE):
            raise ValueError(f"invalid metric type {self.type!r}")
        if self.type == COUNTER and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total")
        for label in self.labels:
            if not _LABEL_RE.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} in {self.name}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"duplicate label names in {self.name}")

    def family(self) -> "Family":
        return Family(self)

    def single(self, value, *label_values: str) -> "Family":
        """A family holding one sample (the common case for node-wide values)."""
        fam = Family(self)
        fam.add(label_values, value)
        return fam


@dataclass
class Family:
    """The samples of one metric for one scrape: (label values tuple, value) pairs."""

    spec: Metric
    samples: list = field(default_factory=list)

    def add(self, label_values: tuple, value) -> None:
        self.samples.append((label_values, value))

    def __len__(self) -> int:
        return len(self.samples)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value) -> str:
    if type(value) is int:  # exact kernel counters: no float rounding above 2**53
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class Table:
    """Several metrics that share label names, filled one series (row) at a time.

    The compact form for big families (IPVS backends: 10 metrics x 50k backends): the label
    set is rendered once per row, when the row is added, and each metric keeps only a column
    of values, instead of one (label tuple, value) pair per sample.  A metric may carry extra
    labels after the table's (e.g. ``forwarding`` on an info series): its column entries are
    ``(value, extra_label_value, ...)`` tuples.
    """

    __slots__ = ("specs", "labels", "labelsets", "columns", "_extra", "_fmt", "_keep")

    def __init__(self, specs, labels: tuple | None = None):
        specs = tuple(specs)
        self.specs = specs
        self.labels = tuple(specs[0].labels if labels is None else labels)
        n = len(self.labels)
        if not n:
            raise ValueError("a table needs label names (use Family for label-less metrics)")
        self._extra = []
        for spec in specs:
            if tuple(spec.labels[:n]) != self.labels:
                raise ValueError(f"{spec.name}: labels {spec.labels} do not start with the "
                                 f"table's {self.labels}")
            self._extra.append(tuple(spec.labels[n:]))
        self.labelsets: list = []      # rendered 'k="v",...' per row (shared by the metrics)
        self.columns = [[] for _ in specs]
        self._fmt = ",".join(f'{k}="%s"' for k in self.labels)
        self._keep: tuple | None = None

    def labelset(self, label_values: tuple) -> str:
        """The rendered label set (without braces) of one row; raises on a wrong count."""
        if len(label_values) != len(self.labels):
            raise ValueError(f"{len(label_values)} label values for labels {self.labels}")
        text = self._fmt % tuple(label_values)
        if "\\" in text or "\n" in text or text.count('"') != 2 * len(self.labels):
            text = _labelset(self.labels, label_values)
        return text

    def add(self, label_values: tuple, *values) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"{len(values)} values for {len(self.columns)} metrics")
        self.labelsets.append(self.labelset(label_values))
        for column, value in zip(self.columns, values):
            column.append(value)

    def __len__(self) -> int:
        return len(self.labelsets)

    def first_rows(self):
        """None if the rows' label sets are distinct, else the indexes of the first row of
        each label set (a duplicate series would make the whole scrape invalid).  Worked out
        once per table (rendering is per request, the table is shared and filled already)."""
        keep = self._keep
        if keep is None or keep[0] != len(self.labelsets):
            keep = self._keep = (len(self.labelsets), _first_rows(self.labelsets))
        return keep[1]


def _labelset(labels: tuple, label_values: tuple) -> str:
    return ",".join(f'{k}="{escape_label_value(str(v))}"' for k, v in zip(labels, label_values))


CHUNK = 1 << 20    # bytes of text per chunk the writer yields (about); big chunks: fewer
#                    chunk headers and reads for the client (costly in a UML guest)
_LINES = 512       # samples rendered per step


class ExpositionWriter:
    """Renders families and tables, family by family, as a stream of byte chunks.

    Stateless (nothing is kept between scrapes, so memory follows the live series only, and
    one writer may serve concurrent requests).  Within one rendering, a label set is rendered
    once per label-values tuple *object* (collectors pass the same tuple to each metric of a
    series) and once per :class:`Table` row.
    """

    def render(self, families, openmetrics: bool = False) -> bytes:
        return b"".join(self.render_chunks(families, openmetrics))

    def render_chunks(self, families, openmetrics: bool = False, chunk: int = CHUNK):
        """Yields the exposition as bytes chunks of about ``chunk`` bytes (at least one)."""
        merged = _merge(families)
        memo: dict = {}     # id(label tuple) -> (tuple, rendered label set), this rendering only
        parts: list = []
        size = 0
        for spec in sorted(merged, key=lambda s: s.name):
            name = spec.name
            meta = name[: -len("_total")] if openmetrics and spec.type == COUNTER else name
            parts.append(f"# HELP {meta} {_escape_help(spec.help)}\n# TYPE {meta} {spec.type}\n")
            for text in _render_spec(spec, merged[spec], memo):
                parts.append(text)
                size += len(text)
                if size >= chunk:
                    yield "".join(parts).encode("utf-8")
                    parts, size = [], 0
        if openmetrics:
            parts.append("# EOF\n")
        yield "".join(parts).encode("utf-8")


def _values(values) -> list:
    return [str(v) if type(v) is int else format_value(v) for v in values]


def _lines(head: str, sets, values) -> str:
    """'name{' + set + '} ' + value per line; sets and values are parallel lists."""
    return "".join([f"{head}{s}}} {v}\n" for s, v in zip(sets, _values(values))])


_TABLE_LINES = 2048   # table rows rendered per step (one string of ~0.5 MiB at IPVS's ~250 B)


def _suffixer(name: str, extra: tuple):
    """ev -> ',k="v",...' for a table column's extra label values, rendered once per
    distinct ev; ValueError on a wrong count."""
    suffixes: dict = {}

    def suffix(ev):
        text = suffixes.get(ev)
        if text is None:
            if len(ev) != len(extra):
                raise ValueError(f"{name}: {len(ev)} extra label values for {extra}")
            text = suffixes[ev] = "," + _labelset(extra, ev)
        return text
    return suffix


def _render_table(head: str, table, idx: int, extra: tuple):
    """Yields the text of one table column: one line per row (first of duplicate label sets).

    A column of plain ints (the common case: kernel counters) is rendered with one
    %-format of a whole batch: the lines are made in C, no per-line string object.  Extra
    labels (a column of (value, extra label values...) entries) render through a suffix per
    distinct extra values."""
    sets, column = table.labelsets, table.columns[idx]
    keep = table.first_rows()
    if keep is not None:
        sets, column = [sets[i] for i in keep], [column[i] for i in keep]
    n, step = len(sets), _TABLE_LINES
    if not extra:
        if set(map(type, column)) <= {int}:    # not bool, not float: exact %d
            line = head + "%s} %d\n"
            full = line * step
            for i in range(0, n, step):
                k = min(step, n - i)
                yield (full if k == step else line * k) % tuple(
                    chain.from_iterable(zip(sets[i:i + k], column[i:i + k])))
        else:
            for i in range(0, n, step):
                yield _lines(head, sets[i:i + step], column[i:i + step])
        return
    suffix = _suffixer(head[:-1], extra)
    for i in range(0, n, step):
        part = column[i:i + step]
        yield "".join([f"{head}{s}{suffix(e[1:])}}} {v}\n" for s, e, v in
                       zip(sets[i:i + step], part, _values([e[0] for e in part]))])


def _render_spec(spec, sources, memo):
    """Yields text pieces for the samples of one metric, from its families/table columns."""
    name, labels = spec.name, spec.labels
    head = name + "{" if labels else name
    if len(sources) == 1 and sources[0][0] == "table":
        _, table, idx, extra = sources[0]
        yield from _render_table(head, table, idx, extra)
        return
    # general path: (label set, value) pairs from every source, first of duplicates kept
    pairs: list = []
    for src in sources:
        if src[0] == "family":
            pairs.extend(_family_pairs(name, labels, src[1], memo))
        else:
            _, table, idx, extra = src
            sets, column = table.labelsets, table.columns[idx]
            if not extra:
                pairs.extend(zip(sets, column))
                continue
            suffix = _suffixer(name, extra)
            for s, entry in zip(sets, column):
                text = suffix(entry[1:])
                pairs.append((s + text if s else text[1:], entry[0]))
    if len({s for s, _ in pairs}) != len(pairs):
        # a duplicate series would make the whole scrape invalid: keep the first only
        seen: set = set()
        pairs = [p for p in pairs if p[0] not in seen and not seen.add(p[0])]
    if not labels:
        for i in range(0, len(pairs), _LINES):
            yield "".join([f"{name} {v}\n" for v in _values([p[1] for p in pairs[i:i + _LINES]])])
        return
    for i in range(0, len(pairs), _LINES):
        part = pairs[i:i + _LINES]
        yield _lines(head, [p[0] for p in part], [p[1] for p in part])


def _family_pairs(name, labels, samples, memo):
    nlabels = len(labels)
    out = []
    for label_values, value in samples:
        hit = memo.get(id(label_values))
        if hit is not None and hit[0] is label_values and hit[1] == labels:
            out.append((hit[2], value))
            continue
        if len(label_values) != nlabels:
            raise ValueError(f"{name}: {len(label_values)} label values for labels {labels}")
        text = _labelset(labels, label_values)
        memo[id(label_values)] = (label_values, labels, text)
        out.append((text, value))
    return out


def _first_rows(sets):
    """None if the label sets are distinct, else the indexes of the first of each."""
    if len(set(sets)) == len(sets):
        return None
    seen: set = set()
    return [i for i, s in enumerate(sets) if s not in seen and not seen.add(s)]


def _merge(families) -> dict:
    """Groups samples by metric, so two collectors (or two calls) never emit a name twice:
    spec -> [("family", samples) | ("table", table, column index, extra label names)]."""
    merged: dict = {}
    for fam in families:
        if isinstance(fam, Table):
            for i, spec in enumerate(fam.specs):
                merged.setdefault(spec, []).append(("table", fam, i, fam._extra[i]))
        else:
            merged.setdefault(fam.spec, []).append(("family", fam.samples))
    names: dict = {}
    for spec in merged:
        other = names.setdefault(spec.name, spec)
        if other is not spec:
            raise ValueError(f"metric {spec.name} described twice with different specs")
    return merged
