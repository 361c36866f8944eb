"""What a hostile or broken client can do to the real exporter's HTTP layer: slow clients,
idle connections, oversized requests, odd methods, too many connections."""
import http.client
import os
import re
import socket
import ssl
import threading
import time

import pytest

from tests.helpers.exporter_proc import ROOT, ExporterProcess
from tests.helpers.tls import TLSExporterProcess, make_pki

FIX = os.path.join(ROOT, "tests", "fixtures")
FIXTURE_ARGS = [f"--path.procfs={FIX}/root/proc", f"--path.sysfs={FIX}/root/sys",
                "--collector.disable-defaults", "--collector.cpu", "--collector.softnet",
                "--collector.sysctl"]
HEADER_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def exporter():
    with ExporterProcess([*FIXTURE_ARGS, f"--web.read-header-timeout={HEADER_TIMEOUT}s",
                          "--web.idle-timeout=1s"]) as ex:
        yield ex


def threads_of(pid) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def raw(ex, data: bytes, read_timeout=10.0) -> bytes:
    """Sends bytes, returns everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", ex.port), timeout=read_timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return out


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer.split(b" ", 2)[1])


def trickle_until_closed(port, limit: float) -> float:
    """A slowloris client: a byte of header every 0.2 s; seconds until the server hangs up."""
    s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    t0 = time.monotonic()
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(0.2)
        while time.monotonic() - t0 < limit:
            try:
                s.sendall(b"X")
                if s.recv(1024) == b"":
                    return time.monotonic() - t0
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - t0
        return time.monotonic() - t0
    finally:
        s.close()


def test_slowloris_client_is_cut_off_and_frees_its_thread(exporter):
    ex = exporter
    for _ in range(3):  # the collector pool's threads exist from here on
        assert ex.get("/metrics")[0] == 200
    base = threads_of(ex.proc.pid)
    held = trickle_until_closed(ex.port, limit=HEADER_TIMEOUT + 8)
    assert held < HEADER_TIMEOUT + 2, f"a trickling client held its connection {held:.1f}s"
    # fifty of them at once: threads come and go, legitimate scrapes still answer meanwhile
    times = []
    attackers = [threading.Thread(target=lambda: times.append(
        trickle_until_closed(ex.port, limit=HEADER_TIMEOUT + 8))) for _ in range(50)]
    for t in attackers:
        t.start()
    time.sleep(0.5)
    peak = threads_of(ex.proc.pid)
    t0 = time.monotonic()
    status, body, _ = ex.get("/metrics", timeout=10)
    scrape_time = time.monotonic() - t0
    for t in attackers:
        t.join(HEADER_TIMEOUT + 10)
    assert status == 200 and b"nodenet_build_info" in body
    assert scrape_time < HEADER_TIMEOUT, scrape_time
    assert peak >= base + 45, (base, peak)  # the attackers did hold threads
    assert len(times) == 50 and max(times) < HEADER_TIMEOUT + 2, sorted(times)[-3:]
    deadline = time.monotonic() + 5
    while threads_of(ex.proc.pid) > base and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threads_of(ex.proc.pid) <= base, (base, threads_of(ex.proc.pid))


def test_silent_client_is_closed_after_the_header_timeout(exporter):
    with socket.create_connection(("127.0.0.1", exporter.port), timeout=HEADER_TIMEOUT + 5) as s:
        t0 = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - t0 < HEADER_TIMEOUT + 1.5


def test_keep_alive_then_idle_close(exporter):
    conn = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=10)
    for _ in range(3):  # several requests on one connection
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Connection") is None
        resp.read()
    sock = conn.sock
    t0 = time.monotonic()
    sock.settimeout(5)
    assert sock.recv(1) == b""  # closed by the server after --web.idle-timeout=1s
    assert 0.8 < time.monotonic() - t0 < 3
    conn.close()


def test_pipelined_requests_are_answered_in_order(exporter):
    answer = raw(exporter, b"GET /healthz HTTP/1.1\r\n\r\nHEAD /metrics HTTP/1.1\r\n\r\n"
                           b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
    heads = re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]+\r\n", answer)
    assert heads == [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\n",
                     b"HTTP/1.1 404 Not Found\r\n"], answer


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                    "CONNECT", "PROPFIND"])
@pytest.mark.parametrize("path", ["/metrics", "/", "/healthz"])
def test_only_get_and_head(exporter, method, path):
    answer = raw(exporter, f"{method} {path} HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".encode())
    assert status_of(answer) == 405
    assert b"\r\nAllow: GET, HEAD\r\n" in answer and b"\r\nConnection: close\r\n" in answer


def test_head_has_no_body(exporter):
    answer = raw(exporter, b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 200 and body == b""
    length = int([h for h in head.split(b"\r\n") if h.startswith(b"Content-Length:")][0][15:])
    assert length > 1000


def test_oversized_requests(exporter):
    long_target = b"/metrics?" + b"a" * 9000
    assert status_of(raw(exporter, b"GET " + long_target + b" HTTP/1.1\r\n\r\n")) == 414
    # a request line that never ends is cut off as soon as it passes the limit
    assert status_of(raw(exporter, b"GET /" + b"a" * 20000)) == 414
    many = b"".join(b"X-%d: y\r\n" % i for i in range(150))
    assert status_of(raw(exporter, b"GET /metrics HTTP/1.1\r\n" + many + b"\r\n")) == 431
    big = b"X-Big: " + b"y" * 20000 + b"\r\n"
    assert status_of(raw(exporter, b"GET /metrics HTTP/1.1\r\n" + big + b"\r\n")) == 431
    # the server is fine afterwards
    assert exporter.get("/metrics")[0] == 200


def test_malformed_requests(exporter):
    assert status_of(raw(exporter, b"GARBAGE\r\n\r\n")) == 400
    assert status_of(raw(exporter, b"GET /metrics HTTP/2.0\r\n\r\n")) == 505
    assert status_of(raw(exporter, b"GET /metrics HTTX/1.1\r\n\r\n")) == 400
    assert status_of(raw(exporter, b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n")) == 400
    assert status_of(raw(exporter, b"GET /metrics HTTP/1.1\r\nX: a\r\n folded\r\n\r\n")) == 400
    assert status_of(raw(exporter, b"GET /\xff HTTP/1.1\r\n\r\n")) == 400
    answer = raw(exporter, b"GET /metrics HTTP/1.0\r\n\r\n")  # HTTP/1.0 closes by default
    assert status_of(answer) == 200 and b"nodenet_build_info" in answer
    # a GET with a body: answered, then the connection is closed (the body is never read)
    answer = raw(exporter, b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                           b"GET /healthz HTTP/1.1\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 1 and b"Connection: close" in answer


def test_connection_cap(tmp_path):
    """More than max_connections (512) open connections: the extra ones are closed at once,
    and the exporter serves normally once the held ones are gone."""
    with ExporterProcess([*FIXTURE_ARGS, "--web.read-header-timeout=20s"]) as ex:
        socks = []
        try:
            for _ in range(540):
                socks.append(socket.create_connection(("127.0.0.1", ex.port), timeout=10))
            time.sleep(1.0)
            closed = []
            for i, s in enumerate(socks):
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        closed.append(i)
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    closed.append(i)
            # the first 512 are held (each by a thread, until the header timeout), the rest shut
            assert 20 <= len(closed) <= 40 and min(closed) >= 500, closed
            assert threads_of(ex.proc.pid) < 560
        finally:
            for s in socks:
                s.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if ex.get("/metrics", timeout=5)[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert ex.get("/metrics")[0] == 200


def test_tls_client_that_never_handshakes_does_not_block_others(tmp_path):
    pki = make_pki(tmp_path / "pki")
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                   f"  key_file: {pki.server_key}\n")
    with TLSExporterProcess([*FIXTURE_ARGS, f"--web.config.file={web}",
                             f"--web.read-header-timeout={HEADER_TIMEOUT}s"], pki) as ex:
        silent = [socket.create_connection(("127.0.0.1", ex.port)) for _ in range(20)]
        try:
            t0 = time.monotonic()
            status, _, _ = ex.get("/metrics", timeout=5)  # handshakes happen per connection
            assert status == 200 and time.monotonic() - t0 < 1.5
            silent[0].settimeout(HEADER_TIMEOUT + 5)
            t0 = time.monotonic()
            assert silent[0].recv(1) == b""
            assert time.monotonic() - t0 < HEADER_TIMEOUT + 1.5
        finally:
            for s in silent:
                s.close()
        # a plain-HTTP request to the TLS port is refused cleanly, and the server lives on
        with socket.create_connection(("127.0.0.1", ex.port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            try:
                assert b"nodenet_" not in s.recv(65536)
            except ConnectionResetError:
                pass
        ctx = ssl.create_default_context(cafile=pki.ca)
        with socket.create_connection(("127.0.0.1", ex.port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
                assert tls.recv(100).startswith(b"HTTP/1.1 200 OK")
