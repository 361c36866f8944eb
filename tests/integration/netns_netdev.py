"""Helpers for the netdev integration tests: namespaces we own, exporters run inside them, and
HTTP scrapes made from this process through setns(2) (no curl, no shell).

Every namespace is named ``nn-netdev-<purpose>-<pid>`` and removed by ``Netns.delete`` (the
tests call it in their fixture teardown).  Every wait here is bounded.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.netns import inside_netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


def require_root_tools():
    """Fails (never skips) with a clear message when the test cannot run here."""
    assert os.geteuid() == 0, "netdev integration tests need root (network namespaces)"
    for tool in ("ip",):
        assert shutil.which(tool), f"{tool} (iproute2) is needed"


class Netns:
    def __init__(self, purpose: str):
        self.name = f"nn-netdev-{purpose}-{os.getpid()}"
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        self.run("ip", "netns", "add", self.name, inside=False)
        self.ip("link", "set", "lo", "up")

    def run(self, *args, inside=True, check=True, input=None, timeout=60) -> str:
        cmd = (["ip", "netns", "exec", self.name] if inside else []) + [str(a) for a in args]
        res = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {res.returncode}: {res.stderr.strip()}")
        return res.stdout

    def ip(self, *args, **kw) -> str:
        return self.run("ip", "-n", self.name, *args, inside=False, **kw)

    def sysctl(self, key: str, value) -> None:
        """A sysctl of this namespace only (net.* are per network namespace)."""
        self.run("sysctl", "-qw", f"{key}={value}")

    def disable_ipv6(self) -> None:
        """No router solicitations or MLD: counters move only when a test sends something."""
        self.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
        self.sysctl("net.ipv6.conf.default.disable_ipv6", 1)

    def links(self) -> dict:
        """``ip -d -s -s -j link`` by interface name: the independent witness."""
        return {d["ifname"]: d for d in json.loads(self.ip("-d", "-s", "-s", "-j", "link"))}

    def python(self, code: str, *args) -> str:
        return self.run(sys.executable, "-c", code, *args)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def http_get(ns: Netns, port: int, path: str = "/metrics", timeout: float = 20.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    with inside_netns(ns.name):
        conn.connect()
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def parse(body: bytes) -> dict:
    """{(sample name, ((label, value), ...sorted)): value}"""
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def series(parsed: dict, name: str, key: str = "interface") -> dict:
    """{label value of ``key``: value} of one metric (labels other than key ignored)."""
    return {dict(labels)[key]: v for (n, labels), v in parsed.items() if n == name}


class Process:
    """A server process started inside a namespace; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, ns: Netns, argv: list[str], port: int):
        self.ns, self.port = ns, port
        env = dict(os.environ, PYTHONPATH=REPO)
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *argv], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t_end = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"{argv[0]} exited {self.proc.returncode}: {err[-800:]}")
            try:
                status, _ = http_get(ns, port, "/metrics", timeout=5)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > t_end:
                self.stop()
                raise RuntimeError(f"{argv} not answering on port {port} after 20 s")
            time.sleep(0.1)

    def scrape(self) -> dict:
        status, body = http_get(self.ns, self.port)
        assert status == 200, f"HTTP {status}: {body[:300]!r}"
        return parse(body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def nodenet(ns: Netns, port: int, *flags: str) -> Process:
    return Process(ns, [sys.executable, "-m", "exporter", "--collector.disable-defaults",
                        "--collector.netdev", f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn", *flags], port)


def node_exporter(ns: Netns, port: int) -> Process:
    assert os.access(NODE_EXPORTER, os.X_OK), \
        f"{NODE_EXPORTER} (Debian prometheus-node-exporter 1.5) is needed as the witness"
    return Process(ns, [NODE_EXPORTER, "--collector.disable-defaults", "--collector.netdev",
                        "--collector.netclass", f"--web.listen-address=127.0.0.1:{port}"], port)


SEND_FRAMES = """
import socket, struct, sys
ifname, count, ethertype = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 16)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
frame = b"\\xff" * 6 + b"\\x02\\0\\0\\0\\0\\x01" + struct.pack("!H", ethertype) + b"x" * 46
sent = sum(1 for _ in range(count) if s.send(frame) == len(frame))
print(sent)
"""

SEND_BAD_VXLAN = """
import socket, struct, sys
dst, port, vni, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
inner = b"\\xff" * 6 + b"\\x02\\0\\0\\0\\0\\x01" + b"\\x88\\xb5" + b"x" * 46
hdr = struct.pack("!II", 0x09 << 24, vni << 8)  # I flag plus a reserved flag bit
sent = sum(1 for _ in range(count) if s.sendto(hdr + inner, (dst, port)) > 0)
print(sent)
"""
