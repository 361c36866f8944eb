#!/usr/bin/env python3
"""Fleet view benchmark (issue 17): the overview dashboard's queries at N nodes, with and without
the recording rules of alerts/build.py (group nodenet-fleet), on a real Prometheus.

1. One real scrape: nodenet-exporter at default flags on the node namespace of
   tests/helpers/podnode.py (underlay, bridge, VXLAN, pod veths, conntrack), kept to the metric
   names the overview's queries touch (the recorded and the raw variant of the dashboard).
2. N synthetic nodes made from it (instance label varied, counters rising at per-node rates;
   the interface drop counters rise only on ``--dropping-share`` of the nodes, on each of their
   interfaces, and stand still elsewhere), 1 hour at 60 s, written as OpenMetrics in chunks
   into one file and fed to ``promtool tsdb create-blocks-from openmetrics`` (the file is
   removed right after).
3. A Prometheus on those blocks; ``promtool tsdb create-blocks-from rules`` computes the
   recording rules' output for the same hour from it; Prometheus restarts with both.
4. Every overview panel query, Grafana variables substituted (all nodes selected, rate interval
   4m), instant at the end and as a range over the last 15 minutes (step 60 s), through the
   HTTP API, ``--repeat`` times each: p50/p95 per panel for the raw dashboard (aggregating
   the per-CPU and per-interface series itself) and for the shipped one (reading the recorded
   series), with the number of series each query's selectors touch.

    sudo python3 benchmarks/fleet_bench.py [--nodes 5000] [--repeat 5] [--max-gb 10]
                                           [--dropping-share 0.1]

A quicker look: ``--nodes 500 --repeat 2`` (a tenth of the series: 30 s here; a full
run at 5,000 nodes took 7 minutes).

Bounded: the OpenMetrics file is checked against --max-gb while it is written, every HTTP call
has a timeout, and the working directory (blocks, logs) is removed at the end.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tests.helpers import dashboards as dh  # noqa: E402
from tests.helpers.exporter_proc import ExporterProcess, free_port  # noqa: E402
from tests.helpers.podnode import pod_node  # noqa: E402

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RULES = os.path.join(REPO, "alerts", "nodenet.rules.yaml")
JOB = "nodenet-exporter"
STEP = 60


def load_grafana_build():
    spec = importlib.util.spec_from_file_location("grafana_build",
                                                  os.path.join(REPO, "grafana", "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def overview_queries(raw: bool) -> list[tuple[str, str]]:
    """(panel / refId, expr) of the overview; raw: the variant that reads no recorded series."""
    mod = load_grafana_build()
    if raw:
        mod.RecordedQ = mod.Q
    dash = mod.overview()
    out = []
    for panel in dh.all_panels(dash):
        for t in panel.get("targets", []):
            out.append((f"{panel['title']} / {t['refId']}", t["expr"]))
    return out


def substitute(expr: str) -> str:
    return dh.substitute(expr, {"job": JOB, "instance": ".+", "__rate_interval": "4m"})


INTERFACE_DROPS = re.compile(r"nodenet_interface_(receive|transmit)_drops_total")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def real_scrape(pods: int) -> list[tuple[str, str, float]]:
    """(name, '{labels}' without braces or '', value) of one default-flags scrape."""
    with pod_node(pods=pods) as node:
        with ExporterProcess([f"--path.sysfs={node.sysfs}"], netns=node.ns) as ex:
            ex.scrape()
            time.sleep(1.0)
            text = ex.scrape()
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = (m.group(2) or "{}")[1:-1]
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def write_openmetrics(path: str, series: list, nodes: int, t0: int, points: int,
                      max_bytes: int, dropping_share: float = 0.1, seed: int = 17) -> int:
    """The fleet's hour, family by family (OpenMetrics wants a family's samples together and
    each series' timestamps rising). Counters (``_total``) rise at a per-node rate; the
    interface drop counters only on ``dropping_share`` of the nodes (every interface of those),
    elsewhere they keep the real scrape's value; gauges keep the real scrape's value. Returns
    the samples written."""
    rnd = random.Random(seed)
    rates = [rnd.choice((0.0, 0.0, 0.0, 0.01, 0.1, 1.0)) for _ in range(nodes)]
    dropping = set(rnd.sample(range(nodes), round(nodes * dropping_share)))
    by_family: dict = {}
    for name, labels, value in series:
        by_family.setdefault(name, []).append((labels, value))
    written = 0
    times = [t0 + STEP * i for i in range(points)]
    with open(path, "w", buffering=1 << 20) as fh:
        for name in sorted(by_family):
            fh.write(f"# TYPE {name} unknown\n")
            counter = name.endswith("_total")
            if_drops = INTERFACE_DROPS.fullmatch(name) is not None
            chunk = []
            for n in range(nodes):
                inst = f'instance="node-{n:05d}:9834",job="{JOB}"'
                rate = rates[n] * (1 + n % 7)
                if if_drops:
                    rate = max(rates[n], 0.01) * (1 + n % 7) if n in dropping else 0.0
                for labels, value in by_family[name]:
                    ls = f"{{{labels},{inst}}}" if labels else f"{{{inst}}}"
                    if counter:
                        chunk.extend(f"{name}{ls} {value + rate * STEP * i:.0f} {t}\n"
                                     for i, t in enumerate(times))
                    else:
                        chunk.extend(f"{name}{ls} {value:g} {t}\n" for t in times)
                written += len(by_family[name]) * points
                if len(chunk) > 200_000:
                    fh.write("".join(chunk))
                    chunk = []
                    if fh.tell() > max_bytes:
                        raise RuntimeError(f"OpenMetrics file above {max_bytes >> 30} GB: stop")
            fh.write("".join(chunk))
        fh.write("# EOF\n")
    return written


def run(cmd: list[str], timeout: float) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed: {res.stderr[-2000:]}")
    return res.stdout


class Prom:
    def __init__(self, data: str, port: int, log: str):
        cfg = os.path.join(os.path.dirname(log), "prometheus.yml")
        with open(cfg, "w") as fh:
            fh.write("global:\n  scrape_interval: 1h\n")
        self.base = f"http://127.0.0.1:{port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
             "--storage.tsdb.retention.time=30d", f"--web.listen-address=127.0.0.1:{port}",
             "--query.max-samples=500000000", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.base + "/-/ready", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("prometheus not ready")

    def get(self, path: str, **params) -> tuple[float, dict]:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=120) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        return time.perf_counter() - t0, body

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def series_touched(prom: Prom, expr: str, at: int) -> int:
    total = 0
    for metric, matchers in dh.selectors(expr):
        body = ",".join(f'{k}{op}{v}' for k, (op, v) in matchers.items())
        _, res = prom.get("/api/v1/query", query=f"count({metric}{{{body}}})", time=at)
        result = res.get("data", {}).get("result", [])
        total += int(float(result[0]["value"][1])) if result else 0
    return total


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods", type=int, default=30, help="pod veths on the scraped node")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--max-gb", type=float, default=10.0)
    ap.add_argument("--dropping-share", type=float, default=0.1,
                    help="share of the nodes whose interfaces drop (0.5: like the first "
                         "runs' data)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="nodenet-fleet-")
    prom = None
    try:
        raw_q, rec_q = overview_queries(raw=True), overview_queries(raw=False)
        names = set()
        for _, expr in raw_q + rec_q:
            names |= dh.metric_names(expr)
        series = [s for s in real_scrape(a.pods) if s[0] in names]
        per_node = len(series)
        end = int(time.time()) // STEP * STEP - STEP
        points = 60
        t0 = end - STEP * (points - 1)
        om = os.path.join(work, "fleet.om")
        data = os.path.join(work, "data")
        c0 = time.monotonic()
        samples = write_openmetrics(om, series, a.nodes, t0, points, int(a.max_gb * 2**30),
                                    a.dropping_share)
        size = os.path.getsize(om)
        c1 = time.monotonic()
        run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "-q", om, data], 3600)
        os.remove(om)
        c2 = time.monotonic()
        print(f"# {a.nodes} nodes x {per_node} series (of a {a.pods}-pod node's default scrape, "
              f"the metrics the overview reads) = {a.nodes * per_node} series, {samples} samples "
              f"(1 h at {STEP} s), interfaces dropping on {a.dropping_share:.0%} of the nodes; "
              f"OpenMetrics {size / 2**30:.2f} GiB written in {c1 - c0:.0f} s, "
              f"blocks in {c2 - c1:.0f} s", flush=True)
        port = free_port()
        prom = Prom(data, port, os.path.join(work, "prometheus.log"))
        rules_out = os.path.join(work, "rules")
        run([PROMTOOL, "tsdb", "create-blocks-from", "rules", f"--start={t0}",
             f"--end={end + STEP}", f"--url={prom.base}", f"--output-dir={rules_out}",
             f"--eval-interval={STEP}s", "-q", RULES], 3600)
        prom.stop()
        for block in os.listdir(rules_out):
            shutil.move(os.path.join(rules_out, block), os.path.join(data, block))
        c3 = time.monotonic()
        print(f"# recording rules backfilled in {c3 - c2:.0f} s; "
              f"blocks on disk {sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs) / 2**30:.2f} GiB",
              flush=True)
        prom = Prom(data, port, os.path.join(work, "prometheus2.log"))
        rows = []
        assert [w for w, _ in raw_q] == [w for w, _ in rec_q]
        for (where, raw_e), (_, rec_e) in zip(raw_q, rec_q):
            # the two variants of a panel alternate, so load from elsewhere hits both alike
            exprs = {"raw": substitute(raw_e), "recorded": substitute(rec_e)}
            times = {v: ([], [], [0]) for v in exprs}
            for _ in range(a.repeat):
                for v, e in exprs.items():
                    dt, body = prom.get("/api/v1/query", query=e, time=end)
                    times[v][0].append(dt)
                    times[v][2][0] += body.get("status") != "success"
                for v, e in exprs.items():
                    dt, body = prom.get("/api/v1/query_range", query=e, start=end - 900,
                                        end=end, step=STEP)
                    times[v][1].append(dt)
                    times[v][2][0] += body.get("status") != "success"
            for v, e in exprs.items():
                inst, rng, errors = times[v]
                rows.append((v, where, series_touched(prom, e, end), inst, rng, errors[0]))
        print(f"\n{'panel / query':<58} {'variant':<9} {'series':>8} {'instant p50':>11} "
              f"{'p95':>7} {'range15m p50':>12} {'p95':>7} {'errors':>6}")
        for variant, where, n, inst, rng, errors in sorted(rows, key=lambda r: (r[1], r[0])):
            print(f"{where[:58]:<58} {variant:<9} {n:>8} {statistics.median(inst) * 1e3:>9.0f}ms "
                  f"{pct(inst, .95) * 1e3:>5.0f}ms {statistics.median(rng) * 1e3:>10.0f}ms "
                  f"{pct(rng, .95) * 1e3:>5.0f}ms {errors:>6}")
        worst = {v: max(max(pct(r[3], .95), pct(r[4], .95)) for r in rows if r[0] == v)
                 for v in ("raw", "recorded")}
        print(f"\nworst p95 over all panels: raw {worst['raw'] * 1e3:.0f} ms, recorded "
              f"{worst['recorded'] * 1e3:.0f} ms (goal: every overview panel under 1 s)")
        return 0 if worst["recorded"] < 1.0 else 1
    finally:
        if prom is not None:
            prom.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
