"""Conntrack collector against the real kernel, in network namespaces these tests create.

Needs root, nftables, conntrack-tools and capsh; a missing one FAILS the test.  Every
namespace is named nn-conntrack-* and deleted in teardown; the host's sysctls are only read.
Witnesses: /proc/sys/net/netfilter/nf_conntrack_count inside the namespace and Debian's
``conntrack -C`` / ``conntrack -S``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time

import pytest

from exporter.sources import conntrack as ct
from exporter.sources import netns
from tests.helpers import ctns
from tests.helpers.ctns import Exporter, Netns, sample
from tests.helpers.nsproc import NsProcess

CT = ["--collector.disable-defaults", "--collector.conntrack"]
# conntrack -S field -> our counter (issue #3's names)
TOOL_TO_METRIC = {
    "found": "nodenet_conntrack_found_total",
    "invalid": "nodenet_conntrack_invalid_total",
    "insert": "nodenet_conntrack_inserts_total",
    "insert_failed": "nodenet_conntrack_insert_failed_total",
    "drop": "nodenet_conntrack_drops_total",
    "early_drop": "nodenet_conntrack_early_drops_total",
    "error": "nodenet_conntrack_errors_total",
    "search_restart": "nodenet_conntrack_search_restarts_total",
    "clash_resolve": "nodenet_conntrack_clash_resolves_total",
    "chaintoolong": "nodenet_conntrack_chain_too_long_total",
}
BAD_PACKETS = r"""
import socket, struct, sys
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
for i in range(n):      # SYN+FIN: invalid for conntrack
    s.sendto(struct.pack("!HHIIBBHHH", 1234, 80 + i, 1, 0, 5 << 4, 0x03, 100, 0, 0), ("127.0.0.1", 0))
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, socket.inet_aton("127.0.0.1"),
                    socket.inet_aton("127.0.0.9")) + struct.pack("!HHHH", 999, 998, 8, 0)
for i in range(2 * n):  # port unreachable about a flow conntrack never saw: icmp_error
    r.sendto(struct.pack("!BBHI", 3, 3, 0, 0) + inner, ("127.0.0.1", 0))
"""


@pytest.fixture(scope="module", autouse=True)
def requirements():
    if os.geteuid() != 0:
        pytest.fail("conntrack integration tests need root (ip netns, nft, setns)")
    for tool in ("ip", "nft", "conntrack", "capsh", "unshare", "taskset"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (Debian: iproute2 nftables conntrack "
                        f"libcap2-bin util-linux)")
    if not os.path.exists("/proc/sys/net/netfilter/nf_conntrack_max"):
        pytest.fail("this kernel has no conntrack (no /proc/sys/net/netfilter/nf_conntrack_max)")


def host_count() -> int:
    with open("/proc/sys/net/netfilter/nf_conntrack_count") as fh:
        return int(fh.read())


def global_limit() -> int:
    with open("/proc/sys/net/netfilter/nf_conntrack_max") as fh:
        return int(fh.read())


def hold_flows(ns: Netns, *args: str) -> tuple[NsProcess, dict]:
    p = NsProcess([sys.executable, ctns.FLOWS_SCRIPT, *args], ns.name)
    ns.procs.append(p.proc)   # ended with the namespace at the latest
    return p, json.loads(p.first_line)


def stable_scrape(exp: Exporter, witness, tries: int = 5):
    """A scrape bracketed by two equal witness readings (nothing changed meanwhile)."""
    for _ in range(tries):
        before = witness()
        s = exp.scrape()
        after = witness()
        if before == after:
            return s, after
    raise AssertionError(f"kernel state kept changing during {tries} scrapes")


def test_entries_equal_kernel_count_and_conntrack_tool_and_differ_from_host():
    n = 357
    with Netns("count") as ns:
        exp = Exporter(CT, ns=ns)
        ns.exec(["nft", "-f", "-"], input=ctns.notrack_ruleset(exp.port))
        # n UDP flows from distinct source ports, plus one FTP control connection whose PASV
        # reply makes the kernel's ftp helper create one expectation
        flows, report = hold_flows(ns, "--udp", str(n), "--ftp")
        assert report["udp"] == n and report["ftp"] == 1

        def witness():
            expectations = [l for l in ns.exec(["conntrack", "-L", "expect"]).stdout.splitlines()
                            if l.strip()]
            return ns.proc_count(), ns.tool_count(), len(expectations)

        with exp:
            s, (proc_count, tool_count, expect_count) = stable_scrape(exp, witness)
        flows.stop()
    entries = sample(s, "nodenet_conntrack_entries")
    assert sample(s, "nodenet_conntrack_source_info", source="netlink") == 1
    assert sample(s, "nodenet_conntrack_available") == 1
    assert entries == proc_count == tool_count == n + 1
    assert entries != host_count()
    assert sample(s, "nodenet_conntrack_expect_entries") == expect_count == 1
    assert sample(s, "nodenet_conntrack_entries_limit") == global_limit()
    with open("/proc/sys/net/netfilter/nf_conntrack_buckets") as fh:
        assert sample(s, "nodenet_conntrack_buckets") == int(fh.read())


def test_per_cpu_stats_over_netlink_equal_conntrack_S_field_by_field():
    with Netns("stats") as ns:
        # different amounts of bad traffic on each CPU, so every CPU row differs
        for cpu in range(os.cpu_count() or 1):
            ns.exec(["taskset", "-c", str(cpu), sys.executable, "-c", BAD_PACKETS, str(cpu + 2)])
        per_cpu = Exporter(CT + ["--collector.conntrack.per-cpu"], ns=ns)
        summed = Exporter(CT, ns=ns, port=per_cpu.port + 1)
        with per_cpu, summed:
            s_cpu, rows = stable_scrape(per_cpu, ns.tool_stats)
            s_sum, rows2 = stable_scrape(summed, ns.tool_stats)
    assert rows == rows2
    assert set(rows[0]) - {"cpu"} == set(TOOL_TO_METRIC), "conntrack -S shows other fields"
    assert sum(r["invalid"] for r in rows) > 0 and sum(r["error"] for r in rows) > 0
    for row in rows:
        for field, metric in TOOL_TO_METRIC.items():
            assert sample(s_cpu, metric, cpu=str(row["cpu"])) == row[field], (row["cpu"], field)
    for field, metric in TOOL_TO_METRIC.items():
        assert sample(s_sum, metric) == sum(r[field] for r in rows), field


def test_saturation_kernel_really_drops_and_entries_reach_the_limit():
    limit = global_limit()  # read only: the host's nf_conntrack_max is never changed
    with Netns("sat") as ns:
        exp = Exporter(CT, ns=ns)
        ns.exec(["nft", "-f", "-"], input=ctns.notrack_ruleset(exp.port))
        with exp:
            s0 = exp.scrape()
            t0 = time.monotonic()
            # ESTABLISHED+ASSURED entries: the kernel may not evict them (no early_drop), so
            # once the table is full new flows are dropped for real
            fill = ns.fill(limit, proto="tcp-assured", max_seconds=120)
            fill_seconds = time.monotonic() - t0
            filled = ns.proc_count()
            over = ns.fill(2000, start=limit, proto="tcp-assured", max_seconds=30)
            count = ns.proc_count()
            assert count == limit, (f"{count}/{limit} entries after {fill_seconds:.1f}s "
                                    f"({fill}) and 2000 more flows ({over})")
            s1, tool = stable_scrape(exp, ns.tool_stats)
    print(f"\nsaturation: {filled} assured entries in {fill_seconds:.1f}s; "
          f"2000 more flows -> {over['errors']} sendto errors ({over['first_error']})")
    assert over["errors"] > 0, "no packet was refused: the kernel did not drop"
    entries = sample(s1, "nodenet_conntrack_entries")
    assert entries / sample(s1, "nodenet_conntrack_entries_limit") == 1
    rose = {m: sample(s1, m) - sample(s0, m) for m in (
        "nodenet_conntrack_drops_total", "nodenet_conntrack_early_drops_total",
        "nodenet_conntrack_insert_failed_total")}
    assert any(v > 0 for v in rose.values()), rose
    assert rose["nodenet_conntrack_drops_total"] >= over["errors"] - (limit - filled)
    assert sample(s1, "nodenet_conntrack_drops_total") == sum(r["drop"] for r in tool)


def test_without_cap_net_admin_falls_back_to_procfs_and_says_so_once():
    with Netns("nocap") as ns:
        exp = Exporter(CT + ["--collector.conntrack.states"], ns=ns,
                       prefix=["capsh", "--drop=cap_net_admin", "--", "-c"])
        ns.exec(["nft", "-f", "-"], input=ctns.notrack_ruleset(exp.port))
        flows, _ = hold_flows(ns, "--udp", "24", "--ftp")
        with exp:
            with open(f"/proc/{exp.pid}/status") as fh:
                capeff = int(next(l for l in fh if l.startswith("CapEff:")).split()[1], 16)
            assert not capeff & (1 << 12), "the exporter still has CAP_NET_ADMIN"
            scrapes = [exp.scrape() for _ in range(3)]
            count = ns.proc_count()
            log = exp.stderr()
        flows.stop()
    s = scrapes[-1]
    assert sample(s, "nodenet_conntrack_source_info", source="procfs") == 1
    assert sample(s, "nodenet_conntrack_source_info", source="netlink") is None
    assert sample(s, "nodenet_scrape_collector_success", collector="conntrack") == 1
    assert sample(s, "nodenet_conntrack_entries") == count == 25
    assert sample(s, "nodenet_conntrack_expect_entries") == 1  # /proc/net/nf_conntrack_expect
    assert sample(s, "nodenet_conntrack_clash_resolves_total") is not None  # 6.x /proc header
    lines = [json.loads(l) for l in log.splitlines() if "CAP_NET_ADMIN" in l]
    assert len(lines) == 1, log
    assert lines[0]["source"] == "procfs"
    assert "entries by state" in lines[0]["event"]


def _unnamed_namespace(entries: int) -> NsProcess:
    """A network namespace known only as /proc/<pid>/ns/net (no /run/netns name)."""
    rules = tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False)
    rules.write(ctns.RULESET)
    rules.close()
    script = (f"ip link set lo up && nft -f {rules.name} && "
              f"{sys.executable} {ctns.FILL_SCRIPT} --count {entries} >/dev/null && "
              f"echo ready && exec sleep 120")
    try:
        p = NsProcess(["sh", "-c", script], None, stop_by="sigterm")
    finally:
        os.unlink(rules.name)
    assert p.first_line == "ready", f"unnamed namespace setup failed: {p.first_line!r}"
    return p


def _inode(path: str) -> str:
    return str(os.stat(path).st_ino)


def test_per_namespace_entries_for_named_and_unnamed_namespaces():
    with Netns("pa") as a, Netns("pb") as b:
        a.fill(123)
        b.fill(45)
        unnamed = _unnamed_namespace(7)
        try:
            # other work on this machine may add/remove its own namespaces meanwhile
            mine = lambda: sorted(n for n in os.listdir("/run/netns")  # noqa: E731
                                  if n.startswith("nn-conntrack-"))
            names_before = mine()
            with Exporter(CT + ["--collector.conntrack.netns"]) as exp:
                s = exp.scrape()
            with Exporter(CT + ["--collector.conntrack.netns",
                                "--collector.conntrack.netns.max=2"]) as exp:
                capped = exp.scrape()
            names_after = mine()
            want_a, want_b = a.proc_count(), b.proc_count()
            ino_a, ino_b = _inode(f"/run/netns/{a.name}"), _inode(f"/run/netns/{b.name}")
            ino_u = _inode(f"/proc/{unnamed.pid}/ns/net")
        finally:
            unnamed.stop()
    assert (want_a, want_b) == (123, 45)
    metric = "nodenet_conntrack_netns_entries"
    assert sample(s, metric, netns=a.name, netns_inode=ino_a, pod_uid="") == 123
    assert sample(s, metric, netns=b.name, netns_inode=ino_b, pod_uid="") == 45
    assert sample(s, metric, netns="", netns_inode=ino_u, pod_uid="") == 7
    # the exporter's own (host) namespace is one of them, with the node's count
    own = [v for (n, labels), v in s.items()
           if n == metric and dict(labels)["netns_inode"] == _inode("/proc/self/ns/net")]
    assert len(own) == 1
    assert sample(s, "nodenet_conntrack_netns_namespaces") >= 4
    assert names_after == names_before, "the exporter created or removed a namespace"
    series = [k for k in capped if k[0] == metric]
    assert len(series) == 2
    assert sample(capped, "nodenet_conntrack_netns_namespaces") >= 4


def test_namespace_gone_between_discovery_and_read_is_skipped():
    with Netns("gone") as gone, Netns("stay") as stay:
        gone.fill(11)
        stay.fill(22)
        unnamed = _unnamed_namespace(3)
        try:
            found = netns.discover(["/run/netns"], "/proc")
            mine = [n for n in found if n.name in (gone.name, stay.name) or n.pid == unnamed.pid]
            assert len(mine) == 3
            gone.delete()      # its /run/netns file disappears
            unnamed.stop()     # its only process exits
            counts, skipped = ct.count_in_namespaces(mine)
            recreated = os.path.exists(f"/run/netns/{gone.name}")
        finally:
            unnamed.stop()
    assert not recreated, "reading a vanished namespace re-created it"
    assert {c.ns.name: c.entries for c in counts} == {stay.name: 22}
    assert len(skipped) == 2 and any(gone.name in s for s in skipped)


def test_namespaces_deleted_while_the_exporter_scrapes():
    spaces = [Netns(f"churn{i}") for i in range(10)]
    try:
        for i, ns in enumerate(spaces):
            ns.__enter__()
            ns.fill(5 * (i + 1))
        expected = {ns.name: 5 * (i + 1) for i, ns in enumerate(spaces)}
        results = []
        with Exporter(CT + ["--collector.conntrack.netns"]) as exp:
            stop = threading.Event()

            def delete_all():
                for ns in spaces:
                    if stop.wait(0.05):
                        return
                    ns.delete()

            deleter = threading.Thread(target=delete_all)
            deleter.start()
            deadline = time.monotonic() + 30
            while deleter.is_alive() and time.monotonic() < deadline:
                results.append(exp.get())
            stop.set()
            deleter.join(10)
            results.append(exp.get())
            log = exp.stderr()
        recreated = [ns.name for ns in spaces if os.path.exists(f"/run/netns/{ns.name}")]
    finally:
        for ns in spaces:
            ns.delete()
    assert len(results) >= 3
    from prometheus_client.parser import text_string_to_metric_families
    last_seen = None
    seen_counts = []
    for status, text in results:
        assert status == 200
        seen = {}
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.name == "nodenet_scrape_collector_success" and \
                        smp.labels["collector"] == "conntrack":
                    assert smp.value == 1, log
                if smp.name == "nodenet_conntrack_netns_entries" and \
                        smp.labels["netns"] in expected:
                    seen[smp.labels["netns"]] = smp.value
        for name, value in seen.items():
            assert value == expected[name]  # a namespace is either read right or left out
        last_seen = seen
        seen_counts.append(len(seen))
    print(f"\nchurn: {len(results)} scrapes saw {seen_counts} of the 10 namespaces")
    assert max(seen_counts) > 0 and min(seen_counts) < len(spaces), seen_counts
    assert last_seen == {}, "deleted namespaces still reported"
    assert not recreated, f"namespaces re-created after deletion: {recreated}"
    assert '"level": "error"' not in log
