"""sock_diag (NETLINK_SOCK_DIAG, inet_diag) over the shared netlink layer: listeners, UDP
servers and the ephemeral-port walk.  No privilege is needed for these dumps; they describe
the calling thread's network namespace.

Requests are filtered in the kernel (``idiag_states``): a LISTEN-only TCP dump walks only the
listening hash, never the established one.  Per socket the kernel's ``struct inet_diag_msg``
gives the accept queue (``idiag_rqueue``: connections waiting for accept) and the backlog
(``idiag_wqueue``) of a listener; ``INET_DIAG_SKMEMINFO`` the receive queue bytes, the receive
buffer and the drops of a UDP socket.

Public API (pure decoders first)
    :func:`request` ``(family, protocol, states, ext, bytecode) -> bytes``;
    :func:`local_port_filter` ``(lo, hi) -> bytes`` (a kernel-side filter program);
    :func:`decode` ``(datagram)
    -> [DiagSocket]``; :func:`udp_servers` ``(sockets, lo, hi) -> {(address, port): UdpServer}``
    summed over SO_REUSEPORT groups; :func:`ephemeral_groups` ``(sockets, lo, hi) ->
    {(source, destination): count}``.  Kernel side: :func:`dump` ``(sock, protocol, states,
    ext, deadline)`` both families; :func:`listeners`, :func:`udp_sockets`,
    :func:`tcp_connections` (with a time bound: ``(sockets, complete?)``);
    :func:`ephemeral_walk` ``(sock, lo, hi, deadline) -> (groups, complete?)``: one dump of
    both families (:func:`request_both_families`) filtered in the kernel to local ports in
    [lo, hi].
"""
from __future__ import annotations

import errno
import socket
import struct
import time
from dataclasses import dataclass

from . import netlink as nl

SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_REQ_BYTECODE = 1      # request attribute: an inet_diag_bc_op program
INET_DIAG_BC_S_GE, INET_DIAG_BC_S_LE = 2, 3
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


def request(family: int, protocol: int, states: int, ext: int = 0,
            bytecode: bytes = b"") -> bytes:
    """struct inet_diag_req_v2, and the filter program (INET_DIAG_REQ_BYTECODE) if any."""
    req = _REQ.pack(family, protocol, ext, states)
    return req + nl.attr(INET_DIAG_REQ_BYTECODE, bytecode) if bytecode else req


_OP = struct.Struct("=BBH")     # struct inet_diag_bc_op: code, yes, no (host order)


def local_port_filter(lo: int, hi: int) -> bytes:
    """The inet_diag program "lo <= local port <= hi", as ss compiles `sport >= :lo and
    sport <= :hi`.  The kernel runs it per socket (inet_diag_bc_run: the local port is the
    socket's inet_num, set for full, TIME_WAIT and request sockets alike) and fills no
    message for a socket it rejects.  An op is (code, yes, no): a test that holds advances by
    ``yes`` bytes, one that fails by ``no``; the port sits in the ``no`` field of the op that
    follows; the program accepts when it ends exactly at its length, so a jump to length + 4
    rejects (inet_diag_bc_audit allows no other jump beyond the end).  Bounds beyond 0-65535
    (a fixture's sysctl) are clamped, no port lies there; lo > hi matches nothing."""
    lo, hi = (min(max(p, 0), 0xFFFF) for p in (lo, hi))
    length = 4 * _OP.size
    return b"".join((_OP.pack(INET_DIAG_BC_S_GE, 8, length + 4), _OP.pack(0, 0, lo),
                     _OP.pack(INET_DIAG_BC_S_LE, 8, length - 8 + 4), _OP.pack(0, 0, hi)))


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
         deadline: float | None = None, bytecode: bytes = b"") -> tuple[list[DiagSocket], bool]:
    """One dump per family (IPv4, IPv6); (sockets, complete).  ``deadline`` (monotonic)
    stops reading early: complete False (the socket should then be closed, not reused).
    ``bytecode``: a filter program the kernel runs per socket (:func:`local_port_filter`)."""
    ext = 1 << (INET_DIAG_SKMEMINFO - 1) if meminfo else 0
    out: list[DiagSocket] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        reply = sock.send(SOCK_DIAG_BY_FAMILY, nl.NLM_F_DUMP,
                          request(family, protocol, states, ext, bytecode), "sock_diag dump")
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


TCPDIAG_GETSOCK = 18    # the original inet_diag request (struct inet_diag_req): both families
_REQ_BOTH = struct.Struct("=BBBx48xII")   # struct inet_diag_req: family 0, lengths, states, dbs
_LEN_TYPE = struct.Struct("=IH")   # nlmsghdr: length, type
# The bytes of a message that make its group: inet_diag_msg's idiag_dport (big-endian),
# idiag_src and idiag_dst, contiguous at payload offset 6 (idiag_sport, at 4, is left out).
_KEY_START = nl.HDR_LEN + 6
_KEY_END = nl.HDR_LEN + 40
_REFUSED = (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP)


def request_both_families(states: int, bytecode: bytes = b"") -> bytes:
    """A TCPDIAG_GETSOCK request: IPv4 and IPv6 sockets in one walk of the kernel's
    established hash (a SOCK_DIAG_BY_FAMILY request names one family, and each walks the
    whole table, the other family's sockets and every empty bucket included)."""
    req = _REQ_BOTH.pack(0, 0, 0, states, 0)
    return req + nl.attr(INET_DIAG_REQ_BYTECODE, bytecode) if bytecode else req


def _count(sock: nl.NetlinkSocket, mtype: int, payload: bytes,
           tables: dict[int, dict[bytes, int]], deadline: float | None) -> bool:
    """Counts the sockets of one dump into ``tables`` (family -> raw key -> count): per
    message only the header's length and type are unpacked and the key is one slice.  False
    when ``deadline`` stopped it."""
    reply = sock.send(mtype, nl.NLM_F_DUMP, payload, "sock_diag walk")
    hdr = _LEN_TYPE.unpack_from
    at_family = nl.HDR_LEN
    for data in sock.datagrams(reply):
        off, n = 0, len(data)
        while off < n:
            if n - off < nl.HDR_LEN:
                raise nl.ParseError(f"sock_diag: {n - off} trailing bytes")
            ln, t = hdr(data, off)
            if ln < nl.HDR_LEN or off + ln > n:
                raise nl.ParseError(f"sock_diag: message of {ln} bytes at offset {off}, "
                                    f"{n - off} left")
            if t >= nl.NLMSG_MIN_TYPE:   # an inet_diag_msg (typed as the request was)
                if ln < nl.HDR_LEN + MSG_LEN:
                    raise nl.ParseError(f"sock_diag: message of {ln - nl.HDR_LEN} bytes, "
                                        f"inet_diag_msg needs {MSG_LEN}")
                counts = tables.get(data[off + at_family])
                if counts is None:
                    raise nl.ParseError(f"sock_diag: address family {data[off + at_family]}")
                key = data[off + _KEY_START:off + _KEY_END]
                counts[key] = counts.get(key, 0) + 1
            else:
                reply.control(data, off)   # DONE ends the reply; an ERROR raises
                if reply.done:
                    break
            off += (ln + 3) & ~3
        if deadline is not None and not reply.done and time.monotonic() > deadline:
            return False
    return True


def ephemeral_walk(sock: nl.NetlinkSocket, lo: int, hi: int, deadline: float | None = None
                   ) -> tuple[dict[tuple[str, str], int], bool]:
    """TCP sockets whose local port is in [lo, hi], counted per (source address, destination
    address:port), as :func:`ephemeral_groups`; (groups, complete).

    What makes it cheap at 100,000 sockets: one walk of the kernel's table for both families
    (:func:`request_both_families`; a kernel that refuses it is asked once per family); the
    kernel filters (:func:`local_port_filter`: the servers' side of every connection, on a
    service port, never reaches user space); the reply is the smallest the kernel sends (no
    extension asked for); the decode touches the header and one slice per socket (:func:`_count`)
    and only the groups are turned into text.  States: every one that holds a port pair
    (TCPF_CONNECTIONS), TIME_WAIT included: a TIME_WAIT socket's 4-tuple is not given to a new
    connect() to the same destination.  ``deadline`` (monotonic) stops the walk early,
    complete False (the socket should then be closed, not reused)."""
    program = local_port_filter(lo, hi)
    tables: dict[int, dict[bytes, int]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
    try:
        complete = _count(sock, TCPDIAG_GETSOCK,
                          request_both_families(TCPF_CONNECTIONS, program), tables, deadline)
    except nl.NetlinkError as exc:
        if exc.errno not in _REFUSED:
            raise
        tables = {socket.AF_INET: {}, socket.AF_INET6: {}}
        complete = True
        for family in (socket.AF_INET, socket.AF_INET6):
            complete = _count(sock, SOCK_DIAG_BY_FAMILY,
                              request(family, socket.IPPROTO_TCP, TCPF_CONNECTIONS, 0, program),
                              tables, deadline)
            if not complete:
                break
    out: dict[tuple[str, str], int] = {}
    for fam, counts in tables.items():
        for key, n_sockets in counts.items():
            group = (_address(fam, key[2:18]),
                     destination(_address(fam, key[18:34]), _PORTS.unpack_from(key)[0]))
            out[group] = out.get(group, 0) + n_sockets
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
