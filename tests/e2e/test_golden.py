"""The whole exposition, pinned: the exporter run against the fixture tree, scraped over HTTP.

It runs inside a fresh network namespace made for the test, so the netlink-based collectors
(conntrack, interfaces, IPVS) see a known, empty kernel state instead of this machine's.
Volatile series (durations, versions, machine-wide limits) are dropped before comparing.
Regenerate with: UPDATE_GOLDEN=1 python -m pytest tests/e2e/test_golden.py
"""
import os
import re
import shutil
import subprocess

import pytest

from exporter import docs
from tests.helpers.exporter_proc import ExporterProcess
from tests.helpers.netns import netns, run

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(os.path.dirname(HERE), "fixtures")
GOLDEN = os.path.join(FIX, "golden", "metrics.prom")
FIXTURE_ARGS = [f"--path.procfs={FIX}/root/proc", f"--path.sysfs={FIX}/root/sys",
                # issue 15's opt-in walks: the pod view finds no namespace in the fixture tree,
                # the ephemeral walk sees only the test's own scrape connection (volatile)
                "--collector.netns", f"--collector.netns.dirs={FIX}/root/run/netns",
                "--collector.sockets.ephemeral-ports"]
# Series whose value depends on the machine or the moment, not on the fixture tree.
VOLATILE = re.compile(r"^(nodenet_scrape_collector_duration_seconds|nodenet_build_info"
                      r"|nodenet_conntrack_entries_limit|nodenet_conntrack_buckets"
                      # the exporter process itself (exporter/selfmetrics.py)
                      r"|process_[a-z_]+|python_[a-z_]+)[{ ]"
                      # neighbour tables are machine-wide: the dump shows this host's
                      r"|^nodenet_neighbour_(entries|entries_limit|gc_threshold_entries"
                      r"|table_fulls_total|forced_gc_runs_total|resolution_failures_total)\{"
                      # loopback carries the test's own readiness probes and scrapes
                      r"|^nodenet_interface_(receive|transmit)_(bytes|packets)_total\{interface=\"lo\""
                      # the exporter's own listener and the scrape's connection (random ports)
                      r"|^nodenet_tcp_listen_queue_(length|limit)\{|^nodenet_ephemeral_ports_"
                      r"(in_use\{|max_in_use )")


def normalise(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line and not VOLATILE.match(line))


# A small, quiet overlay topology (no IPv6, no addresses: no packet moves on these links):
# a bridge with a veth (down), and a VXLAN at 1450 over a 1500 underlay (headroom 0).
TOPOLOGY = [
    "sysctl -qw net.ipv6.conf.all.disable_ipv6=1",  # this namespace's own sysctls
    "sysctl -qw net.ipv6.conf.default.disable_ipv6=1",
    "ip link add gold-under type veth peer name gold-pod",
    "ip link add gold-br type bridge",
    "ip link set gold-pod master gold-br",
    "ip link add gold-vx type vxlan id 42 dev gold-under dstport 4789 remote 192.0.2.1",
    "ip link set gold-vx mtu 1450",
    "ip link set gold-under up", "ip link set gold-vx up",  # bridge and pod stay down: silent
    # netfilter (issue 19): an iptables-legacy filter table (listed in the fixture's
    # proc/net/ip_tables_names) and an nftables table, in this namespace only
    "iptables-legacy -A FORWARD -i gold-pod -j DROP",
    "nft add table inet gold", "nft add chain inet gold input { type filter hook input priority 0 ; }",
    "nft add rule inet gold input iifname gold-pod drop",
]


# Two pod interfaces (veths whose peer is in a namespace of its own, as a pod's), bridged, down:
# summarised per master (nodenet_pod_interfaces...), no series of their own.
POD_TOPOLOGY = [
    "ip link add gold-p{i} mtu 1500 type veth peer name eth0 netns {pod}",
    "ip link set gold-p{i} master gold-br",
]


@pytest.fixture(scope="module")
def exposition():
    with netns("nn-golden") as ns, netns("nn-golden-pod") as pod0, \
            netns("nn-golden-pod") as pod1:
        for cmd in TOPOLOGY:
            run(cmd, netns=ns)
        for i, pod in enumerate((pod0, pod1)):
            for cmd in POD_TOPOLOGY:
                run(cmd.format(i=i, pod=pod), netns=ns)
        with ExporterProcess(FIXTURE_ARGS, netns=ns) as ex:
            return ex.scrape()


def test_matches_golden_exposition(exposition):
    got = normalise(exposition)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        with open(GOLDEN, "w") as fh:
            fh.write("\n".join(got) + "\n")
    with open(GOLDEN) as fh:
        want = fh.read().splitlines()
    assert got == want, "exposition differs from tests/fixtures/golden/metrics.prom " \
                        "(UPDATE_GOLDEN=1 regenerates it; review the diff)"


def test_promtool_check_metrics_accepts_exposition(exposition):
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed: tests/run.sh installs Debian's prometheus package"
    res = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_exported_metric_is_declared_and_documented(exposition):
    declared = docs.all_metrics()
    names = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE")}
    for name in names:
        full = name if name in declared else name + "_total"
        assert full in declared, f"{name} exported but not declared in a collector's metrics"


def test_fixture_values_are_exported(exposition):
    assert 'nodenet_cpu_steal_seconds_total{cpu="1"} 134.02' in exposition
    assert "nodenet_cpus 4" in exposition
    assert 'nodenet_softnet_dropped_total{cpu="3"} 500' in exposition
    assert 'nodenet_sysctl_value{name="net.ipv4.ip_local_port_range",bound="max"} 60999' in exposition
    assert 'nodenet_sysctl_value{name="fs.file-max",bound=""} 9223372036854775807' in exposition
