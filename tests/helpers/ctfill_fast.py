"""Creates many real conntrack entries fast; run INSIDE a test namespace (see ctns.py).

``python ctfill_fast.py --count N [--start I] [--proto udp|tcp] [--max-seconds S]``

Flow index i goes to 127.1.0.0 + i // 60000, port 1024 + i % 60000 (from one socket bound to
127.0.0.1), so every index is a distinct tuple and indices never collide across calls with
disjoint ranges.  ``udp`` sends one empty datagram per flow (an UNREPLIED entry); ``tcp``
sends one SYN per flow through a raw socket (a SYN_SENT entry); ``tcp-assured`` plays a whole
three-way handshake per flow from 127.2.x.y to 127.1.x.y with hand-made IP headers (an
ESTABLISHED, ASSURED entry, which the kernel will not evict to make room: once the table is
full of these, new flows are really dropped).  ctns.RULESET drops these packets on input,
after the entry was created on output and confirmed at postrouting; loopback packets keep
their entry, so conntrack does not look at them twice.  ~100k flows/s (udp) or ~35k/s
(tcp-assured) on one core of this machine.  Bounded by --count and --max-seconds; prints one
JSON line: sent, errors (sendto failures: EPERM means the kernel dropped the packet because
the table was full), elapsed.
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

BASE = (127 << 24) | (1 << 16)
PER_ADDR = 60000


def target(i: int) -> tuple[str, int]:
    a = BASE + i // PER_ADDR
    return socket.inet_ntoa(struct.pack("!I", a)), 1024 + i % PER_ADDR


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--proto", choices=("udp", "tcp", "tcp-assured"), default="udp")
    ap.add_argument("--max-seconds", type=float, default=60.0)
    args = ap.parse_args(argv)
    if args.count < 0 or args.start < 0 or args.start + args.count > 65000 * PER_ADDR:
        ap.error("count/start out of range")
    deadline = time.monotonic() + args.max_seconds
    t0 = time.monotonic()
    sent = errors = 0
    first_error = None
    src = "127.0.0.1"
    if args.proto == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((src, 0))
        send = sock.sendto
        payload = b""
    elif args.proto == "tcp-assured":
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # HDRINCL
        send = sock.sendto
        ip_hdr = struct.Struct("!BBHHHBBH4s4s")
        tcp_hdr = struct.Struct("!HHIIBBHHH")
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        src_bin = socket.inet_aton(src)
        sport = 40000
    i = args.start
    end = args.start + args.count
    while i < end:
        if (i & 1023) == 0 and time.monotonic() > deadline:
            break
        addr, port = target(i)
        try:
            if args.proto == "udp":
                send(payload, (addr, port))
            elif args.proto == "tcp-assured":
                b = socket.inet_aton(addr)                                  # server 127.1.x.y
                a = socket.inet_aton(addr.replace("127.1.", "127.2.", 1))   # client 127.2.x.y
                x, y = (i * 7919) & 0xFFFFFFF, (i * 104729) & 0xFFFFFFF
                for src_a, dst_a, sp, dp, seq, ack, flags in (
                        (a, b, 40000, port, x, 0, 0x02),          # SYN
                        (b, a, port, 40000, y, x + 1, 0x12),      # SYN/ACK
                        (a, b, 40000, port, x + 1, y + 1, 0x10)):  # ACK
                    pkt = ip_hdr.pack(0x45, 0, 40, 0, 0, 64, 6, 0, src_a, dst_a) + \
                        tcp_hdr.pack(sp, dp, seq, ack, 5 << 4, flags, 64240, 0, 0)
                    send(pkt, (socket.inet_ntoa(dst_a), 0))
            else:
                dst_bin = socket.inet_aton(addr)
                hdr = struct.pack("!HHIIBBHHH", sport, port, i, 0, 5 << 4, 0x02, 64240, 0, 0)
                pseudo = src_bin + dst_bin + struct.pack("!BBH", 0, 6, len(hdr))
                hdr = hdr[:16] + struct.pack("!H", _csum(pseudo + hdr)) + hdr[18:]
                sock.sendto(hdr, (addr, 0))
            sent += 1
        except OSError as exc:
            errors += 1
            if first_error is None:
                first_error = exc.strerror
        i += 1
    print(json.dumps({"sent": sent, "errors": errors, "first_error": first_error,
                      "elapsed": round(time.monotonic() - t0, 3), "next": i}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
