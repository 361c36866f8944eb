"""sock_diag (NETLINK_SOCK_DIAG, inet_diag) over the shared netlink layer: listeners, UDP
servers and the ephemeral-port walk.  No privilege is needed for these dumps; they describe
the calling thread's network namespace.

Requests are filtered in the kernel (``idiag_states``): a LISTEN-only TCP dump walks only the
listening hash, never the established one.  Per socket the kernel's ``struct inet_diag_msg``
gives the accept queue (``idiag_rqueue``: connections waiting for accept) and the backlog
(``idiag_wqueue``) of a listener; ``INET_DIAG_SKMEMINFO`` the receive queue bytes, the receive
buffer and the drops of a UDP socket.

Public API (pure decoders first)
    :func:`request` ``(family, protocol, states, ext) -> bytes``; :func:`decode` ``(datagram)
    -> [DiagSocket]``; :func:`udp_servers` ``(sockets, lo, hi) -> {(address, port): UdpServer}``
    summed over SO_REUSEPORT groups; :func:`ephemeral_groups` ``(sockets, lo, hi) ->
    {(source, destination): count}``.  Kernel side: :func:`dump` ``(sock, protocol, states,
    ext, deadline)`` both families; :func:`listeners`, :func:`udp_sockets`,
    :func:`tcp_connections` (with a time bound: ``(sockets, complete?)``).
"""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from . import netlink as nl

SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_SKMEMINFO = 7
SK_MEMINFO_RMEM_ALLOC, SK_MEMINFO_RCVBUF, SK_MEMINFO_DROPS = 0, 1, 8
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10
TCPF_LISTEN = 1 << TCP_LISTEN
TCPF_CLOSE = 1 << TCP_CLOSE
TCPF_CONNECTIONS = 0xFFF & ~(TCPF_LISTEN | TCPF_CLOSE)   # every state holding a port pair

_REQ = struct.Struct("=BBBxI48x")          # struct inet_diag_req_v2 (sockid zeroed)
_MSG = struct.Struct("=BB2x2H16s16s4x8x4x4I")  # struct inet_diag_msg (ports big-endian)
MSG_LEN = 72
_PORTS = struct.Struct("!HH")


@dataclass(slots=True)
class DiagSocket:
    family: int
    state: int
    source: str
    sport: int
    destination: str
    dport: int
    rqueue: int
    wqueue: int
    inode: int
    rmem: int | None = None      # SK_MEMINFO_RMEM_ALLOC: bytes queued for receive
    rcvbuf: int | None = None    # SK_MEMINFO_RCVBUF
    drops: int | None = None     # SK_MEMINFO_DROPS


@dataclass(slots=True)
class UdpServer:
    drops: int = 0
    queue: int = 0
    rcvbuf: int = 0
    sockets: int = 0


def request(family: int, protocol: int, states: int, ext: int = 0) -> bytes:
    return _REQ.pack(family, protocol, ext, states)


def _address(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)


def decode(data, meminfo: bool = False) -> list[DiagSocket]:
    """Every inet_diag_msg of one datagram (control messages skipped)."""
    out: list[DiagSocket] = []
    for mtype, _fl, _seq, start, end in nl.iter_messages(data, "sock_diag"):
        if mtype != SOCK_DIAG_BY_FAMILY:
            continue
        if end - start < MSG_LEN:
            raise nl.ParseError(f"sock_diag: message of {end - start} bytes, "
                                f"inet_diag_msg needs {MSG_LEN}")
        fam, state, _sp, _dp, src, dst, rq, wq, _uid, inode = _MSG.unpack_from(data, start)
        sport, dport = _PORTS.unpack_from(data, start + 4)
        s = DiagSocket(fam, state, _address(fam, src), sport, _address(fam, dst), dport,
                       rq, wq, inode)
        if meminfo:
            span = nl.attrs(data, start + MSG_LEN, end, "sock_diag").get(INET_DIAG_SKMEMINFO)
            if span is not None and span[1] - span[0] >= 4 * (SK_MEMINFO_DROPS + 1):
                mem = struct.unpack_from("=9I", data, span[0])
                s.rmem, s.rcvbuf, s.drops = (mem[SK_MEMINFO_RMEM_ALLOC], mem[SK_MEMINFO_RCVBUF],
                                             mem[SK_MEMINFO_DROPS])
        out.append(s)
    return out


def dump(sock: nl.NetlinkSocket, protocol: int, states: int, meminfo: bool = False,
         deadline: float | None = None) -> tuple[list[DiagSocket], bool]:
    """One dump per family (IPv4, IPv6); (sockets, complete).  ``deadline`` (monotonic)
    stops reading early: complete False (the socket should then be closed, not reused)."""
    ext = 1 << (INET_DIAG_SKMEMINFO - 1) if meminfo else 0
    out: list[DiagSocket] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        reply = sock.send(SOCK_DIAG_BY_FAMILY, nl.NLM_F_DUMP,
                          request(family, protocol, states, ext), "sock_diag dump")
        for data in sock.datagrams(reply):
            reply.scan(data)
            out.extend(decode(data, meminfo))
            if deadline is not None and time.monotonic() > deadline and not reply.done:
                return out, False
    return out, True


def listeners(sock: nl.NetlinkSocket) -> list[DiagSocket]:
    return dump(sock, socket.IPPROTO_TCP, TCPF_LISTEN)[0]


def udp_sockets(sock: nl.NetlinkSocket) -> list[DiagSocket]:
    """Unconnected UDP sockets (state CLOSE: no fixed peer), with SK_MEMINFO."""
    return dump(sock, socket.IPPROTO_UDP, TCPF_CLOSE, meminfo=True)[0]


def tcp_connections(sock: nl.NetlinkSocket, deadline: float | None) -> tuple[list, bool]:
    return dump(sock, socket.IPPROTO_TCP, TCPF_CONNECTIONS, deadline=deadline)


_WALK = struct.Struct("!HH16s16s")      # sport, dport, src, dst at offset 4 of inet_diag_msg


def ephemeral_walk(sock: nl.NetlinkSocket, lo: int, hi: int, deadline: float | None = None
                   ) -> tuple[dict[tuple[str, str], int], bool]:
    """The ephemeral-port walk without a DiagSocket per socket: every TCP socket holding a
    port pair, counted per raw (family, source, destination, port) as the datagrams arrive;
    only the groups are turned into text.  (groups as :func:`ephemeral_groups`, complete)."""
    counts: dict[tuple[int, bytes, bytes, int], int] = {}
    get = counts.get
    walk = _WALK.unpack_from
    complete = True
    for family in (socket.AF_INET, socket.AF_INET6):
        reply = sock.send(SOCK_DIAG_BY_FAMILY, nl.NLM_F_DUMP,
                          request(family, socket.IPPROTO_TCP, TCPF_CONNECTIONS), "sock_diag walk")
        for data in sock.datagrams(reply):
            reply.scan(data)
            for mtype, _fl, _seq, start, end in nl.iter_messages(data, "sock_diag"):
                if mtype != SOCK_DIAG_BY_FAMILY:
                    continue
                if end - start < MSG_LEN:
                    raise nl.ParseError(f"sock_diag: message of {end - start} bytes")
                sport, dport, src, dst = walk(data, start + 4)
                if lo <= sport <= hi:
                    key = (data[start], src, dst, dport)
                    counts[key] = get(key, 0) + 1
            if deadline is not None and time.monotonic() > deadline and not reply.done:
                complete = False
                break
        if not complete:
            break
    out: dict[tuple[str, str], int] = {}
    for (fam, src, dst, dport), n in counts.items():
        group = (_address(fam, src), destination(_address(fam, dst), dport))
        out[group] = out.get(group, 0) + n
    return out, complete


def udp_servers(sockets: list[DiagSocket], lo: int, hi: int) -> dict[tuple[str, int], UdpServer]:
    """UDP sockets bound to a port outside [lo, hi] (the ephemeral range), summed per
    (address, port): an SO_REUSEPORT group is one server."""
    out: dict[tuple[str, int], UdpServer] = {}
    for s in sockets:
        if s.sport == 0 or lo <= s.sport <= hi or s.dport != 0:
            continue
        srv = out.get((s.source, s.sport))
        if srv is None:
            srv = out[(s.source, s.sport)] = UdpServer()
        srv.drops += s.drops or 0
        srv.queue += s.rmem or 0
        srv.rcvbuf += s.rcvbuf or 0
        srv.sockets += 1
    return out


def destination(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def ephemeral_groups(sockets: list[DiagSocket], lo: int, hi: int) -> dict[tuple[str, str], int]:
    """Sockets whose local port is in [lo, hi], counted per (source address, destination
    address:port): the tuple within which the kernel keeps local ports unique."""
    counts: dict[tuple[str, str, int], int] = {}
    for s in sockets:
        if lo <= s.sport <= hi:
            key = (s.source, s.destination, s.dport)
            counts[key] = counts.get(key, 0) + 1
    return {(src, destination(dst, dport)): n for (src, dst, dport), n in counts.items()}
