"""HTTP front end: /metrics, /healthz and a landing page, on a threading server.

HTTP/1.1 with keep-alive, optionally TLS and basic auth (``--web.config.file``, see
:mod:`exporter.webconfig`).  The request reader is ours rather than http.server's so that every
read is bounded in time and size (http.server's socket timeout bounds each ``recv``, not the
request: a client sending a byte every few seconds would hold a thread forever).
"""
from __future__ import annotations

import html
import itertools
import re
import socket
import socketserver
import ssl
import threading
import time
import zlib
from email.utils import formatdate
from http import HTTPStatus

from . import __version__
from .metrics import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT


def parse_listen_address(address: str) -> tuple[str, int]:
    """':9834' -> ('', 9834); '127.0.0.1:9834'; '[::1]:9834'. Raises ValueError."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {address!r} has no port (use host:port or :port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"listen address {address!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {address!r}: port out of range")
    return host, port


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


class ExporterServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """One thread per connection, with bounds on everything a client controls:

    - connections: at most ``max_connections`` at once; more are closed on accept;
    - time: TLS handshake plus request head within ``read_header_timeout`` of accepting (or of
      the first byte of a later request on a kept-alive connection), at most ``idle_timeout``
      idle between requests, the response written within ``write_timeout``;
    - size: request line ``MAX_REQUEST_LINE`` bytes (414), head ``MAX_HEAD`` bytes and
      ``MAX_HEADERS`` lines (431); request bodies are never read (the connection is closed).
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    max_connections = 512

    def __init__(self, address: str, app: "App", web=None, read_header_timeout: float = 10.0,
                 idle_timeout: float = 90.0, write_timeout: float = 30.0):
        host, port = parse_listen_address(address)
        self.app = app
        self.web = web if web is not None else _StaticWeb()
        self.read_header_timeout = read_header_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        family = socket.AF_INET
        if ":" in host or (host == "" and socket.has_ipv6 and _ipv6_usable()):
            family = socket.AF_INET6
            if host == "":
                host = "::"
        self.address_family = family
        super().__init__((host, port), Handler, bind_and_activate=False)
        if family == socket.AF_INET6 and host == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise
        self.stopping = False
        self.connections = 0
        self.in_flight = 0
        self.in_flight_lock = threading.Lock()
        self.idle = threading.Condition(self.in_flight_lock)

    def process_request(self, request, client_address):
        with self.in_flight_lock:
            full = self.connections >= self.max_connections
            if not full:
                self.connections += 1
        if full:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self.in_flight_lock:
                self.connections -= 1
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.in_flight_lock:
                self.connections -= 1

    def handle_error(self, request, client_address):
        import sys
        exc = sys.exc_info()[1]
        self.app.log.error("connection handler failed", error=f"{type(exc).__name__}: {exc}")

    def begin_request(self) -> None:
        with self.in_flight_lock:
            self.in_flight += 1

    def end_request(self) -> None:
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Waits until no request is being served; True if drained in time."""
        self.stopping = True
        deadline = time.monotonic() + timeout
        with self.idle:
            while self.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.idle.wait(left)
        return True


class _StaticWeb:
    """No --web.config.file: plain HTTP, no auth."""

    def current(self):
        from .webconfig import WebConfig
        return WebConfig()


def _ipv6_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::", 0))
        return True
    except OSError:
        return False


class App:
    """What the handler serves; built by the CLI."""

    def __init__(self, gatherer, settings, log, collector_names):
        self.gatherer = gatherer
        self.settings = settings
        self.log = log
        self.collector_names = collector_names
        self.metrics_path = settings["web.telemetry-path"]
        self.max_requests = settings["web.max-requests"]
        self._scrapes = threading.BoundedSemaphore(self.max_requests)
        # /diagnose: an exporter.diagnose.History of the scrapes' readings, recording from the
        # start when the gatherer can be observed (else made at the first /diagnose)
        self._health = None
        self._health_lock = threading.Lock()
        if hasattr(gatherer, "on_collect"):
            self.health()

    def health(self):
        with self._health_lock:
            if self._health is None:
                from .diagnose import History
                self._health = History(self.gatherer)
            return self._health

    def try_begin_scrape(self) -> bool:
        return self._scrapes.acquire(blocking=False)

    def end_scrape(self) -> None:
        self._scrapes.release()


MAX_REQUEST_LINE = 8192
MAX_HEAD = 16384
MAX_HEADERS = 100
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_REASONS = {status.value: status.phrase for status in HTTPStatus}
TEXT = "text/plain; charset=utf-8"
SMALL_BODY = 1 << 18   # bytes: below this a /metrics answer has a Content-Length


class _Reject(Exception):
    """Answer this status and close the connection."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _Closed(Exception):
    """The client went away, timed out or spoke garbage: close without an answer."""


class Request:
    __slots__ = ("method", "target", "path", "version", "headers", "keep_alive")

    def __init__(self, method, target, version, headers):
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


class Handler(socketserver.BaseRequestHandler):
    """One connection: optional TLS handshake, then requests until close, error or timeout."""

    server: ExporterServer

    def setup(self):
        self.sock = self.request
        self.buf = bytearray()
        self.web = self.server.web.current()  # config snapshot for this connection

    def handle(self):
        srv = self.server
        deadline = time.monotonic() + srv.read_header_timeout
        try:
            if self.web.tls is not None:
                self.sock.settimeout(max(0.001, deadline - time.monotonic()))
                self.sock = self.web.tls.wrap_socket(self.sock, server_side=True,
                                                     do_handshake_on_connect=False)
                self.sock.do_handshake()
            first = True
            while True:
                try:
                    req = self._read_request(deadline if first else None)
                except _Reject as rej:
                    self._respond(rej.code, rej.message.encode() + b"\n", close=True)
                    return
                if req is None:
                    return
                first = False
                # auth and headers as in force now (a reload applies to kept-alive
                # connections too); a connection whose TLS-ness no longer matches is closed
                web = srv.web.current()
                if (web.tls is None) != (self.sock is self.request):
                    return
                self.web = web
                srv.begin_request()
                try:
                    keep = self._serve(req)
                finally:
                    srv.end_request()
                if not keep or srv.stopping:
                    return
        except (_Closed, OSError, ssl.SSLError, ValueError) as exc:
            # port scanners, TLS clients without the right certificate, slow clients
            srv.app.log.debug("connection closed", peer=str(self.client_address[0]),
                              reason=f"{type(exc).__name__}: {exc}")

    def finish(self):
        if self.sock is not self.request:
            try:
                self.sock.close()
            except OSError:
                pass

    # -- reading -----------------------------------------------------------------------------

    def _recv(self, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Closed("read timeout")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            raise _Closed("read timeout") from None
        return data

    def _read_request(self, deadline: float | None) -> Request | None:
        """The next request head, or None if the client closed or stayed idle too long.

        ``deadline`` bounds handshake plus head of a connection's first request; a later one
        may idle up to idle_timeout, then has read_header_timeout from its first byte."""
        srv = self.server
        idle_deadline = time.monotonic() + srv.idle_timeout
        if deadline is None and self.buf:  # a pipelined request has begun already
            deadline = time.monotonic() + srv.read_header_timeout
        while True:
            while self.buf[:2] == b"\r\n" or self.buf[:1] == b"\n":  # RFC 9112 2.2
                del self.buf[:2 if self.buf[:2] == b"\r\n" else 1]
            end = _head_end(self.buf)
            if end is not None:
                break
            line_end = self.buf.find(b"\n")
            if (line_end < 0 and len(self.buf) > MAX_REQUEST_LINE) or line_end > MAX_REQUEST_LINE:
                raise _Reject(414, "request line too long")
            if len(self.buf) > MAX_HEAD:
                raise _Reject(431, "request header fields too large")
            try:
                data = self._recv(deadline if deadline is not None else idle_deadline)
            except _Closed:
                if not self.buf and deadline is None:
                    return None  # idle keep-alive connection: a quiet close
                raise
            if not data:
                if self.buf:
                    raise _Closed("client closed mid-request")
                return None
            if deadline is None:
                deadline = time.monotonic() + srv.read_header_timeout
            self.buf += data
        head_len, consumed = end
        if head_len > MAX_HEAD:
            raise _Reject(431, "request header fields too large")
        head = bytes(self.buf[:head_len])
        del self.buf[:consumed]
        return _parse_head(head)

    # -- serving -----------------------------------------------------------------------------

    def _serve(self, req: Request) -> bool:
        """Answers one request; True to keep the connection open."""
        app: App = self.server.app
        keep = req.keep_alive
        if "transfer-encoding" in req.headers or req.headers.get("content-length", "0") != "0":
            keep = False  # we never read request bodies: the rest of the stream is unusable
        head = req.method == "HEAD"
        if req.method not in ("GET", "HEAD"):
            self._respond(405, b"method not allowed\n", head=head, close=True,
                          extra={"Allow": "GET, HEAD"})
            return False
        if req.path == "/healthz":  # no auth: it tells nothing (see docs/security.md)
            return self._respond(200, b"ok\n", head=head, close=not keep)
        auth = self.web.auth
        if auth is not None and auth.check(req.headers.get("authorization")) is None:
            return self._respond(401, b"Unauthorized\n", head=head, close=not keep,
                                 extra={"WWW-Authenticate": 'Basic realm="nodenet-exporter"'})
        if req.path == app.metrics_path:
            return self._metrics(app, req, head, keep)
        if req.path == "/":
            return self._respond(200, landing_page(app).encode(), "text/html; charset=utf-8",
                                 head=head, close=not keep)
        if req.path == "/diagnose":
            return self._diagnose(app, req, head, keep)
        return self._respond(404, b"not found\n", head=head, close=not keep)

    def _metrics(self, app: App, req: Request, head: bool, keep: bool) -> bool:
        """The exposition, streamed: rendered (and gzipped) chunk by chunk as it is sent.

        A body that fits in ``SMALL_BODY`` (and every HEAD answer) goes out with a
        Content-Length; a bigger one with chunked transfer encoding (HTTP/1.0: delimited by
        closing the connection), so a 540k-sample scrape never holds its 84 MiB of text."""
        if not app.try_begin_scrape():
            return self._respond(
                503, f"too many concurrent scrapes (limit {app.max_requests})\n".encode(),
                head=head, close=not keep)
        try:
            openmetrics = wants_openmetrics(req.headers.get("accept", ""))
            gz = None
            extra = {}
            if accepts_gzip(req.headers.get("accept-encoding", "")):
                gz = zlib.compressobj(1, zlib.DEFLATED, 31)
                extra["Content-Encoding"] = "gzip"
            try:
                chunks = _encoded(app.gatherer.scrape_chunks(openmetrics), gz)
                first, size, done = [], 0, False
                while size < SMALL_BODY:
                    piece = next(chunks, None)
                    if piece is None:
                        done = True
                        break
                    first.append(piece)
                    size += len(piece)
                if head and not done:
                    size += sum(len(piece) for piece in chunks)
                    done = True
            except Exception as exc:  # noqa: BLE001 - a bug in the framework itself
                app.log.error("scrape failed", error=f"{type(exc).__name__}: {exc}")
                return self._respond(500, f"scrape failed: {exc}\n".encode(), head=head,
                                     close=not keep)
            ctype = CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT
            if done:
                return self._respond(200, b"".join(first), ctype, head=head, close=not keep,
                                     extra=extra, length=size)
            chunked = req.version >= (1, 1)
            close = not keep or not chunked or self.server.stopping
            if chunked:
                extra["Transfer-Encoding"] = "chunked"
            self._write_all(self._head(200, ctype, close, extra, None))
            try:
                for piece in itertools.chain(first, chunks):
                    if chunked:
                        piece = b"%x\r\n%b\r\n" % (len(piece), piece)
                    self._write_all(piece)
            except Exception as exc:  # noqa: BLE001 - headers are out: cut the stream short
                if not isinstance(exc, (_Closed, OSError)):
                    app.log.error("scrape failed while streaming",
                                  error=f"{type(exc).__name__}: {exc}")
                raise _Closed(f"stream aborted: {type(exc).__name__}") from None
            if chunked:
                self._write_all(b"0\r\n\r\n")
            return not close
        finally:
            app.end_scrape()

    def _diagnose(self, app: App, req: Request, head: bool, keep: bool) -> bool:
        """The diagnose report (exporter/diagnose.py) from the last scrapes' readings;
        ?output=json for the JSON document.  Counts as a scrape against --web.max-requests."""
        from .diagnose import render_text

        if not app.try_begin_scrape():
            return self._respond(
                503, f"too many concurrent scrapes (limit {app.max_requests})\n".encode(),
                head=head, close=not keep)
        try:
            doc = app.health().report()
        except Exception as exc:  # noqa: BLE001 - a bug, or no collection could be made
            app.log.error("diagnose failed", error=f"{type(exc).__name__}: {exc}")
            return self._respond(500, f"diagnose failed: {exc}\n".encode(), head=head,
                                 close=not keep)
        finally:
            app.end_scrape()
        if "output=json" in req.target.partition("?")[2].split("&"):
            import json
            body, ctype = (json.dumps(doc, indent=2) + "\n").encode(), "application/json"
        else:
            body, ctype = render_text(doc).encode(), TEXT
        return self._respond(200, body, ctype, head=head, close=not keep,
                             extra={"X-Nodenet-Diagnose-Status": doc["status"]})

    def _head(self, code: int, ctype: str, close: bool, extra, length: int | None) -> bytes:
        lines = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}",
                 f"Date: {formatdate(usegmt=True)}",
                 f"Server: nodenet-exporter/{__version__}",
                 f"Content-Type: {ctype}"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        lines += [f"{k}: {v}" for k, v in self.web.headers]
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _respond(self, code: int, body: bytes, ctype: str = TEXT, head: bool = False,
                 close: bool = False, extra=None, length: int | None = None) -> bool:
        close = close or self.server.stopping
        data = self._head(code, ctype, close, extra, len(body) if length is None else length)
        self._write_all(data if head else data + body)
        return not close

    def _write_all(self, data: bytes) -> None:
        deadline = time.monotonic() + self.server.write_timeout
        view = memoryview(data)
        # plain TCP: the whole piece per send() (the kernel takes what fits): 1 MiB chunks in
        # one call, not 16 of 64 KiB (costly syscalls in a UML guest); TLS: records of 64 KiB
        step = 65536 if isinstance(self.sock, ssl.SSLSocket) else len(view)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Closed("write timeout")
            self.sock.settimeout(left)
            try:
                sent = self.sock.send(view[:step])
            except (socket.timeout, TimeoutError):
                raise _Closed("write timeout") from None
            view = view[sent:]


def _encoded(chunks, gz):
    """The exposition's chunks, gzipped when gz is a compressobj; never an empty piece (an
    empty chunk would end a chunked body)."""
    if gz is None:
        for piece in chunks:
            if piece:
                yield piece
        return
    for piece in chunks:
        piece = gz.compress(piece)
        if piece:
            yield piece
    yield gz.flush()


def _head_end(buf: bytearray) -> tuple[int, int] | None:
    """(length of the head, bytes to consume) once the blank line ending the head is in buf."""
    candidates = []
    i = buf.find(b"\r\n\r\n")
    if i >= 0:
        candidates.append((i, i + 4))
    i = buf.find(b"\n\n")
    if i >= 0:
        candidates.append((i, i + 2))
    i = buf.find(b"\n\r\n")
    if i >= 0:
        candidates.append((i, i + 3))
    return min(candidates) if candidates else None


def _parse_head(head: bytes) -> Request:
    lines = head.split(b"\n")
    request_line = lines[0].rstrip(b"\r")
    if len(request_line) > MAX_REQUEST_LINE:
        raise _Reject(414, "request line too long")
    if len(lines) - 1 > MAX_HEADERS:
        raise _Reject(431, "too many header fields")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _Reject(400, "bad request line")
    m = _VERSION.fullmatch(parts[2])
    if not m:
        raise _Reject(400, "bad HTTP version")
    version = (int(m.group(1)), int(m.group(2)))
    if version[0] != 1:
        raise _Reject(505, "HTTP version not supported")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):  # also rejects obs-fold continuation lines
            raise _Reject(400, "bad header field")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise _Reject(400, "bad request target") from None
    return Request(parts[0].decode("ascii"), target, version, headers)


def landing_page(app: App) -> str:
    rows = []
    for name in sorted(app.collector_names):
        st = app.gatherer.status.get(name)
        if st is None:
            continue
        last = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.last_success))
                if st.last_success else "never")
        dur = f"{st.last_duration * 1000:.1f} ms" if st.last_duration is not None else "-"
        err = html.escape(st.last_error or "")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{'enabled' if st.enabled else 'disabled'}"
                    f"</td><td>{last}</td><td>{dur}</td><td>{err}</td></tr>")
    path = html.escape(app.metrics_path)
    return (
        "<!doctype html><html><head><title>nodenet-exporter</title></head><body>"
        f"<h1>nodenet-exporter {__version__}</h1>"
        "<p>Why packets die on this node: conntrack, IPVS, CPU steal, interfaces, softnet.</p>"
        f'<p><a href="{path}">Metrics</a> &middot; <a href="/diagnose">Diagnose</a> &middot; '
        '<a href="/healthz">Health</a></p>'
        "<table border=1 cellpadding=4><tr><th>collector</th><th>state</th>"
        "<th>last success</th><th>last duration</th><th>last error</th></tr>"
        + "".join(rows) + "</table></body></html>\n")
