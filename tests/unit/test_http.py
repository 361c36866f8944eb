"""exporter/http.py, the bytes a client controls, fuzzed with hypothesis; the framing checked
against independent readers: the standard library's http.client parses our response heads and
chunked bodies, zlib/gzip our compressed ones."""
import gzip
import http.client
import io

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from exporter import http as wire

FUZZ = settings(max_examples=300, deadline=None)

PARTS = st.sampled_from([b"GET", b"HEAD", b"POST", b" ", b"/metrics", b"/healthz", b"/",
                         b"http://h/metrics?x=1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0",
                         b"HTTP/1.", b"\r\n", b"\n", b"\r\n\r\n", b"\n\n", b":", b"Host: h",
                         b"Connection: close", b"Connection: keep-alive", b"Content-Length: 3",
                         b"Transfer-Encoding: chunked", b"\x00", b"\xff", b"\t", b"a" * 9000,
                         b"X: " + b"y" * 100, b"X-Many: 1\r\n" * 120])
STREAMS = st.one_of(st.binary(max_size=400), st.lists(PARTS, max_size=40).map(b"".join))


def heads_of(stream: bytes, cuts: list[int]):
    """Feeds the stream cut at the given offsets; the heads and the first Reject seen."""
    buf = wire.RequestBuffer()
    heads = []
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    try:
        for piece in pieces:
            buf.feed(piece)
            while (head := buf.next_head()) is not None:
                heads.append(head)
            assert len(buf._buf) <= wire.MAX_HEAD + len(piece) + 1
    except wire.Reject as rej:
        return heads, rej.code
    return heads, None


@FUZZ
@given(STREAMS, st.data())
@example(b"GET / HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\nHost: h\r\n\r\n", None)
@example(b"\r\n\nGET / HTTP/1.0\n\n", None)
# found in CI: a complete head whose request line is over the limit was accepted in one read
# and refused (414) when split
@example(b"a" * 8300 + b"\r\n\r\n", None)
def test_buffer_cuts_heads_the_same_however_the_bytes_arrive(stream, data):
    """TCP may split a request anywhere: the heads (and a rejection) do not depend on where."""
    whole = heads_of(stream, [])
    if data is None:
        cuts = list(range(1, len(stream)))  # one byte per read
    else:
        cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=8))))
    split = heads_of(stream, cuts)
    if whole[1] is None and split[1] is None:
        assert split == whole
    else:  # a too-long line/head is refused either way (perhaps before more heads are seen)
        assert whole[1] is not None and split[1] is not None
        assert split[0] == whole[0][:len(split[0])] or whole[0] == split[0][:len(whole[0])]


@FUZZ
@given(STREAMS)
def test_every_head_is_a_request_or_a_reject(stream):
    heads, _ = heads_of(stream, [])
    for head in heads:
        try:
            req = wire.parse_head(head)
        except wire.Reject as rej:
            assert rej.code in (400, 414, 431, 505) and rej.message
            continue
        assert req.version in ((1, 0), (1, 1)) or req.version[0] == 1
        assert req.path.startswith("/") or not req.target.startswith(("/", "http"))
        assert all(k == k.lower() and k for k in req.headers)
        assert wire.route(req, "/metrics") in ("method", "healthz", "metrics", "landing",
                                                "notfound")
        assert isinstance(wire.has_body(req), bool)


def test_request_semantics():
    req = wire.parse_head(b"GET http://node:9834/metrics?x HTTP/1.0\r\nConnection: Keep-Alive\r\n"
                          b"X-A: 1\r\nx-a: 2")
    assert (req.method, req.path, req.version, req.keep_alive) == ("GET", "/metrics", (1, 0), True)
    assert req.headers["x-a"] == "1, 2"
    assert wire.route(req, "/metrics") == "metrics"
    req = wire.parse_head(b"POST /healthz HTTP/1.1\r\nConnection: close\r\nContent-Length: 2")
    assert not req.keep_alive and wire.has_body(req) and wire.route(req, "/metrics") == "method"
    for bad, code in [(b"GET / HTTP/2.0", 505), (b"GET /  HTTP/1.1", 400),
                      (b"GET / HTTP/1.1\r\n folded", 400), (b"GET /\xff HTTP/1.1", 400),
                      (b"GET / HTTP/1.1" + b"\r\nA: b" * 101, 431)]:
        with pytest.raises(wire.Reject) as err:
            wire.parse_head(bad)
        assert err.value.code == code, bad


def test_buffer_limits():
    buf = wire.RequestBuffer()
    buf.feed(b"G" * (wire.MAX_REQUEST_LINE + 1))
    with pytest.raises(wire.Reject) as err:
        buf.next_head()
    assert err.value.code == 414
    buf = wire.RequestBuffer()
    buf.feed(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 3000)
    with pytest.raises(wire.Reject) as err:
        buf.next_head()
    assert err.value.code == 431


class _Sock:
    def __init__(self, data: bytes):
        self.data = data

    def makefile(self, *_a, **_k):
        return io.BytesIO(self.data)


def stdlib_reads(raw: bytes) -> http.client.HTTPResponse:
    resp = http.client.HTTPResponse(_Sock(raw))
    resp.begin()
    return resp


HEADER_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xff,
                                      blacklist_characters="\x7f"), max_size=30).map(str.strip)


@FUZZ
@given(code=st.sampled_from([200, 401, 404, 405, 414, 431, 500, 503, 505]),
       close=st.booleans(), body=st.binary(max_size=300),
       extra=st.lists(st.tuples(st.sampled_from(["X-A", "Strict-Transport-Security", "Allow"]),
                                HEADER_VALUES), max_size=3, unique_by=lambda h: h[0]))
def test_response_head_as_the_stdlib_reads_it(code, close, body, extra):
    raw = wire.response_head(code, wire.TEXT, close, len(body), extra, "t/1") + body
    resp = stdlib_reads(raw)
    assert resp.status == code and resp.reason == wire.REASONS[code]
    assert resp.getheader("Content-Type") == wire.TEXT
    assert resp.getheader("Server") == "t/1"
    for k, v in extra:
        assert resp.getheader(k) == v
    assert resp.will_close == close
    assert resp.read() == body


@FUZZ
@given(pieces=st.lists(st.binary(min_size=0, max_size=3000), max_size=12),
       gz=st.booleans())
def test_chunked_and_gzipped_bodies_as_the_stdlib_reads_them(pieces, gz):
    body_pieces = list(wire.encoded(iter(pieces), gz))
    assert all(body_pieces), "an empty piece would end a chunked body early"
    raw = (wire.response_head(200, wire.TEXT, False, None, [("Transfer-Encoding", "chunked")])
           + b"".join(wire.chunk(p) for p in body_pieces) + wire.LAST_CHUNK)
    body = stdlib_reads(raw).read()
    assert (gzip.decompress(body) if gz else body) == b"".join(pieces)


@FUZZ
@given(st.text(max_size=200))
@example("gzip;q=0, *;q=0.5")
@example("gzip;q=x")
def test_negotiation_never_raises(header):
    assert isinstance(wire.accepts_gzip(header), bool)
    assert isinstance(wire.wants_openmetrics(header), bool)


def test_negotiation_semantics():
    assert wire.accepts_gzip("gzip") and wire.accepts_gzip("br, *;q=0.1")
    assert not wire.accepts_gzip("gzip;q=0") and not wire.accepts_gzip("identity")
    assert wire.wants_openmetrics("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert not wire.wants_openmetrics("text/plain")
