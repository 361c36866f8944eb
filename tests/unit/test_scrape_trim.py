"""malloc_trim after big scrapes only (issue 8: RSS at 540k samples), never after small ones."""
from exporter import scrape
from exporter.metrics import COUNTER, GAUGE, ExpositionWriter, Metric, Table

A = Metric("t_a_total", COUNTER, "a", ("k",))
B = Metric("t_b", GAUGE, "b", ("k",))
C = Metric("t_c", GAUGE, "c")


def render(families, monkeypatch):
    calls = []
    monkeypatch.setattr(scrape, "_TRIM", calls.append)
    body = b"".join(scrape._rendered(ExpositionWriter(), scrape.Result(families), False))
    return body, calls


def test_size_counts_table_cells_and_family_samples():
    t = Table((A, B))
    for i in range(7):
        t.add((str(i),), i, i)
    assert scrape._size([t, C.single(1)]) == 7 * 2 + 1


def test_big_scrape_trims_once_after_the_last_chunk(monkeypatch):
    t = Table((A, B))
    rows = scrape.TRIM_SAMPLES // 2 + 1
    for i in range(rows):
        t.add((str(i),), i, 2 * i)
    body, calls = render([t, C.single(3)], monkeypatch)
    assert calls == [0]
    assert body.count(b"\n") == 2 * rows + 1 + 3 * 2   # samples + HELP/TYPE lines
    assert b't_b{k="5"} 10\n' in body


def test_small_scrape_does_not_trim(monkeypatch):
    t = Table((A, B))
    t.add(("x",), 1, 2)
    body, calls = render([t], monkeypatch)
    assert calls == []
    assert b't_a_total{k="x"} 1\n' in body


def test_trim_function_found_on_glibc():
    import platform
    if platform.libc_ver()[0] == "glibc":
        assert scrape._TRIM is not None
    else:
        assert scrape._TRIM is None or callable(scrape._TRIM)
