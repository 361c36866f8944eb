"""HTTP front end: /metrics, /healthz and a landing page, on a threading server."""
from __future__ import annotations

import gzip
import html
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
            if not q or float(q[0][2:] or 0) > 0:
                return True
    return False


class ExporterServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: str, app: "App"):
        host, port = parse_listen_address(address)
        self.app = app
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
        self.in_flight = 0
        self.in_flight_lock = threading.Lock()
        self.idle = threading.Condition(self.in_flight_lock)

    def drain(self, timeout: float) -> bool:
        """Waits until no request is being served; True if drained in time."""
        deadline = time.monotonic() + timeout
        with self.idle:
            while self.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.idle.wait(left)
        return True


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

    def try_begin_scrape(self) -> bool:
        return self._scrapes.acquire(blocking=False)

    def end_scrape(self) -> None:
        self._scrapes.release()


class Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    server_version = f"nodenet-exporter/{__version__}"
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take to send its request (slowloris bound)

    def log_message(self, format, *args):  # noqa: A002 - no access log line per request
        pass

    def handle_one_request(self):
        with self.server.in_flight_lock:
            self.server.in_flight += 1
        try:
            super().handle_one_request()
        finally:
            with self.server.idle:
                self.server.in_flight -= 1
                self.server.idle.notify_all()

    def do_HEAD(self):
        self._dispatch(head=True)

    def do_GET(self):
        self._dispatch(head=False)

    def _not_allowed(self):
        self._send(405, b"method not allowed\n", "text/plain; charset=utf-8",
                   extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _dispatch(self, head: bool):
        app: App = self.server.app
        path = self.path.split("?", 1)[0]
        if path == app.metrics_path:
            self._metrics(app, head)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8", head=head)
        elif path == "/":
            self._send(200, landing_page(app).encode(), "text/html; charset=utf-8", head=head)
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", head=head)

    def _metrics(self, app: App, head: bool):
        if not app.try_begin_scrape():
            self._send(503, f"too many concurrent scrapes (limit {app.max_requests})\n".encode(),
                       "text/plain; charset=utf-8", head=head)
            return
        try:
            openmetrics = wants_openmetrics(self.headers.get("Accept", ""))
            try:
                body = app.gatherer.scrape(openmetrics)
            except Exception as exc:  # noqa: BLE001 - a bug in the framework itself
                app.log.error("scrape failed", error=f"{type(exc).__name__}: {exc}")
                self._send(500, f"scrape failed: {exc}\n".encode(), "text/plain; charset=utf-8")
                return
        finally:
            app.end_scrape()
        ctype = CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT
        extra = {}
        if accepts_gzip(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=1)
            extra["Content-Encoding"] = "gzip"
        self._send(200, body, ctype, head=head, extra=extra)

    def _send(self, code: int, body: bytes, ctype: str, head: bool = False, extra=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)


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
        f'<p><a href="{path}">Metrics</a> &middot; <a href="/healthz">Health</a></p>'
        "<table border=1 cellpadding=4><tr><th>collector</th><th>state</th>"
        "<th>last success</th><th>last duration</th><th>last error</th></tr>"
        + "".join(rows) + "</table></body></html>\n")
