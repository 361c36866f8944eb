#!/usr/bin/env python3
"""One command for every benchmark: python benchmarks/run.py [--quick] [--only NAME ...]

Prints, in one run on this machine, nodenet-exporter side by side with node_exporter 1.5:
- base: the default collectors in a fresh network namespace, idle RSS, and RSS over 1,000 scrapes;
- exposition: the writer vs prometheus_client's renderer at 300k samples (per-sample cost);
- netdev, conntrack, ipvs: the scenario scripts beside this file (namespaces / the UML VM);
- soak: RSS, page faults and CPU over 1,000 scrapes at node scale (2,000 interfaces; the
  5,000 x 10 IPVS table replayed natively);
- limits: the sockets, netstat and neighbour collectors at 10,000 sockets and 2,000
  neighbour entries vs node_exporter's netstat, sockstat, filefd and arp (permanent entries
  grow 100 -> 10,000).
- diagnose: `nodenet-exporter diagnose` on a 110-pod-like node against interval + 0.5 s,
  beside the kernel tools it replaces.
- dropreason: a 1,000,000-datagram drop flood with the drop-reason program off / on / perf
  stat counting the same tracepoint, and the scrape cost of the counters.
- netfilter: 5,000 kube-proxy-like Services in iptables-legacy and in nftables, the netfilter
  collector beside `iptables-legacy-save | wc -l` and `nft list ruleset | wc -l`.
- fleet: the overview dashboard's queries on a real Prometheus backfilled with 5,000 synthetic
  nodes, with and without the recording rules (p50/p95 per panel).
Each part is bounded in time and removes what it creates.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import HEADER, Server, machine, row  # noqa: E402

from tests.helpers.netns import netns  # noqa: E402

SCENARIOS = {  # name -> (script beside this file, its arguments for --quick)
    "netdev": ("netdev_bench.py", ["--sizes", "10,500"]),
    "conntrack": ("conntrack_bench.py", ["--sizes", "10000,50000"]),
    "ipvs": ("ipvs_uml.py", ["--quick"]),
    # after ipvs: its native IPVS scenario replays the dump the ipvs run just captured
    "soak": ("soak.py", ["--quick"]),
    # sockets + netstat + neighbour vs node_exporter netstat/sockstat/filefd/arp
    "limits": ("limits_bench.py", ["--quick"]),
    # diagnose at a 110-pod-like node: wall time against --interval + 0.5 s
    "diagnose": ("diagnose_bench.py", ["--runs", "3"]),
    # issue 16: ns per drop added by the drop-reason program (beside the flood's own cost and
    # perf stat on the same tracepoint) and the scrape cost of its counters
    "dropreason": ("dropreason_bench.py", ["--quick"]),
    "netfilter": ("netfilter_bench.py", ["--quick"]),  # issue 19: legacy and nft, 5,000 Services
    # issue 17: the overview's queries at 5,000 synthetic nodes, with and without recording rules
    "fleet": ("fleet_bench.py", ["--nodes", "500", "--repeat", "3"]),
    # issue 15: the pod view over 110/1000 namespaces, sock_diag dumps, the ephemeral walk
    "podview": ("podview_bench.py", ["--quick"]),
}


def bench_base(quick: bool):
    print("\n== base: default collectors, fresh namespace ==")
    print(HEADER)
    n_growth = 200 if quick else 1000
    with netns("nn-bench-base") as ns:
        with Server.nodenet(netns=ns) as ours, Server.node_exporter(
                ["cpu", "softnet", "netdev", "conntrack"], netns=ns) as ne:
            idle = ours.rss_mib()
            m_ours = ours.measure(n=50)
            m_ne = ne.measure(n=50)
            print(row("default collectors", m_ours, m_ne))
            print(row("default collectors", m_ne))
            rss0 = ours.rss_mib()
            t0 = time.monotonic()
            done = 0
            while done < n_growth and time.monotonic() - t0 < 120:
                ours.fetch()
                done += 1
            rss1 = ours.rss_mib()
            print(f"nodenet-exporter RSS: idle (before any scrape) {idle:.1f} MiB; "
                  f"after warm-up {rss0:.1f} MiB; after {done} more scrapes {rss1:.1f} MiB "
                  f"(growth {rss1 - rss0:+.1f} MiB; {done / (time.monotonic() - t0):.0f} scrapes/s)")


def bench_exposition(quick: bool):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily

    from exporter.metrics import COUNTER, ExpositionWriter, Metric

    n = 30_000 if quick else 300_000
    print(f"\n== exposition: {n} counter samples with 2 labels ==")
    spec = Metric("nodenet_bench_bytes_total", COUNTER, "Bench.", ("interface", "direction"))
    keys = [(f"veth{i // 2:06d}", "rx" if i % 2 else "tx") for i in range(n)]
    writer = ExpositionWriter()

    fam = spec.family()
    for i, k in enumerate(keys):
        fam.add(k, i * 1000)

    def ours():
        return writer.render([fam])

    class PC:
        def collect(self):
            fam = CounterMetricFamily("nodenet_bench_bytes", "Bench.", labels=["interface", "direction"])
            for i, k in enumerate(keys):
                fam.add_metric(list(k), i * 1000)
            yield fam

    reg = CollectorRegistry()
    reg.register(PC())
    for name, fn, reps in (("writer, first scrape (cold cache)", ours, 1),
                           ("writer, next scrapes (median of 5)", ours, 5),
                           ("prometheus_client generate_latest", lambda: generate_latest(reg), 3)):
        times = []
        for _ in range(reps):
            t0 = time.process_time()
            body = fn()
            times.append(time.process_time() - t0)
        dt = sorted(times)[len(times) // 2]
        print(f"{name:<40} {dt * 1000:9.1f} ms CPU  {dt / n * 1e6:6.2f} us/sample  {len(body) / 2**20:6.1f} MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller scenarios (a few minutes)")
    ap.add_argument("--only", nargs="*", help="base exposition " + " ".join(SCENARIOS))
    ap.add_argument("--check", action="store_true",
                    help="scenario scripts exit non-zero when an issue-8 goal is missed")
    a = ap.parse_args()
    only = set(a.only or ["base", "exposition", *SCENARIOS])
    print(f"machine: {machine()}")
    print(f"node_exporter: {subprocess.run(['/usr/bin/prometheus-node-exporter', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    rc = 0
    if "base" in only:
        bench_base(a.quick)
    if "exposition" in only:
        bench_exposition(a.quick)
    for name, (script, quick_args) in SCENARIOS.items():
        if name not in only:
            continue
        path = os.path.join(HERE, script)
        print(f"\n== {name}: {script} ==", flush=True)
        if not os.path.exists(path):
            print(f"(missing: {path})")
            rc = 1
            continue
        args = [sys.executable, path] + (quick_args if a.quick else []) + (
            ["--check"] if a.check else [])
        rc |= subprocess.run(args, cwd=os.path.dirname(HERE)).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
