"""Pod view, offline: the /proc/net/dev parser and the netns collector's metric table."""
from __future__ import annotations

import pytest

from exporter.collectors import netns as pv
from exporter.collectors import netstat
from exporter.sources.procnetdev import parse_net_dev

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123   4    0    0    0     0          0         0      123   4    0    0    0     0       0          0
  eth0: 9000  90    1    2    0     0          0         0     8000  80    3    4    0     0       0          0
eth1:1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16
  bad0: 1 2 x
"""


def test_net_dev_counters_and_odd_lines():
    dev = parse_net_dev(NET_DEV)
    assert dev.interfaces["eth0"].rx_errors == 1
    assert dev.interfaces["eth0"].rx_drops == 2
    assert dev.interfaces["eth0"].tx_errors == 3
    assert dev.interfaces["eth0"].tx_drops == 4
    # no space after the colon (long names on old kernels)
    assert dev.interfaces["eth1"].rx_errors == 3 and dev.interfaces["eth1"].tx_drops == 12
    assert "bad0" not in dev.interfaces and len(dev.problems) == 1


def test_pod_metric_names_and_labels():
    m = pv.POD_COUNTERS["nodenet_udp_receive_buffer_errors_total"]
    assert m.name == "nodenet_netns_udp_receive_buffer_errors_total"
    assert m.labels == ("netns", "netns_inode", "pod_uid", "family")
    assert m.type == "counter"


def test_default_budget_is_16_series_per_namespace_with_one_interface():
    rows = [r for r in netstat.COUNTERS if r[0].name in pv.DEFAULT_COUNTERS]
    sockstat = 2 + 1        # tcp in use per family, TIME_WAIT
    interface = 4           # one eth0: rx/tx drops/errors
    assert len(rows) + sockstat + interface == 16


def test_counters_regex_widens_the_allowlist():
    from tests.helpers.podview import Scraper
    narrow = Scraper("netns", "--collector.netns").collector
    wide = Scraper("netns", "--collector.netns",
                   "--collector.netns.counters=nodenet_udp_no_port_total").collector
    assert len(wide.rows) == len(narrow.rows) + 2   # ipv4 and ipv6


def _fixture_net_dirs():
    import glob
    import os
    fix = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
    dirs = sorted({os.path.dirname(p) for p in glob.glob(f"{fix}/**/net/snmp", recursive=True)})
    return [*dirs, "/proc/self/net"]


def test_fast_reader_equals_the_netstat_collectors_generic_path():
    """The pod view's bytes fast path gives what read_mibs + counter_values give, for every
    netstat row, on every fixture kernel (3.10 ... 6.x, odd ones) and on this kernel."""
    dirs = _fixture_net_dirs()
    assert len(dirs) >= 3, dirs
    rows = netstat.COUNTERS
    fast = pv.FastReader(rows)
    for d in dirs:
        mibs, _ = netstat.read_mibs(d, netstat.wanted(rows))
        want = sorted((m.name, lv, v) for m, lv, v in netstat.counter_values(mibs, rows))
        got = sorted((m.name, lv, v) for m, lv, v in fast.counters(pv.dir_reader(d)))
        if d == "/proc/self/net":   # live counters move between the two reads
            assert [w[:2] for w in want] == [g[:2] for g in got]
        else:
            assert got == want, d


def test_pread_all_reads_past_one_buffer_and_from_the_start_each_time(tmp_path):
    """A file longer than one read buffer comes back whole, and every call starts at 0 (what
    makes a kept seq_file fd serve every scrape)."""
    import os
    data = bytes(range(256)) * 1000            # 256,000 bytes: several 64 KiB reads
    path = tmp_path / "big"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pv._pread_all(fd) == data
        assert pv._pread_all(fd) == data
    finally:
        os.close(fd)
    small = tmp_path / "small"
    small.write_bytes(b"Tcp: 1 2\nTcp: 3 4\n")
    assert pv.dir_reader(str(tmp_path))("small") == b"Tcp: 1 2\nTcp: 3 4\n"
    assert pv.dir_reader(str(tmp_path))("absent") is None


def test_keep_open_flag_takes_0_and_durations_and_refuses_negatives():
    from tests.helpers.podview import Scraper
    from exporter.config import parse_duration_or_zero
    assert parse_duration_or_zero("0") == 0.0
    assert parse_duration_or_zero("2m") == 120.0
    assert parse_duration_or_zero("500ms") == 0.5
    for bad in ("-1s", "soon", ""):
        with pytest.raises(ValueError):
            parse_duration_or_zero(bad)
    assert Scraper("netns", "--collector.netns").collector.keep_open == 120.0
    assert Scraper("netns", "--collector.netns", "--collector.netns.keep-open=0"
                   ).collector.keep_open == 0.0
