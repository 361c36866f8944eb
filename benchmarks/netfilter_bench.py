"""Packet filter scrape cost at kube-proxy scale, side by side with the kernel tools (issue 19).

    sudo python benchmarks/netfilter_bench.py [--services 5000] [--endpoints 2] [--scrapes 20]
                                              [--tool-runs 5]

Two network namespaces (nn-nf-bench-*, removed at the end), each holding the chain shape
kube-proxy's iptables mode generates for N Services with E endpoints (KUBE-SERVICES -> one
KUBE-SVC-* per Service -> one KUBE-SEP-* per endpoint; tests/helpers/netfilter_rules.py):

- legacy: loaded with iptables-legacy-restore (nat table: 1 + 3E rules per Service + 7);
- nft: the same graph as one nftables table (ip kube-proxy-bench, loaded with nft -f).

In each, in one run: nodenet-exporter with only the netfilter collector (scraped over HTTP:
wall p50/p95 client side, CPU per scrape of the process, the collector's own duration as it
reports it, RSS) - for nft also with a commit before every scrape (the collector reuses its
counts while the generation id is unchanged, so this row is the cost of a walk) - and the
kernel tool a user would run instead, `iptables-legacy-save | wc -l`
or `nft list ruleset | wc -l` (wall and CPU of the pipeline, `ip netns exec` included).  The
exporter's counts are checked against the tools' (rules = -A lines; nft rules = the script's).
Bounded: every load and loop has a count and a time limit; processes are stopped by PID.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import HEADER, Server, machine, row  # noqa: E402

from tests.helpers.netfilter_rules import kube_services, kube_services_nft  # noqa: E402
from tests.helpers.netns import netns, run  # noqa: E402

ARGS = ["--collector.disable-defaults", "--collector.netfilter"]


def tool(ns: str, pipeline: str, runs: int, max_seconds: float = 120.0) -> dict:
    """Wall and CPU (children's utime+stime) of `pipeline` run in the namespace."""
    walls, lines = [], 0
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    deadline = time.monotonic() + max_seconds
    for _ in range(runs):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        out = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", pipeline],
                             capture_output=True, text=True, timeout=max_seconds, check=True)
        walls.append(time.perf_counter() - t0)
        lines = int(out.stdout.strip())
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / max(1, len(walls))
    walls.sort()
    return {"target": pipeline, "samples": lines, "scrapes": len(walls),
            "wall_p50_ms": 1000 * statistics.median(walls),
            "wall_p95_ms": 1000 * walls[min(len(walls) - 1, int(0.95 * len(walls)))],
            "cpu_ms": 1000 * cpu, "rss_mib": 0.0}


def value(body: str, name: str, **labels) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}(?:\{{{re.escape(want)}\}})? (\S+)$", body, re.M) if want else \
        re.search(rf"^{name} (\S+)$", body, re.M)
    return float(m.group(1)) if m else None


def measure_churned(ex: Server, ns: str, n: int, max_seconds: float = 300.0) -> dict:
    """As Server.measure, but with one nftables commit (a table added and deleted in one
    transaction, by `nft`, outside the timed part) before every scrape: the generation moves,
    so the collector must walk the whole ruleset each time."""
    ex.fetch()
    walls, cpu, partial = [], 0.0, 0
    deadline = time.monotonic() + max_seconds
    body = b""
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        run(["nft", "-f", "-"], netns=ns, input="add table ip nn-tick\ndelete table ip nn-tick\n")
        c0 = ex.cpu_seconds()
        t0 = time.perf_counter()
        body = ex.fetch()
        walls.append(time.perf_counter() - t0)
        cpu += ex.cpu_seconds() - c0
        partial += value(body.decode(), "nodenet_netfilter_rules_partial") == 1
    walls.sort()
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    print(f"  (commit each scrape: {partial} of {len(walls)} scrapes cut by the time budget)")
    return {"target": "nodenet-exporter (commit each scrape)", "samples": samples,
            "scrapes": len(walls), "wall_p50_ms": 1000 * statistics.median(walls),
            "wall_p95_ms": 1000 * walls[min(len(walls) - 1, int(0.95 * len(walls)))],
            "cpu_ms": 1000 * cpu / max(1, len(walls)), "rss_mib": ex.rss_mib()}


def durations_of(ex: Server, n: int) -> tuple[str, list[float]]:
    body, out = "", []
    for _ in range(n):
        body = ex.fetch().decode()
        out.append(value(body, "nodenet_scrape_collector_duration_seconds",
                         collector="netfilter") or 0.0)
    return body, out


def ours(ns: str, scrapes: int, churn: bool) -> tuple[list[dict], str, list[float]]:
    with Server.nodenet(ARGS, netns=ns) as ex:
        rows = [ex.measure(n=scrapes)]
        body, durations = durations_of(ex, min(scrapes, 10))
        if churn:
            rows.append(measure_churned(ex, ns, scrapes))
    return rows, body, durations


def scenario(kind: str, services: int, endpoints: int, scrapes: int, runs: int) -> None:
    with netns(f"nn-nf-bench-{kind}") as ns:
        t0 = time.monotonic()
        if kind == "legacy":
            text, rules = kube_services(services, endpoints)
            run(["iptables-legacy-restore"], netns=ns, input=text, timeout=300)
            labels = {"backend": "legacy", "family": "ipv4", "table": "nat"}
            pipeline = "iptables-legacy-save | wc -l"
        else:
            text, rules = kube_services_nft(services, endpoints)
            run(["nft", "-f", "-"], netns=ns, input=text, timeout=300)
            labels = {"backend": "nftables", "family": "ip", "table": "kube-proxy-bench"}
            pipeline = "nft list ruleset | wc -l"
        load = time.monotonic() - t0
        ms, body, durations = ours(ns, scrapes, churn=kind == "nft")
        t = tool(ns, pipeline, runs)
        got = value(body, "nodenet_netfilter_rules", **labels)
        chains = value(body, "nodenet_netfilter_chains", **labels)
        partial = value(body, "nodenet_netfilter_rules_partial")
        if kind == "legacy":
            save = run(["iptables-legacy-save", "-t", "nat"], netns=ns).stdout
            want = sum(1 for line in save.splitlines() if line.startswith("-A "))
        else:
            want = rules
        name = f"{kind}: {services} svc x {endpoints} ep"
        for m in ms:
            print(row(name, m, t))
        print(row(name, t))
        ok = "equal" if got == want else f"DIFFERENT (tool {want})"
        print(f"  {kind}: {int(got or 0)} rules, {int(chains or 0)} chains in the table "
              f"(loaded in {load:.1f}s); exporter vs tool count: {ok}; partial={partial}; "
              f"collector duration p50 {1000 * statistics.median(durations):.1f} ms, "
              f"max {1000 * max(durations):.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--endpoints", type=int, default=2)
    ap.add_argument("--scrapes", type=int, default=20)
    ap.add_argument("--tool-runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="500 Services, 5 scrapes, 3 tool runs")
    a = ap.parse_args()
    if a.quick:
        a.services, a.scrapes, a.tool_runs = 500, 5, 3
    if os.geteuid() != 0:
        print("netfilter_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    print(f"\n== netfilter: kube-proxy-like ruleset, {a.services} Services x {a.endpoints} "
          f"endpoints ==\n{machine()}\n(tool rows: RSS not measured; ratio = ours / tool)")
    print(HEADER)
    for kind in ("legacy", "nft"):
        scenario(kind, a.services, a.endpoints, a.scrapes, a.tool_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
