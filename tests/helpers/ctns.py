"""Network namespaces for conntrack tests: created, filled with real flows, always removed.

Everything acts on namespaces named ``nn-conntrack-...`` that this module creates; the host's
namespace and its global sysctls are never written.  Sysctls set here are per-namespace ones
(e.g. ``nf_conntrack_udp_timeout``) written *inside* the test namespace.

The ruleset makes the kernel track the namespace's traffic (an nft ``ct state`` rule) and
drops, on input, packets to 127.1.0.0/16 (UDP/TCP fill traffic from ``ctfill_fast.py``):
their entries are created on output and confirmed at postrouting, so dropping them on input
keeps the entries while sparing the kernel ICMP/RST replies.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

HELPERS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HELPERS))
FILL_SCRIPT = os.path.join(HELPERS, "ctfill_fast.py")
FLOWS_SCRIPT = os.path.join(HELPERS, "ctflows.py")

RULESET = """
table inet nn_conntrack {
    ct helper ftp-std { type "ftp" protocol tcp; }
    chain output {
        type filter hook output priority 0; policy accept;
        tcp dport 21 ct helper set "ftp-std"
        ct state new,established,related,invalid counter accept
    }
    chain input {
        type filter hook input priority 0; policy accept;
        ip daddr { 127.1.0.0/16, 127.2.0.0/16 } counter drop
        ct state new,established,related,invalid counter accept
    }
}
"""


def run(argv, *, check=True, timeout=60, input=None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, timeout=timeout, input=input,
                          capture_output=True, text=True)


def parse_conntrack_S(text: str) -> list[dict[str, int]]:
    """``conntrack -S`` lines (``cpu=0 found=0 invalid=3 ...``) -> one dict per CPU."""
    rows = []
    for line in text.splitlines():
        row = {}
        for fld in line.split():
            key, sep, value = fld.partition("=")
            if sep:
                row[key] = int(value)
        if "cpu" in row:
            rows.append(row)
    return rows


class Netns:
    """``with Netns("tag") as ns:`` - a fresh namespace with lo up and the ct ruleset."""

    def __init__(self, tag: str = "t", ruleset: str | None = RULESET, udp_timeout: int = 600,
                 tcp_timeouts: bool = True):
        self.name = f"nn-conntrack-{tag}-{uuid.uuid4().hex[:6]}"
        self.ruleset = ruleset
        self.udp_timeout = udp_timeout
        self.tcp_timeouts = tcp_timeouts
        self.procs: list[subprocess.Popen] = []

    def __enter__(self):
        run(["ip", "netns", "add", self.name])
        try:
            self.exec(["ip", "link", "set", "lo", "up"])
            if self.ruleset:
                self.exec(["nft", "-f", "-"], input=self.ruleset)
            if self.udp_timeout:
                # per-namespace sysctls, written inside this namespace only
                for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
                    self.sysctl(f"net.netfilter.{key}", self.udp_timeout)
            # loopback fill packets carry no valid checksum / exact windows (see ctfill_fast)
            self.sysctl("net.netfilter.nf_conntrack_checksum", 0)
            self.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", 1)
            if self.tcp_timeouts:
                for key in ("nf_conntrack_tcp_timeout_syn_sent",
                            "nf_conntrack_tcp_timeout_close", "nf_conntrack_tcp_timeout_time_wait"):
                    self.sysctl(f"net.netfilter.{key}", 600)
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc):
        self.delete()

    def delete(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.procs.clear()
        if os.path.exists(f"/run/netns/{self.name}"):
            run(["ip", "netns", "del", self.name], check=False)

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def exec(self, argv, **kw) -> subprocess.CompletedProcess:
        return run(self.argv(list(argv)), **kw)

    def popen(self, argv, **kw) -> subprocess.Popen:
        p = subprocess.Popen(self.argv(list(argv)), **kw)
        self.procs.append(p)
        return p

    def sysctl(self, key: str, value) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        self.exec(["sh", "-c", f"echo {int(value)} > {path}"])

    def proc_count(self) -> int:
        return int(self.exec(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]).stdout)

    def tool_count(self) -> int:
        return int(self.exec(["conntrack", "-C"]).stdout.split()[0])

    def tool_stats(self) -> list[dict[str, int]]:
        return parse_conntrack_S(self.exec(["conntrack", "-S"]).stdout)

    def fill(self, count: int, *, start: int = 0, proto: str = "udp",
             max_seconds: float = 60) -> dict:
        """Creates ``count`` new flows (flow indices start..start+count-1); returns the
        filler's JSON report (sent, errors, elapsed)."""
        out = self.exec([sys.executable, FILL_SCRIPT, "--count", str(count), "--start", str(start),
                         "--proto", proto, "--max-seconds", str(max_seconds)],
                        timeout=max_seconds + 30).stdout
        return json.loads(out.strip().splitlines()[-1])

    def fill_to(self, target: int, *, start: int = 0, max_seconds: float = 60,
                batch: int = 50_000) -> tuple[int, int]:
        """Adds UDP flows until the kernel count reaches ``target`` or time runs out.
        Returns (count reached, next unused flow index)."""
        t_end = time.monotonic() + max_seconds
        index = start
        count = self.proc_count()
        while count < target and time.monotonic() < t_end:
            n = min(batch, target - count)
            self.fill(n, start=index, max_seconds=max(1.0, t_end - time.monotonic()))
            index += n
            count = self.proc_count()
        return count, index


def ensure_root():
    if os.geteuid() != 0:
        raise RuntimeError("conntrack integration tests need root (ip netns, nft)")


# --------------------------------------------------------------------------------------------
# Talking to processes inside a namespace, and running the exporter there
# --------------------------------------------------------------------------------------------

def in_netns(nsname: str | None, fn, *args, **kwargs):
    """Runs fn(*args) on a thread that has setns()-ed into /run/netns/<nsname> (None: here).

    Sockets fn creates live in that namespace; the thread ends afterwards."""
    import threading

    if nsname is None:
        return fn(*args, **kwargs)
    sys.path.insert(0, REPO)
    from exporter.sources import netns as nsapi

    box: dict = {}

    def work():
        try:
            fd = os.open(f"/run/netns/{nsname}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                nsapi.setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def notrack_ruleset(port: int) -> str:
    """Keeps the exporter's own HTTP traffic out of the table being measured."""
    return f"""
table inet nn_conntrack_notrack {{
    chain pre {{ type filter hook prerouting priority -300; tcp dport {port} notrack; tcp sport {port} notrack; }}
    chain out {{ type filter hook output priority -300; tcp dport {port} notrack; tcp sport {port} notrack; }}
}}
"""


def free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Exporter:
    """nodenet-exporter as a child process (optionally inside a namespace, optionally with a
    command prefix such as capsh); stopped by its own PID."""

    def __init__(self, args: list[str], *, ns: Netns | None = None, port: int | None = None,
                 prefix: list[str] | None = None):
        self.ns = ns
        self.port = port or (19500 + os.getpid() % 400 if ns else free_port())
        self.argv = [sys.executable, "-m", "exporter",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.format=json", *args]
        if prefix:
            # e.g. ["capsh", "--drop=cap_net_admin", "--", "-c"]: the shell execs the exporter,
            # so self.proc.pid is the exporter's PID
            self.argv = prefix + ["exec " + " ".join(_shq(a) for a in self.argv)]
        if ns is not None:
            self.argv = ns.argv(self.argv)
        self.proc: subprocess.Popen | None = None
        self.stderr_path = f"/tmp/nn-conntrack-exporter-{uuid.uuid4().hex[:8]}.log"

    def __enter__(self):
        self._err = open(self.stderr_path, "w+")
        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=self._err)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited {self.proc.returncode}: {self.stderr()}")
            try:
                status, _ = self.get("/healthz", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"exporter did not answer within 15 s: {self.stderr()}")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._err.close()
        os.unlink(self.stderr_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        with open(self.stderr_path) as fh:
            return fh.read()

    def get(self, path: str = "/metrics", timeout: float = 10.0) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        return in_netns(self.ns.name if self.ns else None, http_get, url, timeout)

    def scrape(self) -> dict:
        """{(name, frozenset(labels.items())): value} of one successful scrape."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.get()
        if status != 200:
            raise AssertionError(f"scrape answered {status}: {text[:300]}")
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out


def sample(samples: dict, name: str, **labels):
    return samples.get((name, frozenset(labels.items())))


def _shq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"
