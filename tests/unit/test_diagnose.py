"""exporter/diagnose.py offline: usage errors, the report and its schema, the text form, and
/diagnose's History over a fixture procfs tree that changes between readings."""
from __future__ import annotations

import json
import pathlib
import re
import shutil
import time

import pytest

from exporter import cli, diagnose, health
from exporter import log as logmod
from exporter.health import Pair, Reading
from tests.helpers import jsonschema_lite

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "root"
SCHEMA = json.loads((ROOT / "docs" / "diagnose.schema.json").read_text())
OFFLINE = [f"--path.procfs={FIXTURE / 'proc'}", f"--path.sysfs={FIXTURE / 'sys'}",
           "--only=cpu,softnet,sysctl", "--interval=50ms"]


def valid(doc) -> None:
    problems = jsonschema_lite.errors(doc, SCHEMA)
    assert not problems, problems


@pytest.mark.parametrize("argv, reason", [
    (["--only", "nope"], "--only: unknown collector 'nope' (known: conntrack, "),
    (["--only", "cpu,nope"], "--only: unknown collector 'nope'"),
    (["--interval", "0"], "--interval: duration must be positive: '0'"),
    (["--interval", "soon"], "--interval: not a duration: 'soon'"),
    (["--interval", "11m"], "--interval: at most 600s, not '11m'"),
    (["--output", "xml"], "--output: must be text or json, not 'xml'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--collector.nope"], "unrecognized arguments: --collector.nope"),
])
def test_usage_errors_are_one_line_and_exit_64(capsys, argv, reason):
    assert cli.main(["diagnose", *argv]) == diagnose.USAGE_EXIT == 64
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("nodenet-exporter diagnose: error: ")
    assert reason in err


def test_offline_run_on_fixtures_is_ok_and_its_json_validates(capsys):
    assert diagnose.main([*OFFLINE, "--output=json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    valid(doc)
    assert doc["status"] == "ok" and doc["findings"] == []
    assert [s["collector"] for s in doc["summary"]] == ["cpu", "softnet", "sysctl"]
    assert [c["name"] for c in doc["collectors"] if c["success"]] == ["cpu", "softnet", "sysctl"]
    assert doc["interval_seconds"] >= 0.05
    assert {n["check"] for n in doc["not_judged"]} == {
        c.name for c in health.CHECKS if c.judge is None}
    # the same run as text: the same summary lines
    assert diagnose.main(OFFLINE) == 0
    text = capsys.readouterr().out
    assert text.startswith("OK: no finding on ")
    for s in doc["summary"]:
        assert re.search(rf"^  {s['collector']} +{re.escape(s['text'])}$", text, re.M), s


def synthetic_pair() -> Pair:
    def r(t, drops, entries):
        return Reading(t, 1_764_633_600 + t, {
            "nodenet_conntrack_entries": [({}, entries)],
            "nodenet_conntrack_entries_limit": [({}, 1000.0)],
            "nodenet_conntrack_drops_total": [({}, drops)],
            "nodenet_overlay_mtu_headroom_bytes": [
                ({"interface": "vx0", "kind": "vxlan", "underlay": "dum0"}, -100.0)],
            "nodenet_interface_info": [({"interface": "vx0", "kind": "vxlan"}, 1.0)],
            "nodenet_scrape_collector_success": [({"collector": "conntrack"}, 1.0),
                                                 ({"collector": "netdev"}, 1.0),
                                                 ({"collector": "softnet"}, 0.0)],
        }, errors={"softnet": "ParseError: bad line"})
    return Pair(r(0, 0.0, 800.0), r(2, 10.0, 920.0))


def test_report_of_synthetic_readings_validates_and_text_is_worst_first():
    doc = diagnose.report(synthetic_pair(), ["conntrack", "netdev", "softnet"], node="n1")
    valid(doc)
    assert doc["status"] == "critical" and doc["exit_code"] == 2
    assert doc["time"] == "2025-12-02T00:00:02Z" and doc["interval_seconds"] == 2
    assert [(f["check"], f["severity"]) for f in doc["findings"]] == [
        ("NodenetConntrackTableFull", "critical"), ("NodenetConntrackDropping", "critical"),
        ("NodenetConntrackTableNearFull", "warning"), ("NodenetOverlayMTUMismatch", "warning"),
        ("NodenetCollectorFailing", "warning")]
    failing = doc["findings"][-1]
    assert failing["collector"] == "softnet" and failing["labels"] == {"collector": "softnet"}
    text = diagnose.render_text(doc)
    lines = text.splitlines()
    assert lines[0] == ("CRITICAL: 2 critical, 3 warnings on n1 (readings 2 s apart, "
                        "2025-12-02T00:00:02Z)")
    finding_lines = lines[2:7]
    for line, f in zip(finding_lines, doc["findings"], strict=True):
        assert line.startswith(f["severity"].upper())
        assert f["check"] in line and f["message"] in line and f["runbook_url"] in line
    assert "conntrack table 92% full (920 of 1,000), threshold 90%; 5 drops/s" in finding_lines[0]
    summary = {s["collector"]: s["text"] for s in doc["summary"]}
    assert summary["softnet"] == "failed: ParseError: bad line"
    assert "negative overlay headroom: vx0 -100 bytes (underlay dum0)" in summary["netdev"]


def test_the_validator_rejects_what_the_schema_forbids():
    doc = diagnose.report(synthetic_pair(), ["conntrack"], node="n1")
    valid(doc)
    bad = json.loads(json.dumps(doc))
    bad["status"] = "fine"
    del bad["findings"][0]["runbook_url"]
    bad["findings"][1]["extra"] = 1
    bad["exit_code"] = True
    problems = jsonschema_lite.errors(bad, SCHEMA)
    assert any("'fine' not one of" in p for p in problems)
    assert any("$.findings[0]: missing 'runbook_url'" in p for p in problems)
    assert any("unexpected property 'extra'" in p for p in problems)
    assert any("$.exit_code: True not one of" in p for p in problems)


def softnet_stat(*rows: tuple[int, int]) -> str:
    """/proc/net/softnet_stat (6.x, 15 columns) with (processed, dropped) per CPU."""
    return "".join(f"{p:08x} {d:08x} " + " ".join(["00000000"] * 10) + f" {cpu:08x} 00000000"
                   " 00000000\n" for cpu, (p, d) in enumerate(rows))



def test_history_pairs_scrapes_and_reads_the_kernel_at_most_once_per_interval(tmp_path):
    proc = tmp_path / "proc"
    shutil.copytree(FIXTURE / "proc", proc)
    softnet = proc / "net" / "softnet_stat"
    softnet.write_text(softnet_stat((1000, 0), (1000, 0)))
    settings, names = diagnose.parse([f"--path.procfs={proc}", f"--path.sysfs={FIXTURE / 'sys'}",
                                      "--only=softnet,cpu"])
    gatherer = diagnose.gatherer_for(settings, names, logmod.setup("error", "json"))
    try:
        history = diagnose.History(gatherer, min_interval=0.3)
        collections = []
        gatherer.on_collect.append(collections.append)
        gatherer.shared_collection()                      # a "scrape"
        softnet.write_text(softnet_stat((1100, 30), (1000, 0)))
        t0 = time.monotonic()
        doc = history.report()                            # waits for a 2nd reading 0.3 s later
        assert time.monotonic() - t0 >= 0.25
        assert len(collections) == 2
        valid(doc)
        assert [f["check"] for f in doc["findings"]] == ["NodenetSoftnetDrops"]
        assert doc["interval_seconds"] >= 0.3
        for _ in range(5):                                # a burst of requests: no new reading
            assert history.report()["findings"] == doc["findings"]
        assert len(collections) == 2
        time.sleep(0.35)
        softnet.write_text(softnet_stat((1200, 30), (1000, 0)))   # drops stopped
        later = history.report()
        assert len(collections) == 3 and later["findings"] == []
    finally:
        gatherer.close()


def test_a_failing_collection_observer_never_fails_the_scrape():
    settings, names = diagnose.parse([f"--path.procfs={FIXTURE / 'proc'}",
                                      f"--path.sysfs={FIXTURE / 'sys'}", "--only=cpu"])
    gatherer = diagnose.gatherer_for(settings, names, logmod.setup("error", "json"))
    try:
        seen = []

        def broken(result):
            raise ValueError("observer bug")

        gatherer.on_collect[:] = [broken, seen.append]
        result = gatherer.shared_collection()
        assert seen == [result]
        assert b"nodenet_cpus 4" in gatherer.scrape()
    finally:
        gatherer.close()


# ------------------------------------------------------------ kernel limits summary lines

def limits_pair() -> Pair:
    def r(t, overflows, fulls, retrans, sent):
        return Reading(t, 1_764_633_600 + t, {
            "nodenet_tcp_sockets_in_use": [({"family": "ipv4"}, 1200.0),
                                           ({"family": "ipv6"}, 34.0)],
            "nodenet_udp_sockets_in_use": [({"family": "ipv4"}, 12.0)],
            "nodenet_tcp_timewait_sockets": [({}, 250.0)],
            "nodenet_tcp_timewait_sockets_limit": [({}, 262_144.0)],
            "nodenet_tcp_orphan_sockets": [({}, 3.0)],
            "nodenet_tcp_orphan_sockets_limit": [({}, 65_536.0)],
            "nodenet_file_handles": [({}, 74_000.0)],
            "nodenet_file_handles_limit": [({}, 2_466_116.0)],
            "nodenet_tcp_memory_bytes": [({}, 5.5 * 2**20)],
            "nodenet_tcp_memory_limit_bytes": [({"level": "low"}, 100 * 2**20),
                                               ({"level": "pressure"}, 110 * 2**20),
                                               ({"level": "high"}, 120 * 2**20)],
            "nodenet_ephemeral_ports_range_size": [({}, 28_232.0)],
            "nodenet_ephemeral_ports_nodeport_overlap": [({}, 2768.0)],
            "nodenet_tcp_listen_overflows_total": [({}, overflows)],
            "nodenet_udp_receive_buffer_errors_total": [({"family": "ipv4"}, 0.0),
                                                        ({"family": "ipv6"}, 0.0)],
            "nodenet_tcp_retransmitted_segments_total": [({}, retrans)],
            "nodenet_tcp_sent_segments_total": [({}, sent)],
            "nodenet_neighbour_available": [({}, 1.0)],
            "nodenet_neighbour_source_info": [({"source": "netlink"}, 1.0)],
            "nodenet_neighbour_entries": [({"table": "arp_cache"}, 120.0),
                                          ({"table": "ndisc_cache"}, 4.0)],
            "nodenet_neighbour_entries_limit": [({"table": "arp_cache"}, 1024.0),
                                                ({"table": "ndisc_cache"}, 1024.0)],
            "nodenet_neighbour_table_fulls_total": [({"table": "arp_cache"}, fulls),
                                                    ({"table": "ndisc_cache"}, 0.0)],
        })
    return Pair(r(0, 10.0, 7.0, 100.0, 10_000.0), r(2, 46.0, 7.0, 120.0, 12_000.0))


def test_sockets_netstat_and_neighbour_have_their_own_summary_lines():
    doc = diagnose.report(limits_pair(), ["neighbour", "netstat", "sockets"], node="n1")
    valid(doc)
    summary = {s["collector"]: s for s in doc["summary"]}
    assert summary["sockets"]["text"] == (
        "1,234 TCP in use, TIME_WAIT 250 of 262,144; 12 UDP; orphans 3 of 65,536; "
        "file handles 74,000 of 2,466,116 (3%); TCP memory 5.5 MiB (5% of tcp_mem pressure); "
        "28,232 ephemeral ports, 2,768 NodePorts among them")
    assert summary["sockets"]["values"]["tcp_memory_pressure_bytes"] == 110 * 2**20
    assert summary["netstat"]["text"] == (
        "listen overflows 18/s, UDP receive buffer errors 0/s, "
        "1% of TCP segments retransmitted")
    assert summary["netstat"]["values"]["listen_overflows_per_second"] == 18
    assert summary["netstat"]["values"]["reassembly_failures_per_second"] is None  # not read
    assert summary["neighbour"]["text"] == (
        "arp_cache 120 of 1,024, ndisc_cache 4 of 1,024; table fulls 0 in 2 s; source netlink")
    assert summary["neighbour"]["values"]["tables"]["arp_cache"] == {
        "entries": 120, "limit": 1024, "fulls": 0}
    # and the findings the same readings make: listen overflows, NodePorts in the range
    assert [(f["check"], f["collector"]) for f in doc["findings"]] == [
        ("NodenetTCPListenOverflows", "netstat"),
        ("NodenetEphemeralPortsOverlapNodePorts", "sockets")]
    text = diagnose.render_text(doc)
    assert "  sockets    1,234 TCP in use, TIME_WAIT 250 of 262,144; " in text


def test_limits_summaries_say_what_is_missing():
    empty = Pair(Reading(0), Reading(2, series={"nodenet_neighbour_available": [({}, 0.0)]}))
    doc = diagnose.report(empty, ["neighbour", "netstat", "sockets"], node="n1")
    summary = {s["collector"]: s["text"] for s in doc["summary"]}
    assert summary == {"neighbour": "not available on this node",
                       "netstat": "no protocol counters read", "sockets": "nothing read"}
    # outside the initial namespace: no tcp_mem, no tcp_max_orphans
    inside = Pair(Reading(0), Reading(2, series={
        "nodenet_tcp_orphan_sockets": [({}, 2.0)], "nodenet_tcp_memory_bytes": [({}, 1536.0)]}))
    text, _ = diagnose.SUMMARIES["sockets"].line(inside)
    assert text == "orphans 2; TCP memory 1.5 KiB"
