"""Holds a known set of real flows open; run INSIDE a test namespace (see ctns.py).

``python ctflows.py --udp N [--udp6 M] [--tcp K] [--ftp] [--icmp]``

- ``--udp N``: a UDP listener on 127.0.0.1:5353 and N client sockets on distinct source ports,
  each sending one datagram to it (N UNREPLIED udp entries).
- ``--udp6 M``: the same over ::1 port 5354.
- ``--tcp K``: K TCP connections to a listener on 127.0.0.1:8080, kept open (ESTABLISHED).
- ``--tcp-closed K``: K TCP connections to 127.0.0.1:8081 opened and closed by both sides
  (TIME_WAIT entries).
- ``--ftp``: one TCP connection to 127.0.0.1:21 whose server answers an FTP PASV reply; with
  ctns.RULESET's ftp helper the kernel creates one expectation.
- ``--icmp``: one ICMP echo to 127.0.0.1 (an icmp entry).

Prints one JSON line (what was created, "ready": true), then keeps every socket open until
stdin closes or 600 s pass (bounded).
"""
from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--udp", type=int, default=0)
    ap.add_argument("--udp6", type=int, default=0)
    ap.add_argument("--tcp", type=int, default=0)
    ap.add_argument("--tcp-closed", type=int, default=0)
    ap.add_argument("--ftp", action="store_true")
    ap.add_argument("--icmp", action="store_true")
    ap.add_argument("--hold", type=float, default=600)
    args = ap.parse_args(argv)
    keep: list[socket.socket] = []
    report: dict = {}
    if args.udp:
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("127.0.0.1", 5353))
        keep.append(srv)
        ports = set()
        for _ in range(args.udp):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind(("127.0.0.1", 0))
            c.sendto(b"x", ("127.0.0.1", 5353))
            ports.add(c.getsockname()[1])
            keep.append(c)
        report["udp"] = len(ports)
    if args.udp6:
        srv6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        srv6.bind(("::1", 5354))
        keep.append(srv6)
        for _ in range(args.udp6):
            c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            c.bind(("::1", 0))
            c.sendto(b"x", ("::1", 5354))
            keep.append(c)
        report["udp6"] = args.udp6
    if args.tcp:
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.bind(("127.0.0.1", 8080))
        lst.listen(args.tcp + 8)
        keep.append(lst)
        for _ in range(args.tcp):
            c = socket.create_connection(("127.0.0.1", 8080), timeout=5)
            s, _addr = lst.accept()
            keep += [c, s]
        report["tcp"] = args.tcp
    if args.tcp_closed:
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.bind(("127.0.0.1", 8081))
        lst.listen(args.tcp_closed + 8)
        keep.append(lst)
        for _ in range(args.tcp_closed):
            c = socket.create_connection(("127.0.0.1", 8081), timeout=5)
            s, _addr = lst.accept()
            c.close()
            s.recv(10)  # the FIN
            s.close()
        time.sleep(0.2)
        report["tcp_closed"] = args.tcp_closed
    if args.ftp:
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.bind(("127.0.0.1", 21))
        lst.listen(1)
        c = socket.create_connection(("127.0.0.1", 21), timeout=5)
        s, _addr = lst.accept()
        s.sendall(b"220 ready\r\n")
        c.recv(100)
        c.sendall(b"PASV\r\n")
        s.recv(100)
        s.sendall(b"227 Entering Passive Mode (127,0,0,1,195,80).\r\n")
        c.recv(100)
        keep += [lst, c, s]
        report["ftp"] = 1
    if args.icmp:
        r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        body = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"nodenet"
        csum = _csum(body)
        body = body[:2] + struct.pack("!H", csum) + body[4:]
        r.sendto(body, ("127.0.0.1", 0))
        keep.append(r)
        report["icmp"] = 1
    report["ready"] = True
    print(json.dumps(report), flush=True)
    deadline = time.monotonic() + args.hold
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not sys.stdin.readline():
            break
    for s in keep:
        s.close()
    return 0


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


if __name__ == "__main__":
    sys.exit(main())
