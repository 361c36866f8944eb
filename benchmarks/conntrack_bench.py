"""Conntrack scrape cost vs table size, side by side with node_exporter 1.5 (issues #3, #8).

    sudo python benchmarks/conntrack_bench.py [--sizes 10000,100000,250000] [--scrapes 100]
                                               [--state-scrapes 5] [--check]

Builds one network namespace (nn-conntrack-bench-*, removed at the end), fills its table with
real flows (tests/helpers/ctfill_fast.py: ESTABLISHED+ASSURED TCP, i.e. what the state
breakdown has to decode fully), and at each size scrapes, inside that namespace:

- nodenet-exporter with only the conntrack collector (count, max, per-CPU stats, expect);
- nodenet-exporter with --collector.conntrack.states (adds the budgeted table dump);
- node_exporter 1.5 (/usr/bin/prometheus-node-exporter --collector.disable-defaults
  --collector.conntrack), which reads /proc/sys/net/netfilter and /proc/net/stat.

Per exporter and size it prints: scrape wall time p50/p95 over the scrapes (client side, HTTP
included), CPU time per scrape (utime+stime of the process over all scrapes / scrapes), the
collector's own duration as the exporter reports it, and RSS.  Each exporter's HTTP traffic is
excluded from tracking (notrack), so scraping does not change the table being measured.
Bounded: every fill and the whole run have time limits; processes are stopped by PID.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.helpers import ctns  # noqa: E402
from tests.helpers.ctns import Exporter, Netns  # noqa: E402

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
TICK = os.sysconf("SC_CLK_TCK")


class NodeExporter(Exporter):
    def __init__(self, ns, port):
        super().__init__([], ns=ns, port=port)
        self.argv = ns.argv([NODE_EXPORTER, "--collector.disable-defaults",
                             "--collector.conntrack", f"--web.listen-address=127.0.0.1:{port}"])

    def __enter__(self):
        import subprocess
        self._err = open(self.stderr_path, "w+")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=self._err)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if self.get("/metrics", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"node_exporter did not start: {self.stderr()}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def collector_duration(text: str, prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f'{prefix}_scrape_collector_duration_seconds{{collector="conntrack"}}'):
            return float(line.split()[-1])
    return None


def measure(exp, scrapes: int, prefix: str) -> dict:
    """Scrapes from one thread living in the exporter's namespace (no per-scrape setns)."""
    url = f"http://127.0.0.1:{exp.port}/metrics"

    def loop():
        for _ in range(2):  # warm up (imports, caches)
            ctns.http_get(url)
        walls, durations = [], []
        cpu0 = cpu_seconds(exp.pid)
        for _ in range(scrapes):
            t0 = time.perf_counter()
            status, text = ctns.http_get(url)
            walls.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"scrape answered {status}")
            d = collector_duration(text, prefix)
            if d is not None:
                durations.append(d)
        return walls, durations, (cpu_seconds(exp.pid) - cpu0) / scrapes, text

    walls, durations, cpu, text = ctns.in_netns(exp.ns.name, loop)
    walls.sort()
    return {"p50": statistics.median(walls),
            "p95": walls[min(len(walls) - 1, int(0.95 * len(walls)))],
            "cpu": cpu, "coll": statistics.median(durations) if durations else float("nan"),
            "rss": rss_mib(exp.pid), "text": text}


def sample_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,250000")
    ap.add_argument("--scrapes", type=int, default=100, help="scrapes per count/stats measurement")
    ap.add_argument("--state-scrapes", type=int, default=5, help="scrapes with --collector.conntrack.states")
    ap.add_argument("--max-seconds", type=float, default=600, help="whole run")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="pause after each fill (the kernel's conntrack gc scans the new entries)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if a goal of issue #8 is missed (count/stats O(1) and within 2 ms "
                         "of node_exporter; state dump of the largest size < 2 s CPU, not partial)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (ip netns, nft)", file=sys.stderr)
        return 2
    if not os.path.exists(NODE_EXPORTER):
        print(f"{NODE_EXPORTER} missing (Debian prometheus-node-exporter)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    limit = int(open("/proc/sys/net/netfilter/nf_conntrack_max").read())
    if max(sizes) > limit:
        print(f"largest size {max(sizes)} exceeds nf_conntrack_max {limit}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.max_seconds
    print(f"# kernel {os.uname().release}, {os.cpu_count()} CPUs, nf_conntrack_max {limit}, "
          f"entries: ESTABLISHED+ASSURED TCP; load average {os.getloadavg()[0]:.2f}")
    rows, failures = [], []
    with Netns("bench") as ns:
        port = 19700 + os.getpid() % 200
        ours = Exporter(["--collector.disable-defaults", "--collector.conntrack"], ns=ns, port=port)
        states = Exporter(["--collector.disable-defaults", "--collector.conntrack",
                           "--collector.conntrack.states"], ns=ns, port=port + 1)
        node = NodeExporter(ns, port + 2)
        for p in (port, port + 1, port + 2):
            ns.exec(["nft", "-f", "-"], input=ctns.notrack_ruleset(p).replace(
                "nn_conntrack_notrack", f"nn_conntrack_notrack_{p}"))
        with ours, states, node:
            index = 0
            for size in sizes:
                t0 = time.monotonic()
                while ns.proc_count() < size and time.monotonic() < deadline:
                    n = size - ns.proc_count()
                    r = ns.fill(n, start=index, proto="tcp-assured",
                                max_seconds=max(1, deadline - time.monotonic()))
                    index = r["next"]
                count = ns.proc_count()
                fill_s = time.monotonic() - t0
                time.sleep(args.settle)
                if count < size:
                    print(f"could not reach {size} entries in time ({count})", file=sys.stderr)
                    return 1
                m_ours = measure(ours, args.scrapes, "nodenet")
                m_node = measure(node, args.scrapes, "node")
                m_states = measure(states, args.state_scrapes, "nodenet")
                partial = sample_value(m_states["text"], "nodenet_conntrack_entries_by_state_partial")
                seen = sum(float(l.split()[-1]) for l in m_states["text"].splitlines()
                           if l.startswith("nodenet_conntrack_entries_by_state{"))
                ours_entries = sample_value(m_ours["text"], "nodenet_conntrack_entries")
                node_entries = sample_value(m_node["text"], "node_nf_conntrack_entries")
                rows.append((size, count, fill_s, m_ours, m_node, m_states, partial, seen,
                             ours_entries, node_entries))
                print(f"# filled {count} entries (+{fill_s:.1f}s); ours saw {ours_entries:.0f}, "
                      f"node_exporter {node_entries:.0f}, states dump counted {seen:.0f}",
                      flush=True)
    hdr = (f"{'entries':>8} | {'exporter':<28} | {'wall p50':>9} {'p95':>9} | {'CPU/scrape':>10} | "
           f"{'collector':>9} | {'RSS MiB':>7}")
    print(hdr)
    print("-" * len(hdr))
    for size, count, _f, m_ours, m_node, m_states, partial, seen, *_ in rows:
        for label, m in (("nodenet conntrack", m_ours), ("node_exporter 1.5 conntrack", m_node),
                         ("nodenet --states", m_states)):
            print(f"{count:>8} | {label:<28} | {m['p50'] * 1e3:>7.2f}ms {m['p95'] * 1e3:>7.2f}ms | "
                  f"{m['cpu'] * 1e3:>8.2f}ms | {m['coll'] * 1e3:>7.2f}ms | {m['rss']:>7.1f}")
        per_entry = m_states["coll"] / count * 1e6 if count else float("nan")
        print(f"{'':>8} | states dump: {m_states['coll'] * 1e3:.0f} ms wall for {seen:.0f} entries "
              f"({per_entry:.2f} us/entry), {m_states['cpu'] * 1e3:.0f} ms CPU/scrape, "
              f"partial={partial:.0f}")
    print(f"# load average at the end {os.getloadavg()[0]:.2f} (other work on this machine "
          f"inflates wall times, not CPU per scrape)")
    small, large = rows[0], rows[-1]
    ratio = large[3]["p50"] / small[3]["p50"]
    print(f"# count/stats scrape p50 at {large[1]} vs {small[1]} entries: x{ratio:.2f} "
          f"(O(1) means ~1); ours - node_exporter at {large[1]}: "
          f"{(large[3]['p50'] - large[4]['p50']) * 1e3:+.2f} ms")
    if args.check:
        if ratio > 1.5 and large[3]["p50"] - small[3]["p50"] > 0.001:
            failures.append(f"count/stats not O(1): x{ratio:.2f}")
        if large[3]["p50"] - large[4]["p50"] > 0.002:
            failures.append("count/stats more than 2 ms slower than node_exporter")
        if large[5]["cpu"] > 2.0 or large[6] != 0:
            failures.append(f"state dump: {large[5]['cpu']:.2f}s CPU, partial={large[6]}")
        for f in failures:
            print("CHECK FAILED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
