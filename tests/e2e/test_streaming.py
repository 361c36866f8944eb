"""/metrics bodies bigger than SMALL_BODY are streamed: chunked transfer encoding (gzip
streamed through one compressobj), close-delimited for HTTP/1.0, Content-Length for HEAD; an
error while streaming cuts the body short instead of sending a truncated-but-valid one.
A real ExporterServer on loopback, in process, serving a large Table."""
import gzip
import http.client
import socket
import threading

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.metrics import COUNTER, GAUGE, ExpositionWriter, Metric, Table
from exporter.server import SMALL_BODY, App, ExporterServer

BYTES = Metric("t_stream_bytes_total", COUNTER, "Bytes.", ("svc", "backend"))
WEIGHT = Metric("t_stream_weight", GAUGE, "Weight.", ("svc", "backend"))
ROWS = 40000


class Log:
    def __init__(self):
        self.errors = []

    def error(self, event, **kw):
        self.errors.append((event, kw))

    def debug(self, *a, **kw):
        pass

    info = warning = debug


class Gatherer:
    def __init__(self):
        self.status = {}
        self.fail_after = None
        t = Table((BYTES, WEIGHT))
        for i in range(ROWS):
            backend = f"10.{i // 62500}.{i // 250 % 250}.{i % 250}:80"
            t.add((f"svc{i // 10}", backend), i * 7919 % 1000003, i % 3)
        self.families = [t]

    def scrape_chunks(self, openmetrics=False):
        chunks = ExpositionWriter().render_chunks(self.families, openmetrics)
        if self.fail_after is None:
            return chunks
        return self._failing(chunks)

    def _failing(self, chunks):
        for i, c in enumerate(chunks):
            if i == self.fail_after:
                raise RuntimeError("render broke")
            yield c


@pytest.fixture
def server():
    log = Log()
    app = App(Gatherer(), {"web.telemetry-path": "/metrics", "web.max-requests": 4}, log, [])
    srv = ExporterServer("127.0.0.1:0", app)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def get(srv, headers=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
    conn.request(method, "/metrics", headers=headers or {})
    resp = conn.getresponse()
    return conn, resp


def expected(openmetrics=False):
    return ExpositionWriter().render(Gatherer().families, openmetrics)


def test_big_body_is_chunked_and_parses(server):
    conn, resp = get(server)
    body = resp.read()
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.getheader("Content-Length") is None
    assert len(body) > SMALL_BODY and body == expected()
    fams = {f.name: f for f in parse_text(body.decode())}
    assert len(fams["t_stream_bytes"].samples) == ROWS
    # keep-alive survives a chunked answer: the same connection serves the next request
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b"ok\n"
    conn.close()


def test_gzip_is_streamed_and_openmetrics_ends_with_eof(server):
    conn, resp = get(server, {"Accept-Encoding": "gzip",
                              "Accept": "application/openmetrics-text; version=1.0.0"})
    raw = resp.read()
    conn.close()
    assert resp.getheader("Content-Encoding") == "gzip"
    assert resp.getheader("Transfer-Encoding") == "chunked"
    body = gzip.decompress(raw)
    assert body == expected(openmetrics=True) and body.endswith(b"# EOF\n")
    assert len(list(parse_om(body.decode()))) == 2


def test_head_gives_the_length_without_a_body(server):
    for headers in ({}, {"Accept-Encoding": "gzip"}):
        conn, resp = get(server, headers, method="HEAD")
        assert resp.status == 200 and resp.read() == b""
        length = int(resp.getheader("Content-Length"))
        _, full = get(server, headers)
        data = full.read()
        assert length == len(data) if not headers else length > 0
        if headers:
            assert gzip.decompress(data) == expected()
        conn.close()


def test_http10_body_is_delimited_by_close(server):
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=30) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            part = s.recv(1 << 16)
            if not part:
                break
            data += part
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
    assert b"Connection: close" in head and body == expected()


def test_error_while_streaming_cuts_the_body(server):
    server.app.gatherer.fail_after = 2
    conn, resp = get(server)
    assert resp.status == 200  # headers went out before the failure
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    assert any("streaming" in e for e, _ in server.app.log.errors)


def test_error_before_the_first_bytes_is_a_500(server):
    server.app.gatherer.fail_after = 0
    conn, resp = get(server)
    assert resp.status == 500 and b"render broke" in resp.read()
    conn.close()
