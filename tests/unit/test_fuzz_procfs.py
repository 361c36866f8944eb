"""Hypothesis fuzzing of every parser in exporter/sources/procfs.py.

On truncated, oversized, non-UTF-8, mutated and random input each parser returns its typed
result or raises ParseError (sysctl_path: ValueError, its documented error) - never another
exception.  No hypothesis deadline: this runs on a loaded shared machine (speed lives in
benchmarks/)."""
import os
import string

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exporter.sources import ParseError, procfs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures")


def _read(*parts):
    with open(os.path.join(FIX, *parts), "rb") as fh:
        return fh.read().decode("utf-8", "replace")


ODD = os.path.join(FIX, "proc", "odd")


SEEDS = {
    "stat": [_read("root", "proc", "stat"), _read("proc", "stat_2.6.9"),
             _read("proc", "stat_hotplug")],
    "softnet": [_read("root", "proc", "net", "softnet_stat")]
    + [_read("proc", n) for n in sorted(os.listdir(os.path.join(FIX, "proc")))
       if n.startswith("softnet_stat")]
    + [_read("proc", "odd", n) for n in sorted(os.listdir(ODD)) if n.startswith("softnet_stat")],
    "cpulist": ["0-3", "0", "0-1,4-7,12", "", "0-3\n", "2,4-5", _read("proc", "odd",
                                                                     "cpu_online_garbled")],
    "sysctl": ["262144\n", "32768\t60999\n", "4096\t131072\t6291456\n", "-1\n", "0\n",
               _read("proc", "odd", "sysctl_seccomp_actions_avail")],
}

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TOKENS = st.sampled_from(["cpu", "cpu0", "cpu7", "cpu12", "cpux", "cpu-1", "0", "1", "12", "-1",
                          "00000000", "ffffffff", "0023f1a2", "1" * 40, "9" * 5000, "f" * 5000,
                          "0x10", "1_0", "\u0663", "\u00b2", "\u2003", "nan", "1e3", "-", ",",
                          "0-3", "3-0", "0-", "-3", "0-1048576", "intr", "ctxt", "\x00", "\ufffd"])
SEPS = st.sampled_from([" ", "  ", "\t", "\n", "\r\n", "\v", "\x0c", "\u00a0", "", ","])


@st.composite
def token_soup(draw):
    """Text made of the tokens these files are made of, in random order."""
    parts = draw(st.lists(st.tuples(TOKENS, SEPS), max_size=60))
    return "".join(t + s for t, s in parts)


@st.composite
def mutated(draw, kind) -> str:
    """A real fixture, then truncated, cut, spliced with junk, or repeated to oversize."""
    seed = draw(st.sampled_from(SEEDS[kind]))
    how = draw(st.sampled_from(["truncate", "splice", "delete", "repeat", "swapcase",
                                     "bytes"]))
    if not seed:
        return seed
    i = draw(st.integers(0, len(seed)))
    if how == "truncate":
        return seed[:i]
    if how == "splice":
        return seed[:i] + draw(st.text(max_size=20)) + seed[i:]
    if how == "delete":
        j = draw(st.integers(i, len(seed)))
        return seed[:i] + seed[j:]
    if how == "repeat":  # oversized: up to a few MB
        return seed * draw(st.integers(1, 4000 * 1000 // len(seed) + 1))
    if how == "swapcase":
        return seed.swapcase()
    raw = bytearray(seed.encode())
    for _ in range(draw(st.integers(1, 8))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return raw.decode("utf-8", "replace")


def inputs(kind):
    return st.one_of(
        st.text(max_size=2000),
        st.binary(max_size=2000).map(lambda b: b.decode("utf-8", "replace")),
        token_soup(),
        mutated(kind),
    )


def call(parser, text):
    try:
        return parser(text)
    except ParseError as exc:
        assert str(exc), "a ParseError must say what is wrong"
        return None


@FUZZ
@given(inputs("stat"))
@example("cpu0 1 2 3 4 5 6 7 " + "9" * 5000)
@example("cpu\u00b2 1 2 3 4 5 6 7 8\n")
def test_parse_stat_steal(text):
    out = call(procfs.parse_stat_steal, text)
    if out is not None:
        assert isinstance(out, list)
        for s in out:
            assert isinstance(s, procfs.CpuSteal)
            assert isinstance(s.cpu, str) and s.cpu.isascii() and s.cpu.isdigit()
            assert isinstance(s.steal_ticks, int) and s.steal_ticks >= 0


@FUZZ
@given(inputs("stat"))
def test_parse_stat_cpus(text):
    out = call(procfs.parse_stat_cpus, text)
    if out is not None:
        assert all(isinstance(c, str) and c.isascii() and c.isdigit() for c in out)
        steals = call(procfs.parse_stat_steal, text)
        if steals is not None:  # every CPU with a steal value is a CPU of the file
            assert {s.cpu for s in steals} <= set(out)


@FUZZ
@given(inputs("softnet"))
@example("f" * 100000)
@example("0 0\n" * 100000)
def test_parse_softnet(text):
    skipped: list[str] = []
    out = call(lambda t: procfs.parse_softnet(t, skipped), text)
    assert all(isinstance(r, str) and r for r in skipped)
    if out is not None:
        assert isinstance(out, list) and out
        for s in out:
            assert isinstance(s, procfs.SoftnetStat)
            for v in (s.processed, s.dropped, s.time_squeeze):
                assert isinstance(v, int) and v >= 0
            for v in (s.received_rps, s.flow_limit_count, s.backlog_len):
                assert v is None or (isinstance(v, int) and v >= 0)


@FUZZ
@given(inputs("cpulist"))
@example(",".join(["0-999999"] * 2000))  # a billion CPUs: must be refused, not allocated
@example("0-4294967295")
def test_parse_cpu_list(text):
    out = call(procfs.parse_cpu_list, text)
    if out is not None:
        assert isinstance(out, list)
        assert all(isinstance(c, int) and c >= 0 for c in out)
        assert len(out) <= procfs.MAX_CPUS


@FUZZ
@given(inputs("sysctl"))
@example("9" * 5000)
def test_parse_sysctl_value(text):
    out = call(procfs.parse_sysctl_value, text)
    if out is not None:
        assert isinstance(out, list) and out
        assert all(isinstance(v, int) for v in out)


@FUZZ
@given(st.text(alphabet=string.ascii_letters + string.digits + "._-/\x00 ", max_size=80))
@example("net..core")
@example("../../etc/passwd")
def test_sysctl_path(name):
    try:
        path = procfs.sysctl_path("/proc", name)
    except ValueError:
        return
    rel = os.path.relpath(path, "/proc/sys")
    assert not rel.startswith(".."), path
    assert os.path.normpath(path) == path or "//" not in path


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=5000))
@example(b"\xff\xfe\x00cpu0 1 2 3 4 5 6 7 8\n")
@example(b"\xc3")  # a UTF-8 sequence cut in half, as a truncated read leaves it
def test_read_text_then_every_parser(tmp_path, raw):
    """Non-UTF-8 bytes through the real reader (a file on disk), then into every parser."""
    path = tmp_path / "f"
    path.write_bytes(raw)
    text = procfs.read_text(str(path))
    assert isinstance(text, str)
    for parser in PARSERS:
        call(parser, text)


# Every text parser of sources/procfs.py (a new one must be added here: the test below checks).
PARSERS = (procfs.parse_stat_steal, procfs.parse_stat_cpus, procfs.parse_softnet,
           procfs.parse_cpu_list, procfs.parse_sysctl_value)


def test_parsers_list_is_complete():
    public = {n for n in dir(procfs) if n.startswith("parse_") and callable(getattr(procfs, n))}
    assert public == {p.__name__ for p in PARSERS}


def _fixture_files():
    out = []
    for top in ("proc", "sys", "root"):
        for dirpath, _dirs, files in os.walk(os.path.join(FIX, top)):
            out.extend(os.path.join(dirpath, f) for f in sorted(files))
    return sorted(out)


def test_every_parser_on_every_file_of_the_fixtures_tree():
    """Each parser given each text file of the fixture trees (other kernels' files, odd ones,
    other parsers' inputs): its typed result or a ParseError that says something, nothing
    else; and the files meant for a parser parse."""
    files = _fixture_files()
    assert len(files) > 30, files
    results = {}
    for path in files:
        text = procfs.read_text(path)
        for parser in PARSERS:
            try:
                out = parser(text)
            except ParseError as exc:
                assert str(exc), (parser.__name__, path)
                out = None
            assert out is None or isinstance(out, list), (parser.__name__, path, out)
            results[(parser.__name__, os.path.relpath(path, FIX))] = out
    assert results[("parse_softnet", "proc/odd/softnet_stat_short_row")] is not None
    assert results[("parse_softnet", "proc/odd/softnet_stat_only_short")] is None
    assert results[("parse_cpu_list", "proc/odd/cpu_online_garbled")] is None
    assert results[("parse_sysctl_value", "proc/odd/sysctl_seccomp_actions_avail")] is None
    for rel in ("root/proc/stat", "proc/stat_hotplug", "proc/stat_2.6.9"):
        assert results[("parse_stat_cpus", rel)], rel
    assert results[("parse_cpu_list", "root/sys/devices/system/cpu/online")] == [0, 1, 2, 3]


# Inputs the fuzzer found or that int() alone would have let through (values the kernel never
# prints): each is refused, not turned into a number.
REFUSED = [
    (procfs.parse_softnet, "0 0 -1" + " 0" * 6 + "\n"),  # a negative counter (hypothesis)
    (procfs.parse_softnet, "0x10 0 0" + " 0" * 6 + "\n"),  # int("0x10", 16) == 16
    (procfs.parse_softnet, "1_0 0 0" + " 0" * 6 + "\n"),
    (procfs.parse_softnet, "+1 0 0" + " 0" * 6 + "\n"),
    (procfs.parse_softnet, "1" * 17 + " 0 0" + " 0" * 6 + "\n"),  # wider than 64 bits
    (procfs.parse_softnet, "0 0 f00007e9 0\n"),  # 4 columns: no kernel writes fewer than 9
    (procfs.parse_stat_cpus, "cpu\u00b2 1 2 3 4 5 6 7 8\n"),
    (procfs.parse_stat_steal, "cpu0 1 2 3 4 5 6 7 \u0663\n"),  # an Arabic-Indic three
    (procfs.parse_stat_steal, "cpu\u00b2 1 2 3 4 5 6 7 8\n"),
    (procfs.parse_stat_steal, "cpu0 1 2 3 4 5 6 7 " + "9" * 5000 + "\n"),
    (procfs.parse_sysctl_value, "1_000\n"),
    (procfs.parse_sysctl_value, "9" * 5000),
    (procfs.parse_cpu_list, "+1"),
    (procfs.parse_cpu_list, "0- 3"),
    (procfs.parse_cpu_list, "70000"),
]


def test_refused_inputs():
    for parser, text in REFUSED:
        try:
            out = parser(text)
        except ParseError:
            continue
        raise AssertionError(f"{parser.__name__}({text[:40]!r}) returned {out!r}")
