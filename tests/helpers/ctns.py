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
