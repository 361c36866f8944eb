"""Traffic that makes a network namespace sick (or keeps it healthy), for the alert pipeline.

Run inside a namespace of the test's own: ``ip netns exec NS python sicknet.py MODE SECONDS``.
- ``sick``: a TCP listener with backlog 1 that never accepts gets 2 connects every 0.5 s
  (ListenOverflows), and a UDP socket with SO_RCVBUF 256 that is never read gets 20 datagrams
  every 0.5 s (RcvbufErrors). Client sockets older than 10 s are closed (bounded fds).
- ``healthy``: the same rates to a listener that accepts and a UDP socket that reads.
Loopback only; stops after SECONDS (and on SIGTERM).
"""
from __future__ import annotations

import select
import signal
import socket
import sys
import time


def main(mode: str, seconds: float) -> int:
    sick = mode == "sick"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1 if sick else 128)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if sick:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256)
    udp.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    clients: list[tuple[float, socket.socket]] = []
    end = time.monotonic() + seconds
    next_tick = 0.0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + 0.5
            for _ in range(2):
                c = socket.socket()
                c.setblocking(False)
                try:
                    c.connect(srv.getsockname())
                except BlockingIOError:
                    pass
                clients.append((now, c))
            for _ in range(20):
                tx.sendto(b"q" * 200, udp.getsockname())
            while clients and clients[0][0] < now - 10:
                clients.pop(0)[1].close()
        if not sick:
            ready, _, _ = select.select([srv, udp], [], [], 0.05)
            for s in ready:
                if s is srv:
                    conn, _ = srv.accept()
                    conn.close()
                else:
                    udp.recv(2048)
        else:
            time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
