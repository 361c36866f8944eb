"""``nodenet-exporter diagnose`` and ``/diagnose`` against the real kernel, in namespaces these
tests create (nn-conntrack-diag*-*, deleted in teardown).

The sick namespace: its conntrack table filled to 92% of nf_conntrack_max with real UDP flows
(the count is per namespace, the limit global: the host's sysctl is only read, never
written), and a VXLAN whose underlay's MTU was lowered under it (headroom -100 bytes).  Both
are what the alerts NodenetConntrackTableNearFull / NodenetConntrackTableFull and
NodenetOverlayMTUMismatch catch; witnesses: the namespace's /proc nf_conntrack_count and
``ip -j link``.  A namespace whose listener (backlog 1, never accepting) gets 20 connects is
what NodenetTCPListenOverflows catches; witnesses ``nstat`` and ``ss -ltn``.
Needs root, nftables and iproute2; a missing one FAILS the test.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

from exporter import health
from tests.helpers import ctns, jsonschema_lite
from tests.helpers.ctns import Exporter, Netns

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "diagnose.schema.json").read_text())
FILL = 0.92


@pytest.fixture(scope="module", autouse=True)
def requirements():
    if os.geteuid() != 0:
        pytest.fail("diagnose integration tests need root (ip netns, nft)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (Debian: iproute2 nftables)")
    if not os.path.exists("/proc/sys/net/netfilter/nf_conntrack_max"):
        pytest.fail("this kernel has no conntrack (no /proc/sys/net/netfilter/nf_conntrack_max)")


def global_limit() -> int:
    with open("/proc/sys/net/netfilter/nf_conntrack_max") as fh:
        return int(fh.read())


# Checks of node-wide state (/proc/stat, /proc/net/softnet_stat are not per namespace): other
# work on this shared machine can really make them true, so a test allows one of them exactly
# when the kernel's own counters, read around the run, say it could have been true.
# The neighbour tables and file handles are machine-wide too (issue 14's checks).
HOST_CHECKS = ("NodenetSoftnetDrops", "NodenetCPUStealHigh", "NodenetCPUStealCritical",
               "NodenetNeighbourTableNearFull", "NodenetNeighbourTableOverflow",
               "NodenetFileHandlesNearLimit")
NEIGH = (("arp_cache", "ipv4"), ("ndisc_cache", "ipv6"))


def neighbour_state() -> tuple[int, float]:
    """(table fulls, the fullest table's entries / gc_thresh3) of the machine's tables, from
    /proc/net/stat (this test process is in the initial namespace)."""
    fulls, fill = 0, 0.0
    for table, proto in NEIGH:
        try:
            with open(f"/proc/net/stat/{table}") as fh:
                head, *rows = fh.read().split("\n")
            with open(f"/proc/sys/net/{proto}/neigh/default/gc_thresh3") as fh:
                limit = int(fh.read())
        except FileNotFoundError:
            continue
        col = head.split().index("table_fulls")
        values = [row.split() for row in rows if row.strip()]
        fulls += sum(int(v[col], 16) for v in values)
        if values and limit:
            fill = max(fill, int(values[0][0], 16) / limit)
    return fulls, fill


def host_counters() -> tuple[int, float, int, float, float]:
    """(softnet drops, steal seconds) of the whole machine, summed over CPUs; the neighbour
    tables' (fulls, worst fill); file handles / fs.file-max."""
    with open("/proc/net/softnet_stat") as fh:
        drops = sum(int(line.split()[1], 16) for line in fh if line.strip())
    with open("/proc/stat") as fh:
        steal = int(fh.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
    with open("/proc/sys/fs/file-nr") as fh:
        files = int(fh.read().split()[0])
    with open("/proc/sys/fs/file-max") as fh:
        files_max = int(fh.read())
    return (drops, steal, *neighbour_state(), files / files_max)


def possible_host_findings(before, after, interval: float) -> set[str]:
    checks = health.by_name()
    out = {"NodenetSoftnetDrops"} if after[0] > before[0] else set()
    stolen = after[1] - before[1]
    for name in HOST_CHECKS[1:3]:
        if stolen > checks[name].threshold * interval * (os.cpu_count() or 1):
            out.add(name)
    if after[2] > before[2]:
        out.add("NodenetNeighbourTableOverflow")
    # a fill is a level, not a count: allow it when the kernel showed it near (within 10
    # points of the threshold) at either end of the run
    if max(before[3], after[3]) > checks["NodenetNeighbourTableNearFull"].threshold - 0.1:
        out.add("NodenetNeighbourTableNearFull")
    if max(before[4], after[4]) > health.levels("NodenetFileHandlesNearLimit")[0].threshold - 0.1:
        out.add("NodenetFileHandlesNearLimit")
    return out


def diagnose(ns: Netns, *args: str) -> subprocess.CompletedProcess:
    """The command as a user runs it, inside the namespace, from this checkout; ``.host`` is
    the set of node-wide checks the kernel's counters allow during the run."""
    m = re.search(r"--interval=(\d+)(ms|s)", " ".join(args))
    interval = (int(m.group(1)) / (1000 if m.group(2) == "ms" else 1)) if m else 2.0
    before = host_counters()
    res = subprocess.run(ns.argv([sys.executable, "-m", "exporter", "diagnose", *args]),
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    res.host = possible_host_findings(before, host_counters(), interval)  # type: ignore[attr-defined]
    return res


def findings(doc: dict, host: set[str] = frozenset()) -> set[tuple]:
    """The findings of a report, without the node-wide ones in `host`."""
    return {(f["check"], f["severity"], tuple(sorted(f["labels"].items())))
            for f in doc["findings"] if f["check"] not in host}


def own(doc: dict, host: set[str]) -> list[dict]:
    return [f for f in doc["findings"] if f["check"] not in host]


def finding_lines(text: str, host: set[str]) -> list[str]:
    return [line for line in text.splitlines() if line[:1].isupper() and len(line.split()) > 1
            and line.split()[1].startswith("Nodenet") and line.split()[1] not in host]


def valid(doc: dict) -> None:
    problems = jsonschema_lite.errors(doc, SCHEMA)
    assert not problems, problems


@pytest.fixture(scope="module")
def sick():
    """A namespace with conntrack at 92% of the limit and a VXLAN of negative headroom."""
    limit = global_limit()
    with Netns("diag") as ns:
        # the underlay: a veth pair (this kernel has no dummy driver)
        ns.exec(["ip", "link", "add", "dum0", "type", "veth", "peer", "name", "dum1"])
        ns.exec(["ip", "link", "set", "dum1", "up"])
        ns.exec(["ip", "link", "set", "dum0", "up"])
        ns.exec(["ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dev", "dum0",
                 "dstport", "4789", "local", "10.99.0.1"])
        # no IPv6 on the tunnel: its router solicitations and MLD reports would be dropped
        # on transmit (no remote: tx_dropped rises, tx_packets not), which NodenetInterfaceDrops
        # rightly judges as +Inf, now and then inside the 2 s interval
        ns.exec(["sysctl", "-qw", "net.ipv6.conf.vx0.disable_ipv6=1"])
        ns.exec(["ip", "link", "set", "vx0", "mtu", "1450", "up"])
        ns.exec(["ip", "link", "set", "dum0", "mtu", "1400"])   # under the tunnel: -100
        target = int(limit * FILL)
        count, _ = ns.fill_to(target, max_seconds=120)
        assert count >= target, f"filled only {count} of {target} entries in 120 s"
        yield ns, limit


def test_a_healthy_namespace_has_no_finding_and_exits_0():
    with Netns("diagok") as ns:
        text = diagnose(ns)
        js = diagnose(ns, "--output=json")
    doc = json.loads(js.stdout)
    valid(doc)
    assert own(doc, js.host) == [], doc["findings"]
    assert js.returncode == doc["exit_code"], js.stderr
    if not js.host:
        assert js.returncode == 0 and doc["status"] == "ok"
    assert finding_lines(text.stdout, text.host) == []
    if not text.host:
        assert text.returncode == 0, text.stdout + text.stderr
        assert text.stdout.startswith("OK: no finding on "), text.stdout
    # default flags: every default collector was read, and succeeded
    assert {c["name"] for c in doc["collectors"]} >= {"conntrack", "cpu", "netdev", "softnet"}
    assert all(c["success"] for c in doc["collectors"]), doc["collectors"]


def test_a_sick_namespace_exits_2_with_exactly_its_findings(sick):
    ns, limit = sick
    res = diagnose(ns, "--output=json")
    count = ns.proc_count()
    assert res.returncode == 2, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    valid(doc)
    vx = (("interface", "vx0"), ("kind", "vxlan"), ("underlay", "dum0"))
    assert findings(doc, res.host) == {
        ("NodenetConntrackTableFull", "critical", ()),
        ("NodenetConntrackTableNearFull", "warning", ()),
        ("NodenetOverlayMTUMismatch", "warning", vx),
    }
    mine = own(doc, res.host)
    assert [f["severity"] for f in mine] == ["critical", "warning", "warning"]
    by_check = {f["check"]: f for f in mine}
    full = by_check["NodenetConntrackTableFull"]
    assert full["value"] == pytest.approx(count / limit, abs=1e-4)
    pct = health.pct(count / limit)
    assert full["message"].startswith(f"conntrack table {pct} full ({health.num(count)} of "
                                      f"{health.num(limit)}), threshold 90%"), full["message"]
    assert "threshold 75%" in by_check["NodenetConntrackTableNearFull"]["message"]
    mtu = by_check["NodenetOverlayMTUMismatch"]
    assert mtu["value"] == -100
    assert mtu["message"] == ("vxlan vx0 has -100 bytes of MTU headroom over underlay dum0 "
                              "(tunnel MTU 1,450, underlay MTU 1,400), threshold 0")
    for f in mine:
        assert f["runbook_url"] == f"{health.RUNBOOK_URL}#{f['check'].lower()}"
    # the witnesses: the namespace's own view
    links = {link["ifname"]: link for link in json.loads(ns.exec(["ip", "-j", "link"]).stdout)}
    assert (links["vx0"]["mtu"], links["dum0"]["mtu"]) == (1450, 1400)
    summary = {s["collector"]: s for s in doc["summary"]}
    assert summary["conntrack"]["values"]["entries"] == pytest.approx(count, abs=50)
    assert "negative overlay headroom: vx0 -100 bytes (underlay dum0)" in summary["netdev"]["text"]

    # the text form: one line per finding, worst first, value and runbook section in each
    text = diagnose(ns)
    assert text.returncode == 2
    assert text.stdout.startswith("CRITICAL: ")
    if not text.host:
        assert text.stdout.startswith("CRITICAL: 1 critical, 2 warnings on ")
    lines = finding_lines(text.stdout, text.host)
    for line, f in zip(lines, mine, strict=True):
        assert line.split()[:2] == [f["severity"].upper(), f["check"]], line
        assert f"runbook {f['runbook_url']}]" in line
    assert "(tunnel MTU 1,450, underlay MTU 1,400)" in lines[2]


def test_only_limits_the_collectors_and_the_findings(sick):
    ns, _ = sick
    res = diagnose(ns, "--only=netdev", "--output=json", "--interval=500ms")
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert [c["name"] for c in doc["collectors"]] == ["netdev"]
    assert [f["check"] for f in doc["findings"]] == ["NodenetOverlayMTUMismatch"]
    res = diagnose(ns, "--only=cpu,softnet", "--interval=500ms", "--output=json")
    doc = json.loads(res.stdout)
    assert [c["name"] for c in doc["collectors"]] == ["cpu", "softnet"]
    assert own(doc, res.host) == [] and res.returncode == doc["exit_code"]


def test_diagnose_page_of_a_running_exporter_lists_the_same_findings(sick):
    ns, _ = sick
    command = diagnose(ns, "--output=json")
    exp = Exporter([], ns=ns)
    ns.exec(["nft", "-f", "-"], input=ctns.notrack_ruleset(exp.port))
    before = host_counters()
    with exp:
        status, page = exp.get("/")
        assert status == 200 and '<a href="/diagnose">' in page
        status, text = exp.get("/diagnose")          # first request: waits for a 2nd reading
        assert status == 200, text
        status, body = exp.get("/diagnose?output=json")
        assert status == 200, body
    doc = json.loads(body)
    valid(doc)
    host = command.host | possible_host_findings(before, host_counters(), 2.0)
    expected = json.loads(command.stdout)
    assert findings(doc, host) == findings(expected, host)
    assert len(findings(doc, host)) == 3
    assert doc["interval_seconds"] >= 2.0
    assert text.startswith("CRITICAL: ")
    for f in own(expected, host):
        assert any(line.split()[:2] == [f["severity"].upper(), f["check"]]
                   and f["runbook_url"] in line for line in finding_lines(text, host)), f["check"]


def test_the_command_reports_usage_errors_with_exit_64():
    for args, reason in ((["--only", "conntrack,nope"], "unknown collector 'nope'"),
                         (["--interval", "-1s"], "--interval")):
        res = subprocess.run([sys.executable, "-m", "exporter", "diagnose", *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 64, res
        assert res.stdout == "" and res.stderr.count("\n") == 1 and reason in res.stderr


def test_a_full_table_evicting_entries_is_critical_dropping_with_the_kernels_rate():
    """At nf_conntrack_max, every new UDP flow makes the kernel evict an unreplied entry
    (early_drop): NodenetConntrackDropping counts drops + early drops per second."""
    limit = global_limit()
    with Netns("diagdrop") as ns:
        count, index = ns.fill_to(limit, max_seconds=120)
        assert count == limit, f"filled only {count} of {limit} entries in 120 s"
        before = ns.tool_stats()
        filler = ns.popen([sys.executable, ctns.FILL_SCRIPT, "--count", "400000", "--start",
                           str(index), "--proto", "udp", "--max-seconds", "10"],
                          stdout=subprocess.PIPE, text=True)
        try:
            res = diagnose(ns, "--only=conntrack", "--output=json")
        finally:
            report = json.loads(filler.communicate(timeout=40)[0].strip().splitlines()[-1])
        after = ns.tool_stats()
    assert res.returncode == 2, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    valid(doc)
    assert [f["check"] for f in doc["findings"]] == [
        "NodenetConntrackTableFull", "NodenetConntrackDropping", "NodenetConntrackTableNearFull"]
    dropping = doc["findings"][1]
    print(f"\n{dropping['message']} (filler: {report})")
    evicted = sum(r["drop"] + r["early_drop"] for r in after) - sum(
        r["drop"] + r["early_drop"] for r in before)
    # the kernel's own count over the whole bracket holds at least diagnose's interval's worth
    assert 0 < dropping["value"] * doc["interval_seconds"] <= evicted * 1.001, (dropping, evicted)
    assert report["sent"] > 0
    assert dropping["message"].startswith("conntrack dropping ")
    assert "threshold 0/s; table 100% full" in dropping["message"]


LISTEN_SCRIPT = str(ROOT / "tests" / "helpers" / "listen_overflow.py")


def listen_overflows(ns: Netns) -> int:
    """The namespace's TcpExt ListenOverflows, as nstat says (absolute, history untouched)."""
    out = ns.exec(["nstat", "-asz", "TcpExtListenOverflows"]).stdout
    m = re.search(r"^TcpExtListenOverflows\s+(\d+)", out, re.M)
    assert m, out
    return int(m.group(1))


def test_a_listen_queue_overflowing_is_reported_with_its_rate_and_runbook_section():
    """A listener with backlog 1 that never accepts, 20 connects spread over 10 s: the kernel
    drops SYNs at the full accept queue (and the clients' retransmitted SYNs), ListenOverflows
    rises, and diagnose says NodenetTCPListenOverflows with the rate between its readings."""
    if shutil.which("nstat") is None or shutil.which("ss") is None:
        pytest.fail("nstat and ss are not installed (Debian: iproute2)")
    with Netns("diaglisten") as ns:
        gen = ns.popen([sys.executable, LISTEN_SCRIPT, "20", "20"], stdout=subprocess.PIPE,
                       text=True)
        assert gen.stdout is not None
        line = gen.stdout.readline()
        assert line.startswith("listening "), line
        port = int(line.split()[1])
        time.sleep(1.0)                  # a few connects in: the queue is full
        before = listen_overflows(ns)
        res = diagnose(ns, "--output=json")
        middle = listen_overflows(ns)
        text = diagnose(ns)
        after = listen_overflows(ns)
        listeners = ns.exec(["ss", "-Hltn", f"sport = :{port}"]).stdout.split()
        gen.terminate()
        gen.wait(10)
    assert res.returncode == 1 or res.host, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    valid(doc)
    assert findings(doc, res.host) == {("NodenetTCPListenOverflows", "warning", ())}
    (f,) = own(doc, res.host)
    print(f"\n{f['message']} (nstat ListenOverflows {before} -> {middle} -> {after})")
    # the kernel's own count over the bracket holds the interval's worth the finding says
    assert 0 < f["value"] * doc["interval_seconds"] <= (middle - before) * 1.001, (f, before,
                                                                                  middle)
    assert f["message"] == (f"{health.num(f['value'])} connections/s dropped at a full accept "
                            f"queue (ListenOverflows), threshold 0/s")
    assert f["collector"] == "netstat" and f["alert_for"] == "2m" and f["labels"] == {}
    assert f["runbook_url"] == f"{health.RUNBOOK_URL}#nodenettcplistenoverflows"
    netstat = {s["collector"]: s for s in doc["summary"]}["netstat"]
    assert netstat["values"]["listen_overflows_per_second"] == pytest.approx(f["value"])
    assert f"listen overflows {health.num(f['value'])}/s" in netstat["text"]
    # ss: the listener's accept queue (Recv-Q) is over its backlog (Send-Q), i.e. full
    state, recv_q, send_q = listeners[0], int(listeners[1]), int(listeners[2])
    assert state == "LISTEN" and send_q == 1 and recv_q > send_q, listeners
    assert after > middle > before

    # the text form: the finding's line with its value and runbook section
    assert text.returncode == 1 or text.host, text.stdout + text.stderr
    lines = finding_lines(text.stdout, text.host)
    assert len(lines) == 1, text.stdout
    assert lines[0].split()[:2] == ["WARNING", "NodenetTCPListenOverflows"], lines[0]
    assert re.search(r"  [\d,.]+ connections/s dropped at a full accept queue "
                     r"\(ListenOverflows\), threshold 0/s  \[netstat; runbook "
                     + re.escape(f"{health.RUNBOOK_URL}#nodenettcplistenoverflows]"), lines[0])
