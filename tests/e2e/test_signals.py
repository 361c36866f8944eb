"""Signals to the real exporter: SIGTERM lets a scrape in flight finish (also over TLS, also
with a collector blocked for good) and exits 0; SIGHUP reloads --web.config.file (a bad file
keeps the old config and says why once); a changed certificate is picked up without a signal."""
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import threading
import time

import pytest

from tests.helpers.exporter_proc import ROOT, ExporterProcess
from tests.helpers.tls import TLSExporterProcess, basic, bcrypt_hash, make_pki

FIX = os.path.join(ROOT, "tests", "fixtures")


def tree_with_fifo(tmp_path, rel):
    tree = tmp_path / "root"
    shutil.copytree(os.path.join(FIX, "root"), tree)
    os.unlink(tree / rel)
    os.mkfifo(tree / rel)
    return tree


def tree_args(tree, *extra):
    return [f"--path.procfs={tree}/proc", f"--path.sysfs={tree}/sys",
            "--collector.disable-defaults", "--collector.cpu", "--collector.softnet",
            "--collector.sysctl", *extra]


def log_events(ex):
    with open(ex.stderr_path) as fh:
        return [json.loads(line) for line in fh if line.startswith("{")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_sigterm_during_a_tls_scrape_finishes_it_and_exits_zero(tmp_path, pki):
    tree = tree_with_fifo(tmp_path, "proc/stat")  # the cpu collector blocks until we write
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                   f"  key_file: {pki.server_key}\n"
                   f"basic_auth_users:\n  prom: '{bcrypt_hash('pw')}'\n")
    ex = TLSExporterProcess(tree_args(tree, f"--web.config.file={web}", "--collector.timeout=5s"),
                            pki, auth=("prom", "pw"))
    # the start-up probe is /healthz, which does not collect
    ex.start()
    try:
        result = {}
        t = threading.Thread(target=lambda: result.update(r=ex.get("/metrics")))
        t.start()
        time.sleep(0.7)
        ex.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert ex.proc.poll() is None, "exited before the scrape in flight finished"
        with open(tree / "proc" / "stat", "w") as fh:
            fh.write(open(os.path.join(FIX, "root", "proc", "stat")).read())
        t0 = time.monotonic()
        rc = ex.proc.wait(timeout=5)
        t.join(5)
        assert rc == 0
        assert time.monotonic() - t0 < 2.0
        status, body, headers = result["r"]
        assert status == 200 and b'nodenet_scrape_collector_success{collector="cpu"} 1' in body
        assert headers.get("Connection") == "close"
        # and nothing listens any more
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", ex.port), timeout=2).close()
    finally:
        ex.stop(signal.SIGKILL)


def test_sigterm_with_a_collector_blocked_for_good_exits_zero_in_time(tmp_path):
    tree = tree_with_fifo(tmp_path, "proc/net/softnet_stat")  # nobody will ever write it
    with ExporterProcess(tree_args(tree, "--collector.timeout=0.5s")) as ex:
        status, body, _ = ex.get("/metrics")
        assert status == 200 and b'success{collector="softnet"} 0' in body
        t0 = time.monotonic()
        ex.proc.send_signal(signal.SIGTERM)
        rc = ex.proc.wait(timeout=10)
        took = time.monotonic() - t0
        log = ex.log()
    assert rc == 0 and took < 2.0, (rc, took)
    assert "exiting with blocked collector threads" in log


def write_same_shape(path, text, like_stat):
    """Rewrites a file in place keeping its size and mtime, so only SIGHUP can notice."""
    data = text.encode()
    assert len(data) == like_stat.st_size
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(like_stat.st_atime_ns, like_stat.st_mtime_ns))


def test_sighup_reloads_passwords(tmp_path, pki):
    web = tmp_path / "web.yml"
    old_hash, new_hash = bcrypt_hash("old-password"), bcrypt_hash("new-password")
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                   f"  key_file: {pki.server_key}\nbasic_auth_users:\n  prom: '{old_hash}'\n")
    before = os.stat(web)
    ex = TLSExporterProcess([*tree_args(FIX + "/root"), f"--web.config.file={web}"], pki)
    with ex:
        assert ex.get("/metrics", basic("prom", "old-password"))[0] == 200
        assert ex.get("/metrics", basic("prom", "new-password"))[0] == 401
        kept = http.client.HTTPSConnection("127.0.0.1", ex.port, timeout=10,
                                           context=ex.ssl_context())

        def on_kept_connection(password):
            kept.request("GET", "/metrics", headers=basic("prom", password))
            resp = kept.getresponse()
            resp.read()
            return resp.status

        assert on_kept_connection("old-password") == 200
        write_same_shape(web, web.read_text().replace(old_hash, new_hash), before)
        time.sleep(1.5)  # the change watcher cannot see it: still the old password
        assert ex.get("/metrics", basic("prom", "old-password"))[0] == 200
        ex.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while ex.get("/metrics", basic("prom", "new-password"))[0] != 200:
            assert time.monotonic() < deadline, "SIGHUP did not reload the web config"
            time.sleep(0.1)
        assert ex.get("/metrics", basic("prom", "old-password"))[0] == 401
        # a connection kept alive across the reload follows the new config too
        sock = kept.sock
        assert on_kept_connection("old-password") == 401
        assert on_kept_connection("new-password") == 200
        assert kept.sock is sock, "the kept-alive connection was not reused"
        kept.close()
        assert ex.proc.poll() is None
        reloads = [e for e in log_events(ex) if e["event"] == "web config reloaded"]
    assert [e["reason"] for e in reloads] == ["SIGHUP"], reloads


def test_bad_reload_keeps_the_old_config_and_says_why_once(tmp_path, pki):
    web = tmp_path / "web.yml"
    good = (f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
            f"  key_file: {pki.server_key}\nbasic_auth_users:\n  prom: '{bcrypt_hash('pw')}'\n")
    web.write_text(good)
    with TLSExporterProcess([*tree_args(FIX + "/root"), f"--web.config.file={web}"], pki,
                            auth=("prom", "pw")) as ex:
        web.write_text(good.replace("basic_auth_users", "basic_auth_user"))  # a typo
        time.sleep(1.2)  # the change watcher tries it
        for _ in range(5):  # many connections: still one log line, old config in force
            assert ex.get("/metrics")[0] == 200
            time.sleep(0.3)
        ex.proc.send_signal(signal.SIGHUP)  # an explicit retry says it again
        time.sleep(0.5)
        assert ex.get("/metrics")[0] == 200
        assert ex.get("/metrics", basic("prom", "wrong"))[0] == 401
        failures = [e for e in log_events(ex) if e["event"].startswith("web config reload failed")]
        assert [e["reason"] for e in failures] == ["file changed", "SIGHUP"], failures
        assert all("unknown key 'basic_auth_user'" in e["error"] for e in failures)
        # fixed: picked up again
        web.write_text(good.replace("prom:", "other:"))
        ex.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while ex.get("/metrics", basic("other", "pw"))[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert ex.get("/metrics")[0] == 401
        assert ex.proc.poll() is None


def test_rotated_certificate_is_served_without_a_signal(tmp_path, pki):
    """Like a cert-manager / Secret rotation: new files, no signal; new connections get the
    new certificate within about a second."""
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.server_cert, live / "tls.crt")
    shutil.copy(pki.server_key, live / "tls.key")
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: live/tls.crt\n  key_file: live/tls.key\n")
    second = make_pki(tmp_path / "pki2")  # another CA, another server certificate

    def served_cert(ca):
        ctx = ssl.create_default_context(cafile=ca)
        with socket.create_connection(("127.0.0.1", ex.port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1") as tls:
                return tls.getpeercert(binary_form=True)

    with TLSExporterProcess([*tree_args(FIX + "/root"), f"--web.config.file={web}"], pki) as ex:
        first = served_cert(pki.ca)
        tmp = live / "tls.new"
        shutil.copy(second.server_key, tmp)
        os.replace(tmp, live / "tls.key")
        shutil.copy(second.server_cert, tmp)
        os.replace(tmp, live / "tls.crt")
        deadline = time.monotonic() + 10
        while True:
            try:
                now = served_cert(second.ca)
                break
            except ssl.SSLError:
                assert time.monotonic() < deadline, "the new certificate was never served"
                time.sleep(0.2)
        assert now != first
        with pytest.raises(ssl.SSLError):
            served_cert(pki.ca)
        assert ex.proc.poll() is None


def test_sighup_without_web_config_is_harmless():
    with ExporterProcess(tree_args(FIX + "/root")) as ex:
        ex.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert ex.proc.poll() is None, "SIGHUP killed the exporter"
        assert ex.get("/metrics")[0] == 200
        assert any(e["event"].startswith("web config reload requested")
                   for e in log_events(ex))
