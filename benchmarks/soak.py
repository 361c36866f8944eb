#!/usr/bin/env python3
"""Soak at node scale: does nodenet-exporter's memory stay flat over many scrapes?

    sudo python3 benchmarks/soak.py [--scrapes 1000] [--quick] [--only netdev ipvs]
                                    [--interfaces 2000] [--max-seconds 900] [--check]

Two scenarios, each scraped N times back to back (one at a time, over loopback):

netdev
    A network namespace with 2,000 veth interfaces (peers in a second namespace, as pod veths
    on a node; built as benchmarks/netdev_bench.py does), nodenet-exporter with its default
    collectors inside it.  Plain text, as netdev_bench.py scrapes.  Both namespaces are
    removed at the end.
ipvs (native replay)
    benchmarks/ipvs_replay.py: the exporter with only the ipvs collector, its netlink socket
    replaced by the IPVS dump a UML guest captured (5,000 services x 10 backends: replay.bin
    and the procfs copy of the newest `ipvs_uml.py` run that has them, under
    tests/vm/.cache/runs; make one with `python benchmarks/ipvs_uml.py`).  Scraped with
    Accept-Encoding: gzip, as Prometheus does.  The replay process holds the replay data
    (~21 MiB) in memory, which a real node does not: its RSS is that much higher.

After scrapes 1, 10, 50, 100, 250, 500, 1000 (those <= N, and N) it prints VmRSS and VmHWM
(/proc/PID/status), minor page faults and CPU per scrape (/proc/PID/stat fields 10, 14+15;
over the last 100 scrapes, before scrape 101 over all but the first, cold one) and the
scrapes' wall p50 in the same window; then a verdict: VmRSS growth from scrape 100 to
scrape N (from an earlier checkpoint when N < 200, and said so), "no growth" when <= 1 MiB;
the figure is always printed.
The exporter's idle RSS (after it answers /healthz, before its first scrape) is the first row.

The scrape client keeps one HTTP/1.1 connection open, as Prometheus does
(--connection close: a new one per scrape).  The exporter is watched by the PID it was started
with (`ip netns exec` and the exporter's PYTHONMALLOC re-exec both keep it); its allocator
(PYTHONMALLOC in /proc/PID/environ) is printed.  Bounded: each scenario's scrapes stop after
--max-seconds (the run then says so and reports what it has), each scrape times out after
120 s, the exporter's start after 30 s.  Processes are stopped by PID and namespaces deleted
on errors, Ctrl-C and SIGTERM too.

--quick: 200 scrapes, 500 interfaces, 300 s per scenario (explicit flags win).
--check: exit 1 when RSS grew by more than 1 MiB in a scenario, or (netdev) idle RSS > 45 MiB
or VmHWM > 80 MiB (issue 8's goals; the ipvs replay's peak includes the replay data, so only
its growth is checked).
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import psutil  # noqa: E402

from common import Server, free_port, machine  # noqa: E402
from netdev_bench import build  # noqa: E402
from tests.helpers.netns import inside_netns  # noqa: E402
from tests.vm import uml  # noqa: E402  (CACHE: tests/vm/.cache, or $UML_CACHE)

CHECKPOINTS = (1, 10, 50, 100, 250, 500, 1000)
WINDOW = 100            # scrapes over which faults, CPU and wall are averaged at a checkpoint
GROWTH_LIMIT_MIB = 1.0
IDLE_GOAL_MIB, PEAK_GOAL_MIB = 45.0, 80.0
TICK = os.sysconf("SC_CLK_TCK")
SCRAPE_TIMEOUT = 120.0
CONN = {"keep-alive": "one kept-alive connection (as Prometheus)",
        "close": "a new connection per scrape"}


# -- the process, by PID --------------------------------------------------------------------

def proc_stat(pid: int) -> tuple[int, float]:
    """(minor faults, CPU seconds) of the whole process: /proc/PID/stat fields 10, 14 + 15."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()   # fields[0] is field 3 (state)
    return int(fields[7]), (int(fields[11]) + int(fields[12])) / TICK


def proc_mem(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    got = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                got[line[:5]] = int(line.split()[1]) / 1024
    return got.get("VmRSS", float("nan")), got.get("VmHWM", float("nan"))


def allocator(pid: int) -> str:
    """The Python allocator of process pid, from its environment (PYTHONMALLOC)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read().split(b"\0")
    except OSError as exc:
        return f"unknown ({exc.strerror})"
    for item in env:
        if item.startswith(b"PYTHONMALLOC="):
            return f"PYTHONMALLOC={item.split(b'=', 1)[1].decode()}"
    return "pymalloc (PYTHONMALLOC unset)"


# -- the scrape target ----------------------------------------------------------------------

class SoakServer(Server):
    """benchmarks/common.Server, except that it is ready when /healthz answers (every
    /metrics scrape is counted here, the first one included), keeps the exporter's stderr
    for error messages, stops the process if it never gets ready, and scrapes over one kept
    connection with or without gzip (http.client, body read into one buffer and dropped)."""

    def __init__(self, name: str, argv: list[str], port: int, netns: str | None = None):
        self.name, self.port, self.netns = name, port, netns
        self.conn: http.client.HTTPConnection | None = None
        self.reconnects = 0
        self._buf = bytearray(1 << 20)
        self._err = tempfile.TemporaryFile()
        cmd = argv if not netns else ["ip", "netns", "exec", netns, *argv]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._err, cwd=ROOT,
                                     env=dict(os.environ, PYTHONPATH=ROOT))
        try:
            self.ps = psutil.Process(self.proc.pid)
            self._wait_ready(30.0)
        except BaseException:
            self.stop()
            raise

    def stderr_tail(self, n: int = 800) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-n:].strip()

    def _wait_ready(self, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.stderr_tail()}")
            try:
                self.get("/healthz", keep=False)
                return
            except (OSError, http.client.HTTPException, RuntimeError):
                self.close()
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout:.0f} s: "
                           f"{self.stderr_tail()}")

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=SCRAPE_TIMEOUT)
        if self.netns:
            with inside_netns(self.netns):   # the socket lives in the exporter's namespace
                conn.connect()
        else:
            conn.connect()
        return conn

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def get(self, path: str = "/metrics", gzip: bool = False, keep: bool = True,
            count: bool = False) -> tuple[int, int | None]:
        """One GET: (body bytes on the wire, samples in it when count else None)."""
        headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
        if not keep:
            headers["Connection"] = "close"
        reused = self.conn is not None
        if self.conn is None:
            self.conn = self._connect()
        try:
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # the server closed a kept connection before taking the request: once, anew
            self.close()
            if not reused:
                raise
            self.reconnects += 1
            self.conn = self._connect()
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
        nbytes, samples, tail = 0, 0, b""
        unzip = zlib.decompressobj(wbits=31) if count and \
            resp.getheader("Content-Encoding", "") == "gzip" else None
        view = memoryview(self._buf)
        while True:
            k = resp.readinto(self._buf)
            if not k:
                break
            nbytes += k
            if count:
                text = tail + (unzip.decompress(view[:k]) if unzip else bytes(view[:k]))
                lines = text.split(b"\n")
                tail = lines.pop()
                samples += sum(1 for x in lines if x and not x.startswith(b"#"))
        if resp.status != 200:
            self.close()
            raise RuntimeError(f"GET {path}: HTTP {resp.status}")
        if resp.will_close or not keep:
            self.close()
        if count and tail and not tail.startswith(b"#"):
            samples += 1
        return nbytes, (samples if count else None)

    def stop(self):
        self.close()
        super().stop()


# -- the soak -------------------------------------------------------------------------------

ROW_HEADER = (f"{'scrape':>7} {'elapsed s':>9} {'VmRSS MiB':>9} {'VmHWM MiB':>9} "
              f"{'minflt/scrape':>13} {'CPU ms/scrape':>13} {'wall p50 ms':>11} "
              f"{'over scrapes':>12}")


def print_row(r: dict) -> None:
    if r["scrape"] == 0:
        print(f"{'idle':>7} {r['elapsed']:>9.1f} {r['rss']:>9.1f} {r['hwm']:>9.1f} "
              f"{'':>13} {'':>13} {'':>11} {'':>12}", flush=True)
        return
    print(f"{r['scrape']:>7} {r['elapsed']:>9.1f} {r['rss']:>9.1f} {r['hwm']:>9.1f} "
          f"{r['faults']:>13.1f} {r['cpu_ms']:>13.1f} {r['wall_ms']:>11.1f} {r['window']:>12}",
          flush=True)


def soak(srv: SoakServer, n: int, gzip: bool, keep: bool, max_seconds: float) -> dict:
    """Scrape srv n times (at most max_seconds); checkpoint rows printed as they are reached."""
    pid = srv.proc.pid
    cps = sorted({c for c in CHECKPOINTS if c <= n} | {n})
    t_start = time.monotonic()
    deadline = t_start + max_seconds
    f0, c0 = proc_stat(pid)
    flt, cpu, walls = [f0], [c0], []      # index k: after scrape k (0: before the first)
    rss, hwm = proc_mem(pid)
    rows = [{"scrape": 0, "elapsed": 0.0, "rss": rss, "hwm": hwm}]
    print(ROW_HEADER)
    print_row(rows[0])
    res = {"rows": rows, "done": 0, "stopped": None, "error": None, "samples": None,
           "bytes": None}

    def checkpoint(k: int) -> None:
        # the last WINDOW scrapes; before that all but the first (cold) one, unless k == 1
        w = 1 if k == 1 else min(WINDOW, k - 1)
        rss, hwm = proc_mem(pid)
        rows.append({"scrape": k, "elapsed": time.monotonic() - t_start, "rss": rss, "hwm": hwm,
                     "faults": (flt[k] - flt[k - w]) / w,
                     "cpu_ms": 1000 * (cpu[k] - cpu[k - w]) / w,
                     "wall_ms": 1000 * statistics.median(walls[k - w:k]),
                     "window": f"{k - w + 1}-{k}" if w > 1 else str(k)})
        print_row(rows[-1])

    k = 0
    try:
        for k in range(1, n + 1):
            if time.monotonic() > deadline:
                k -= 1
                res["stopped"] = (f"STOPPED EARLY after {k} of {n} scrapes: --max-seconds "
                                  f"{max_seconds:.0f} reached")
                break
            t0 = time.perf_counter()
            nbytes, samples = srv.get("/metrics", gzip=gzip, keep=keep, count=(k == 1))
            walls.append(time.perf_counter() - t0)
            f, c = proc_stat(pid)
            flt.append(f)
            cpu.append(c)
            res["done"] = k
            if k == 1:
                res["samples"], res["bytes"] = samples, nbytes
            if k in cps:
                checkpoint(k)
    except (OSError, http.client.HTTPException, RuntimeError) as exc:
        alive = srv.proc.poll() is None
        res["error"] = (f"scrape {k} failed: {exc!r}"
                        + ("" if alive else f"; exporter exited with {srv.proc.returncode}: "
                                            f"{srv.stderr_tail()}"))
        if not alive:
            return res
    done = res["done"]
    if done and rows[-1]["scrape"] != done:
        checkpoint(done)
    return res


def verdict(name: str, res: dict, check_peak: bool) -> tuple[list[str], list[str]]:
    """Prints the verdict; returns (errors, goals missed)."""
    rows = {r["scrape"]: r for r in res["rows"]}
    done = res["done"]
    errors, failures = [], []
    if res["stopped"]:
        print(res["stopped"])
    if res["error"]:
        print(f"ERROR: {res['error']}")
        errors.append(f"{name}: {res['error']}")
    if done < 2:
        print(f"verdict {name}: no figure ({done} scrapes)")
        return errors + [f"{name}: fewer than 2 scrapes"], failures
    base = 100 if done >= 200 else max(c for c in CHECKPOINTS[:3] if c <= max(1, done // 2))
    growth = rows[done]["rss"] - rows[base]["rss"]
    note = "" if base == 100 else f" (short run: from scrape {base}; the goal's figure is " \
                                  f"scrape 100 to 1,000)"
    word = "no growth" if growth <= GROWTH_LIMIT_MIB else "GROWTH"
    idle, peak = rows[0]["rss"], rows[done]["hwm"]
    print(f"verdict {name}: VmRSS growth from scrape {base} to scrape {done}: {growth:+.2f} MiB "
          f"({rows[base]['rss']:.1f} -> {rows[done]['rss']:.1f}) -> {word} "
          f"(limit {GROWTH_LIMIT_MIB:.0f} MiB){note}; VmHWM {rows[base]['hwm']:.1f} -> "
          f"{peak:.1f} MiB; idle {idle:.1f} MiB; minor faults/scrape at the end "
          f"{rows[done]['faults']:.1f}", flush=True)
    if growth > GROWTH_LIMIT_MIB:
        failures.append(f"{name}: RSS grew {growth:+.2f} MiB (> {GROWTH_LIMIT_MIB:.0f})")
    if check_peak:
        if idle > IDLE_GOAL_MIB:
            failures.append(f"{name}: idle RSS {idle:.1f} MiB > {IDLE_GOAL_MIB:.0f}")
        if peak > PEAK_GOAL_MIB:
            failures.append(f"{name}: VmHWM {peak:.1f} MiB > {PEAK_GOAL_MIB:.0f}")
    return errors, failures


def describe(srv: SoakServer, what: str, res_hint: str) -> None:
    print(f"{what}; exporter PID {srv.proc.pid}, allocator {allocator(srv.proc.pid)}; "
          f"{res_hint}", flush=True)


def soak_and_stop(srv, a, what: str, gzip: bool) -> dict:
    """Describe, soak and stop srv (whatever happens); print the scrape's size."""
    how = "Accept-Encoding: gzip" if gzip else "plain text"
    try:
        describe(srv, what, f"{how}, {CONN[a.connection]}, scrapes back to back")
        res = soak(srv, a.scrapes, gzip=gzip, keep=a.connection == "keep-alive",
                   max_seconds=a.max_seconds)
    finally:
        srv.stop()
    print_sizes(res, srv)
    return res


def scenario_netdev(a) -> tuple[list[str], list[str]]:
    tag = os.getpid()
    host, peer = f"nn-soak-{tag}", f"nn-soak-peer-{tag}"
    print(f"\n== soak netdev: {a.interfaces} interfaces, default collectors, {a.scrapes} scrapes "
          f"==", flush=True)
    try:
        t0 = time.monotonic()
        try:
            build(a.interfaces, host, peer)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"building {a.interfaces} veths failed: {exc.cmd[:4]}...: "
                               f"{(exc.stderr or '').strip()[-300:]}") from None
        print(f"namespace {host}: {a.interfaces} veth interfaces up (peers in {peer}), built in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        port = free_port()
        srv = SoakServer("nodenet-exporter", [sys.executable, "-m", "exporter", "--log.level=warn",
                                              f"--web.listen-address=127.0.0.1:{port}"], port, host)
        res = soak_and_stop(srv, a, "nodenet-exporter default collectors in the namespace",
                            gzip=False)
        return verdict("netdev", res, check_peak=True)
    finally:
        cleanup([host, peer])


def print_sizes(res: dict, srv: SoakServer) -> None:
    if res["samples"] is not None:
        print(f"scrape 1: {res['samples']} samples, {res['bytes'] / 2**20:.2f} MiB on the wire"
              + (f"; reconnects: {srv.reconnects}" if srv.reconnects else ""))


def run_size(run: Path) -> tuple[int, int] | None:
    """(services, backends) of an ipvs_uml.py run: its guest.sh command line."""
    try:
        text = (run / "guest.sh").read_text()
    except OSError:
        return None
    s, b = re.search(r"--services (\d+)", text), re.search(r"--backends (\d+)", text)
    return (int(s.group(1)), int(b.group(1))) if s and b else None


def find_replay(a) -> tuple[Path, Path]:
    """(replay.bin, procfs copy dir) to use; SystemExit with the way to make one if none."""
    if a.replay:
        replay = Path(a.replay)
        procfs = replay.parent / "procfs"
        if not replay.is_file() or not (procfs / "net" / "ip_vs").is_file():
            raise SystemExit(f"soak: {replay} or {procfs}/net/ip_vs missing (both are written "
                             f"by `python benchmarks/ipvs_uml.py`)")
        return replay, procfs
    runs = uml.CACHE / "runs"
    found = sorted(runs.glob("*/replay.bin"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if runs.is_dir() else []
    for replay in found:
        if run_size(replay.parent) == (a.services, a.backends) and \
                (replay.parent / "procfs" / "net" / "ip_vs").is_file():
            return replay, replay.parent / "procfs"
    size = "" if (a.services, a.backends) == (5000, 10) else \
        f" --services {a.services} --backends {a.backends}"
    raise SystemExit(
        f"soak: no IPVS replay of {a.services} services x {a.backends} backends in {runs} "
        f"({len(found)} replay.bin of other sizes or without procfs copy).\n"
        f"Make one (boots the UML guest, a few minutes): python benchmarks/ipvs_uml.py{size}\n"
        f"or pass --replay PATH/replay.bin (UML_CACHE selects another cache).")


def scenario_ipvs(a, replay: Path, procfs: Path) -> tuple[list[str], list[str]]:
    print(f"\n== soak ipvs (native replay): {a.services} services x {a.backends} backends, "
          f"{a.scrapes} scrapes ==", flush=True)
    size = replay.stat().st_size / 2**20
    print(f"replay: {replay} ({size:.1f} MiB), procfs copy {procfs}")
    print(f"caveat: the replay process keeps the replay's {size:.1f} MiB of netlink replies in "
          f"memory (a real node does not): its RSS and VmHWM are about that much higher than "
          f"the exporter's on a node; the growth figure is unaffected", flush=True)
    port = free_port()
    srv = SoakServer("nodenet-exporter ipvs (replay)", [
        sys.executable, os.path.join(HERE, "ipvs_replay.py"), str(replay), "--log.level=warn",
        f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
        "--collector.ipvs", "--collector.timeout=120s", f"--path.procfs={procfs}"], port)
    res = soak_and_stop(srv, a, "benchmarks/ipvs_replay.py, ipvs collector only", gzip=True)
    if res["samples"] is not None:
        print(f"         (gzip; {res['samples'] / max(1, a.services * a.backends):.1f} samples "
              f"per backend)")
    return verdict("ipvs", res, check_peak=False)


def cleanup(namespaces: list[str]) -> None:
    """Deletes the namespaces; a second Ctrl-C does not interrupt it."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    finally:
        signal.signal(signal.SIGINT, old)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapes", type=int, default=None, help="scrapes per scenario (1000)")
    ap.add_argument("--quick", action="store_true",
                    help="200 scrapes, 500 interfaces, 300 s per scenario")
    ap.add_argument("--only", nargs="+", choices=("netdev", "ipvs"), default=["netdev", "ipvs"])
    ap.add_argument("--interfaces", type=int, default=None, help="netdev: veths (2000)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="per scenario, for its scrapes (900)")
    ap.add_argument("--services", type=int, default=5000, help="ipvs: the replay's size")
    ap.add_argument("--backends", type=int, default=10, help="ipvs: the replay's size")
    ap.add_argument("--replay", help="ipvs: this replay.bin (its run dir's procfs/ beside it)")
    ap.add_argument("--connection", choices=("keep-alive", "close"), default="keep-alive")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 on growth > 1 MiB, or netdev idle > 45 / peak > 80 MiB")
    a = ap.parse_args()
    quick = {"scrapes": 200, "interfaces": 500, "max_seconds": 300.0}
    full = {"scrapes": 1000, "interfaces": 2000, "max_seconds": 900.0}
    for key, value in (quick if a.quick else full).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.scrapes < 1 or a.interfaces < 1:
        ap.error("--scrapes and --interfaces must be >= 1")
    if "netdev" in a.only and os.geteuid() != 0:
        print("soak: the netdev scenario needs root (network namespaces)", file=sys.stderr)
        return 2
    replay = find_replay(a) if "ipvs" in a.only else None   # fail before the long part
    signal.signal(signal.SIGTERM, _on_sigterm)
    print(f"# soak: {machine()}")
    print(f"# {a.scrapes} scrapes per scenario, at most {a.max_seconds:.0f} s each; rows after "
          f"scrapes {', '.join(str(c) for c in CHECKPOINTS if c <= a.scrapes)}"
          f"{'' if a.scrapes in CHECKPOINTS else f', {a.scrapes}'}; faults, CPU and wall per "
          f"scrape over the last {WINDOW} scrapes (before scrape {WINDOW + 1}: all but the first, "
          f"cold one)",
          flush=True)
    errors, failures = [], []
    try:
        for name in ("netdev", "ipvs"):
            if name not in a.only:
                continue
            try:
                e, f = scenario_netdev(a) if name == "netdev" else scenario_ipvs(a, *replay)
                errors += e
                failures += f
            except RuntimeError as exc:
                print(f"ERROR {name}: {exc}")
                errors.append(f"{name}: {exc}")
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): exporters stopped, namespaces deleted",
              file=sys.stderr)
        return 130
    if errors:
        print("FAILED: " + "; ".join(errors))
    if a.check:
        print(("CHECK FAILED: " + "; ".join(failures)) if failures else "CHECK OK")
    return 1 if errors or (a.check and failures) else 0


if __name__ == "__main__":
    sys.exit(main())
