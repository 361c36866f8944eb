"""Every dashboard query against a real Prometheus scraping the real exporter.

All inside a network namespace made for the test (so everything is on its own loopback): a node
with a VXLAN overlay (one tunnel with 0 bytes of MTU headroom, one with -50), a bridge and pod
veths larger than the overlay, an interface that really drops packets (frames of an unknown
ethertype, counted by the kernel as receive drops), and conntrack hooks (an nft `ct state` rule).
`python -m exporter` runs there with its default collectors, and Debian's Prometheus scrapes it
every second. After a few scrapes every panel query (Grafana variables substituted as Grafana
would) goes through /api/v1/query: each must succeed and return data, except the queries listed
in ALLOWED_EMPTY (and in docs/dashboards.md) that are empty on such a node by design.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.helpers import dashboards as dh
from tests.helpers.exporter_proc import ExporterProcess
from tests.helpers.netns import call_in_netns, netns, run

JOB = "nodenet-exporter"
RATE_INTERVAL = "5s"  # Grafana's $__rate_interval for a 1 s scrape interval is 4 s; 5 s for slack
WANT_SCRAPES = 12
DOCS = os.path.join(dh.ROOT, "docs", "dashboards.md")

NO_IPVS = "node without IPVS: no virtual services, no real servers"
HEALTHY = "lists only problems: empty while every collector succeeds"
STATES_OFF = "needs --collector.conntrack.states, off by default"
NO_EXPECT = "expectation count is exported only where the kernel reports it"
NO_ENA = "ENA allowance counters exist only on AWS's ENA NICs"
NO_DRIVER_DROPS = "lists only problems: empty while no driver drop counter rises"

# (dashboard uid, panel title, refId) -> why it may be empty on the test node.
ALLOWED_EMPTY = {
    ("nodenet-overview", "IPVS services without a usable backend", "A"): NO_IPVS,
    ("nodenet-overview", "IPVS services without a usable backend", "B"): NO_IPVS,
    ("nodenet-overview", "IPVS per node", "B"): NO_IPVS,
    ("nodenet-overview", "IPVS per node", "C"): NO_IPVS,
    ("nodenet-overview", "IPVS per node", "D"): NO_IPVS,
    ("nodenet-overview", "Top 10 IPVS services by traffic", "A"): NO_IPVS,
    ("nodenet-overview", "Top 10 IPVS services by new connections", "A"): NO_IPVS,
    ("nodenet-overview", "Failing collectors", "A"): HEALTHY,
    ("nodenet-node", "Conntrack entries and limit", "D"): NO_EXPECT,
    ("nodenet-node", "Conntrack entries by protocol and state", "A"): STATES_OFF,
    **{("nodenet-node", "Virtual services", r): NO_IPVS for r in "ABCDE"},
    ("nodenet-node", "Service traffic", "A"): NO_IPVS,
    ("nodenet-node", "Service traffic", "B"): NO_IPVS,
    **{("nodenet-node", "Service packets and connections", r): NO_IPVS for r in "ABC"},
    **{("nodenet-node", "Real servers (backends)", r): NO_IPVS for r in "ABCDEFGHI"},
    ("nodenet-node", "Backend traffic", "A"): NO_IPVS,
    ("nodenet-node", "Backend active connections", "A"): NO_IPVS,
    # issue 17
    ("nodenet-overview", "Cloud allowances exceeded", "A"): NO_ENA,
    ("nodenet-overview", "Top 10 driver drop counters", "A"): NO_DRIVER_DROPS,
    ("nodenet-node", "ENA allowances exceeded", "A"): NO_ENA,
    ("nodenet-node", "ENA conntrack allowance available", "A"): NO_ENA,
}
# issue 14: limits only the initial network namespace shows (the test node is a namespace)
INITIAL_ONLY = "tcp_mem, udp_mem, tcp_max_orphans exist only in the initial namespace"
ALLOWED_EMPTY.update({
    ("nodenet-overview", "Limits: fill per node", "C"): INITIAL_ONLY,
    ("nodenet-overview", "Limits: fill per node", "D"): INITIAL_ONLY,
    ("nodenet-overview", "NodePorts inside the ephemeral port range", "A"): HEALTHY,
    ("nodenet-node", "Socket memory", "B"): INITIAL_ONLY,
    ("nodenet-node", "Socket memory", "D"): INITIAL_ONLY,
})
RULES = os.path.join(dh.ROOT, "alerts", "nodenet.rules.yaml")
# issue 15: the pod view is opt-in (--collector.netns) and lists only pods that refuse traffic
POD_VIEW = "needs --collector.netns (off by default); lists only pods refusing traffic"
ALLOWED_EMPTY.update({
    ("nodenet-node", "pods refusing traffic", "A"): POD_VIEW,
    ("nodenet-node", "pods refusing traffic", "B"): POD_VIEW,
    ("nodenet-node", "pod interfaces dropping", "A"): POD_VIEW,
})


# ------------------------------------------------------------------------------- static part
def test_allowed_empty_list_names_real_queries_and_is_documented():
    keys = {q.key for q in dh.panel_queries(dh.load_dashboards())}
    stale = sorted(k for k in ALLOWED_EMPTY if k not in keys)
    assert not stale, f"ALLOWED_EMPTY names queries the dashboards do not have: {stale}"
    assert os.path.exists(DOCS), "docs/dashboards.md missing"
    with open(DOCS, encoding="utf-8") as fh:
        doc = fh.read()
    missing = sorted({title for _, title, _ in ALLOWED_EMPTY if f"**{title}**" not in doc})
    assert not missing, f"docs/dashboards.md does not list these panels as possibly empty: " \
                        f"{missing}"


# ------------------------------------------------------------------------------- the node
def _mac(ns, dev):
    out = run(["ip", "-j", "link", "show", dev], netns=ns).stdout
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


def build_node(ns, pod=None, sysfs=None):
    """Overlay, bridge, pod veths and conntrack hooks in namespace ns; with `pod`, a pod veth
    (dpodx, MTU 1500: above the overlay) whose peer is in namespace `pod`; with `sysfs`, a
    fixture sysfs tree where dveth0 has a driver link (read by the ethtool collector)."""
    cmds = [
        # underlay veth created at 1550 so a 1500 VXLAN can be set on it, then shrunk to 1500:
        # how a -50 headroom happens on live nodes (the kernel refuses it directly)
        "ip link add dveth0 mtu 1550 type veth peer name dveth1 mtu 1550",
        "ip link set dveth0 up", "ip link set dveth1 up",
        "ip addr add 192.0.2.1/24 dev dveth0",
        "ip link add dvx0 type vxlan id 42 dev dveth0 dstport 4789 local 192.0.2.1",
        "ip link set dvx0 mtu 1500",
        "ip link set dveth0 mtu 1500",
        "ip link add dvx1 type vxlan id 43 dev dveth0 dstport 4790 local 192.0.2.1",  # 1450
        "ip link set dvx0 up", "ip link set dvx1 up",
        "ip link add dbr0 type bridge",
        "ip link add dpod0 type veth peer name dpod1",
        "ip link set dpod0 master dbr0",
        "ip link set dbr0 up", "ip link set dpod0 up", "ip link set dpod1 up",
        # pods behind the bridge, other nodes' pods through the 1450 tunnel (documentation
        # prefixes; nothing is sent to them)
        "ip addr add 198.51.100.1/24 dev dbr0",
        "ip route add 203.0.113.0/24 dev dvx1",
        "nft add table inet nndash",
        "nft add chain inet nndash out { type filter hook output priority 0 ; }",
        "nft add rule inet nndash out ct state new counter accept",
        # netfilter panels (issue 19): an iptables-legacy table beside the nftables one
        "iptables-legacy -A FORWARD -i dpod0 -j ACCEPT",
    ]
    if pod is not None:
        cmds += [f"ip link add dpodx mtu 1500 type veth peer name eth0 netns {pod}",
                 "ip link set dpodx master dbr0", "ip link set dpodx up"]
    for c in cmds:
        run(c.split(), netns=ns)
    if pod is not None:
        run(["ip", "link", "set", "eth0", "up"], netns=pod)
    if sysfs is not None:
        os.makedirs(os.path.join(sysfs, "class", "net", "dveth0"))
        os.makedirs(os.path.join(sysfs, "devices", "dveth0"))
        os.symlink(os.path.join(sysfs, "devices", "dveth0"),
                   os.path.join(sysfs, "class", "net", "dveth0", "device"))
        # the rest as the real /sys has it: BTF for dropreason, modules, the CPU list
        os.symlink("/sys/kernel", os.path.join(sysfs, "kernel"))
        os.symlink("/sys/module", os.path.join(sysfs, "module"))
        os.symlink("/sys/devices/system", os.path.join(sysfs, "devices", "system"))
    mtus = {link["ifname"]: link["mtu"]
            for link in json.loads(run(["ip", "-j", "link"], netns=ns).stdout)}
    assert (mtus["dvx0"], mtus["dvx1"], mtus["dveth0"]) == (1500, 1450, 1500), mtus


class DropSender:
    """Sends frames of an unknown ethertype from dveth1 to dveth0, which the kernel counts as
    receive drops on dveth0. Bounded: 10 frames a second, at most `limit` frames."""

    def __init__(self, ns, limit=3000):
        self.sock = call_in_netns(ns, self._open)
        self.frame = _mac(ns, "dveth0") + _mac(ns, "dveth1") + b"\x88\xb5" + \
            b"nodenet-dashboards".ljust(46, b"\0")
        self.limit, self.sent = limit, 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _open():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind(("dveth1", 0))
        return s

    def _run(self):
        while self.sent < self.limit and not self.stop_event.wait(0.1):
            self.sock.send(self.frame)
            self.sent += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(5)
        self.sock.close()


class Prometheus:
    """Debian's Prometheus in namespace ns, scraping `target` every second."""

    def __init__(self, ns, target):
        self.ns, self.target = ns, target
        self.port = 9090
        self.tmp = tempfile.mkdtemp(prefix="nodenet-dash-prom-")
        self.proc = None

    def __enter__(self):
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        assert os.path.exists(binary), "prometheus not installed: tests/run.sh installs " \
                                       "Debian's prometheus package"
        config = os.path.join(self.tmp, "prometheus.yml")
        with open(config, "w") as fh:
            fh.write(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                     f"  evaluation_interval: 1s\n"
                     f"rule_files: ['{RULES}']\n"  # the overview reads recorded series
                     f"scrape_configs:\n- job_name: {JOB}\n  static_configs:\n"
                     f"  - targets: ['{self.target}']\n")
        self.log = open(os.path.join(self.tmp, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, binary, f"--config.file={config}",
             f"--storage.tsdb.path={self.tmp}/data", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited rc={self.proc.returncode}: {self.logs()}")
            try:
                if self._get("/-/ready")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"prometheus not ready within 30 s: {self.logs()}")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def logs(self):
        with open(os.path.join(self.tmp, "prometheus.log"), errors="replace") as fh:
            return fh.read()[-3000:]

    def _get(self, path):
        def fetch():
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
                return r.status, r.read()
        return call_in_netns(self.ns, fetch)

    def api(self, path, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            status, body = self._get(f"{path}?{query}")
        except urllib.error.HTTPError as exc:  # 400/422: a query Prometheus rejects
            return json.loads(exc.read())
        assert status == 200
        return json.loads(body)

    def query(self, expr: str) -> dict:
        return self.api("/api/v1/query", query=expr)


@pytest.fixture(scope="module")
def live():
    with netns("nn-dash") as ns, netns("nn-dash-pod") as pod, \
            tempfile.TemporaryDirectory(prefix="nodenet-dash-sys-") as sysfs:
        build_node(ns, pod, sysfs)
        # + dropreason (off by default, the test runs as root): its "Drops by reason" panels are
        # fed by the DropSender's frames (UNHANDLED_PROTO) and the host's own drops
        with ExporterProcess([f"--path.sysfs={sysfs}", "--collector.dropreason"],
                             netns=ns) as exporter, \
                Prometheus(ns, exporter.address) as prom, DropSender(ns) as drops:
            deadline = time.monotonic() + 60
            count = 0
            while time.monotonic() < deadline:
                res = prom.query(f'count_over_time(up{{job="{JOB}"}}[1m])')
                result = res.get("data", {}).get("result", [])
                count = int(float(result[0]["value"][1])) if result else 0
                if count >= WANT_SCRAPES:
                    break
                time.sleep(0.5)
            assert count >= WANT_SCRAPES, f"only {count} scrapes in 60 s: {prom.logs()}"
            up = prom.query(f'up{{job="{JOB}"}}')["data"]["result"]
            assert up and up[0]["value"][1] == "1", f"target not up: {up} {exporter.log()}"
            yield {"ns": ns, "prom": prom, "instance": exporter.address, "drops": drops,
                   "exporter": exporter}


def values_for(uid: str, instance: str) -> dict[str, str]:
    values = {"job": JOB, "__rate_interval": RATE_INTERVAL}
    if uid == "nodenet-overview":
        # one node picked in the multi-valued variable: Grafana regex-escapes it, and escapes
        # the backslashes for the PromQL string
        values["instance"] = re.escape(instance).replace("\\", "\\\\")
    else:
        values["instance"] = instance
    return values


def run_all(live):
    prom = live["prom"]
    results = {}
    for q in dh.panel_queries(dh.load_dashboards()):
        expr = dh.substitute(q.expr, values_for(q.uid, live["instance"]))
        results[q.key] = (q, expr, prom.query(expr))
    return results


def test_every_panel_query_returns_data(live):
    results = run_all(live)
    failed, empty, unexpectedly = [], [], []
    for key, (q, expr, res) in results.items():
        if res.get("status") != "success":
            failed.append(f"{q}: {res.get('error')}\n    {expr}")
        elif not res["data"]["result"]:
            if key not in ALLOWED_EMPTY:
                empty.append(f"{q}\n    {expr}")
        elif key in ALLOWED_EMPTY:
            unexpectedly.append(str(q))
    assert not failed, "Prometheus rejected queries:\n" + "\n".join(failed)
    assert not empty, (f"{len(empty)} of {len(results)} dashboard queries returned no data "
                       f"(not in ALLOWED_EMPTY):\n" + "\n".join(empty))
    # informational: an allowed-empty query that has data is fine (e.g. a node with IPVS)
    print(f"{len(results)} queries, {len(unexpectedly)} allowed-empty ones had data")


def test_variable_queries_list_the_node(live):
    prom = live["prom"]
    for uid, var, sel, label in dh.variable_queries(dh.load_dashboards()):
        params = {"match[]": dh.substitute(sel, values_for("nodenet-node", live["instance"]))} \
            if sel else {}
        res = prom.api(f"/api/v1/label/{label}/values", **params)
        assert res["status"] == "success", res
        want = JOB if label == "job" else live["instance"]
        assert want in res["data"], f"{uid}: variable {var['name']} offers {res['data']}"


def test_every_metric_behind_the_panels_has_series(live):
    """`... or vector(0)` makes a stat show 0 when its metric is missing: check each metric the
    dashboards use really has series in Prometheus, except metrics that appear in an
    ALLOWED_EMPTY query (e.g. IPVS metrics on a node without IPVS)."""
    prom = live["prom"]
    queries = dh.panel_queries(dh.load_dashboards())
    excused = {n for q in queries if q.key in ALLOWED_EMPTY for n in dh.metric_names(q.expr)}
    needed: dict[str, str] = {}
    for q in queries:
        for name in sorted(dh.metric_names(q.expr) - excused):
            needed.setdefault(name, str(q))
    assert len(needed) >= 20, needed
    missing = []
    for name, where in sorted(needed.items()):
        res = prom.query(f'count({{__name__="{name}", job="{JOB}"}})')
        if not res["data"]["result"]:
            missing.append(f"  {name}  <- {where}")
    assert not missing, "metrics with no series in Prometheus:\n" + "\n".join(missing)


def _panel_result(live, uid, title, ref="A"):
    results = run_all(live)
    q, expr, res = results[(uid, title, ref)]
    assert res["status"] == "success", res
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("job", "instance"))):
            float(r["value"][1]) for r in res["data"]["result"]}


def test_overview_finds_the_overlay_mtu_mismatch(live):
    rows = _panel_result(live, "nodenet-overview", "Overlay MTU mismatches")
    by_if = {dict(k).get("interface"): v for k, v in rows.items()}
    assert by_if == {"dvx0": -50.0}, rows  # dvx1 (headroom 0) is not a mismatch
    count = _panel_result(live, "nodenet-overview", "Overlay tunnels with negative headroom")
    assert list(count.values()) == [1.0], count


def test_overview_finds_the_dropping_interface(live):
    assert live["drops"].sent > 0
    rows = _panel_result(live, "nodenet-overview", "Interfaces with drops")
    by_if = {dict(k).get("interface"): v for k, v in rows.items()}
    assert "dveth0" in by_if and by_if["dveth0"] > 0, rows
