"""HTTP/1.x on the wire, without sockets: request heads in, response framing out.

Pure functions and one buffer class, so every byte a client controls is handled here, where
it is fuzzed (tests/unit/test_http.py), and :mod:`exporter.server` keeps only the socket
loop with its deadlines.  The limits (docs/security.md "Request limits"):

- request line ``MAX_REQUEST_LINE`` bytes (414), head ``MAX_HEAD`` bytes and ``MAX_HEADERS``
  lines (431); HTTP/1.0 and 1.1 only (505); anything else malformed is 400;
- request bodies are never read: a request announcing one closes the connection after the
  answer (:func:`has_body`).
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator
from email.utils import formatdate
from http import HTTPStatus

MAX_REQUEST_LINE = 8192
MAX_HEAD = 16384
MAX_HEADERS = 100
TEXT = "text/plain; charset=utf-8"
LAST_CHUNK = b"0\r\n\r\n"

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
REASONS = {status.value: status.phrase for status in HTTPStatus}


class Reject(Exception):
    """Answer ``code`` with ``message`` and close the connection."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Request:
    """A parsed request head: method, target, path (absolute-form reduced), version,
    lower-cased headers (repeats joined with ", "), and whether the client keeps alive."""

    __slots__ = ("method", "target", "path", "version", "headers", "keep_alive")

    def __init__(self, method: str, target: str, version: tuple[int, int],
                 headers: dict[str, str]):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        path = target.split("?", 1)[0]
        if path.startswith(("http://", "https://")):  # absolute-form
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        self.path = path
        conn = headers.get("connection", "").lower()
        if version >= (1, 1):
            self.keep_alive = "close" not in conn
        else:
            self.keep_alive = "keep-alive" in conn


class RequestBuffer:
    """The bytes received on one connection, cut into request heads.

    ``feed`` what the socket gave, then ``next_head`` until it returns None.  It never holds
    more than ``MAX_HEAD`` bytes of an unfinished head plus one read: a longer request line or
    head is a :class:`Reject` as soon as it is seen."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def begun(self) -> bool:
        """True when bytes of a next request are here (a pipelined request)."""
        return bool(self._buf)

    def next_head(self) -> bytes | None:
        """The next complete request head (consumed), None if more bytes are needed."""
        buf = self._buf
        while buf[:2] == b"\r\n" or buf[:1] == b"\n":  # RFC 9112 2.2: empty lines first
            del buf[:2 if buf[:2] == b"\r\n" else 1]
        end = head_end(buf)
        # the same limits whether the head came in one read or many (TCP splits anywhere)
        seen = len(buf) if end is None else end[0]
        line_end = buf.find(b"\n", 0, seen)
        if (line_end < 0 and seen > MAX_REQUEST_LINE) or line_end > MAX_REQUEST_LINE:
            raise Reject(414, "request line too long")
        if seen > MAX_HEAD:
            raise Reject(431, "request header fields too large")
        if end is None:
            return None
        head_len, consumed = end
        head = bytes(buf[:head_len])
        del buf[:consumed]
        return head


def head_end(buf: bytes | bytearray) -> tuple[int, int] | None:
    """(length of the head, bytes to consume) once the blank line ending the head is in buf
    (CRLF CRLF, or bare LFs as RFC 9112 lets a server accept)."""
    candidates = []
    for sep in (b"\r\n\r\n", b"\n\n", b"\n\r\n"):
        i = buf.find(sep)
        if i >= 0:
            candidates.append((i, i + len(sep)))
    return min(candidates) if candidates else None


def parse_head(head: bytes) -> Request:
    """A request head (without its blank line) -> Request; Reject(400/414/431/505)."""
    lines = head.split(b"\n")
    request_line = lines[0].rstrip(b"\r")
    if len(request_line) > MAX_REQUEST_LINE:
        raise Reject(414, "request line too long")
    if len(lines) - 1 > MAX_HEADERS:
        raise Reject(431, "too many header fields")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise Reject(400, "bad request line")
    m = _VERSION.fullmatch(parts[2])
    if not m:
        raise Reject(400, "bad HTTP version")
    version = (int(m.group(1)), int(m.group(2)))
    if version[0] != 1:
        raise Reject(505, "HTTP version not supported")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):  # also rejects obs-fold continuation lines
            raise Reject(400, "bad header field")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise Reject(400, "bad request target") from None
    return Request(parts[0].decode("ascii"), target, version, headers)


def has_body(req: Request) -> bool:
    """The request announces a body (which we never read: the stream is unusable after)."""
    return "transfer-encoding" in req.headers or req.headers.get("content-length", "0") != "0"


def route(req: Request, metrics_path: str) -> str:
    """What a request asks for: "method" (not GET/HEAD), "healthz", "metrics", "diagnose",
    "landing" or "notfound".  Authentication is the caller's (every route but healthz and
    method)."""
    if req.method not in ("GET", "HEAD"):
        return "method"
    if req.path == "/healthz":
        return "healthz"
    if req.path == metrics_path:
        return "metrics"
    if req.path == "/diagnose":
        return "diagnose"
    return "landing" if req.path == "/" else "notfound"


def wants_openmetrics(accept: str) -> bool:
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media == "application/openmetrics-text":
            return True
    return False


def accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        fields = part.strip().split(";")
        if fields[0].strip().lower() in ("gzip", "*"):
            q = [f.strip() for f in fields[1:] if f.strip().startswith("q=")]
            try:
                if not q or float(q[0][2:] or 0) > 0:
                    return True
            except ValueError:
                continue
    return False


def response_head(code: int, ctype: str, close: bool, length: int | None,
                  extra: Iterable[tuple[str, str]] = (), server: str = "nodenet-exporter",
                  date: str | None = None) -> bytes:
    """Status line and headers of a response, up to and including the blank line.

    ``length`` None: no Content-Length (a chunked or close-delimited body); ``extra``: more
    headers in order (the web config's, Content-Encoding...)."""
    lines = [f"HTTP/1.1 {code} {REASONS.get(code, 'Unknown')}",
             f"Date: {date or formatdate(usegmt=True)}",
             f"Server: {server}",
             f"Content-Type: {ctype}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in extra]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(piece: bytes) -> bytes:
    """One chunk of a chunked body (never pass an empty piece: that ends the body)."""
    return b"%x\r\n%b\r\n" % (len(piece), piece)


def encoded(chunks: Iterable[bytes], gzip: bool) -> Iterator[bytes]:
    """The body's pieces, gzipped (level 1: speed over size) when asked; never an empty
    piece (an empty chunk would end a chunked body)."""
    if not gzip:
        for piece in chunks:
            if piece:
                yield piece
        return
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)
    for piece in chunks:
        piece = gz.compress(piece)
        if piece:
            yield piece
    yield gz.flush()
