import math

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.metrics import COUNTER, GAUGE, ExpositionWriter, Metric, format_value

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


def test_cache_renders_identically_and_forgets_dead_series():
    w = ExpositionWriter()
    first = w.render(families())
    assert w.render(families()) == first
    c = C.family()
    c.add(("/b", "200"), 1)
    third = w.render([c]).decode()
    assert '/a' not in third and 'path="/b"' in third
    assert list(w._cache) == ["t_requests_total"] and len(w._cache["t_requests_total"]) == 1


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
