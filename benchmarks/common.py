"""Shared measurement helpers for the benchmark scripts (not imported by the exporter).

Everything runs against servers on loopback (or inside network namespaces the benchmark
creates); every loop is bounded in count and time.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import urllib.request

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.helpers.exporter_proc import free_port  # noqa: E402
from tests.helpers.netns import call_in_netns  # noqa: E402

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


class Server:
    """A scrape target process (ours or node_exporter), optionally in a network namespace."""

    def __init__(self, name: str, argv: list[str], port: int, netns: str | None = None):
        self.name, self.port, self.netns = name, port, netns
        cmd = argv if not netns else ["ip", "netns", "exec", netns, *argv]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        self.ps = psutil.Process(self.proc.pid)
        self._wait_ready()

    @classmethod
    def nodenet(cls, args=(), netns=None):
        port = free_port()
        return cls("nodenet-exporter", [sys.executable, "-m", "exporter", "--log.level=warn",
                                        f"--web.listen-address=127.0.0.1:{port}", *args],
                   port, netns)

    @classmethod
    def node_exporter(cls, collectors, netns=None):
        port = free_port()
        argv = [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}",
                "--collector.disable-defaults", *[f"--collector.{c}" for c in collectors]]
        return cls("node_exporter " + "+".join(collectors), argv, port, netns)

    def _wait_ready(self, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.fetch()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start")

    def _target(self):
        """The process doing the work: `ip netns exec` execs, so it is the same pid."""
        return self.ps

    def fetch(self) -> bytes:
        def get():
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=60) as r:
                return r.read()
        return call_in_netns(self.netns, get)

    def rss_mib(self) -> float:
        return self._target().memory_info().rss / 2**20

    def cpu_seconds(self) -> float:
        t = self._target().cpu_times()
        return t.user + t.system

    def measure(self, n: int = 25, warmup: int = 1, max_seconds: float = 120.0) -> dict:
        for _ in range(warmup):
            body = self.fetch()
        walls = []
        deadline = time.monotonic() + max_seconds
        c0 = self.cpu_seconds()  # kernel accounts CPU in 10 ms ticks: average over the run
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            body = self.fetch()
            walls.append(time.perf_counter() - t0)
        cpu_per_scrape = (self.cpu_seconds() - c0) / max(1, len(walls))
        samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        walls.sort()
        return {"target": self.name, "samples": samples, "scrapes": len(walls),
                "wall_p50_ms": 1000 * statistics.median(walls),
                "wall_p95_ms": 1000 * walls[min(len(walls) - 1, int(0.95 * len(walls)))],
                "cpu_ms": 1000 * cpu_per_scrape, "rss_mib": self.rss_mib()}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


HEADER = (f"{'scenario':<34} {'target':<40} {'samples':>8} {'wall p50':>9} {'wall p95':>9} "
          f"{'CPU ms':>8} {'RSS MiB':>8} {'ratio':>7}")


def row(scenario: str, m: dict, ref: dict | None = None) -> str:
    ratio = ""
    if ref and ref is not m and ref["wall_p50_ms"] > 0:
        ratio = f"{m['wall_p50_ms'] / ref['wall_p50_ms']:.2f}x"
    return (f"{scenario:<34} {m['target']:<40} {m['samples']:>8} {m['wall_p50_ms']:>8.2f}m "
            f"{m['wall_p95_ms']:>8.2f}m {m['cpu_ms']:>8.2f} {m['rss_mib']:>8.1f} {ratio:>7}")


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"kernel {os.uname().release}, Python {sys.version.split()[0]}")
