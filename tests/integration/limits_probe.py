"""Run inside a network namespace made by test_limits_netns.py (``ip netns exec NS python
limits_probe.py SCENARIO``): makes the namespace sick in one way, keeps the sockets that make
it so open, and prints one JSON object with the collectors' samples and the kernel's own files
read just before and just after each collection (the witnesses).

Every loop is bounded in count and time; traffic stays on this namespace's loopback.
"""
from __future__ import annotations

import io
import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from exporter import log as logmod
from exporter.cli import all_options
from exporter.collectors import load_all
from exporter.collectors.base import REGISTRY, Context
from exporter.config import resolve

WITNESS = ("net/snmp", "net/netstat", "net/snmp6", "net/sockstat", "net/sockstat6",
           "sys/fs/file-nr")


def witness() -> dict:
    out = {}
    for path in WITNESS:
        try:
            with open(f"/proc/{path}") as fh:
                out[path] = fh.read()
        except FileNotFoundError:
            pass
    return out


def collect(names=("sockets", "netstat")) -> dict:
    load_all()
    settings = resolve(all_options(), [], "probe", "0", set(REGISTRY))
    log = logmod.setup("error", "json", stream=io.StringIO())
    before = witness()
    samples: dict = {}
    for name in names:
        collector = REGISTRY[name](Context(settings=settings, log=log.bind(collector=name)))
        for fam in collector.collect():
            for labels, value in fam.samples:
                samples.setdefault(fam.spec.name, []).append([list(labels), value])
    return {"samples": samples, "before": before, "after": witness()}


def timewait(n: int) -> list:
    """n connections, each closed by the client first: n client sockets in TIME_WAIT."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    deadline = time.monotonic() + 30
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        s, _ = srv.accept()
        c.close()          # active close: the client side goes to TIME_WAIT
        s.recv(1)          # the FIN
        s.close()
        if time.monotonic() > deadline:
            break
    return [collect()]


def listen_overflow(n: int) -> list:
    """A listener with backlog 1 that never accepts, n connects."""
    first = collect()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    clients = []
    for _ in range(n):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        clients.append(c)
    time.sleep(1.5)        # handshakes complete (or are dropped) on loopback
    return [first, collect()]


def udp_rcvbuf(n: int) -> list:
    """A UDP socket with a tiny SO_RCVBUF that is never read, n datagrams."""
    first = collect()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * 200
    for _ in range(n):
        tx.sendto(payload, rx.getsockname())
    time.sleep(0.2)
    second = collect()
    rx.setblocking(False)
    queued = 0
    while queued <= n:       # what the tiny buffer did hold (read only now, after collecting)
        try:
            rx.recv(1024)
        except BlockingIOError:
            break
        queued += 1
    second["queued"] = queued
    return [first, second]


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def fragments(n: int) -> list:
    """n first fragments (MF set) that never get their second half, to 127.0.0.1 and to ::1;
    with ipfrag_time / ip6frag_time 1 (set by the test in this namespace) they time out after
    ~1 s."""
    first = collect()
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for ident in range(n):
        payload = b"\0" * 8 + b"f" * 64            # a UDP header's worth, then data
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1000 + ident,
                           0x2000, 64, socket.IPPROTO_UDP, 0, socket.inet_aton("127.0.0.1"),
                           socket.inet_aton("127.0.0.1"))
        head = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
        raw.sendto(head + payload, ("127.0.0.1", 0))
    # IPv6: a fragment header (next header UDP, offset 0, M set) that the kernel wraps in an
    # IPv6 header to ::1; ip6frag_time 1 (set by the test) expires it the same way
    raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 44)   # IPPROTO_FRAGMENT
    for ident in range(n):
        raw6.sendto(struct.pack("!BBHI", socket.IPPROTO_UDP, 0, 0x0001, 5000 + ident)
                    + b"\0" * 8 + b"f" * 64, ("::1", 0))
    pending = collect()
    time.sleep(3.0)        # > ipfrag_time: every queue expires (ip_expire)
    return [first, pending, collect()]


def neighbour(_n: int) -> list:
    """The neighbour collector with `ip -s ntable` read just before and after."""
    import subprocess

    def ntable():
        return subprocess.run(["ip", "-s", "ntable", "show", "name", "arp_cache"],
                              capture_output=True, text=True, check=True).stdout
    before = ntable()
    snap = collect(("neighbour",))
    snap["ntable_before"], snap["ntable_after"] = before, ntable()
    return [snap]


SCENARIOS = {"neighbour": neighbour, "timewait": timewait, "listen_overflow": listen_overflow,
             "udp_rcvbuf": udp_rcvbuf, "fragments": fragments,
             "collect": lambda _n: [collect()]}

if __name__ == "__main__":
    scenario, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    print(json.dumps(SCENARIOS[scenario](count)))
