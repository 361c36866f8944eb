import math

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter import metrics
from exporter.metrics import COUNTER, GAUGE, ExpositionWriter, Metric, Table, format_value

C = Metric("t_requests_total", COUNTER, "Requests.\nSecond line \\ here", ("path", "code"))
G = Metric("t_temp", GAUGE, "Temperature.")


def families():
    c = C.family()
    c.add(("/a", "200"), 5)
    c.add(('we"ird\\path\n', "500"), 2**63)
    return [c, G.single(-1.5)]


def test_text_format_round_trips_through_prometheus_client():
    out = ExpositionWriter().render(families()).decode()
    fams = {f.name: f for f in parse_text(out)}
    assert fams["t_requests"].type == "counter"
    samples = {tuple(sorted(s.labels.items())): s.value for s in fams["t_requests"].samples}
    assert samples[(("code", "200"), ("path", "/a"))] == 5
    assert samples[(("code", "500"), ("path", 'we"ird\\path\n'))] == float(2**63)
    assert fams["t_temp"].samples[0].value == -1.5
    assert f"t_requests_total{{path=\"/a\",code=\"200\"}} 5\n" in out
    assert "9223372036854775808\n" in out  # exact big integer, no float rounding


def test_openmetrics_format_round_trips():
    out = ExpositionWriter().render(families(), openmetrics=True).decode()
    assert out.endswith("# EOF\n")
    assert "# TYPE t_requests counter" in out
    fams = {f.name: f for f in parse_om(out)}
    assert fams["t_requests"].samples[0].name == "t_requests_total"
    assert fams["t_temp"].samples[0].value == -1.5


def test_writer_keeps_no_state_between_renderings():
    w = ExpositionWriter()
    first = w.render(families())
    assert w.render(families()) == first
    c = C.family()
    c.add(("/b", "200"), 1)
    third = w.render([c]).decode()
    assert '/a' not in third and 'path="/b"' in third
    assert vars(w) == {}  # nothing cached: memory follows the live series only


B1 = Metric("t_backend_bytes_total", COUNTER, "Bytes.", ("svc", "backend"))
B2 = Metric("t_backend_weight", GAUGE, "Weight.", ("svc", "backend"))
BI = Metric("t_backend_info", GAUGE, "Info.", ("svc", "backend", "method"))


def table_and_family_pair():
    """The same series once as a Table, once as Families (the reference)."""
    rows = [(("a", "1"), 10, 1.5, "nat"), ((' q"\\\n', "2"), 2**64, float("nan"), 'x"y'),
            (("a", "3"), 0, float("inf"), "nat")]
    t = Table((B1, B2, BI))
    fams = [B1.family(), B2.family(), BI.family()]
    for lv, nbytes, weight, method in rows:
        t.add(lv, nbytes, weight, (1, method))
        fams[0].add(lv, nbytes)
        fams[1].add(lv, weight)
        fams[2].add(lv + (method,), 1)
    return t, fams


@pytest.mark.parametrize("openmetrics", [False, True])
def test_table_renders_as_the_same_families(openmetrics):
    t, fams = table_and_family_pair()
    w = ExpositionWriter()
    out = w.render([t], openmetrics)
    assert out == w.render(fams, openmetrics)
    parsed = {f.name: f for f in (parse_om if openmetrics else parse_text)(out.decode())}
    samples = {(s.name, s.labels["svc"], s.labels["backend"]): s.value
               for f in parsed.values() for s in f.samples}
    assert samples[("t_backend_bytes_total", ' q"\\\n', "2")] == float(2**64)
    assert samples[("t_backend_weight", "a", "3")] == math.inf
    assert math.isnan(samples[("t_backend_weight", ' q"\\\n', "2")])
    info = {s.labels["backend"]: s.labels["method"] for s in parsed["t_backend_info"].samples}
    assert info == {"1": "nat", "2": 'x"y', "3": "nat"}
    assert b'svc=" q\\"\\\\\\n"' in out  # escaped: quote, backslash, newline


def test_table_duplicates_keep_the_first_row_and_merge_with_families():
    t = Table((B1, B2))
    t.add(("a", "1"), 1, 2)
    t.add(("a", "1"), 3, 4)
    t.add(("b", "1"), 5, 6)
    f = B2.family()
    f.add(("c", "1"), 7)
    f.add(("b", "1"), 8)
    out = ExpositionWriter().render([t, f]).decode()
    assert [line for line in out.splitlines() if not line.startswith("#")] == [
        't_backend_bytes_total{svc="a",backend="1"} 1',
        't_backend_bytes_total{svc="b",backend="1"} 5',
        't_backend_weight{svc="a",backend="1"} 2',
        't_backend_weight{svc="b",backend="1"} 6',
        't_backend_weight{svc="c",backend="1"} 7']
    assert len({f.name for f in parse_text(out)}) == 2


def test_table_rejects_bad_shapes():
    with pytest.raises(ValueError):
        Table((B1, G))  # labels do not start with the table's
    t = Table((B1, B2))
    with pytest.raises(ValueError):
        t.add(("only-one",), 1, 2)
    with pytest.raises(ValueError):
        t.add(("a", "b"), 1)  # one value for two metrics


def test_chunks_are_bounded_and_join_to_the_whole():
    t = Table((B1, B2, BI))
    rows = 3 * metrics._TABLE_LINES + 7       # 4 steps per metric
    for i in range(rows):
        t.add((f"svc{i}", str(i)), i, i % 3, (1, "nat"))
    w = ExpositionWriter()
    chunks = list(w.render_chunks([t, G.single(1)], chunk=4096))
    whole = w.render([t, G.single(1)])
    assert b"".join(chunks) == whole and len(chunks) >= 10
    # a chunk is cut after at most one step of lines past the size
    assert max(len(c) for c in chunks) < 4096 + metrics._TABLE_LINES * 80
    assert len(list(parse_text(whole.decode()))) == 4
    om = list(w.render_chunks([t], openmetrics=True, chunk=4096))
    assert om[-1].endswith(b"# EOF\n") and b"".join(om).count(b"# EOF") == 1


def test_empty_inputs_still_render():
    assert ExpositionWriter().render([]) == b""
    assert ExpositionWriter().render([], openmetrics=True) == b"# EOF\n"
    out = ExpositionWriter().render([Table((B1, B2))]).decode()
    assert "# TYPE t_backend_weight gauge" in out and "{" not in out


def test_duplicate_series_written_once_and_families_merged():
    a = G.family()
    a.add((), 1)
    b = G.family()
    b.add((), 2)
    out = ExpositionWriter().render([a, b]).decode()
    assert out == "# HELP t_temp Temperature.\n# TYPE t_temp gauge\nt_temp 1\n"


def test_wrong_label_count_is_an_error():
    f = C.family()
    f.add(("only-one",), 1)
    with pytest.raises(ValueError):
        ExpositionWriter().render([f])


@pytest.mark.parametrize("kwargs", [
    dict(name="bad name", type=GAUGE, help="h"),
    dict(name="x_count", type=COUNTER, help="counter without _total"),
    dict(name="x", type="summary", help="h"),
    dict(name="x", type=GAUGE, help="h", labels=("__reserved",)),
    dict(name="x", type=GAUGE, help="h", labels=("a", "a")),
])
def test_metric_spec_validation(kwargs):
    with pytest.raises(ValueError):
        Metric(**kwargs)


def test_format_value():
    assert format_value(3) == "3"
    assert format_value(2.0) == "2"
    assert format_value(0.25) == "0.25"
    assert format_value(math.nan) == "NaN"
    assert format_value(math.inf) == "+Inf" and format_value(-math.inf) == "-Inf"


# --- the table fast path renders exactly what the general (Family) path renders -------------
from hypothesis import given, settings, strategies as st  # noqa: E402

_VALUES = st.one_of(st.integers(-2**70, 2**70), st.booleans(),
                    st.floats(allow_nan=True, allow_infinity=True), st.just(0))
_ROWS = st.lists(st.tuples(st.sampled_from(["a", "b", 'q"x', "back\\slash", "nl\nx", "ü"]),
                           st.integers(0, 3), _VALUES, st.sampled_from(["nat", "dr", "tun"])),
                 max_size=40)


@settings(max_examples=150, deadline=None)
@given(rows=_ROWS, ints_only=st.booleans())
def test_table_renders_as_families_do(rows, ints_only):
    if ints_only:
        rows = [(a, b, v if type(v) is int else 7, f) for a, b, v, f in rows]
    t = Table((B1, B2, BI))
    fams = [B1.family(), B2.family(), BI.family()]
    for a, b, v, fwd in rows:
        t.add((a, str(b)), v, b, (v, fwd))
        fams[0].add((a, str(b)), v)
        fams[1].add((a, str(b)), b)
        fams[2].add((a, str(b), fwd), v)
    w = ExpositionWriter()
    # the general path keeps the first of duplicate series; so does the table path (rows
    # with the same label set are one series, whatever their extra label says)
    seen, firsts = set(), []
    for a, b, v, fwd in rows:
        if (a, b) not in seen:
            seen.add((a, b))
            firsts.append((a, b, v, fwd))
    ref = [B1.family(), B2.family(), BI.family()]
    for a, b, v, fwd in firsts:
        ref[0].add((a, str(b)), v)
        ref[1].add((a, str(b)), b)
        ref[2].add((a, str(b), fwd), v)
    assert w.render([t]) == w.render(ref)
    assert w.render([t], openmetrics=True) == w.render(ref, openmetrics=True)


def test_table_int_column_uses_exact_integers():
    t = Table((B1,))
    t.add(("a", "1"), 2**64 - 1)
    t.add(("b", "1"), True)      # bool is not rendered as %d of an int subclass
    t.add(("c", "1"), -3)
    out = ExpositionWriter().render([t]).decode()
    assert 't_backend_bytes_total{svc="a",backend="1"} 18446744073709551615\n' in out
    assert 't_backend_bytes_total{svc="b",backend="1"} 1\n' in out
    assert 't_backend_bytes_total{svc="c",backend="1"} -3\n' in out


# --- a second, independent writer as oracle: prometheus_client's own renderer ---------------
_LABEL_VALUES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
_HELP = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@st.composite
def _specs_and_samples(draw):
    """Up to 4 metrics (distinct names, random type/help/labels), each with distinct series."""
    out = []
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from([COUNTER, GAUGE]))
        labels = tuple(draw(st.lists(st.sampled_from(["a", "b", "le_x", "code", "_u"]),
                                     unique=True, max_size=3)))
        name = f"o{i}_m" + ("_total" if kind == COUNTER else "")
        values = (st.integers(0, 2**70) | st.floats(0, allow_infinity=True, allow_nan=False)
                  if kind == COUNTER else
                  st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True))
        rows = draw(st.lists(st.tuples(st.tuples(*[_LABEL_VALUES] * len(labels)), values),
                             max_size=6, unique_by=lambda r: r[0]))
        out.append((Metric(name, kind, draw(_HELP), labels), rows))
    return out


def _observed(fams):
    """Parsed families -> comparable {name: (type, help, {(sample, labels): value})}."""
    out = {}
    for f in fams:
        samples = {}
        for s in f.samples:
            # as floats: ours writes integers above 2**53 exactly, the client rounds them
            v = "NaN" if math.isnan(s.value) else float(s.value)
            samples[(s.name, tuple(sorted(s.labels.items())))] = v
        out[f.name] = (f.type, f.documentation, samples)
    return out


@settings(max_examples=100, deadline=None)
@given(_specs_and_samples())
def test_writer_agrees_with_prometheus_client_rendering(specs):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.openmetrics.exposition import generate_latest as generate_om

    ours, theirs = [], []
    for spec, rows in specs:
        fam = spec.family()
        if spec.type == COUNTER:
            cf = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
        else:
            cf = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        for label_values, value in rows:
            fam.add(label_values, value)
            cf.add_metric(list(label_values), float(value))
        ours.append(fam)
        theirs.append(cf)

    class Fixed:
        def collect(self):
            return theirs

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    w = ExpositionWriter()
    # text format: every family with samples (the client also writes HELP/TYPE of empty ones)
    got = _observed(parse_text(w.render(ours).decode()))
    want = {k: v for k, v in _observed(parse_text(generate_latest(registry).decode())).items()
            if v[2] or k in got}
    assert got == want
    got_om = _observed(parse_om(w.render(ours, openmetrics=True).decode()))
    want_om = {k: v for k, v in _observed(
        parse_om(generate_om(registry).decode())).items() if v[2] or k in got_om}
    # the client adds _created samples to counters in OpenMetrics; ours has none
    want_om = {k: (t, h, {s: v for s, v in smp.items() if not s[0].endswith("_created")})
               for k, (t, h, smp) in want_om.items()}
    assert got_om == want_om


# --- Table.of / add_row: declared (metric, getter) columns ----------------------------------
class _S:
    def __init__(self, a, b, kind, n=None):
        self.a, self.kind, self.n = a, kind, n
        self.stats = type("St", (), {"b": b})()


_COLUMNS = ((B1, "a"), (B2, "stats.b"), (Metric("t_backend_n", GAUGE, "N.", ("svc", "backend")),
                                          lambda o: o.n),
            (BI, metrics.Info("kind", labels=lambda k: ({1: "nat", 2: "dr"}.get(k, str(k)),))))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**65), st.integers(-5, 5), st.sampled_from([1, 2, 9]),
                          st.one_of(st.none(), st.integers(0, 9))), max_size=30))
def test_table_of_add_row_equals_families(rows):
    t = metrics.Table.of(_COLUMNS)
    t2 = metrics.Table.of(_COLUMNS)
    fams = [spec.family() for spec, _ in _COLUMNS]
    objs, sets = [], []
    for i, (a, b, kind, n) in enumerate(rows):
        obj, lv = _S(a, b, kind, n), ("s", str(i))
        t.add_row(t.labelset(lv), obj)
        objs.append(obj)
        sets.append(t2.labelset(lv))
        fams[0].add(lv, a)
        fams[1].add(lv, b)
        if n is not None:       # None is no sample
            fams[2].add(lv, n)
        fams[3].add(lv + ({1: "nat", 2: "dr"}.get(kind, str(kind)),), 1)
    t2.add_rows(sets, objs)
    w = ExpositionWriter()
    # an all-None column is no metric at all (a Family without samples has HELP/TYPE, and
    # so has a table without rows)
    ref = [f for f in fams if f.samples] if rows else fams
    assert w.render([t]) == w.render(ref) == w.render([t2])
    assert w.render([t], openmetrics=True) == w.render(ref, openmetrics=True)
    entries = {id(e) for e in t.columns[3]}
    assert len(entries) <= 3  # one shared (1, label) entry per distinct kind


def test_table_of_refuses_bad_declarations():
    with pytest.raises(ValueError):
        metrics.Table.of(((BI, "a"),), ("svc", "backend"))  # extra label without an Info
    with pytest.raises(ValueError):
        metrics.Table.of(((B1, metrics.Info("a")),))      # an Info without the extra label
    with pytest.raises(ValueError):
        metrics.Table.of(((B1, "a; import os"),))         # not an attribute path
    with pytest.raises(TypeError):
        metrics.Table((B1,)).add_row('svc="a",backend="1"', object())


def test_row_getter_matches_the_table():
    get = metrics.row_getter([g for _, g in _COLUMNS])
    assert get(_S(3, 4, 2, None)) == (3, 4, None, ("dr",))
    assert metrics.row_getter(["a"])(_S(3, 4, 2)) == (3,)
