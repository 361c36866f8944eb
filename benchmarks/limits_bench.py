#!/usr/bin/env python3
"""Kernel-limits benchmark (issue 14): the sockets, netstat and neighbour collectors together,
side by side with node_exporter 1.5's netstat, sockstat, filefd and arp collectors, one run.

In a network namespace of its own it holds SOCKETS sockets (TCP connections on loopback,
both ends: SOCKETS/2 pairs, held by a helper process) and NEIGH permanent neighbour entries on
a veth (permanent entries: not counted toward gc_thresh3, so this machine's own neighbours are
never pushed out). It prints:

1. per collector, the median in-process cost of collect() (the issue's goal: the three
   together at most 1 ms per scrape), measured inside the namespace;
2. a full HTTP scrape of nodenet-exporter with only those three collectors vs node_exporter
   with netstat,sockstat,filefd,arp (wall p50/p95, CPU per scrape, samples);
3. as the permanent entries grow 100 -> 1,000 -> 10,000: our neighbour collector (one
   RTM_GETNEIGHTBL dump, O(tables)) vs node_exporter's arp collector (O(entries)).

    sudo python3 benchmarks/limits_bench.py [--sockets 10000] [--neigh 2000]
                                             [--growth 100,1000,10000] [--quick] [--check]

``--check`` exits 1 when the three collectors together take more than 1 ms (median).
Everything it creates (namespaces, processes, entries: deleted with the namespace) is removed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from common import HEADER, Server, row  # noqa: E402

from tests.helpers.netns import netns  # noqa: E402

COLLECTORS = ("sockets", "netstat", "neighbour")
NE_COLLECTORS = ["netstat", "sockstat", "filefd", "arp"]


def inner(rounds: int) -> None:
    """Run inside the namespace: median collect() time of each collector, JSON on stdout."""
    import io

    from exporter import log as logmod
    from exporter.cli import all_options
    from exporter.collectors import load_all
    from exporter.collectors.base import REGISTRY, Context
    from exporter.config import resolve
    load_all()
    settings = resolve(all_options(), [], "bench", "0", set(REGISTRY))
    log = logmod.setup("error", "json", stream=io.StringIO())
    out = {}
    for name in COLLECTORS:
        c = REGISTRY[name](Context(settings=settings, log=log.bind(collector=name)))
        list(c.collect())
        times = []
        deadline = time.monotonic() + 20
        for _ in range(rounds):
            t0 = time.perf_counter()
            fams = list(c.collect())
            times.append(time.perf_counter() - t0)
            if time.monotonic() > deadline:
                break
        out[name] = {"median_ms": 1000 * statistics.median(times),
                     "p95_ms": 1000 * sorted(times)[int(0.95 * (len(times) - 1))],
                     "samples": sum(len(f.samples) for f in fams), "rounds": len(times)}
        c.close()
    print(json.dumps(out))


def hold_sockets(pairs: int) -> None:
    """Run inside the namespace: hold `pairs` loopback TCP connections (2 sockets each) until
    stdin closes; prints 'ready N' once they exist. Bounded to 120 s."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * pairs + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), max(hard, want)),
                                                    max(hard, want)))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    held = []
    deadline = time.monotonic() + 120
    for _ in range(pairs):
        c = socket.create_connection(srv.getsockname(), timeout=5)
        s, _ = srv.accept()
        held += [c, s]
        if time.monotonic() > deadline:
            break
    print(f"ready {len(held)}", flush=True)
    sys.stdin.read()


def sh(*args: str, input: str | None = None) -> None:
    subprocess.run(args, check=True, input=input, text=True, capture_output=True)


def add_neighbours(ns: str, start: int, end: int) -> None:
    """Permanent entries 10.200.x.y on the namespace's veth nb0 (indexes start..end-1)."""
    batch = "".join(f"neigh add 10.{200 + i // 65000}.{i // 250 % 260}.{i % 250 + 1} lladdr "
                    f"02:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01 dev nb0 "
                    f"nud permanent\n" for i in range(start, end))
    if batch:
        sh("ip", "-n", ns, "-batch", "-", input=batch)


def in_ns_collect(ns: str, rounds: int) -> dict:
    res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inner",
                          str(rounds)], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    return json.loads(res.stdout)


def scenario(ns: str, a) -> int:
    """The three collectors at a.sockets sockets and a.neigh entries: in-process and HTTP."""
    rc = 0
    costs = in_ns_collect(ns, 200)
    total = sum(c["median_ms"] for c in costs.values())
    print("-- in-process collect(), median of 200 (p95) --")
    for name, c in costs.items():
        print(f"  {name:<10} {c['median_ms']:7.3f} ms  (p95 {c['p95_ms']:.3f})  "
              f"{c['samples']} samples")
    print(f"  together   {total:7.3f} ms   goal <= 1 ms: {'met' if total <= 1.0 else 'MISSED'}")
    if a.check and total > 1.0:
        rc = 1
    print("-- full HTTP scrape, same namespace: our three vs node_exporter's four --")
    print(HEADER)
    flags = ["--collector.disable-defaults", *[f"--collector.{c}" for c in COLLECTORS]]
    with Server.nodenet(flags, netns=ns) as ours, \
            Server.node_exporter(NE_COLLECTORS, netns=ns) as ne:
        m_ne = ne.measure(n=a.scrapes)
        m_ours = ours.measure(n=a.scrapes)
    label = f"{a.sockets} sockets, {a.neigh} neigh"
    print(row(label, m_ours, m_ne))
    print(row(label, m_ne))
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sockets", type=int, default=10_000)
    ap.add_argument("--neigh", type=int, default=2_000)
    ap.add_argument("--growth", default="100,1000,10000")
    ap.add_argument("--scrapes", type=int, default=25)
    ap.add_argument("--quick", action="store_true", help="1,000 sockets, 500 entries, 100,1000")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inner:
        inner(a.inner)
        return 0
    if a.hold:
        hold_sockets(a.hold)
        return 0
    if a.quick:
        a.sockets, a.neigh, a.growth, a.scrapes = 1000, 500, "100,1000", 10
    growth = [int(x) for x in a.growth.split(",") if x]
    rc = 0
    with netns("nn-bench-limits") as ns:
        sh("ip", "-n", ns, "link", "add", "nb0", "type", "veth", "peer", "name", "nb1")
        sh("ip", "-n", ns, "link", "set", "nb0", "up")
        sh("ip", "-n", ns, "addr", "add", "10.199.0.1/16", "dev", "nb0")
        holder = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, __file__,
                                   "--hold", str(a.sockets // 2)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                  env=dict(os.environ, PYTHONPATH=ROOT))
        try:
            ready = holder.stdout.readline().split()
            assert ready and ready[0] == "ready", f"socket holder failed: {ready}"
            with open(f"/proc/{holder.pid}/net/sockstat") as fh:
                sockstat = fh.read().splitlines()[:2]
            print(f"namespace {ns}: {ready[1]} sockets held ({' / '.join(sockstat)})")
            have = 0
            for size in sorted(set(growth + [a.neigh])):
                add_neighbours(ns, have, size)
                have = size
                print(f"\n== {size} permanent neighbour entries ==")
                if size == a.neigh:
                    rc |= scenario(ns, a)
                print(f"-- our neighbour collector (one dump) vs node_exporter arp (every "
                      f"entry) --")
                print(HEADER)
                with Server.nodenet(["--collector.disable-defaults", "--collector.neighbour"],
                                    netns=ns) as ours, \
                        Server.node_exporter(["arp"], netns=ns) as ne:
                    m_ne = ne.measure(n=a.scrapes)
                    m_ours = ours.measure(n=a.scrapes)
                neigh_ms = in_ns_collect(ns, 100)["neighbour"]["median_ms"]
                print(row(f"{size} entries", m_ours, m_ne))
                print(row(f"{size} entries", m_ne))
                print(f"{'':<34} neighbour collect() in-process: {neigh_ms:.3f} ms")
        finally:
            if holder.poll() is None:
                holder.stdin.close()
                try:
                    holder.wait(10)
                except subprocess.TimeoutExpired:
                    holder.kill()
                    holder.wait()
    return rc


if __name__ == "__main__":
    sys.exit(main())
