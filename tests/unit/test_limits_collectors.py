"""The sockets and netstat collectors on /proc fixture trees: values, scope, absent limits
left out (a pod namespace's /proc/sys), odd input, the NodePort flag."""
from __future__ import annotations

import io
import json
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import log as logmod
from exporter.cli import all_options
from exporter.collectors import load_all
from exporter.collectors.base import REGISTRY, Context
from exporter.config import ConfigError, resolve
from exporter.metrics import ExpositionWriter

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                   "proc", "limits")
load_all()


def scrape(name, kernel, *argv):
    stream = io.StringIO()
    settings = resolve(all_options(), [f"--path.procfs={FIX}/{kernel}",
                                       "--no-collector.sockets.per-socket", *argv], "t", "0",
                       set(REGISTRY))
    log = logmod.setup("info", "json", stream=stream).bind(collector=name)
    collector = REGISTRY[name](Context(settings=settings, log=log))
    families = list(collector.collect())
    declared = set(collector.metrics)
    assert all(f.spec in declared for f in families)
    body = ExpositionWriter().render(families).decode()
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    logs = [json.loads(line) for line in stream.getvalue().splitlines()]
    return out, logs


def v(out, name, **labels):
    return out.get((name, tuple(sorted(labels.items()))))


PAGE = os.sysconf("SC_PAGE_SIZE")


def test_sockets_initial_namespace_4_19():
    out, logs = scrape("sockets", "4.19")
    assert logs == []
    assert v(out, "nodenet_sockets_used") == 412
    assert v(out, "nodenet_tcp_sockets_in_use", family="ipv4") == 25
    assert v(out, "nodenet_tcp_sockets_in_use", family="ipv6") == 11
    assert v(out, "nodenet_udp_sockets_in_use", family="ipv6") == 3
    assert v(out, "nodenet_tcp_timewait_sockets") == 1904
    assert v(out, "nodenet_tcp_timewait_sockets_limit") == 262144
    assert v(out, "nodenet_tcp_orphan_sockets") == 0
    assert v(out, "nodenet_tcp_orphan_sockets_limit") == 65536
    assert v(out, "nodenet_tcp_memory_bytes") == 17 * PAGE
    assert v(out, "nodenet_tcp_memory_limit_bytes", level="pressure") == 251490 * PAGE
    assert v(out, "nodenet_udp_memory_limit_bytes", level="high") == 754464 * PAGE
    assert v(out, "nodenet_udp_memory_bytes") == 5 * PAGE
    assert v(out, "nodenet_ip_fragment_memory_bytes", family="ipv6") == 2624
    assert v(out, "nodenet_ip_fragment_memory_limit_bytes", family="ipv4") == 4194304
    assert v(out, "nodenet_file_handles") == 10432
    assert v(out, "nodenet_file_handles_limit") == 1048576
    # 1024-65535 minus 8080, 30000-30099, 32000-32767 reserved
    assert v(out, "nodenet_ephemeral_ports_reserved") == 1 + 100 + 768
    assert v(out, "nodenet_ephemeral_ports_range_size") == 64512 - 869
    assert v(out, "nodenet_ephemeral_ports_nodeport_overlap") == 2768 - 100 - 768
    assert len(out) == 26  # the series count at default flags on a dual-stack node


def test_sockets_in_a_pod_namespace_leaves_invisible_limits_out():
    out, logs = scrape("sockets", "6.18-pod")
    assert logs == []
    names = {n for n, _ in out}
    for absent in ("nodenet_tcp_orphan_sockets_limit", "nodenet_tcp_memory_limit_bytes",
                   "nodenet_udp_memory_limit_bytes"):
        assert absent not in names
    assert v(out, "nodenet_tcp_timewait_sockets_limit") == 131072
    assert v(out, "nodenet_ephemeral_ports_nodeport_overlap") == 0
    assert v(out, "nodenet_ephemeral_ports_range_size") == 28232


def test_sockets_without_ipv6_and_without_sysctls():
    out, _ = scrape("sockets", "3.10")
    assert v(out, "nodenet_tcp_sockets_in_use", family="ipv6") == 2
    assert "nodenet_file_handles" not in {n for n, _ in out}
    assert v(out, "nodenet_tcp_timewait_sockets") == 230


def test_sockets_odd_input_costs_only_the_bad_values():
    out, logs = scrape("sockets", "odd")
    names = {n for n, _ in out}
    assert "nodenet_tcp_timewait_sockets" not in names          # "tw x"
    assert "nodenet_tcp_timewait_sockets_limit" not in names    # "lots"
    assert "nodenet_tcp_memory_limit_bytes" not in names        # two values
    assert "nodenet_ephemeral_ports_range_size" not in names    # inverted reserved range
    assert v(out, "nodenet_tcp_sockets_in_use", family="ipv4") == 1
    assert v(out, "nodenet_file_handles") == 5
    assert len(logs) == 1 and logs[0]["level"] == "warning"
    assert len(logs[0]["problems"]) == 5


def test_nodeport_range_flag():
    out, _ = scrape("sockets", "4.19", "--collector.sockets.nodeport-range=8000-8100")
    assert v(out, "nodenet_ephemeral_ports_nodeport_overlap") == 100
    with pytest.raises(ConfigError) as exc:
        scrape("sockets", "4.19", "--collector.sockets.nodeport-range=32767-30000")
    assert "\n" not in str(exc.value) and "nodeport-range" in str(exc.value)


EXPECTED_NETSTAT = {
    "nodenet_tcp_listen_overflows_total": 1, "nodenet_tcp_listen_drops_total": 2,
    "nodenet_tcp_backlog_drops_total": 3, "nodenet_tcp_request_queue_full_drops_total": 4,
    "nodenet_tcp_timewait_overflows_total": 5, "nodenet_tcp_memory_pressures_total": 6,
    "nodenet_tcp_aborts_on_memory_total": 7, "nodenet_tcp_retransmitted_segments_total": 8,
    "nodenet_tcp_sent_segments_total": 9, "nodenet_tcp_syn_retransmits_total": 10,
    "nodenet_tcp_timeouts_total": 11,
}
EXPECTED_FAMILY = {
    "nodenet_udp_receive_buffer_errors_total": 12, "nodenet_udp_send_buffer_errors_total": 13,
    "nodenet_udp_memory_errors_total": 14, "nodenet_udp_no_port_total": 15,
    "nodenet_udp_in_errors_total": 16, "nodenet_udp_received_datagrams_total": 17,
    "nodenet_ip_reassembly_failures_total": 18, "nodenet_ip_reassembly_timeouts_total": 19,
    "nodenet_ip_fragmentation_failures_total": 20, "nodenet_ip_fragments_created_total": 21,
}


@pytest.mark.parametrize("kernel,base", [("3.10", 3100), ("4.19", 4100), ("5.10", 5100)])
def test_netstat_on_each_kernel(kernel, base):
    out, logs = scrape("netstat", kernel)
    assert logs == []
    for name, off in EXPECTED_NETSTAT.items():
        got = v(out, name.removesuffix("_total") + "_total")
        if kernel == "3.10" and name == "nodenet_tcp_syn_retransmits_total":
            assert got is None           # the kernel does not print TCPSynRetrans
        elif kernel == "5.10" and name == "nodenet_tcp_sent_segments_total":
            assert got == 2**64 - 1   # exact: written as an int, not a rounded float
        else:
            assert got == base + off, name
    for name, off in EXPECTED_FAMILY.items():
        for family, fbase in (("ipv4", base), ("ipv6", base + 100)):
            got = v(out, name, family=family)
            if name == "nodenet_udp_memory_errors_total" and kernel != "5.10":
                assert got is None, (name, family)
            else:
                assert got == fbase + off, (name, family)
    assert v(out, "nodenet_icmp_destination_unreachable_total", family="ipv4",
             direction="in") == base + 22
    assert v(out, "nodenet_icmp_destination_unreachable_total", family="ipv6",
             direction="out") == base + 123
    assert v(out, "nodenet_icmp_packet_too_big_total", direction="in") == base + 124
    assert v(out, "nodenet_icmp_packet_too_big_total", direction="out") == base + 125


def test_netstat_series_count_at_default_flags():
    out, _ = scrape("netstat", "6.18")
    assert len(out) == 11 + 6 * 2 + 4 * 2 + 4 + 2 == 37


def test_netstat_odd_input_and_no_ipv6():
    out, logs = scrape("netstat", "odd")
    assert v(out, "nodenet_tcp_listen_overflows_total") == 21
    assert v(out, "nodenet_ip_reassembly_timeouts_total", family="ipv4") == 7
    assert v(out, "nodenet_ip_reassembly_failures_total", family="ipv6") == 4
    assert "nodenet_tcp_backlog_drops_total" not in {n for n, _ in out}
    assert "nodenet_tcp_retransmitted_segments_total" not in {n for n, _ in out}
    assert len(logs) == 1 and logs[0]["problems"]


def test_the_same_problems_are_logged_once():
    stream = io.StringIO()
    settings = resolve(all_options(), [f"--path.procfs={FIX}/odd"], "t", "0", set(REGISTRY))
    log = logmod.setup("info", "json", stream=stream)
    for name in ("netstat", "sockets"):
        collector = REGISTRY[name](Context(settings=settings, log=log.bind(collector=name)))
        for _ in range(3):
            list(collector.collect())
    assert len(stream.getvalue().splitlines()) == 2


def test_netstat_without_proc_files_is_empty_and_says_so_once():
    stream = io.StringIO()
    settings = resolve(all_options(), ["--path.procfs=/nonexistent"], "t", "0", set(REGISTRY))
    c = REGISTRY["netstat"](Context(settings=settings, log=logmod.setup(
        "info", "json", stream=stream).bind(collector="netstat")))
    for _ in range(3):
        assert list(c.collect()) == []
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "no net/snmp" in lines[0]
