#!/usr/bin/env python3
"""A/B: two exporter trees scraped in turn (A B A B ...) in one run, on the same kernel state.

    sudo python benchmarks/ab.py --a /path/to/tree-A --b /path/to/tree-B [--scrapes 21]
                                 [--only netdev,conntrack,states,ipvs] [--interfaces 2000]
                                 [--entries 250000] [--services 5000] [--backends 10]

This machine is noisy (shared CPUs): two runs cannot be compared, so each scenario starts one
exporter per tree on the same state and alternates their scrapes, then prints, per tree,
the median over the scrapes (after 2 warm-ups each) of

- wall: the client's GET, connect to last byte (plain text, no gzip);
- CPU: the exporter process' CPU time during that scrape (sum of /proc/<pid>/task/*/schedstat,
  nanosecond resolution, all threads);

and B/A.  Scenarios (every one bounded in count and time, everything created is removed):

- netdev: ``--interfaces`` veth interfaces in a namespace made here (their peers in a second);
- conntrack: a namespace filled with ``--entries`` ESTABLISHED+ASSURED TCP flows
  (tests/helpers/ctfill_fast.py); ``conntrack`` scrapes the default collector (three small
  ctnetlink requests), ``states`` adds ``--collector.conntrack.states`` (the whole table
  dumped and counted by state);
- ipvs: a ``--services`` x ``--backends`` table replayed natively, the kernel's answers
  replayed just above the system calls in both trees (REPLAY_LAUNCHER below: the same
  level for a tree with the shared netlink layer and for one without).  The replay file is
  synthesised from the kernel's own messages
  (tests/fixtures/netlink/ipvs_services.hex and ipvs_dests_04.hex, captured from a real IPVS
  kernel): the same byte layouts, with addresses and ports made unique.

Each tree runs its own code: ``PYTHONPATH=<tree>``, ``python -m exporter`` with cwd ``<tree>``.
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tests.helpers import ctns  # noqa: E402
from tests.helpers.netns import inside_netns  # noqa: E402

FIX = os.path.join(ROOT, "tests", "fixtures", "netlink")


# --- processes --------------------------------------------------------------------------------

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_ns(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except OSError:
            pass   # a thread that ended meanwhile
    return total


class Target:
    """One exporter of one tree, optionally inside a network namespace."""

    def __init__(self, label: str, tree: str, args: list[str], netns: str | None = None,
                 script: list[str] | None = None):
        self.label, self.tree, self.netns = label, tree, netns
        self.port = free_port()
        cmd = (script or ["-m", "exporter"])
        argv = [sys.executable, *cmd, "--log.level=warn",
                f"--web.listen-address=127.0.0.1:{self.port}", *args]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, cwd=tree, env=dict(os.environ, PYTHONPATH=tree),
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.bytes = 0
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                self.err.seek(0)
                raise RuntimeError(f"{self.label} exited: {self.err.read()[-800:].decode()}")
            try:
                self.get(timeout=5)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.label} not ready after {timeout}s")

    def get(self, timeout: float = 120.0) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if self.netns:
            with inside_netns(self.netns):
                conn.connect()
        else:
            conn.connect()
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise OSError(f"HTTP {resp.status}")
            return body
        finally:
            conn.close()

    def scrape(self, keep: bool) -> bytes:
        c0, t0 = cpu_ns(self.proc.pid), time.perf_counter()
        body = self.get()
        wall, cpu = time.perf_counter() - t0, cpu_ns(self.proc.pid) - c0
        if keep:
            self.walls.append(wall)
            self.cpus.append(cpu / 1e9)
            self.bytes = len(body)
        return body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.err.close()


def interleave(targets: list[Target], scrapes: int, warmup: int = 2,
               max_seconds: float = 900.0) -> dict[str, bytes]:
    """A B A B ...: every target scraped in turn; the last body of each kept."""
    t_end = time.monotonic() + max_seconds
    last = {}
    for i in range(warmup + scrapes):
        for t in (targets if i % 2 == 0 else targets[::-1]):   # A B B A A B ...: no order bias
            last[t.label] = t.scrape(keep=i >= warmup)
        if time.monotonic() > t_end:
            raise RuntimeError(f"time budget of {max_seconds:g}s exceeded after {i + 1} rounds")
    return last


def sample(body: bytes, name: str) -> float | None:
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def series(body: bytes) -> list[str]:
    """The exposition's series (names + labels), without the volatile self-metrics."""
    return sorted(line.rsplit(" ", 1)[0] for line in body.decode().splitlines()
                  if line and not line.startswith("#")
                  and not line.startswith("nodenet_scrape_collector_duration_seconds"))


# --- scenarios --------------------------------------------------------------------------------

def sh(*args: str, input: str | None = None) -> None:
    subprocess.run(args, check=True, input=input, text=True, capture_output=True)


def settle_links(ns: str, n: int, max_seconds: float = 180.0) -> None:
    """operstate follows carrier asynchronously (linkwatch, ~100 links/s on a loaded machine):
    wait until every veth is up, so that both trees see the same state."""
    import json
    t_end = time.monotonic() + max_seconds
    while time.monotonic() < t_end:
        out = subprocess.run(["ip", "-n", ns, "-j", "link"], capture_output=True, text=True)
        up = sum(1 for d in json.loads(out.stdout) if d.get("operstate") == "UP")
        if up >= n:
            return
        time.sleep(1)
    raise RuntimeError(f"only {up} of {n} links up after {max_seconds:g}s")


def scenario_netdev(a, trees):
    host, peer = f"nn-ab-nd-{uuid.uuid4().hex[:6]}", f"nn-ab-ndp-{uuid.uuid4().hex[:6]}"
    try:
        for ns in (host, peer):
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", host, "link", "set", "lo", "up")
        sh("ip", "-n", host, "-batch", "-", input="".join(
            f"link add ab{i} type veth peer name abp{i} netns {peer}\n"
            for i in range(a.interfaces)))
        sh("ip", "-n", peer, "-batch", "-",
           input="".join(f"link set abp{i} up\n" for i in range(a.interfaces)))
        sh("ip", "-n", host, "-batch", "-",
           input="".join(f"link set ab{i} up\n" for i in range(a.interfaces)))
        settle_links(host, a.interfaces)
        return run_pair(a, trees, f"netdev, {a.interfaces} interfaces",
                        ["--collector.disable-defaults", "--collector.netdev"], netns=host)
    finally:
        for ns in (host, peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def scenario_conntrack(a, trees, states: bool):
    limit = int(open("/proc/sys/net/netfilter/nf_conntrack_max").read())
    if a.entries > limit:
        raise RuntimeError(f"--entries {a.entries} above nf_conntrack_max {limit}")
    rows = []
    with ctns.Netns("ab") as ns:
        t0 = time.monotonic()
        index = 0
        while ns.proc_count() < a.entries and time.monotonic() - t0 < 300:
            r = ns.fill(a.entries - ns.proc_count(), start=index, proto="tcp-assured",
                        max_seconds=max(1.0, 300 - (time.monotonic() - t0)))
            index = r["next"]
        count = ns.proc_count()
        if count < a.entries:
            raise RuntimeError(f"filled only {count} of {a.entries} entries in 300 s")
        print(f"# conntrack: {count} entries filled in {time.monotonic() - t0:.0f} s", flush=True)
        time.sleep(3)   # the kernel's gc scans the new entries
        flags = ["--collector.disable-defaults", "--collector.conntrack"]
        for st in ((False, True) if states is None else (states,)):
            f = flags + (["--collector.conntrack.states", "--collector.conntrack.states.timeout=30s",
                          "--collector.timeout=40s"] if st else [])
            name = (f"conntrack, {count} entries" + (", --states (table dump)" if st else ""))
            rows += run_pair(a, trees, name, f, netns=ns.name, ct_ns=ns)
    return rows


def synth_ipvs(path: str, services: int, backends: int) -> None:
    """A replay file (benchmarks/ipvs_replay.py format) of services x backends, from the
    captured kernel messages: each service the first IPv4 TCP service message of the capture,
    each backend its first IPv4 destination message, addresses and ports made unique."""
    from exporter.sources import ipvs
    from exporter.sources import netlink as nl

    def datagrams(name):
        return nl.load_hex(os.path.join(FIX, name))

    def first(datagrams_, kind):
        for d in datagrams_:
            for _t, _f, _s, start, end in nl.iter_messages(d):
                if _t < nl.NLMSG_MIN_TYPE:
                    continue
                top = nl.attrs(d, start + 4, end)
                if kind in top:
                    inner = nl.attrs(d, *top[kind])
                    return bytearray(d[start - 16:end]), inner
        raise RuntimeError(f"no {kind} message in the fixtures")

    svc, s_at = first(datagrams("ipvs_services.hex"), ipvs.IPVS_CMD_ATTR_SERVICE)
    assert struct.unpack_from("=H", svc, s_at[ipvs.SVC_AF][0])[0] == socket.AF_INET
    dst, d_at = first(datagrams("ipvs_dests_04.hex"), ipvs.IPVS_CMD_ATTR_DEST)
    done = nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 0, b"\0" * 4)
    out = []
    for i in range(services):
        m = bytearray(svc)
        m[s_at[ipvs.SVC_ADDR][0]:s_at[ipvs.SVC_ADDR][0] + 4] = socket.inet_aton(
            f"10.96.{i // 250}.{i % 250 + 1}")
        struct.pack_into("!H", m, s_at[ipvs.SVC_PORT][0], 80)
        out.append(bytes(m))
    recs = [b"".join(out) + done]
    for i in range(services):
        msgs = []
        for j in range(backends):
            m = bytearray(dst)
            k = i * backends + j
            m[d_at[ipvs.DST_ADDR][0]:d_at[ipvs.DST_ADDR][0] + 4] = socket.inet_aton(
                f"10.{200 + k // 62500}.{k // 250 % 250}.{k % 250 + 1}")
            struct.pack_into("!H", m, d_at[ipvs.DST_PORT][0], 8000 + j)
            msgs.append(bytes(m))
        recs.append(b"".join(msgs) + done)
    with open(path, "wb") as f:
        for r in recs:
            f.write(struct.pack("=I", len(r)) + r)


# Runs one tree's exporter with the kernel's answers replayed just above the system calls,
# the same level in both trees: a tree with exporter/sources/netlink.py gets a
# ReplayTransport where its KernelTransport would be; an older tree gets its own socket
# class with socket.socket and recvmmsg.receiver faked underneath.  (An older tree's own
# benchmarks/ipvs_replay.py replaced its whole socket class, request logic included, so it
# measured less of the exporter than a replay at the transport can.)
REPLAY_LAUNCHER = r"""
import os, struct, sys
tree, path = os.getcwd(), sys.argv[1]
sys.path.insert(0, tree)
sys.path.insert(0, os.path.join(tree, "benchmarks"))
from exporter import memory
memory.reexec_with_malloc()
import ipvs_replay
from exporter.sources import ipvs
recs = ipvs_replay.load(path)
services = ipvs.decode_services(recs[0])
by_key = {ipvs.service_key(s): recs[1 + i] for i, s in enumerate(services)}
FAM = 0x20
H = struct.Struct("=IHHII")

def nlmsg(t, f, seq, payload):
    ln = 16 + len(payload)
    return H.pack(ln, t, f, seq, 0) + payload + bytes(-ln & 3)

def ctrl():
    name = b"IPVS\0"
    body = bytes((1, 2, 0, 0)) + struct.pack("=HHH", 6, 1, FAM) + bytes(2)
    body += struct.pack("=HH", 4 + len(name), 2) + name + bytes(-(4 + len(name)) & 3)
    return nlmsg(0x10, 2, 0, body) + nlmsg(3, 2, 0, bytes(4))

CTRL = ctrl()

def answer(request):
    t, cmd = struct.unpack_from("=H", request, 4)[0], request[16]
    if t == 0x10:
        return [CTRL]
    return [recs[0] if cmd == ipvs.IPVS_CMD_GET_SERVICE else by_key[bytes(request[20:])]]

def with_seq(datagram, seq):
    # the same rewrite for both trees (a copy of netlink._with_seq): equal-length messages and
    # a trailing 20-byte NLMSG_DONE in slices, anything else walked
    import array
    buf = bytearray(datagram)
    n = len(buf)
    if n >= 16 and n % 4 == 0:
        ln = struct.unpack_from("=I", buf, 0)[0]
        body = n - 20 if ln and n % ln == 20 and struct.unpack_from("=I", buf, n - 20)[0] == 20 else n
        if ln >= 16 and ln % 4 == 0 and body % ln == 0:
            words = memoryview(buf).cast("I")
            k = body // ln
            if words[0:body // 4:ln // 4].tolist().count(ln) == k:
                words[2:body // 4:ln // 4] = array.array("I", [seq]) * k
                if body != n:
                    words[body // 4 + 2] = seq
                return bytes(buf)
    off = 0
    while off + 16 <= n:
        ln = struct.unpack_from("=I", buf, off)[0]
        if ln < 16:
            break
        struct.pack_into("=I", buf, off + 8, seq)
        off += (ln + 3) & ~3
    return bytes(buf)

try:
    from exporter.sources import netlink as nl
except ImportError:
    nl = None
if nl is not None:
    nl._with_seq = with_seq

    class Replay(nl.ReplayTransport):
        def __init__(self, protocol, *a, **k):
            super().__init__(answer)
    nl.KernelTransport = Replay
else:
    queue = []

    class FakeSock:
        def __init__(self, *a, **k): pass
        def setsockopt(self, *a): pass
        def bind(self, *a): pass
        def fileno(self): return -1
        def close(self): pass
        def send(self, data):
            seq = struct.unpack_from("=I", data, 8)[0]
            queue.extend((with_seq(d, seq), 0) for d in answer(data))

    class FakeRx:
        def __init__(self, *a, **k): pass
        def recv(self):
            return [queue.pop(0)]

    import socket as real_socket
    fake = type(sys)("socket_fake")
    fake.__dict__.update({k: getattr(real_socket, k) for k in dir(real_socket) if not k.startswith("__")})
    fake.socket = FakeSock
    ipvs.socket = fake
    ipvs.recvmmsg.receiver = lambda sock, size, batched=None: FakeRx()
from exporter.cli import main
sys.exit(main(sys.argv[2:]))
"""


def scenario_ipvs(a, trees):
    with tempfile.TemporaryDirectory(prefix="nn-ab-ipvs-") as tmp:
        replay = os.path.join(tmp, "replay.bin")
        synth_ipvs(replay, a.services, a.backends)
        os.makedirs(os.path.join(tmp, "proc", "net"))
        open(os.path.join(tmp, "proc", "net", "ip_vs"), "w").close()   # "IPVS present"
        launcher = os.path.join(tmp, "replay_launcher.py")
        with open(launcher, "w") as fh:
            fh.write(REPLAY_LAUNCHER)
        return run_pair(a, trees, f"ipvs replay, {a.services} x {a.backends}",
                        ["--collector.disable-defaults", "--collector.ipvs",
                         "--collector.timeout=120s", f"--path.procfs={tmp}/proc"],
                        script=[launcher, replay])


def run_pair(a, trees, name, args, netns=None, script=None, ct_ns=None):
    targets = []
    try:
        for label, tree in trees:
            targets.append(Target(label, tree, args, netns=netns, script=script))
            if ct_ns is not None:   # keep the scrapes' own TCP out of the measured table
                p = targets[-1].port
                ct_ns.exec(["nft", "-f", "-"], input=ctns.notrack_ruleset(p).replace(
                    "nn_conntrack_notrack", f"nn_conntrack_notrack_{p}"))
        last = interleave(targets, a.scrapes)
        bodies = [last[t.label] for t in targets]
        for t, body in zip(targets, bodies, strict=True):
            ok = sample(body, "nodenet_scrape_collector_success")
            if ok != 1:
                raise RuntimeError(f"{name}: {t.label} collector failed")
        sa, sb = series(bodies[0]), series(bodies[1])
        same = sa == sb
        if not same:
            only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
            print(f"# {name}: series differ: {len(only_a)} only in A, {len(only_b)} only in B; "
                  f"e.g. A {only_a[:3]} B {only_b[:3]}", flush=True)
        return [(name, targets, same)]
    finally:
        for t in targets:
            t.stop()


def report(rows, scrapes: int) -> None:
    print(f"\nmedians of {scrapes} scrapes per tree, interleaved A B B A ... in one run; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'scenario':<44} {'tree':<6} {'wall p50 ms':>12} {'CPU/scrape ms':>14} "
          f"{'B/A wall':>9} {'B/A CPU':>8}  series A==B")
    for name, (ta, tb), same in rows:
        wa, wb = statistics.median(ta.walls), statistics.median(tb.walls)
        ca, cb = statistics.median(ta.cpus), statistics.median(tb.cpus)
        print(f"{name:<44} {'A':<6} {wa * 1e3:>12.1f} {ca * 1e3:>14.1f}")
        print(f"{'':<44} {'B':<6} {wb * 1e3:>12.1f} {cb * 1e3:>14.1f} "
              f"{wb / wa:>9.3f} {cb / ca:>8.3f}  {'yes' if same else 'NO'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="tree A (e.g. the previous commit)")
    ap.add_argument("--b", default=ROOT, help="tree B (default: this tree)")
    ap.add_argument("--scrapes", type=int, default=21)
    ap.add_argument("--only", default="netdev,conntrack,states,ipvs")
    ap.add_argument("--interfaces", type=int, default=2000)
    ap.add_argument("--entries", type=int, default=250_000)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--backends", type=int, default=10)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, nft)", file=sys.stderr)
        return 2
    trees = [("A", os.path.abspath(a.a)), ("B", os.path.abspath(a.b))]
    print(f"# A = {trees[0][1]}\n# B = {trees[1][1]}", flush=True)
    only = set(a.only.split(","))
    rows = []
    if "netdev" in only:
        rows += scenario_netdev(a, trees)
    if only & {"conntrack", "states"}:
        want = None if {"conntrack", "states"} <= only else ("states" in only)
        rows += scenario_conntrack(a, trees, want)
    if "ipvs" in only:
        rows += scenario_ipvs(a, trees)
    report(rows, a.scrapes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
