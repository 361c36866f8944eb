"""HTTP front end: /metrics, /healthz and a landing page, on a threading server.

HTTP/1.1 with keep-alive, optionally TLS and basic auth (``--web.config.file``, see
:mod:`exporter.webconfig`).  The request reader is ours rather than http.server's so that every
read is bounded in time and size (http.server's socket timeout bounds each ``recv``, not the
request: a client sending a byte every few seconds would hold a thread forever).  What is
said on the wire (request heads, response framing) is :mod:`exporter.http`; this module keeps
the sockets, their deadlines and the bounds on connections.
"""
from __future__ import annotations

import contextlib
import html
import itertools
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from . import __version__
from . import http as wire
from .http import TEXT, Reject, Request, RequestBuffer, parse_head
from .config import Settings
from .metrics import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT
from .scrape import Gatherer
from .webconfig import WebConfig


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
        raise ValueError(f"listen address {address!r}: port {port_text!r} is not a "
                         "number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {address!r}: port out of range")
    return host, port


wants_openmetrics = wire.wants_openmetrics
accepts_gzip = wire.accepts_gzip


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

    def __init__(self, address: str, app: App, web: Any = None,
                 read_header_timeout: float = 10.0, idle_timeout: float = 90.0,
                 write_timeout: float = 30.0):
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

    def process_request(self, request: Any, client_address: Any) -> None:
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

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.in_flight_lock:
                self.connections -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
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

    def current(self) -> WebConfig:
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

    def __init__(self, gatherer: Gatherer, settings: Settings, log: Any,
                 collector_names: list[str]):
        self.gatherer = gatherer
        self.settings = settings
        self.log = log
        self.collector_names = collector_names
        self.metrics_path = settings["web.telemetry-path"]
        self.max_requests = settings["web.max-requests"]
        self._scrapes = threading.BoundedSemaphore(self.max_requests)
        # /diagnose: an exporter.diagnose.History of the scrapes' readings, recording from the
        # start when the gatherer can be observed (else made at the first /diagnose)
        self._health: Any = None
        self._health_lock = threading.Lock()
        if hasattr(gatherer, "on_collect"):
            self.health()

    def health(self) -> Any:
        with self._health_lock:
            if self._health is None:
                from .diagnose import History
                self._health = History(self.gatherer)
            return self._health

    def try_begin_scrape(self) -> bool:
        return self._scrapes.acquire(blocking=False)

    def end_scrape(self) -> None:
        self._scrapes.release()


SMALL_BODY = 1 << 18   # bytes: below this a /metrics answer has a Content-Length
SERVER = f"nodenet-exporter/{__version__}"
_parse_head = parse_head  # the names tests/unit/test_webconfig.py fuzzes
_Reject = Reject


class _Closed(Exception):
    """The client went away, timed out or spoke garbage: close without an answer."""


class Connection:
    """One client socket with deadlines: every read and write is bounded in wall time.

    - the TLS handshake and the first request's head within ``read_header_timeout`` of
      accepting; a later request may idle up to ``idle_timeout``, then has
      ``read_header_timeout`` from its first byte;
    - each response within ``write_timeout``.
    A timeout, a client gone or garbage raises :class:`_Closed` (or OSError/SSLError)."""

    def __init__(self, sock: socket.socket, read_header_timeout: float, idle_timeout: float,
                 write_timeout: float):
        self.raw = sock
        self.sock: socket.socket = sock
        self.buf = RequestBuffer()
        self.read_header_timeout = read_header_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self._first_deadline: float | None = time.monotonic() + read_header_timeout

    @property
    def tls(self) -> bool:
        return self.sock is not self.raw

    def handshake(self, context: ssl.SSLContext) -> None:
        assert self._first_deadline is not None
        self.sock.settimeout(max(0.001, self._first_deadline - time.monotonic()))
        self.sock = context.wrap_socket(self.sock, server_side=True,
                                        do_handshake_on_connect=False)
        self.sock.do_handshake()

    def close(self) -> None:
        if self.tls:
            with contextlib.suppress(OSError):
                self.sock.close()

    def read_request(self) -> Request | None:
        """The next request head, or None if the client closed or stayed idle too long;
        Reject for a head we refuse (answered, then the connection is closed)."""
        deadline, self._first_deadline = self._first_deadline, None
        idle_deadline = time.monotonic() + self.idle_timeout
        if deadline is None and self.buf.begun():  # a pipelined request has begun already
            deadline = time.monotonic() + self.read_header_timeout
        while (head := self.buf.next_head()) is None:
            try:
                data = self._recv(deadline if deadline is not None else idle_deadline)
            except _Closed:
                if not self.buf.begun() and deadline is None:
                    return None  # idle keep-alive connection: a quiet close
                raise
            if not data:
                if self.buf.begun():
                    raise _Closed("client closed mid-request")
                return None
            if deadline is None:
                deadline = time.monotonic() + self.read_header_timeout
            self.buf.feed(data)
        return parse_head(head)

    def _recv(self, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Closed("read timeout")
        self.sock.settimeout(left)
        try:
            data: bytes = self.sock.recv(65536)
        except TimeoutError:
            raise _Closed("read timeout") from None
        return data

    def write(self, data: bytes) -> None:
        deadline = time.monotonic() + self.write_timeout
        view = memoryview(data)
        # plain TCP: the whole piece per send() (the kernel takes what fits): big chunks in
        # one call (syscalls are costly in a UML guest); TLS: records of 64 KiB
        step = 65536 if self.tls else len(view)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Closed("write timeout")
            self.sock.settimeout(left)
            try:
                sent = self.sock.send(view[:step])
            except TimeoutError:
                raise _Closed("write timeout") from None
            view = view[sent:]


class Handler(socketserver.BaseRequestHandler):
    """One connection: optional TLS handshake, then requests until close, error or timeout.

    The socket and its deadlines are :class:`Connection`'s; bytes are parsed and framed by
    exporter/http.py; this class decides what each request is answered."""

    server: ExporterServer

    def setup(self) -> None:
        srv = self.server
        self.conn = Connection(self.request, srv.read_header_timeout, srv.idle_timeout,
                               srv.write_timeout)
        self.web = srv.web.current()  # config snapshot for this connection

    def handle(self) -> None:
        srv = self.server
        try:
            if self.web.tls is not None:
                self.conn.handshake(self.web.tls)
            while True:
                try:
                    req = self.conn.read_request()
                except Reject as rej:
                    self._respond(rej.code, rej.message.encode() + b"\n", close=True)
                    return
                if req is None:
                    return
                # auth and headers as in force now (a reload applies to kept-alive
                # connections too); a connection whose TLS-ness no longer matches is closed
                web = srv.web.current()
                if (web.tls is not None) != self.conn.tls:
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

    def finish(self) -> None:
        self.conn.close()

    # -- serving -----------------------------------------------------------------------------

    def _serve(self, req: Request) -> bool:
        """Answers one request; True to keep the connection open."""
        app: App = self.server.app
        keep = req.keep_alive and not wire.has_body(req)  # bodies are never read
        head = req.method == "HEAD"
        what = wire.route(req, app.metrics_path)
        if what == "method":
            self._respond(405, b"method not allowed\n", head=head, close=True,
                          extra={"Allow": "GET, HEAD"})
            return False
        if what == "healthz":  # no auth: it tells nothing (see docs/security.md)
            return self._respond(200, b"ok\n", head=head, close=not keep)
        auth = self.web.auth
        if auth is not None and auth.check(req.headers.get("authorization")) is None:
            return self._respond(401, b"Unauthorized\n", head=head, close=not keep,
                                 extra={"WWW-Authenticate": 'Basic realm="nodenet-exporter"'})
        if what == "metrics":
            return self._metrics(app, req, head, keep)
        if what == "landing":
            return self._respond(200, landing_page(app).encode(), "text/html; charset=utf-8",
                                 head=head, close=not keep)
        if what == "diagnose":
            return self._diagnose(app, req, head, keep)
        return self._respond(404, b"not found\n", head=head, close=not keep)

    def _metrics(self, app: App, req: Request, head: bool, keep: bool) -> bool:
        """The exposition, streamed: rendered (and gzipped) chunk by chunk as it is sent.

        A body that fits in ``SMALL_BODY`` (and every HEAD answer) goes out with a
        Content-Length; a bigger one with chunked transfer encoding (HTTP/1.0: delimited by
        closing the connection), so a 540k-sample scrape never holds its whole text."""
        if not app.try_begin_scrape():
            return self._respond(
                503, f"too many concurrent scrapes (limit {app.max_requests})\n".encode(),
                head=head, close=not keep)
        try:
            openmetrics = wire.wants_openmetrics(req.headers.get("accept", ""))
            gzip = wire.accepts_gzip(req.headers.get("accept-encoding", ""))
            extra = {"Content-Encoding": "gzip"} if gzip else {}
            try:
                chunks = wire.encoded(app.gatherer.scrape_chunks(openmetrics), gzip)
                first, size, done = _first_pieces(chunks, SMALL_BODY)
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
            return self._stream(app, req, ctype, keep, extra, itertools.chain(first, chunks))
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

    def _stream(self, app: App, req: Request, ctype: str, keep: bool, extra: dict[str, str],
                pieces: Iterator[bytes]) -> bool:
        chunked = req.version >= (1, 1)
        close = not keep or not chunked or self.server.stopping
        if chunked:
            extra["Transfer-Encoding"] = "chunked"
        self.conn.write(self._head(200, ctype, close, extra, None))
        try:
            for piece in pieces:
                self.conn.write(wire.chunk(piece) if chunked else piece)
        except Exception as exc:  # noqa: BLE001 - headers are out: cut the stream short
            if not isinstance(exc, (_Closed, OSError)):
                app.log.error("scrape failed while streaming",
                              error=f"{type(exc).__name__}: {exc}")
            raise _Closed(f"stream aborted: {type(exc).__name__}") from None
        if chunked:
            self.conn.write(wire.LAST_CHUNK)
        return not close

    def _head(self, code: int, ctype: str, close: bool, extra: dict[str, str] | None,
              length: int | None) -> bytes:
        headers = [*(extra or {}).items(), *self.web.headers]
        return wire.response_head(code, ctype, close, length, headers, SERVER)

    def _respond(self, code: int, body: bytes, ctype: str = TEXT, head: bool = False,
                 close: bool = False, extra: dict[str, str] | None = None,
                 length: int | None = None) -> bool:
        close = close or self.server.stopping
        data = self._head(code, ctype, close, extra, len(body) if length is None else length)
        self.conn.write(data if head else data + body)
        return not close


def _first_pieces(chunks: Iterator[bytes], limit: int) -> tuple[list[bytes], int, bool]:
    """(pieces, their size, whether that was all) taken until at least ``limit`` bytes."""
    first: list[bytes] = []
    size = 0
    while size < limit:
        piece = next(chunks, None)
        if piece is None:
            return first, size, True
        first.append(piece)
        size += len(piece)
    return first, size, False


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
        "<p>Why packets die on this node: conntrack, IPVS, kernel limits, drop reasons, interfaces "
        "and NIC drivers, netfilter, the pod view.</p>"
        f'<p><a href="{path}">Metrics</a> &middot; <a href="/diagnose">Diagnose</a> &middot; '
        '<a href="/healthz">Health</a></p>'
        "<table border=1 cellpadding=4><tr><th>collector</th><th>state</th>"
        "<th>last success</th><th>last duration</th><th>last error</th></tr>"
        + "".join(rows) + "</table></body></html>\n")
