#!/usr/bin/env python3
"""IPVS at node scale, in User-Mode Linux: nodenet-exporter vs node_exporter 1.5 vs ipvsadm.

    python benchmarks/ipvs_uml.py [--quick] [--services 5000] [--backends 10] [--scrapes 5]
                                  [--check]

Boots the UML guest of tests/vm (fetched by tests/vm/setup_uml.sh), loads a table of
SERVICES x BACKENDS with one `ipvsadm -R`, then, in the same guest and against the same table,
measures per scrape (the exporters: scraped with Accept-Encoding: gzip as Prometheus does, wall
on the client's socket, CPU of the server process; a side table adds uncompressed reads)
wall p50/p95, CPU ms and RSS of
- nodenet-exporter with only the ipvs collector (default flags: per-backend series too),
  and with --no-collector.ipvs.backends (per-service series only);
- node_exporter 1.5 with only its ipvs collector (/proc/net/ip_vs: per-backend
  connections and weight only, no traffic counters);
- `ipvsadm -Ln --stats` (the kernel-side reference: the same netlink dump, in C);
- the exporter's reader alone (netlink dump + decode, in one Python process).
The guest has one CPU; every loop is bounded in count and time; the guest is powered off at
the end, so nothing is left behind.  --check fails (exit 1) if nodenet-exporter's scrape is
not faster than node_exporter's, server side (raw socket, and gzip as Prometheus asks).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)


def restore_text(services: int, backends: int) -> str:
    """ipvsadm -R input: TCP services on 10.96.0.0/16 (port 80 + i // 60000 spread), each with
    `backends` NAT backends on 10.200.0.0/16 (table only: the guest has no NIC)."""
    lines = []
    for i in range(services):
        vip = f"10.96.{i // 250}.{i % 250 + 1}:{80 + i % 3}"
        lines.append(f"-A -t {vip} -s rr")
        for j in range(backends):
            k = i * backends + j
            rip = f"10.{200 + k // 62500}.{(k // 250) % 250}.{k % 250 + 1}:8080"
            lines.append(f"-a -t {vip} -r {rip} -m -w {1 + j % 3}")
    return "\n".join(lines) + "\n"


def measure_cmd(argv, n: int, max_seconds: float = 300.0) -> dict:
    """Run a command n times; wall, CPU and peak RSS of that command alone (wait4)."""
    walls, cpus, rss, out_lines = [], [], 0, 0
    deadline = time.monotonic() + max_seconds
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        walls.append(time.perf_counter() - t0)
        p.stdout.close()
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise RuntimeError(f"{argv} failed rc={p.returncode}")
        cpus.append(ru.ru_utime + ru.ru_stime)
        rss = max(rss, ru.ru_maxrss / 1024)
        out_lines = out.count(b"\n")
    walls.sort()
    return {"target": " ".join(os.path.basename(a) for a in argv), "samples": out_lines,
            "scrapes": len(walls), "wall_p50_ms": 1000 * statistics.median(walls),
            "wall_p95_ms": 1000 * walls[min(len(walls) - 1, int(0.95 * len(walls)))],
            "cpu_ms": 1000 * statistics.mean(cpus), "rss_mib": rss}


def measure_reader(n: int) -> dict:
    import psutil

    from exporter.sources import ipvs
    reader = ipvs.IPVSReader()
    walls, cpus = [], []
    nb = ns = 0
    for _ in range(n):
        c0, t0 = time.process_time(), time.perf_counter()
        ns = nb = 0
        for svc in reader.scan():       # as the collector consumes it: one service at a time
            ns += 1
            nb += len(svc.backends)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    walls.sort()
    return {"target": "reader only (dump+decode)", "samples": ns + nb, "scrapes": n,
            "wall_p50_ms": 1000 * statistics.median(walls),
            "wall_p95_ms": 1000 * walls[min(len(walls) - 1, int(0.95 * len(walls)))],
            "cpu_ms": 1000 * statistics.mean(cpus),
            "rss_mib": psutil.Process().memory_info().rss / 2**20,
            "per_backend_us": 1e6 * statistics.median(cpus) / max(1, nb)}


def _hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024


def raw_fetch(port: int, gzip: bool = False) -> tuple:
    """GET /metrics over a plain socket, the body discarded as it arrives (4 MiB recv_into:
    no HTTP parsing, no copies on the client side): (time to first byte, total, bytes)."""
    import socket
    req = (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
           + (b"Accept-Encoding: gzip\r\n" if gzip else b"") + b"\r\n")
    buf = bytearray(4 << 20)
    n, ttfb = 0, None
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        t0 = time.perf_counter()
        sock.sendall(req)
        while True:
            k = sock.recv_into(buf)
            if not k:
                break
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            n += k
    return ttfb, time.perf_counter() - t0, n


def collect_seconds(body: bytes) -> float | None:
    """nodenet_scrape_collector_duration_seconds{collector="ipvs"} of a scrape (ours only)."""
    key = b'nodenet_scrape_collector_duration_seconds{collector="ipvs"} '
    i = body.rfind(key)
    return None if i < 0 else float(body[i + len(key):body.index(b"\n", i)])


def _p50(xs):
    return 1000 * statistics.median(xs) if xs else float("nan")


def interleaved(servers, n: int, max_seconds: float = 600.0) -> list:
    """Scrape the servers in turn, n rounds (after one warm-up round), so that the host's
    load changes hit all of them alike; per server: wall p50/p95, CPU per scrape, RSS.
    Each round scrapes each server three ways: urllib (uncompressed; its wall includes the
    client's own HTTP parsing and copies, on the same CPU in UML), a raw socket that discards
    the body (time to first byte, total: the server's side), and a raw socket with
    Accept-Encoding: gzip, as Prometheus scrapes: that one is the main table's wall and CPU
    (the server's CPU during the scrape)."""
    walls = {id(s): [] for s in servers}
    cpus = {id(s): [] for s in servers}
    extra = {id(s): {k: [] for k in ("ttfb", "raw", "raw_cpu", "gz", "gz_cpu", "gz_bytes",
                                     "collect")} for s in servers}
    bodies = {}
    for s in servers:
        bodies[id(s)] = s.fetch()
    first_rss = {id(s): s.rss_mib() for s in servers}
    deadline = time.monotonic() + max_seconds
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        for s in servers:
            c0 = s.cpu_seconds()
            t0 = time.perf_counter()
            bodies[id(s)] = s.fetch()
            walls[id(s)].append(time.perf_counter() - t0)
            cpus[id(s)].append(s.cpu_seconds() - c0)
            x = extra[id(s)]
            cs = collect_seconds(bodies[id(s)])
            if cs is not None:
                x["collect"].append(cs)
            c0 = s.cpu_seconds()
            ttfb, total, _ = raw_fetch(s.port)
            x["raw_cpu"].append(s.cpu_seconds() - c0)
            x["ttfb"].append(ttfb)
            x["raw"].append(total)
            c0 = s.cpu_seconds()
            _, total, nbytes = raw_fetch(s.port, gzip=True)
            x["gz_cpu"].append(s.cpu_seconds() - c0)
            x["gz"].append(total)
            x["gz_bytes"].append(nbytes)
    out = []
    for s in servers:
        w = sorted(walls[id(s)])
        body = bodies[id(s)]
        x = extra[id(s)]
        g = sorted(x["gz"])
        out.append({"target": s.name, "scrapes": len(g),
                    "samples": sum(1 for x in body.splitlines() if x and not x.startswith(b"#")),
                    # the main table: a scrape as Prometheus makes it (gzip), server side
                    "bytes": len(body), "wall_p50_ms": 1000 * statistics.median(g),
                    "wall_p95_ms": 1000 * g[min(len(g) - 1, int(0.95 * len(g)))],
                    "cpu_ms": 1000 * statistics.mean(x["gz_cpu"]), "rss_mib": s.rss_mib(),
                    "urllib_wall_ms": 1000 * statistics.median(w),
                    "urllib_cpu_ms": 1000 * statistics.mean(cpus[id(s)]),
                    "first_rss_mib": first_rss[id(s)], "hwm_mib": _hwm_mib(s.proc.pid),
                    "collect_ms": _p50(x["collect"]), "ttfb_ms": _p50(x["ttfb"]),
                    "raw_wall_ms": _p50(x["raw"]),
                    "raw_cpu_ms": 1000 * statistics.mean(x["raw_cpu"] or [float("nan")]),
                    "gz_wall_ms": _p50(x["gz"]),
                    "gz_cpu_ms": 1000 * statistics.mean(x["gz_cpu"] or [float("nan")]),
                    "gz_bytes": max(x["gz_bytes"] or [0])})
    return out


SIDE_HEADER = (f"{'target':<40} {'urllib wall':>11} {'collect':>8} {'raw TTFB':>9} "
               f"{'raw wall':>9} {'raw CPU':>8} {'gzip wall':>9} {'gzip CPU':>8} {'gzip MiB':>8}")


def side_row(m: dict) -> str:
    """Client vs server: the urllib client's wall, the collector's own duration
    (ours), a raw-socket scrape's time to first byte / total / server CPU, and the same
    with gzip (ms, p50; CPU: mean)."""
    return (f"{m['target']:<40} {m['urllib_wall_ms']:>11.0f} {m['collect_ms']:>8.0f} "
            f"{m['ttfb_ms']:>9.0f} {m['raw_wall_ms']:>9.0f} {m['raw_cpu_ms']:>8.0f} "
            f"{m['gz_wall_ms']:>9.0f} {m['gz_cpu_ms']:>8.0f} {m['gz_bytes'] / 2**20:>8.1f}")


def print_side(ms) -> None:
    print("\nwhere the wall goes (ms): client (urllib) vs server (raw socket, body discarded), "
          "and gzip as Prometheus asks for it")
    print(SIDE_HEADER)
    for m in ms:
        print(side_row(m), flush=True)


def guest(a) -> int:
    from common import HEADER, Server, row   # benchmarks/common.py (psutil, loopback only)
    out = os.environ.get("OUT", "/tmp")
    res = {"services": a.services, "backends": a.backends, "rows": []}
    t0 = time.monotonic()
    subprocess.run(["ipvsadm", "-R"], input=restore_text(a.services, a.backends).encode(),
                   check=True)
    res["build_s"] = time.monotonic() - t0
    print(f"table: {a.services} services x {a.backends} backends loaded in {res['build_s']:.1f} s",
          flush=True)
    res["kernel"] = os.uname().release
    cache = os.environ["UML_CACHE"]
    # the same table for the native (host) rows: raw netlink replies and procfs text
    import ipvs_replay
    ipvs_replay.capture(os.path.join(out, "replay.bin"))
    os.makedirs(os.path.join(out, "procfs", "net"), exist_ok=True)
    for name in ("ip_vs", "ip_vs_stats"):
        with open(f"/proc/net/{name}") as src, \
                open(os.path.join(out, "procfs", "net", name), "w") as dst:
            dst.write(src.read())

    def ours(name, port, *flags):
        return Server(name, [sys.executable, "-m", "exporter", "--log.level=warn",
                             f"--web.listen-address=127.0.0.1:{port}",
                             "--collector.disable-defaults", "--collector.ipvs",
                             "--collector.timeout=120s", *flags], port)
    rows = []
    # the comparison that matters, interleaved: default flags vs node_exporter's ipvs collector
    with ours("nodenet-exporter ipvs", 9834) as o, \
            Server("node_exporter 1.5 ipvs", [os.path.join(cache, "bin", "node_exporter"),
                   "--web.listen-address=127.0.0.1:9100", "--collector.disable-defaults",
                   "--collector.ipvs"], 9100) as ne:
        m_ours, m_ne = interleaved([o, ne], a.scrapes)
    rows += [("ipvs, per-backend (default)", m_ours), ("ipvs", m_ne)]
    rows.append(("ipvs, kernel reference", measure_cmd(["ipvsadm", "-Ln", "--stats"], a.scrapes)))
    rows.append(("ipvs, decode reference", measure_reader(a.scrapes)))
    with ours("nodenet-exporter ipvs per-service", 9835, "--no-collector.ipvs.backends") as o:
        rows.append(("ipvs, per-service only", interleaved([o], a.scrapes)[0]))
    print(HEADER)
    for scen, m in rows:
        print(row(scen, m, m_ne), flush=True)
        res["rows"].append(dict(m, scenario=scen))
    print_side([m_ours, m_ne, rows[-1][1]])
    with open(os.path.join(out, "ipvs_bench.json"), "w") as f:
        json.dump(res, f, indent=1)
    return 0


def host(a) -> int:
    sys.path.insert(0, os.path.join(ROOT, "tests", "vm"))
    import uml
    script = (f"$PY $CODE/benchmarks/ipvs_uml.py --guest --services {a.services} "
              f"--backends {a.backends} --scrapes {a.scrapes}")
    res = uml.run_guest(script, timeout=a.timeout, mem_mb=a.mem, tag="ipvs-bench")
    lines = res.console.splitlines()
    start = next((i for i, x in enumerate(lines) if x.startswith("table:")), None)
    if res.rc != 0 or start is None:
        print(res.tail(60))
        print(f"guest failed rc={res.rc} (console: {res.outdir}/console.log)", file=sys.stderr)
        return 1
    data = json.loads((res.outdir / "ipvs_bench.json").read_text())
    print(f"UML guest: 1 CPU, {a.mem} MiB, kernel {data['kernel']}; boot {res.boot_seconds:.1f} s,"
          f" total {res.elapsed:.0f} s")
    for x in lines[start:]:
        if "NN_EXIT" in x or x.startswith("reboot:"):
            break
        print(x)
    r = {x["scenario"]: x for x in data["rows"]}
    ours, ne = r["ipvs, per-backend (default)"], r["ipvs"]
    kern, dec = r["ipvs, kernel reference"], r["ipvs, decode reference"]
    nb = data["services"] * data["backends"]
    print(f"per backend: scrape {1000 * ours['wall_p50_ms'] / nb:.1f} us wall, "
          f"{1000 * ours['cpu_ms'] / nb:.1f} us CPU; dump+decode {dec['per_backend_us']:.1f} us CPU")
    print(f"server side: nodenet/node_exporter raw-socket wall "
          f"{ours['raw_wall_ms'] / ne['raw_wall_ms']:.2f}x, gzip wall "
          f"{ours['gz_wall_ms'] / ne['gz_wall_ms']:.2f}x, gzip CPU "
          f"{ours['gz_cpu_ms'] / ne['gz_cpu_ms']:.2f}x")
    print(f"ratios: nodenet/node_exporter wall {ours['wall_p50_ms'] / ne['wall_p50_ms']:.2f}x, "
          f"nodenet/ipvsadm wall {ours['wall_p50_ms'] / kern['wall_p50_ms']:.2f}x, "
          f"decode/ipvsadm wall {dec['wall_p50_ms'] / kern['wall_p50_ms']:.2f}x")
    print(f"RSS: nodenet after its first scrape {ours['first_rss_mib']:.1f} MiB, after "
          f"{ours['scrapes']} more {ours['rss_mib']:.1f} MiB, peak {ours['hwm_mib']:.1f} MiB; "
          f"node_exporter peak {ne['hwm_mib']:.1f} MiB; exposition {ours['bytes'] / 2**20:.1f} MiB "
          f"vs {ne['bytes'] / 2**20:.1f} MiB")
    if not a.no_native:
        nat = native(str(res.outdir), a.scrapes)
        print(f"native ratio nodenet/node_exporter wall "
              f"{nat['ours']['wall_p50_ms'] / nat['node_exporter']['wall_p50_ms']:.2f}x, "
              f"peak RSS {nat['ours']['hwm_mib']:.1f} vs {nat['node_exporter']['hwm_mib']:.1f} MiB")
    # the goal: a scrape faster than node_exporter's, server side (the guest's single CPU
    # also runs the client: urllib parsing our 84 MiB body is the client's cost), both as
    # Prometheus scrapes (gzip) and uncompressed
    slow = [k for k in ("gz_wall_ms", "raw_wall_ms") if ours[k] >= ne[k]]
    if a.check and slow:
        print(f"CHECK FAILED: nodenet-exporter is not faster than node_exporter ({', '.join(slow)})",
              file=sys.stderr)
        return 1
    return 0


def native(outdir, scrapes: int) -> dict:
    """The same table, user space only, on the host: node_exporter reads the guest's
    /proc/net/ip_vs copy, nodenet-exporter replays the guest's netlink replies."""
    from common import NODE_EXPORTER, Server, free_port, row
    tree = os.path.join(outdir, "procfs")
    p1, p2 = free_port(), free_port()
    with Server("nodenet-exporter ipvs (replay)", [
            sys.executable, os.path.join(HERE, "ipvs_replay.py"), os.path.join(outdir, "replay.bin"),
            "--log.level=warn", f"--web.listen-address=127.0.0.1:{p1}",
            "--collector.disable-defaults", "--collector.ipvs", "--collector.timeout=120s",
            f"--path.procfs={tree}"], p1) as o, \
            Server("node_exporter 1.5 ipvs (procfs copy)", [
                NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{p2}",
                "--collector.disable-defaults", "--collector.ipvs", f"--path.procfs={tree}"],
                p2) as ne:
        m_ours, m_ne = interleaved([o, ne], scrapes)
    print("\nnative, user space only (host CPU; same table, kernel reads not included):")
    print(row("ipvs, per-backend (default)", m_ours, m_ne))
    print(row("ipvs", m_ne))
    print_side([m_ours, m_ne])
    print(f"RSS native: nodenet after its first scrape {m_ours['first_rss_mib']:.1f} MiB, after "
          f"{m_ours['scrapes']} more {m_ours['rss_mib']:.1f} MiB, peak {m_ours['hwm_mib']:.1f} MiB")
    return {"ours": m_ours, "node_exporter": m_ne}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--backends", type=int, default=10)
    ap.add_argument("--scrapes", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1,000 services x 10, 3 scrapes")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--mem", type=int, default=2048, help="guest memory, MiB")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--no-native", action="store_true",
                    help="skip the native (host, replayed) user-space rows")
    ap.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.services, a.scrapes = min(a.services, 1000), min(a.scrapes, 3)
    return guest(a) if a.guest else host(a)


if __name__ == "__main__":
    sys.exit(main())
