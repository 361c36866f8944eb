"""Pod view, offline: the /proc/net/dev parser and the netns collector's metric table."""
from __future__ import annotations

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
        got = sorted((m.name, lv, v) for m, lv, v in fast.counters(d))
        if d == "/proc/self/net":   # live counters move between the two reads
            assert [w[:2] for w in want] == [g[:2] for g in got]
        else:
            assert got == want, d
