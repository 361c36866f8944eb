"""Sockets that make the kernel refuse work, for scripts run INSIDE a namespace a test made.

Both are the kernel's own overflow paths, witnessed by `ss -ltn` and /proc/net/{netstat,udp}:
a listener whose accept queue is full (ListenOverflows, Recv-Q > Send-Q), a UDP server whose
receive buffer is full (RcvbufErrors, the drops column). Keep the returned sockets referenced
for as long as the state must hold.
"""
from __future__ import annotations

import contextlib
import socket


def full_listener(addr: str, port: int, backlog: int, connections: int) -> list[socket.socket]:
    """A TCP listener on addr:port with `backlog` that never accepts, and `connections`
    non-blocking connects to it (the ones past the queue stay in SYN_SENT, retransmitting)."""
    srv = socket.socket()
    srv.bind((addr, port))
    srv.listen(backlog)
    keep = [srv]
    for _ in range(connections):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect((addr, port))
        keep.append(c)
    return keep


def drowning_udp(addr: str, port: int, datagrams: int, size: int) -> list[socket.socket]:
    """A UDP server on addr:port with the smallest SO_RCVBUF, never read, and `datagrams` of
    `size` bytes sent to it from a second socket: all but the first few are dropped."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    srv.bind((addr, port))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(datagrams):
        tx.sendto(b"x" * size, (addr, port))
    return [srv, tx]
