import os

import pytest

from exporter.sources import ParseError, procfs

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")


def fixture(*parts):
    with open(os.path.join(FIX, *parts)) as fh:
        return fh.read()


def test_stat_steal_current_format():
    steals = procfs.parse_stat_steal(fixture("root", "proc", "stat"))
    assert [(s.cpu, s.steal_ticks) for s in steals] == [
        ("0", 13281), ("1", 13402), ("2", 13217), ("3", 13225)]


def test_stat_without_steal_column_2_6_9():
    assert procfs.parse_stat_steal(fixture("proc", "stat_2.6.9")) == []


def test_stat_with_offline_cpu_keeps_real_cpu_numbers():
    steals = procfs.parse_stat_steal(fixture("proc", "stat_hotplug"))
    assert [(s.cpu, s.steal_ticks) for s in steals] == [("0", 10), ("2", 20)]


@pytest.mark.parametrize("text", ["cpuX 1 2 3 4 5 6 7 8\n", "cpu0 1 2 3 4 5 6 7 x\n",
                                  "cpu0 1 2 3 4 5 6 7 -5\n"])
def test_stat_garbage_raises_parse_error(text):
    with pytest.raises(ParseError):
        procfs.parse_stat_steal(text)


def test_cpu_list():
    assert procfs.parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert procfs.parse_cpu_list("") == []
    with pytest.raises(ParseError):
        procfs.parse_cpu_list("3-1")
    with pytest.raises(ParseError):
        procfs.parse_cpu_list("a")


def test_softnet_6x_15_columns_uses_cpu_index():
    stats = procfs.parse_softnet(fixture("proc", "softnet_stat_6.8"))
    assert [s.cpu for s in stats] == ["0", "1", "2", "3"]
    s1 = stats[1]
    assert (s1.processed, s1.dropped, s1.time_squeeze, s1.received_rps) == (0x1e8a44, 3, 0x20, 7)
    assert stats[3].dropped == 500 and stats[3].time_squeeze == 1000
    assert stats[3].flow_limit_count == 4
    assert stats[2].backlog_len == 2


def test_softnet_5_10_index_column_tells_offline_cpus():
    stats = procfs.parse_softnet(fixture("proc", "softnet_stat_5.10_offline_cpu1"))
    assert [s.cpu for s in stats] == ["0", "2"]
    assert stats[0].backlog_len == 4


def test_softnet_4_19_no_index_column_uses_line_number():
    stats = procfs.parse_softnet(fixture("proc", "softnet_stat_4.19"))
    assert [(s.cpu, s.dropped, s.flow_limit_count, s.backlog_len) for s in stats] == [
        ("0", 1, 9, None), ("1", 0, 0, None)]


def test_softnet_2_6_32_ten_columns():
    stats = procfs.parse_softnet(fixture("proc", "softnet_stat_2.6.32"))
    assert stats[0].received_rps == 3 and stats[0].flow_limit_count is None
    assert stats[1].time_squeeze == 5


@pytest.mark.parametrize("text", ["zz 00 00\n", "0001 0002\n", "", "0 0 0 0 0 0 0 0\n"])
def test_softnet_garbage(text):
    with pytest.raises(ParseError):
        procfs.parse_softnet(text)


def test_softnet_short_row_costs_only_that_row():
    skipped: list[str] = []
    stats = procfs.parse_softnet(fixture("proc", "odd", "softnet_stat_short_row"), skipped)
    assert [(s.cpu, s.time_squeeze) for s in stats] == [("0", 1), ("2", 5)]
    assert skipped == ["softnet_stat line 2: 4 columns, need >= 9"]
    skipped.clear()
    stats = procfs.parse_softnet("0 0 0 0 0 0 0 0 0\nzz 0 0 0 0 0 0 0 0\n", skipped)
    assert [s.cpu for s in stats] == ["0"] and skipped == ["softnet_stat line 2: non-hex column"]


def test_stat_cpus_include_the_ones_without_steal():
    assert procfs.parse_stat_cpus(fixture("proc", "stat_2.6.9")) == [
        s.split()[0][3:] for s in fixture("proc", "stat_2.6.9").splitlines()
        if s.startswith("cpu") and not s.startswith("cpu ")]
    assert procfs.parse_stat_steal(fixture("proc", "stat_2.6.9")) == []


def test_sysctl_values():
    assert procfs.parse_sysctl_value("32768\t60999\n") == [32768, 60999]
    assert procfs.parse_sysctl_value("262144\n") == [262144]
    with pytest.raises(ParseError):
        procfs.parse_sysctl_value("\n")
    with pytest.raises(ParseError):
        procfs.parse_sysctl_value("bbr\n")


def test_sysctl_path_rejects_escapes():
    assert procfs.sysctl_path("/p", "net.core.somaxconn") == "/p/sys/net/core/somaxconn"
    for bad in ("", "net/../etc", "net...x"):
        with pytest.raises(ValueError):
            procfs.sysctl_path("/p", bad)
