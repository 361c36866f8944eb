"""Metric specifications, per-scrape families and a fast exposition writer.

Collectors describe each metric once as a module-level :class:`Metric` (name, type, help,
label names) and, on every scrape, build a fresh :class:`Family` from it with
``spec.family()`` and ``family.add(label_values, value)``.  Nothing survives between
scrapes.  Big families sharing label names (one series per IPVS backend, 10 metrics each)
go into a :class:`Table` instead: one rendered label set per row, one value column per metric.

Why not prometheus_client's renderer: this one renders each label set once per scrape (not
once per sample), is several times faster and streams the exposition in chunks
(``render_chunks``), so the biggest scrape never holds its whole text in memory (figures:
docs/performance.md "What we wrote instead of a library").  Both the Prometheus text format
0.0.4 and OpenMetrics 1.0 are written here; tests parse the output with prometheus_client's
parsers and compare with its own renderer.
"""
from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

Value = int | float   # a sample's value (bool is an int); exact ints stay exact

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

    def family(self) -> Family:
        return Family(self)

    def single(self, value: Value, *label_values: str) -> Family:
        """A family holding one sample (the common case for node-wide values)."""
        fam = Family(self)
        fam.add(label_values, value)
        return fam


@dataclass
class Family:
    """The samples of one metric for one scrape: (label values tuple, value) pairs."""

    spec: Metric
    samples: list[tuple[tuple[str, ...], Value]] = field(default_factory=list)

    def add(self, label_values: tuple[str, ...], value: Value) -> None:
        self.samples.append((label_values, value))

    def __len__(self) -> int:
        return len(self.samples)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: Value) -> str:
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


class Info:
    """A table column of an info-style metric: value 1, the metric's extra labels (after the
    table's) from the row object's attributes (dotted paths) or callables.

    ``labels``, if given, turns the raw values (one value, or a tuple of several) into the
    tuple of label values; it runs once per distinct raw value, not once per row (e.g. an
    IPVS forwarding method number -> its name, at 50k backends)."""

    __slots__ = ("getters", "labels")

    def __init__(self, *getters: Getter, labels: Callable[[Any], tuple] | None = None):
        if not getters:
            raise ValueError("Info needs the getters of the extra label values")
        self.getters = getters
        self.labels = labels


Getter = str | Callable[[Any], Any]   # a dotted attribute path ("stats.conns") or a callable
Column = tuple[Metric, "Getter | Info"]


def row_getter(getters: Sequence[Getter | Info]) -> Callable[[Any], tuple]:
    """obj -> the tuple of its values for these columns, in order; an Info column gives the
    tuple of its label values.  Plain attribute paths only: one C-level
    ``operator.attrgetter`` call per object.  (Table.add_row compiles its own code.)"""
    paths: list[Getter] = []
    cuts: list[tuple[int, Info | None]] = []
    for g in getters:
        cuts.append((len(paths), g if isinstance(g, Info) else None))
        paths.extend(g.getters if isinstance(g, Info) else (g,))
    get: Callable[[Any], tuple]
    names = [g for g in paths if isinstance(g, str)]
    if len(names) == len(paths):
        get = operator.attrgetter(*names) if len(names) > 1 else _one(names[0])
    else:
        parts = [operator.attrgetter(g) if isinstance(g, str) else g for g in paths]

        def get(obj: Any) -> tuple:
            return tuple([g(obj) for g in parts])
    if all(info is None for _, info in cuts):
        return get

    def label_values(info: Info, raw: tuple) -> tuple:
        if info.labels is None:
            return raw
        return tuple(info.labels(raw[0] if len(raw) == 1 else raw))

    def grouped(obj: Any) -> tuple:
        v = get(obj)
        return tuple([v[a] if info is None else label_values(info, v[a:a + len(info.getters)])
                      for a, info in cuts])
    return grouped


def _one(path: str) -> Callable[[Any], tuple]:
    attr = operator.attrgetter(path)
    return lambda obj: (attr(obj),)


class Table:
    """Several metrics that share label names, filled one series (row) at a time.

    The compact form for big families (IPVS backends: 10 metrics x 50k backends): the label
    set is rendered once per row, when the row is added, and each metric keeps only a column
    of values, instead of one (label tuple, value) pair per sample.  A metric may carry extra
    labels after the table's (e.g. ``forwarding`` on an info series): its column entries are
    ``(value, extra_label_value, ...)`` tuples.  A ``None`` value is no sample.

    Declared as one ordered sequence of (metric, value getter) (:meth:`of`), a table is
    filled with :meth:`add_row` (a label set and an object): adding a metric is one line.
    """

    __slots__ = ("specs", "labels", "labelsets", "columns", "_extra", "_fmt", "_keep",
                 "add_row", "add_rows")

    add_row: Callable[[str, Any], None]
    """``add_row(labelset, obj)``: one series, its label set (from :meth:`labelset`, or
    rendered by the caller the same way) and each column's value read from ``obj`` through
    the getters given to :meth:`of` (compiled for the table by :func:`_row_adder`)."""
    add_rows: Callable[[Iterable[str], Iterable[Any]], None]
    """``add_rows(labelsets, objs)``: add_row for each pair (equal lengths), in one call."""

    def __init__(self, specs: Iterable[Metric], labels: tuple[str, ...] | None = None):
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
        self.labelsets: list[str] = []   # rendered 'k="v",...' per row (shared by the metrics)
        self.columns: list[list[Any]] = [[] for _ in specs]
        self._fmt = ",".join(f'{k}="%s"' for k in self.labels)
        self._keep: tuple | None = None
        self.add_row = _no_getters
        self.add_rows = _no_getters

    @classmethod
    def of(cls, columns: Sequence[Column], labels: tuple[str, ...] | None = None) -> Table:
        """An empty table of these (metric, getter) columns, for :meth:`add_row`."""
        t = cls([m for m, _ in columns], labels)
        for (spec, g), extra in zip(columns, t._extra, strict=True):
            if isinstance(g, Info) != bool(extra) or (
                    isinstance(g, Info) and len(g.getters) != len(extra)):
                raise ValueError(f"{spec.name}: extra labels {extra} need an Info getter of "
                                 f"as many values")
        t.add_row, t.add_rows = _row_adder(t, [g for _, g in columns])
        return t

    def labelset(self, label_values: tuple) -> str:
        """The rendered label set (without braces) of one row; raises on a wrong count."""
        if len(label_values) != len(self.labels):
            raise ValueError(f"{len(label_values)} label values for labels {self.labels}")
        text = self._fmt % tuple(label_values)
        if "\\" in text or "\n" in text or text.count('"') != 2 * len(self.labels):
            text = _labelset(self.labels, label_values)
        return text

    def add(self, label_values: tuple, *values: Any) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"{len(values)} values for {len(self.columns)} metrics")
        self.labelsets.append(self.labelset(label_values))
        for column, value in zip(self.columns, values, strict=True):
            column.append(value)

    def __len__(self) -> int:
        return len(self.labelsets)

    def first_rows(self) -> list[int] | None:
        """None if the rows' label sets are distinct, else the indexes of the first row of
        each label set (a duplicate series would make the whole scrape invalid).  Worked out
        once per table (rendering is per request, the table is shared and filled already)."""
        keep = self._keep
        if keep is None or keep[0] != len(self.labelsets):
            keep = self._keep = (len(self.labelsets), _first_rows(self.labelsets))
        return keep[1]


def _no_getters(*_args: Any) -> None:
    raise TypeError("add_row needs a table made by Table.of")


_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _row_adder(table: Table, getters: Sequence[Getter | Info]) -> tuple[
        Callable[[str, Any], None], Callable[[Iterable[str], Iterable[Any]], None]]:
    """The table's add_row and add_rows, compiled for its getters: straight-line code that appends
    the label set and each column's value (``obj.a.b`` for a path, ``g(obj)`` for a callable),
    the same code a hand-unrolled loop would be - at 50k IPVS backends per scrape a generic
    loop over the columns costs 2.4 times as much (docs/performance.md "Table.add_row").
    Info entries ``(1, *labels)`` are shared per distinct labels (memory at 50k rows)."""
    env: dict[str, Any] = {"_sets": table.labelsets.append}
    body = ["    _sets(labelset)"]
    prefixes: dict[str, str] = {}   # "stats" -> "p0": an object read once per row

    def expr(g: Getter, k: str) -> str:
        if not isinstance(g, str):
            env[f"_g{k}"] = g
            return f"_g{k}(obj)"
        if not _PATH.fullmatch(g):
            raise ValueError(f"bad attribute path {g!r}")
        head, dot, rest = g.rpartition(".")
        if not dot:
            return f"obj.{g}"
        if head not in prefixes:
            prefixes[head] = f"p{len(prefixes)}"
            body.append(f"    {prefixes[head]} = obj.{head}")
        return f"{prefixes[head]}.{rest}"

    for i, g in enumerate(getters):
        env[f"_c{i}"] = table.columns[i].append
        if not isinstance(g, Info):
            body.append(f"    _c{i}({expr(g, str(i))})")
            continue
        interned: dict[Any, tuple] = {}
        env[f"_i{i}"] = interned
        env[f"_n{i}"] = _interner(interned, g)
        if len(g.getters) == 1:   # keyed by the one raw value itself: no tuple per row
            body.append(f"    k = {expr(g.getters[0], f'{i}_0')}")
        else:
            key = ", ".join(expr(h, f"{i}_{j}") for j, h in enumerate(g.getters))
            body.append(f"    k = ({key})")
        body.append(f"    _c{i}(_i{i}.get(k) or _n{i}(k))")
    # the helpers as default arguments: local (fast) names in the compiled functions
    params = ", ".join(f"{k}={k}" for k in env)
    one = "\n".join(body)
    many = "\n".join("    " + line for line in body)
    src = (f"def add_row(labelset, obj, {params}):\n{one}\n\n"
           f"def add_rows(labelsets, objs, {params}):\n"
           f"    for labelset, obj in zip(labelsets, objs, strict=True):\n{many}\n")
    exec(compile(src, f"<Table.add_row {table.specs[0].name}>", "exec"), env)  # noqa: S102
    return env["add_row"], env["add_rows"]


def _interner(interned: dict, info: Info) -> Callable[[Any], tuple]:
    """raw key -> the shared (1, *label values) entry of an Info column, made on first use."""
    one = len(info.getters) == 1

    def new(key: Any) -> tuple:
        if info.labels is not None:
            values = tuple(info.labels(key))
        else:
            values = (key,) if one else tuple(key)
        if len(values) != len(info.getters):
            raise ValueError(f"Info labels gave {len(values)} values for {len(info.getters)}")
        entry: tuple = interned.setdefault(key, (1, *values))
        return entry
    return new


def _labelset(labels: tuple, label_values: tuple) -> str:
    return ",".join(f'{k}="{escape_label_value(str(v))}"'
                    for k, v in zip(labels, label_values, strict=True))


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

    def render(self, families: Iterable[Family | Table], openmetrics: bool = False) -> bytes:
        return b"".join(self.render_chunks(families, openmetrics))

    def render_chunks(self, families: Iterable[Family | Table], openmetrics: bool = False,
                      chunk: int = CHUNK) -> Iterator[bytes]:
        """Yields the exposition as bytes chunks of about ``chunk`` bytes (at least one)."""
        merged = _merge(families)
        memo: dict = {}     # id(label tuple) -> (tuple, rendered label set), this rendering only
        parts: list = []
        size = 0
        for spec in sorted(merged, key=lambda s: s.name):
            name = spec.name
            sources = merged[spec]
            pieces = _render_spec(spec, sources, memo)
            first = next(pieces, None)
            if first is None and _only_none(sources):
                continue  # a table column of None values only: no sample, no metric
            meta = name[: -len("_total")] if openmetrics and spec.type == COUNTER else name
            parts.append(f"# HELP {meta} {_escape_help(spec.help)}\n# TYPE {meta} {spec.type}\n")
            for text in chain(() if first is None else (first,), pieces):
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
    return "".join([f"{head}{s}}} {v}\n" for s, v in zip(sets, _values(values), strict=True)])


_TABLE_LINES = 2048   # table rows rendered per step (one string of a few hundred KiB)


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
                    chain.from_iterable(zip(sets[i:i + k], column[i:i + k], strict=True)))
        else:
            if None in column:   # None is no sample (checked off the int fast path only)
                pairs = [(s, v) for s, v in zip(sets, column, strict=True) if v is not None]
                sets, column, n = [s for s, _ in pairs], [v for _, v in pairs], len(pairs)
            for i in range(0, n, step):
                yield _lines(head, sets[i:i + step], column[i:i + step])
        return
    suffix = _suffixer(head[:-1], extra)
    for i in range(0, n, step):
        part = column[i:i + step]
        yield "".join([f"{head}{s}{suffix(e[1:])}}} {v}\n" for s, e, v in
                       zip(sets[i:i + step], part, _values([e[0] for e in part]), strict=True)])


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
                pairs.extend(p for p in zip(sets, column, strict=True) if p[1] is not None)
                continue
            suffix = _suffixer(name, extra)
            for s, entry in zip(sets, column, strict=True):
                text = suffix(entry[1:])
                pairs.append((s + text if s else text[1:], entry[0]))
    if len({s for s, _ in pairs}) != len(pairs):
        # a duplicate series would make the whole scrape invalid: keep the first only
        pairs = [pairs[i] for i in _firsts([s for s, _ in pairs])]
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


def _only_none(sources: list) -> bool:
    """Every source is a table with rows, whose column for this metric holds only None."""
    return all(src[0] == "table" and src[1].columns[src[2]]
               and all(v is None for v in src[1].columns[src[2]]) for src in sources)


def _first_rows(sets: list[str]) -> list[int] | None:
    """None if the label sets are distinct, else the indexes of the first of each."""
    if len(set(sets)) == len(sets):
        return None
    return _firsts(sets)


def _firsts(items: list[str]) -> list[int]:
    """Indexes of the first occurrence of each item, in order."""
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        if item not in seen:
            seen.add(item)
            out.append(i)
    return out


def _merge(families: Iterable[Family | Table]) -> dict[Metric, list[tuple]]:
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
