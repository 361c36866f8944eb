"""Netlink, knowing no family: framing, attributes, requests, one socket, replay of fixtures.

Every kernel reader that speaks netlink (rtnetlink links/routes, ctnetlink, IPVS over generic
netlink, and the families still to come: neighbour tables, sock_diag, nftables, ethtool) is
built on this module.  A family module keeps only its own headers, attribute enums,
dataclasses and decoders.  The standard library's ``AF_NETLINK`` socket is used directly
(no pyroute2: see docs/performance.md for why).

Errors (one vocabulary, :mod:`exporter.sources`)
    :class:`ParseError` - bytes that are not well-formed netlink (framing, attribute lengths,
    a getter's size check); :class:`NetlinkError` (an ``OSError``, ``errno`` positive) - the
    kernel refused (NLMSG_ERROR with a non-zero code, a dump's non-zero NLMSG_DONE errno,
    NLMSG_OVERRUN as ENOBUFS); :class:`TimeoutError` - no complete answer within the socket's
    per-receive ``timeout`` or overall ``deadline``.

Framing (pure)
    ``HDR`` (``struct nlmsghdr``), :func:`iter_messages` ``(data) -> (type, flags, seq,
    start, end)`` per message (payload in ``data[start:end]``), :func:`error_code`,
    :func:`is_control` (type < NLMSG_MIN_TYPE: NOOP, ERROR, DONE, OVERRUN).

Attributes (pure, one walker)
    :func:`attrs` ``(data, start, end) -> {type: (start, end)}`` (payload spans, the
    NLA_F_NESTED / NLA_F_NET_BYTEORDER bits masked off, the last of a repeated type wins),
    :func:`iter_attrs` for repeated types (lists).  Checked getters take a payload span and
    raise ParseError when it is too short: :func:`u8`, :func:`u16`, :func:`u32`,
    :func:`u64`, :func:`s32`, :func:`be16`, :func:`be32`, :func:`be64`, :func:`uint`
    (NLA_UINT: 4 or 8 bytes), :func:`string` (up to the first NUL), :func:`raw`.  The
    ``get_*`` variants take the dict from :func:`attrs` and a type, returning ``default``
    when it is absent.  For hot decoders, the same walk as :func:`attr_index` ``-> {type:
    payload offset}`` (no tuple per attribute), :func:`span` ``(data, off)`` and the
    host-order getters ``u8_at/u16_at/u32_at/s32_at/u64_at(data, off)``.

Requests (pure)
    :func:`message` (an nlmsghdr and payload), :func:`attr` / :func:`nested` (padded TLVs),
    ``attr_u8/u16/u32/u64/be16/be32/str``, :func:`genl_header`.

One socket: :class:`NetlinkSocket` ``(protocol, timeout=2.0, deadline=10.0, max_bytes=256 MiB,
recv_size=64 KiB, batched=None, transport=None)``
    Opens an ``AF_NETLINK`` socket in the calling thread's network namespace (the only place
    in the exporter that does), unless a ``transport`` is given (the replay seam).
    Every reply is bounded: ``timeout`` seconds per receive (SO_RCVTIMEO, no poll() per call),
    ``deadline`` seconds and ``max_bytes`` per request; a datagram the kernel had to cut
    (MSG_TRUNC) is a ParseError, never silently decoded.  Datagrams whose first message
    carries another sequence number (the answer to an abandoned request) are dropped.
    Receives are batched with recvmmsg(2) where libc has it (:mod:`.recvmmsg`).

    High level: ``request(type, payload, flags=0) -> [Message]`` (one answer, acked or not),
    ``dump(type, payload, decode=None, retry=True) -> list`` (``decode(Message)`` -> item,
    None to drop; an interrupted dump, NLM_F_DUMP_INTR, is run once more; the result has
    ``.interrupted`` when the second run was interrupted too - see :class:`DumpResult`).
    Low level, for accelerated decoders that walk a whole datagram in one pass:
    ``reply = sock.send(type, flags, payload)`` then ``for data in sock.datagrams(reply):``;
    each datagram must go through ``reply.messages(data)`` (generic: returns its messages),
    ``reply.scan(data)`` (headers only) or, from a decoder's own walk, ``reply.control(data,
    start - 16)`` for every control message, so that the :class:`Reply` learns it is done.

Generic netlink
    :func:`genl_families` ``(sock) -> {name: GenlFamily}`` and :func:`resolve_family`
    ``(sock, name) -> GenlFamily | None`` by a CTRL_CMD_GETFAMILY *dump*: asking by name makes
    the kernel request_module() the family's module; the dump never loads anything.
    :func:`parse_genl_families` is the pure decoder of that dump.

Replay (the one test seam)
    :class:`ReplayTransport` ``(answers)`` stands in for the kernel: ``answers`` maps a request
    key - ``(type, first payload byte)`` (the genl command, or the rtnetlink/nfnetlink address
    family) or just ``type`` - to the datagrams captured for it (or is a callable
    ``(request bytes) -> datagrams``).  The sequence numbers of the answers are rewritten to
    the request's, so the socket's sequence filtering runs as on a kernel.  An unknown request
    is answered with NLMSG_ERROR ``missing`` (default EOPNOTSUPP), which a test can set.
    :func:`load_hex` reads tests/fixtures/netlink/*.hex (one datagram per line, ``#``
    comments); :class:`RecordingTransport` wraps the kernel and keeps every exchange, for
    capture scripts; :func:`format_hex` writes the same format.
"""
from __future__ import annotations

import array
import errno as _errno
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from . import NetlinkError, ParseError, recvmmsg

__all__ = [
    "NetlinkError", "ParseError", "NetlinkSocket", "Reply", "Message", "DumpResult",
    "ReplayTransport", "RecordingTransport", "KernelTransport", "GenlFamily",
]

# --- constants (linux/netlink.h, linux/genetlink.h) ----------------------------------------
NETLINK_ROUTE, NETLINK_SOCK_DIAG, NETLINK_NETFILTER, NETLINK_GENERIC = 0, 4, 12, 16

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLMSG_MIN_TYPE = 0x10
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_ECHO, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x8, 0x10
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NLA_TYPE_MASK = 0x3FFF

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_VERSION = 1, 2, 3
CTRL_ATTR_HDRSIZE, CTRL_ATTR_MAXATTR = 4, 5

HDR = struct.Struct("=IHHII")     # nlmsghdr: len, type, flags, seq, pid (host order)
HDR_LEN = HDR.size                # 16
ATTR = struct.Struct("=HH")       # nlattr: len, type
GENL = struct.Struct("=BBH")      # genlmsghdr: cmd, version, reserved
GENL_HDR_LEN = HDR_LEN + GENL.size  # 20: where a generic-netlink message's attributes start

_U8 = struct.Struct("=B")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_S32 = struct.Struct("=i")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_BE64 = struct.Struct("!Q")
_MSG_TRUNC = int(socket.MSG_TRUNC)   # a plain int: IntFlag's & costs microseconds per call


class Message(NamedTuple):
    """One netlink data message; its payload (after the nlmsghdr) is ``data[start:end]``."""

    type: int
    flags: int
    seq: int
    data: Any     # bytes-like: the whole datagram (no copy per message)
    start: int
    end: int

    @property
    def payload(self) -> bytes:
        return bytes(self.data[self.start:self.end])


_message = tuple.__new__   # Message(...) without NamedTuple's Python-level __new__ (hot)


# --- framing --------------------------------------------------------------------------------

def iter_messages(data, context: str = "netlink") -> Iterator[tuple[int, int, int, int, int]]:
    """Yields (type, flags, seq, payload_start, payload_end) for every message in ``data``.

    Raises ParseError for a header that does not fit (the kernel pads messages to 4 bytes;
    a message may end the buffer without its padding)."""
    off, n = 0, len(data)
    unpack = HDR.unpack_from
    while off < n:
        if n - off < HDR_LEN:
            raise ParseError(f"{context}: {n - off} trailing bytes at offset {off}, shorter "
                             f"than a netlink header")
        ln, mtype, flags, seq, _pid = unpack(data, off)
        if ln < HDR_LEN or off + ln > n:
            raise ParseError(f"{context}: message at offset {off} has length {ln}, "
                             f"{n - off} bytes left")
        yield mtype, flags, seq, off + HDR_LEN, off + ln
        off += (ln + 3) & ~3


def error_code(data, start: int, end: int, context: str = "netlink") -> int:
    """The positive errno of an NLMSG_ERROR (or a dump's NLMSG_DONE) payload; 0 = ack."""
    if end - start < 4:
        raise ParseError(f"{context}: truncated NLMSG_ERROR/NLMSG_DONE")
    return -_S32.unpack_from(data, start)[0]


def is_control(mtype: int) -> bool:
    return mtype < NLMSG_MIN_TYPE


class Reply:
    """What is known of the answer to one request: complete yet, interrupted, its sequence.

    ``ack``: the request asked for an acknowledgement (NLM_F_ACK), so it ends at the
    NLMSG_ERROR(0) that follows the answer, not at the first non-multipart message.
    ``seq`` None takes messages of any sequence (pure decoders of captured bytes).
    """

    __slots__ = ("seq", "ack", "done", "interrupted", "context")

    def __init__(self, seq: int | None, ack: bool = False, context: str = "netlink"):
        self.seq, self.ack, self.context = seq, ack, context
        self.done = False
        self.interrupted = False

    def control(self, data, off: int) -> None:
        """Handles the control message (type < 16) whose header is at ``data[off]``: DONE and
        ERROR end the reply (a non-zero code raises NetlinkError), OVERRUN raises ENOBUFS,
        NOOP is ignored.  Accelerated decoders call this from their own walk."""
        ln, mtype, flags, _seq, _pid = HDR.unpack_from(data, off)
        if flags & NLM_F_DUMP_INTR:
            self.interrupted = True
        if mtype == NLMSG_DONE:
            self.done = True
            if ln - HDR_LEN >= 4:     # the dump's errno (dump_done_errno); absent on old kernels
                err = error_code(data, off + HDR_LEN, off + ln, self.context)
                if err:
                    raise NetlinkError(err, self.context)
        elif mtype == NLMSG_ERROR:
            self.done = True
            err = error_code(data, off + HDR_LEN, off + ln, self.context)
            if err:
                raise NetlinkError(err, self.context)
        elif mtype == NLMSG_OVERRUN:
            raise NetlinkError(_errno.ENOBUFS, f"{self.context}: NLMSG_OVERRUN")

    def messages(self, data) -> list[Message]:
        """The data messages of this request in one datagram (control messages handled)."""
        out: list[Message] = []
        seq_want, ack = self.seq, self.ack
        off, n = 0, len(data)
        unpack = HDR.unpack_from
        while off < n:
            if n - off < HDR_LEN:
                raise ParseError(f"{self.context}: {n - off} trailing bytes at offset {off}, "
                                 f"shorter than a netlink header")
            ln, mtype, flags, seq, _pid = unpack(data, off)
            if ln < HDR_LEN or off + ln > n:
                raise ParseError(f"{self.context}: message at offset {off} has length {ln}, "
                                 f"{n - off} bytes left")
            if seq == seq_want or seq_want is None:
                if mtype < NLMSG_MIN_TYPE:
                    self.control(data, off)
                    if self.done:
                        return out
                else:
                    if flags & NLM_F_DUMP_INTR:
                        self.interrupted = True
                    out.append(_message(Message, (mtype, flags, seq, data, off + HDR_LEN,
                                                  off + ln)))
                    if not flags & NLM_F_MULTI and not ack:
                        self.done = True
            off += (ln + 3) & ~3
        return out

    def scan(self, data) -> None:
        """Headers only: learns whether this datagram ends the reply (for decoders that walk
        the messages their own way afterwards)."""
        seq_want, ack = self.seq, self.ack
        off, n = 0, len(data)
        unpack = HDR.unpack_from
        while off + HDR_LEN <= n:
            ln, mtype, flags, seq, _pid = unpack(data, off)
            if ln < HDR_LEN:
                raise ParseError(f"{self.context}: message at offset {off} has length {ln}")
            if seq == seq_want or seq_want is None:
                if mtype < NLMSG_MIN_TYPE:
                    self.control(data, off)
                    if self.done:
                        return
                else:
                    if flags & NLM_F_DUMP_INTR:
                        self.interrupted = True
                    if not flags & NLM_F_MULTI and not ack:
                        self.done = True
            off += (ln + 3) & ~3


# --- attributes -----------------------------------------------------------------------------

def attrs(data, start: int, end: int, context: str = "netlink") -> dict[int, tuple[int, int]]:
    """Type -> (payload start, payload end) of the attributes in ``data[start:end]``."""
    out = {}
    unpack = ATTR.unpack_from
    pos = start
    while end - pos >= 4:
        ln, atype = unpack(data, pos)
        nxt = pos + ln
        if ln < 4 or nxt > end:
            raise ParseError(f"{context}: attribute type {atype & NLA_TYPE_MASK} at offset "
                             f"{pos} has length {ln}, {end - pos} bytes left")
        out[atype & NLA_TYPE_MASK] = (pos + 4, nxt)
        pos = (nxt + 3) & ~3
    return out


def attr_index(data, start: int, end: int, context: str = "netlink") -> dict[int, int]:
    """The same walk as :func:`attrs`, giving each type's *payload offset* only (no tuple per
    attribute, for decoders on a hot path: docs/performance.md).  :func:`span` turns an offset into
    the span the getters take; the ``*_at`` getters read header and value in one unpack."""
    out = {}
    unpack = ATTR.unpack_from
    pos = start
    while end - pos >= 4:
        ln, atype = unpack(data, pos)
        nxt = pos + ln
        if ln < 4 or nxt > end:
            raise ParseError(f"{context}: attribute type {atype & NLA_TYPE_MASK} at offset "
                             f"{pos} has length {ln}, {end - pos} bytes left")
        out[atype & NLA_TYPE_MASK] = pos + 4
        pos = (nxt + 3) & ~3
    return out


def span(data, off: int) -> tuple[int, int]:
    """(start, end) of the payload at ``off`` (an :func:`attr_index` value)."""
    return off, off - 4 + _U16.unpack_from(data, off - 4)[0]


def iter_attrs(data, start: int, end: int,
               context: str = "netlink") -> Iterator[tuple[int, int, int]]:
    """Yields (type, payload start, payload end) in order (repeated types all come out)."""
    unpack = ATTR.unpack_from
    pos = start
    while end - pos >= 4:
        ln, atype = unpack(data, pos)
        if ln < 4 or pos + ln > end:
            raise ParseError(f"{context}: attribute type {atype & NLA_TYPE_MASK} at offset "
                             f"{pos} has length {ln}, {end - pos} bytes left")
        yield atype & NLA_TYPE_MASK, pos + 4, pos + ln
        pos += (ln + 3) & ~3


def _checked(st: struct.Struct, name: str):
    size = st.size
    unpack = st.unpack_from

    def get(data, span: tuple[int, int], what: str = name) -> int:
        s, e = span
        if e - s < size:
            raise ParseError(f"{what}: attribute payload of {e - s} bytes, {name} needs {size}")
        return unpack(data, s)[0]

    def get_in(data, a: Mapping[int, tuple[int, int]], atype: int, default: Any = None,
               what: str = "") -> Any:
        span = a.get(atype)
        if span is None:
            return default
        return get(data, span, what or f"attribute {atype}")

    get.__name__, get_in.__name__ = name, "get_" + name
    get.__doc__ = f"The {name} at the start of a payload span; ParseError if shorter."
    return get, get_in


def _checked_at(code: str, name: str):
    """A host-order getter at a payload offset: one unpack reads (len, type, value)."""
    st = struct.Struct("=HH" + code)
    need = st.size
    unpack = st.unpack_from

    def get_at(data, off: int, what: str = name) -> int:
        try:
            ln, _t, value = unpack(data, off - 4)
        except struct.error:     # a short attribute at the very end of the buffer
            ln = 0
        if ln < need:
            raise ParseError(f"{what}: attribute payload of {ln - 4} bytes, {name} needs "
                             f"{need - 4}")
        return value

    get_at.__name__ = name + "_at"
    get_at.__doc__ = f"The {name} at payload offset ``off`` (header checked in the same unpack)."
    return get_at


u8, get_u8 = _checked(_U8, "u8")
u16, get_u16 = _checked(_U16, "u16")
u32, get_u32 = _checked(_U32, "u32")
u64, get_u64 = _checked(_U64, "u64")
s32, get_s32 = _checked(_S32, "s32")
be16, get_be16 = _checked(_BE16, "be16")
be32, get_be32 = _checked(_BE32, "be32")
be64, get_be64 = _checked(_BE64, "be64")
u8_at = _checked_at("B", "u8")
u16_at = _checked_at("H", "u16")
u32_at = _checked_at("I", "u32")
s32_at = _checked_at("i", "s32")
u64_at = _checked_at("Q", "u64")


def uint(data, span: tuple[int, int], what: str = "uint") -> int:
    """NLA_UINT / NLA_SINT-style variable width: 8 bytes if there are 8, else 4."""
    s, e = span
    if e - s >= 8:
        return _U64.unpack_from(data, s)[0]
    if e - s >= 4:
        return _U32.unpack_from(data, s)[0]
    raise ParseError(f"{what}: attribute payload of {e - s} bytes, need 4 or 8")


def string(data, span: tuple[int, int]) -> str:
    """A NUL-terminated (or not) string; undecodable bytes are backslash-escaped."""
    s, e = span
    return bytes(data[s:e]).split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def get_string(data, a: Mapping[int, tuple[int, int]], atype: int, default: Any = None) -> Any:
    span = a.get(atype)
    return default if span is None else string(data, span)


def raw(data, span: tuple[int, int]) -> bytes:
    s, e = span
    return bytes(data[s:e])


# --- requests -------------------------------------------------------------------------------

def attr(atype: int, payload: bytes = b"") -> bytes:
    """One attribute, padded to 4 bytes."""
    ln = 4 + len(payload)
    return ATTR.pack(ln, atype) + payload + b"\0" * (-ln & 3)


def nested(atype: int, *children: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(children))


def attr_u8(atype: int, v: int) -> bytes:
    return attr(atype, _U8.pack(v))


def attr_u16(atype: int, v: int) -> bytes:
    return attr(atype, _U16.pack(v))


def attr_u32(atype: int, v: int) -> bytes:
    return attr(atype, _U32.pack(v))


def attr_u64(atype: int, v: int) -> bytes:
    return attr(atype, _U64.pack(v))


def attr_be16(atype: int, v: int) -> bytes:
    return attr(atype, _BE16.pack(v))


def attr_be32(atype: int, v: int) -> bytes:
    return attr(atype, _BE32.pack(v))


def attr_str(atype: int, v: str) -> bytes:
    return attr(atype, v.encode() + b"\0")


def message(mtype: int, flags: int, seq: int, payload: bytes = b"", pid: int = 0) -> bytes:
    """One message; the length excludes the padding to 4 bytes that follows, as the kernel's."""
    ln = HDR_LEN + len(payload)
    return HDR.pack(ln, mtype, flags, seq, pid) + payload + b"\0" * (-ln & 3)


def genl_header(cmd: int, version: int = 1) -> bytes:
    return GENL.pack(cmd, version, 0)


# --- transports -----------------------------------------------------------------------------

class Transport(Protocol):
    """What :class:`NetlinkSocket` needs below it: the kernel, or a replay."""

    def send(self, data: bytes) -> None: ...

    def recv(self) -> list[tuple[bytes, int]]:
        """At least one (datagram, msg flags); TimeoutError when nothing came in time."""
        ...

    def close(self) -> None: ...


class KernelTransport:
    """A real ``AF_NETLINK`` socket, bound, with a kernel-side receive timeout."""

    def __init__(self, protocol: int, timeout: float = 2.0, recv_size: int = 1 << 16,
                 batched: bool | None = None):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  protocol)
        try:
            # SO_RCVTIMEO, not settimeout(): a Python timeout puts a poll() before every
            # recv, doubling the system calls of a dump (costly under UML or gVisor).
            sec = int(timeout)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                 struct.pack("@ll", sec, int((timeout - sec) * 1e6)))
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self.rx = recvmmsg.receiver(self.sock, recv_size, batched)

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self) -> list[tuple[bytes, int]]:
        try:
            return self.rx.recv()
        except BlockingIOError as exc:   # SO_RCVTIMEO expired
            raise TimeoutError(_errno.ETIMEDOUT, "netlink: no answer from the kernel") from exc

    def close(self) -> None:
        self.sock.close()


Answers = Mapping[Any, Sequence[bytes]] | Callable[[bytes], Sequence[bytes]]


def _with_seq(datagram: bytes, seq: int) -> bytes:
    buf = bytearray(datagram)
    n = len(buf)
    if n >= HDR_LEN and n % 4 == 0:
        # equal-length messages (a dump part), perhaps with a 20-byte NLMSG_DONE after them:
        # all their seq words in one slice
        ln = _U32.unpack_from(buf, 0)[0]
        body = n - 20 if ln and n % ln == 20 and _U32.unpack_from(buf, n - 20)[0] == 20 else n
        if ln >= HDR_LEN and ln % 4 == 0 and body % ln == 0:
            words = memoryview(buf).cast("I")
            k = body // ln
            if words[0:body // 4:ln // 4].tolist().count(ln) == k:
                words[2:body // 4:ln // 4] = array.array("I", [seq]) * k
                if body != n:
                    words[body // 4 + 2] = seq
                return bytes(buf)
    off = 0
    while off + HDR_LEN <= n:
        ln = _U32.unpack_from(buf, off)[0]
        if ln < HDR_LEN:
            break                  # malformed on purpose (a test): left as captured
        _U32.pack_into(buf, off + 8, seq)
        off += (ln + 3) & ~3
    return bytes(buf)


class ReplayTransport:
    """Answers requests from captured datagrams, as the kernel did when they were captured.

    ``answers``: {(type, first payload byte) or type: [datagram, ...]} or a callable
    ``(request bytes) -> [datagram, ...]``.  ``sent`` keeps every request (for assertions).
    ``missing``: the errno answered to a request with no entry (None: raise LookupError).
    An empty queue on receive is a TimeoutError, as a kernel that stays silent.
    """

    def __init__(self, answers: Answers, missing: int | None = _errno.EOPNOTSUPP,
                 rewrite_seq: bool = True):
        self.answers = answers
        self.missing = missing
        self.rewrite_seq = rewrite_seq
        self.sent: list[bytes] = []
        self.queue: list[tuple[bytes, int]] = []
        self.closed = False

    def _lookup(self, request: bytes) -> Sequence[bytes] | None:
        if callable(self.answers):
            return self.answers(request)
        mtype = _U16.unpack_from(request, 4)[0]
        if len(request) > HDR_LEN and (mtype, request[HDR_LEN]) in self.answers:
            return self.answers[(mtype, request[HDR_LEN])]
        return self.answers.get(mtype)

    def send(self, data: bytes) -> None:
        if self.closed:
            raise OSError(_errno.EBADF, "replay transport closed")
        self.sent.append(bytes(data))
        seq = _U32.unpack_from(data, 8)[0]
        got = self._lookup(data)
        if got is None:
            if self.missing is None:
                raise LookupError(f"replay: no answer for request type "
                                  f"{_U16.unpack_from(data, 4)[0]:#x}")
            err = message(NLMSG_ERROR, 0, seq, _S32.pack(-self.missing) + bytes(data[:HDR_LEN]))
            self.queue.append((err, 0))
            return
        for d in got:
            self.queue.append((_with_seq(d, seq) if self.rewrite_seq else bytes(d), 0))

    def recv(self) -> list[tuple[bytes, int]]:
        if not self.queue:
            raise TimeoutError(_errno.ETIMEDOUT, "replay: no more captured answers")
        return [self.queue.pop(0)]

    def close(self) -> None:
        self.closed = True


class RecordingTransport:
    """Wraps a transport and keeps [(request, [datagrams])] (for capturing fixtures)."""

    def __init__(self, inner: Transport):
        self.inner = inner
        self.exchanges: list[tuple[bytes, list[bytes]]] = []

    def send(self, data: bytes) -> None:
        self.exchanges.append((bytes(data), []))
        self.inner.send(data)

    def recv(self) -> list[tuple[bytes, int]]:
        got = self.inner.recv()
        if self.exchanges:
            self.exchanges[-1][1].extend(d for d, _f in got)
        return got

    def close(self) -> None:
        self.inner.close()


def load_hex(path: str) -> list[bytes]:
    """Datagrams from a fixture file: one hex line each, ``#`` lines are comments."""
    with open(path) as fh:
        return [bytes.fromhex(line.strip()) for line in fh
                if line.strip() and not line.lstrip().startswith("#")]


def format_hex(datagrams: Sequence[bytes], comment: str = "") -> str:
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + "".join(bytes(d).hex() + "\n" for d in datagrams)


# --- the socket -----------------------------------------------------------------------------

class DumpResult(list):
    """The decoded items of a dump; ``interrupted`` if it was still inconsistent after the
    one retry (the kernel's table changed during both runs)."""

    interrupted: bool = False


class NetlinkSocket:
    """One netlink socket in the calling thread's network namespace (a context manager).

    Not thread-safe: one per thread, or serialise.  See the module docstring for the API.
    """

    def __init__(self, protocol: int, *, timeout: float = 2.0, deadline: float = 10.0,
                 max_bytes: int = 1 << 28, recv_size: int = 1 << 16,
                 batched: bool | None = None, transport: Transport | None = None):
        self.protocol = protocol
        self.timeout, self.deadline, self.max_bytes = timeout, deadline, max_bytes
        self.transport: Transport = (transport if transport is not None else
                                     KernelTransport(protocol, timeout, recv_size, batched))
        self._seq = int(time.monotonic() * 1000) & 0xFFFF
        self._pending: list[tuple[bytes, int]] = []

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # low level

    def send(self, mtype: int, flags: int, payload: bytes = b"",
             context: str = "") -> Reply:
        """Sends one request (NLM_F_REQUEST is added); returns its :class:`Reply`."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        flags |= NLM_F_REQUEST
        self.transport.send(message(mtype, flags, self._seq, payload))
        return Reply(self._seq, bool(flags & NLM_F_ACK) and not flags & NLM_F_DUMP,
                     context or f"netlink request {mtype:#x}")

    def datagrams(self, reply: Reply, deadline: float | None = None) -> Iterator[bytes]:
        """The received datagrams of ``reply``'s request, until it is done (see module doc).

        ``deadline``: seconds for this reply (default: the socket's)."""
        seconds = self.deadline if deadline is None else deadline
        t_end = time.monotonic() + seconds
        total, budget = 0, self.max_bytes
        pending = self._pending
        recv = self.transport.recv
        seq = reply.seq
        while not reply.done:
            if not pending:
                if time.monotonic() > t_end:
                    raise TimeoutError(_errno.ETIMEDOUT, f"{reply.context}: reply not "
                                       f"complete after {seconds:g}s")
                pending.extend(recv())
            data, fl = pending.pop(0)
            if fl & _MSG_TRUNC:
                raise ParseError(f"{reply.context}: datagram larger than the receive buffer")
            total += len(data)
            if total > budget:
                raise ParseError(f"{reply.context}: reply larger than {budget} bytes")
            if len(data) >= HDR_LEN and _U32.unpack_from(data, 8)[0] != seq:
                continue           # the answer to an abandoned request
            yield data

    # high level

    def request(self, mtype: int, payload: bytes = b"", flags: int = 0,
                context: str = "") -> list[Message]:
        """A non-dump request: the messages of its answer (an ack ends it if asked for)."""
        reply = self.send(mtype, flags, payload, context)
        out: list[Message] = []
        for data in self.datagrams(reply):
            out.extend(reply.messages(data))
        return out

    def dump(self, mtype: int, payload: bytes = b"", decode: Callable[[Message], Any] | None = None,
             *, flags: int = 0, retry: bool = True, context: str = "") -> DumpResult:
        """A dump (NLM_F_DUMP), every message through ``decode`` (None results dropped).

        An interrupted dump (NLM_F_DUMP_INTR: the table changed while it was read) runs once
        more when ``retry``; the result says whether the last run was interrupted."""
        for attempt in (0, 1):
            out = DumpResult()
            reply = self.send(mtype, flags | NLM_F_DUMP, payload, context)
            for data in self.datagrams(reply):
                msgs = reply.messages(data)
                if decode is None:
                    out.extend(msgs)
                else:
                    for m in msgs:
                        item = decode(m)
                        if item is not None:
                            out.append(item)
            out.interrupted = reply.interrupted
            if not reply.interrupted or not retry or attempt:
                return out
        raise AssertionError("unreachable")


# --- generic netlink ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GenlFamily:
    name: str
    id: int
    version: int = 0
    hdrsize: int = 0
    maxattr: int = 0


def decode_genl_family(m: Message) -> GenlFamily | None:
    """One CTRL_CMD_NEWFAMILY message -> GenlFamily (None without a name or id)."""
    if m.end - m.start < GENL.size:
        raise ParseError("genl ctrl: message shorter than genlmsghdr")
    data = m.data
    a = attrs(data, m.start + GENL.size, m.end, "genl ctrl")
    name = get_string(data, a, CTRL_ATTR_FAMILY_NAME)
    fid = get_u16(data, a, CTRL_ATTR_FAMILY_ID, None, "CTRL_ATTR_FAMILY_ID")
    if not name or fid is None:
        return None
    return GenlFamily(name, fid, get_u32(data, a, CTRL_ATTR_VERSION, 0, "CTRL_ATTR_VERSION"),
                      get_u32(data, a, CTRL_ATTR_HDRSIZE, 0, "CTRL_ATTR_HDRSIZE"),
                      get_u32(data, a, CTRL_ATTR_MAXATTR, 0, "CTRL_ATTR_MAXATTR"))


def parse_genl_families(datagrams: Sequence[bytes]) -> dict[str, GenlFamily]:
    """The pure decoder of a CTRL_CMD_GETFAMILY dump (its datagrams, any sequence)."""
    out: dict[str, GenlFamily] = {}
    for data in datagrams:
        for mtype, flags, seq, start, end in iter_messages(data, "genl ctrl"):
            if mtype == GENL_ID_CTRL:
                fam = decode_genl_family(Message(mtype, flags, seq, data, start, end))
                if fam is not None:
                    out.setdefault(fam.name, fam)
            elif mtype == NLMSG_ERROR and error_code(data, start, end, "genl ctrl"):
                raise NetlinkError(error_code(data, start, end), "genl ctrl")
    return out


def genl_families(sock: NetlinkSocket) -> dict[str, GenlFamily]:
    """Every generic-netlink family the kernel has now, by a dump (loads no module)."""
    fams = sock.dump(GENL_ID_CTRL, genl_header(CTRL_CMD_GETFAMILY, 1), decode_genl_family,
                     context="genl CTRL_CMD_GETFAMILY dump")
    out: dict[str, GenlFamily] = {}
    for f in fams:
        out.setdefault(f.name, f)
    return out


def resolve_family(sock: NetlinkSocket, name: str) -> GenlFamily | None:
    """The family called ``name``, or None when the kernel has none (never by name: a
    CTRL_CMD_GETFAMILY by name makes the kernel try to load the family's module)."""
    return genl_families(sock).get(name)
