"""The conntrack collector end to end (settings -> gatherer -> exposition) on fixtures.

Netlink is replayed from bytes the kernel really sent (tests/fixtures/netlink); /proc is a
fixture tree.  The same paths against the live kernel are in tests/integration.
"""
import errno
import io
import json
import os

from prometheus_client.parser import text_string_to_metric_families

from exporter import log as logmod
from exporter.cli import PROG, all_options, build
from exporter.collectors.base import REGISTRY
from exporter.config import resolve
from exporter.sources import conntrack as ct
from exporter.sources import netlink as nl

from tests.helpers.conntrack_fixtures import FIXTURES, ReplaySocket, expected, hex_buffers, proc_expected

FALLBACK = os.path.join(FIXTURES, "proc", "conntrack", "procfs-fallback")
NONE = os.path.join(FIXTURES, "proc", "conntrack", "procfs-none")
SYSFS = os.path.join(FIXTURES, "sys", "conntrack")

GOOD = {ct.MSG_CT_STATS: "conntrack_stats.hex", ct.MSG_CT_STATS_CPU: "conntrack_stats_cpu.hex",
        ct.MSG_EXP_GET: "conntrack_exp_dump.hex", ct.MSG_CT_GET: "conntrack_dump.hex"}
EPERM = {t: "conntrack_eperm.hex" for t in GOOD}


def make(argv, replies=None, factory=None, procfs=FALLBACK):
    stream = io.StringIO()
    settings = resolve(all_options(), ["--collector.disable-defaults", "--collector.conntrack",
                                       f"--path.procfs={procfs}", f"--path.sysfs={SYSFS}", *argv],
                       PROG, "test", set(REGISTRY))
    gatherer = build(settings, logmod.setup("info", "json", stream))
    coll = gatherer.collectors["conntrack"]
    if factory is None:
        table = {t: hex_buffers(name) for t, name in replies.items()}
        factory = lambda: ct.CtNetlink(transport=ReplaySocket(table))  # noqa: E731
    coll.netlink_factory = factory
    return gatherer, stream


def scrape(gatherer) -> dict:
    text = gatherer.scrape().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples):
    return {n for n, _ in samples}


def logs(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_netlink_source_values_match_the_kernel_witnesses():
    g, _ = make([], GOOD)
    s = scrape(g)
    want = expected()
    assert value(s, "nodenet_scrape_collector_success", collector="conntrack") == 1
    assert value(s, "nodenet_conntrack_available") == 1
    assert value(s, "nodenet_conntrack_source_info", source="netlink") == 1
    assert value(s, "nodenet_conntrack_entries") == want["stats"]["entries"]
    assert value(s, "nodenet_conntrack_entries_limit") == want["stats"]["max_entries"]
    assert value(s, "nodenet_conntrack_expect_entries") == want["expect_count"]
    assert value(s, "nodenet_conntrack_buckets") == 65536  # procfs-fallback tree's file
    names_by_field = {"found": "found", "invalid": "invalid", "insert": "inserts",
                      "insert_failed": "insert_failed", "drop": "drops",
                      "early_drop": "early_drops", "error": "errors",
                      "search_restart": "search_restarts", "clash_resolve": "clash_resolves",
                      "chaintoolong": "chain_too_long"}
    for fld, metric in names_by_field.items():
        total = sum(row[fld] for row in want["stats_cpu"])
        assert value(s, f"nodenet_conntrack_{metric}_total") == total, fld
    assert not any(n.startswith("nodenet_conntrack_entries_by_state") for n in names(s))
    assert not any(n.startswith("nodenet_conntrack_netns") for n in names(s))


def test_per_cpu_flag_adds_cpu_label():
    g, _ = make(["--collector.conntrack.per-cpu"], GOOD)
    s = scrape(g)
    for row in expected()["stats_cpu"]:
        cpu = str(row["cpu"])
        assert value(s, "nodenet_conntrack_early_drops_total", cpu=cpu) == row["early_drop"]
        assert value(s, "nodenet_conntrack_invalid_total", cpu=cpu) == row["invalid"]
    assert ("nodenet_conntrack_early_drops_total", ()) not in s


def test_states_from_replayed_dump():
    g, _ = make(["--collector.conntrack.states"], GOOD)
    s = scrape(g)
    for key, n in expected()["dump"]["by_state"].items():
        proto, state = key.split("/")
        assert value(s, "nodenet_conntrack_entries_by_state", protocol=proto, state=state) == n
    assert value(s, "nodenet_conntrack_entries_by_state_partial") == 0


def test_states_budget_hit_says_partial():
    g, _ = make(["--collector.conntrack.states", "--collector.conntrack.states.max-entries=5"],
                GOOD)
    s = scrape(g)
    assert value(s, "nodenet_conntrack_entries_by_state_partial") == 1
    total = sum(v for (n, _l), v in s.items() if n == "nodenet_conntrack_entries_by_state")
    assert total == 5


def test_eperm_falls_back_to_procfs_and_says_so_once():
    g, stream = make(["--collector.conntrack.states"], EPERM)
    s = scrape(g)
    scrape(g)
    assert value(s, "nodenet_scrape_collector_success", collector="conntrack") == 1
    assert value(s, "nodenet_conntrack_source_info", source="procfs") == 1
    assert value(s, "nodenet_conntrack_entries") == 1234
    assert value(s, "nodenet_conntrack_entries_limit") == 262144
    assert value(s, "nodenet_conntrack_expect_entries") == 2
    # layout-17-searched summed over its 4 CPU rows (see proc/conntrack/expected.json)
    assert value(s, "nodenet_conntrack_found_total") == 1 + 16 + 256 + 4294967295
    assert value(s, "nodenet_conntrack_search_restarts_total") == 8 + 128 + 2048
    assert "nodenet_conntrack_clash_resolves_total" not in names(s)  # old layout lacks it
    fallback_lines = [e for e in logs(stream) if e.get("source") == "procfs"]
    assert len(fallback_lines) == 1, fallback_lines
    msg = fallback_lines[0]["event"]
    assert "CAP_NET_ADMIN" in msg and "clash_resolve/chaintoolong" in msg
    assert "--collector.conntrack.states" in msg


def test_stat_file_alone_and_hashsize_from_sysfs():
    # a procfs with only net/stat/nf_conntrack (the kernel-6.18 capture): entries come from
    # its entries column, buckets from /sys/module/nf_conntrack/parameters/hashsize
    g, _ = make([], EPERM, procfs=os.path.join(FIXTURES, "proc", "conntrack", "procfs-stat-only"))
    s = scrape(g)
    assert value(s, "nodenet_conntrack_source_info", source="procfs") == 1
    want = proc_expected("kernel-6.18")  # conntrack -S at capture time
    assert value(s, "nodenet_conntrack_entries") == want["entries"]
    assert value(s, "nodenet_conntrack_buckets") == 16384
    assert value(s, "nodenet_conntrack_early_drops_total") == sum(
        c["early_drop"] for c in want["cpus"])
    assert value(s, "nodenet_conntrack_clash_resolves_total") == 0  # current layout has it
    assert "nodenet_conntrack_entries_limit" not in names(s)


def test_no_conntrack_at_all_is_available_0_success_1():
    def no_nfnetlink():
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")
    g, stream = make([], factory=no_nfnetlink, procfs=NONE)
    s = scrape(g)
    assert value(s, "nodenet_scrape_collector_success", collector="conntrack") == 1
    assert value(s, "nodenet_conntrack_available") == 0
    assert {n for n in names(s) if n.startswith("nodenet_conntrack")} == {
        "nodenet_conntrack_available"}
    scrape(g)
    assert sum(1 for e in logs(stream) if "not available" in e["event"]) == 1


def test_other_netlink_errors_fail_the_collector_only():
    def broken():
        raise OSError(errno.ENOBUFS, "No buffer space available")
    g, _ = make([], factory=broken)
    s = scrape(g)
    assert value(s, "nodenet_scrape_collector_success", collector="conntrack") == 0


def test_failed_state_dump_costs_only_the_breakdown():
    replies = dict(GOOD)
    replies[ct.MSG_CT_GET] = "conntrack_eperm.hex"  # the kernel refusing the dump
    g, stream = make(["--collector.conntrack.states"], replies)
    s = scrape(g)
    scrape(g)
    assert value(s, "nodenet_scrape_collector_success", collector="conntrack") == 1
    assert value(s, "nodenet_conntrack_entries") == expected()["stats"]["entries"]
    assert value(s, "nodenet_conntrack_entries_by_state_partial") == 1
    assert "nodenet_conntrack_entries_by_state" not in names(s)
    warnings = [e for e in logs(stream) if "state dump failed" in e["event"]]
    assert len(warnings) == 1


def test_states_time_budget_hit_says_partial():
    import time

    table = {t: hex_buffers(name) for t, name in GOOD.items()}
    # the dump fixture as many small buffers, each taking longer than the whole budget
    table[ct.MSG_CT_GET] = [m for b in table[ct.MSG_CT_GET] for m in _split_messages(b)]

    class SlowSocket(ReplaySocket):
        def recv(self):
            if self.sent_types[-1] == ct.MSG_CT_GET:
                time.sleep(0.01)
            return super().recv()

    g, _ = make(["--collector.conntrack.states", "--collector.conntrack.states.timeout=1ms"],
                factory=lambda: ct.CtNetlink(transport=SlowSocket(table)))
    s = scrape(g)
    assert value(s, "nodenet_conntrack_entries_by_state_partial") == 1
    total = sum(v for (n, _l), v in s.items() if n == "nodenet_conntrack_entries_by_state")
    assert 0 < total < expected()["dump"]["total"]


def _split_messages(buf: bytes) -> list[bytes]:
    return [buf[start - 16:end] for _t, _f, _s, start, end in nl.iter_messages(buf)]


def test_module_not_loaded_never_touches_netlink():
    calls = []

    def factory():
        calls.append(1)
        raise AssertionError("ctnetlink must not be asked (it would autoload nf_conntrack)")
    stream = io.StringIO()
    settings = resolve(all_options(), ["--collector.disable-defaults", "--collector.conntrack",
                                       f"--path.procfs={NONE}", f"--path.sysfs={NONE}"],
                       PROG, "test", set(REGISTRY))
    g = build(settings, logmod.setup("info", "json", stream))
    g.collectors["conntrack"].netlink_factory = factory
    s = scrape(g)
    assert calls == []
    assert value(s, "nodenet_scrape_collector_success", collector="conntrack") == 1
    assert value(s, "nodenet_conntrack_available") == 0
