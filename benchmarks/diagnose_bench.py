#!/usr/bin/env python3
"""diagnose on a 110-pod-like node: wall time of the command against interval + 0.5 s.

Builds a node namespace as a CNI leaves it: 110 pod namespaces, each holding one end of a veth
whose other end sits in the node namespace on a bridge (cni0), a VXLAN overlay (flannel.1)
over an underlay veth (eth0 of the node namespace, peer in a "fabric" namespace), and 20,000
UDP conntrack entries.  Then runs ``nodenet-exporter diagnose`` (default flags, --interval 2s)
there ``--runs`` times as a user would (a fresh process each time), and beside it the kernel
tools an SRE types instead (conntrack -S/-C, ss -s, nstat -az, ip -s link, ip -s ntable,
softnet_stat), twice 2 s apart as diagnose reads, plus ``/diagnose`` of a running exporter.

Everything runs in namespaces this script creates (nn-bench-diag-*) and deletes; nothing is
sent outside them.  ``--check`` exits 1 when the median wall time misses interval + 0.5 s.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from tests.helpers import ctns  # noqa: E402

PODS = 110
ENTRIES = 20_000
INTERVAL = 2.0
TOOLS = [["conntrack", "-S"], ["conntrack", "-C"], ["ss", "-s"], ["nstat", "-az"],
         ["ip", "-s", "link"], ["ip", "-s", "ntable"], ["cat", "/proc/net/softnet_stat"]]


def sh(argv, input=None):
    subprocess.run(argv, check=True, capture_output=True, text=True, input=input, timeout=120)


def build(node: ctns.Netns, tag: str, pods: int) -> list[str]:
    """The node's links; returns the pod and fabric namespaces made (to delete)."""
    made = []
    fabric = f"nn-bench-diag-fabric-{tag}"
    sh(["ip", "netns", "add", fabric])
    made.append(fabric)
    n = node.name
    sh(["ip", "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "up0",
        "netns", fabric])
    sh(["ip", "-n", fabric, "link", "set", "up0", "up"])
    batch = ["link set eth0 up", "link add cni0 type bridge", "link set cni0 mtu 1450 up",
             "link add flannel.1 type vxlan id 1 dev eth0 dstport 8472 local 10.98.0.1",
             "link set flannel.1 mtu 1450 up"]
    for i in range(pods):
        pod = f"nn-bench-diag-pod{i}-{tag}"
        sh(["ip", "netns", "add", pod])
        made.append(pod)
        batch += [f"link add veth{i} mtu 1450 type veth peer name eth0 netns {pod}",
                  f"link set veth{i} master cni0 up"]
    sh(["ip", "-n", n, "-batch", "-"], input="\n".join(batch) + "\n")
    for pod in made[1:]:
        sh(["ip", "-n", pod, "link", "set", "eth0", "up"])
    return made


def run_diagnose(node: ctns.Netns) -> tuple[float, float, int, str]:
    """(wall s, CPU s, exit status, header and finding lines) of one diagnose process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    res = subprocess.run(node.argv([sys.executable, "-m", "exporter", "diagnose",
                                    f"--interval={INTERVAL:g}s"]),
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if res.returncode not in (0, 1, 2):
        raise RuntimeError(f"diagnose failed ({res.returncode}): {res.stderr}")
    lines = res.stdout.split("\n\nNode summary")[0].strip()
    return wall, cpu, res.returncode, lines


def run_tools(node: ctns.Netns) -> float:
    """Wall time of the kernel tools, twice INTERVAL apart (as diagnose reads twice)."""
    t0 = time.monotonic()
    for i in range(2):
        if i:
            time.sleep(INTERVAL)
        for argv in TOOLS:
            subprocess.run(node.argv(argv), capture_output=True, timeout=60)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pods", type=int, default=PODS)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    tag = uuid.uuid4().hex[:6]
    made: list[str] = []
    with ctns.Netns(f"benchdiag-{tag}") as node:
        try:
            t0 = time.monotonic()
            made = build(node, tag, args.pods)
            count, _ = node.fill_to(ENTRIES, max_seconds=60)
            print(f"node: {args.pods} pod namespaces with veths on cni0, flannel.1 over eth0, "
                  f"{count:,} conntrack entries (built in {time.monotonic() - t0:.1f} s)")
            load0 = f"{os.getloadavg()[0]:.2f}"
            runs = [run_diagnose(node) for _ in range(args.runs)]
            tools = run_tools(node)
            page = diagnose_page(node)
        finally:
            for ns in made:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    walls = [r[0] for r in runs]
    cpus = [r[1] for r in runs]
    budget = INTERVAL + 0.5
    median = statistics.median(walls)
    print(f"{'':<44} {'median':>8} {'min':>8} {'max':>8}")
    print(f"{'diagnose --interval 2s, wall (s)':<44} {median:8.2f} {min(walls):8.2f} "
          f"{max(walls):8.2f}   budget {budget:.1f} s: {'ok' if median <= budget else 'MISSED'}")
    print(f"{'diagnose, over the interval (s)':<44} {median - INTERVAL:8.2f} "
          f"{min(walls) - INTERVAL:8.2f} {max(walls) - INTERVAL:8.2f}")
    print(f"{'diagnose, CPU user+sys (s)':<44} {statistics.median(cpus):8.2f} {min(cpus):8.2f} "
          f"{max(cpus):8.2f}")
    print(f"{'kernel tools x2, 2 s apart, wall (s)':<44} {tools:8.2f}   "
          f"({len(TOOLS)} commands per pass, no judgement)")
    print(f"{'/diagnose after a scrape, wall (ms)':<44} {page * 1000:8.1f}")
    print(f"load average before/after: {load0} / {os.getloadavg()[0]:.2f} (2 CPUs shared)")
    for wall, _, code, said in runs:
        print(f"run: {wall:.2f} s, exit {code}: {said}")
    return 1 if args.check and median > budget else 0


def diagnose_page(node: ctns.Netns) -> float:
    """Wall time of /diagnose right after a /metrics scrape (served from kept readings)."""
    exp = ctns.Exporter([], ns=node)
    node.exec(["nft", "-f", "-"], input=ctns.notrack_ruleset(exp.port))
    with exp:
        exp.get("/diagnose")            # the first one waits for a second reading
        exp.get("/metrics")
        t0 = time.monotonic()
        status, _ = exp.get("/diagnose")
        wall = time.monotonic() - t0
    if status != 200:
        raise RuntimeError(f"/diagnose answered {status}")
    return wall


if __name__ == "__main__":
    sys.exit(main())
