"""The exporter's own process_* / python_* metrics (exporter/selfmetrics.py).

As client_python tests its ProcessCollector: pointed at a checked-in process tree
(tests/fixtures/proc/self, pid 26231) whose values are known; then the real exporter
(flags, gatherer, our writer) with --path.procfs at a fixture tree, which must still describe
this very process from the real /proc."""
import os
import platform
import resource

import pytest

from exporter import cli
from exporter.config import resolve
from exporter.metrics import ExpositionWriter
from exporter.selfmetrics import SELF_METRICS, SelfMetrics
from tests.helpers.exporter_proc import parse_samples, sample

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures")
TREE = os.path.join(FIX, "proc", "self")
TICKS = os.sysconf("SC_CLK_TCK")


def render(families, openmetrics=False):
    return ExpositionWriter().render(families, openmetrics).decode()


def test_fixture_process_tree_values():
    s = parse_samples(render(SelfMetrics(proc=TREE, pid=lambda: 26231).families()))
    assert sample(s, "process_cpu_seconds_total") == pytest.approx((17 + 21) / TICKS)
    assert sample(s, "process_virtual_memory_bytes") == 56274944
    assert sample(s, "process_resident_memory_bytes") == 5832 * resource.getpagesize()
    assert sample(s, "process_start_time_seconds") == pytest.approx(6770 / TICKS + 1418184099)
    assert sample(s, "process_open_fds") == 5
    assert sample(s, "process_max_fds") == 2048  # the soft limit
    major, minor, patch = platform.python_version_tuple()
    assert sample(s, "python_info", implementation=platform.python_implementation(),
                  major=major, minor=minor, patchlevel=patch,
                  version=platform.python_version()) == 1
    for gen in ("0", "1", "2"):
        assert sample(s, "python_gc_collections_total", generation=gen) >= 0


def test_every_declared_family_is_exported_and_only_those():
    text = render(SelfMetrics(proc=TREE, pid=lambda: 26231).families())
    types = {line.split()[2]: line.split()[3] for line in text.splitlines()
             if line.startswith("# TYPE")}
    assert types == {m.name: m.type for m in SELF_METRICS}


def test_openmetrics_rendering_parses():
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    text = render(SelfMetrics(proc=TREE, pid=lambda: 26231).families(), openmetrics=True)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["process_cpu_seconds"].type == "counter"
    assert fams["process_cpu_seconds"].samples[0].name == "process_cpu_seconds_total"


def test_a_missing_process_costs_only_its_families():
    records = []

    class Log:
        def warning(self, event, **kw):
            records.append((event, kw))

    sm = SelfMetrics(Log(), proc=TREE, pid=lambda: 99999, min_interval=0)  # no such pid
    for _ in range(2):
        names = {f.spec.name for f in sm.families()}
        assert "python_info" in names and not any(n.startswith("process_") for n in names)
    assert records == []  # prometheus_client itself leaves an unreadable pid out, quietly


def scrape(argv):
    settings = resolve(cli.all_options(), argv, cli.PROG, "test", set(cli.REGISTRY))

    class Quiet:
        def bind(self, **_kw):
            return self

        def __getattr__(self, _name):
            return lambda *a, **k: None

    gatherer = cli.build(settings, Quiet())
    try:
        return parse_samples(gatherer.scrape().decode())
    finally:
        gatherer.close()


def real_self_stat():
    with open("/proc/self/stat", "rb") as fh:
        parts = fh.read().split(b")")[-1].split()
    with open("/proc/stat") as fh:
        btime = next(int(ln.split()[1]) for ln in fh if ln.startswith("btime "))
    return int(parts[19]) / TICKS + btime


def test_read_from_the_real_proc_whatever_path_procfs_says():
    s = scrape([f"--path.procfs={FIX}/root/proc", f"--path.sysfs={FIX}/root/sys",
                "--collector.disable-defaults"])  # and no collector at all: still there
    assert sample(s, "process_start_time_seconds") == pytest.approx(real_self_stat(), abs=0.02)
    assert sample(s, "process_max_fds") == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert sample(s, "process_resident_memory_bytes") > 1 << 20
    assert sample(s, "process_open_fds") >= 3
    assert sample(s, "python_info", implementation=platform.python_implementation(),
                  major=platform.python_version_tuple()[0],
                  minor=platform.python_version_tuple()[1],
                  patchlevel=platform.python_version_tuple()[2],
                  version=platform.python_version()) == 1


def test_web_disable_exporter_metrics_turns_them_off():
    s = scrape(["--collector.disable-defaults", "--collector.cpu",
                f"--path.procfs={FIX}/root/proc", f"--path.sysfs={FIX}/root/sys",
                "--web.disable-exporter-metrics"])
    assert sample(s, "nodenet_cpus") == 4
    assert not [k for k in s if k[0].startswith(("process_", "python_"))]


def test_computed_at_most_once_per_interval():
    pid = [26231]
    sm = SelfMetrics(proc=TREE, pid=lambda: pid[0], min_interval=3600)
    first = sm.families()
    pid[0] = 99999  # would lose the process_* families if read again
    assert sm.families() is first
    sm.min_interval = 0
    assert not any(f.spec.name.startswith("process_") for f in sm.families())
