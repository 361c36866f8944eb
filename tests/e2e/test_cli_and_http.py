"""The real exporter process: start-up errors, HTTP behaviour, isolation, signals, real /proc."""
import gzip
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers.exporter_proc import ROOT, ExporterProcess, free_port, parse_samples, sample

FIX = os.path.join(ROOT, "tests", "fixtures")
FIXTURE_ARGS = [f"--path.procfs={FIX}/root/proc", f"--path.sysfs={FIX}/root/sys",
                "--collector.disable-defaults", "--collector.cpu", "--collector.softnet",
                "--collector.sysctl"]


def run_cli(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def one_line_error(res, needle):
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("nodenet-exporter: error:") and needle in lines[0], lines[0]


def test_unknown_flag():
    one_line_error(run_cli("--web.listen-adress=:1"), "--web.listen-adress")


def test_malformed_config(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("web:\n  listen-address: [\n")
    one_line_error(run_cli(f"--config.file={p}"), "malformed YAML")


def test_unknown_collector_in_config(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("collector:\n  conntrak: {enabled: true}\n")
    one_line_error(run_cli(f"--config.file={p}"), "unknown collector 'conntrak'")


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(run_cli(f"--web.listen-address=127.0.0.1:{port}", *FIXTURE_ARGS),
                       "Address already in use")


def test_version():
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("nodenet-exporter 0.")


def test_console_script_installed():
    exe = shutil.which("nodenet-exporter")
    assert exe, "console script missing: tests/run.sh installs the project with pip -e"
    res = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    assert res.returncode == 0 and "nodenet-exporter" in res.stdout


@pytest.fixture(scope="module")
def fixture_exporter():
    with ExporterProcess(FIXTURE_ARGS) as ex:
        yield ex


def test_http_endpoints(fixture_exporter):
    ex = fixture_exporter
    status, body, headers = ex.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    status, body, _ = ex.get("/healthz")
    assert status == 200
    status, body, _ = ex.get("/")
    page = body.decode()
    assert status == 200
    from exporter.collectors import load_all
    from exporter.collectors.base import REGISTRY
    load_all()
    for name in REGISTRY:
        state = "enabled" if name in ("cpu", "softnet", "sysctl") else "disabled"
        assert f"<tr><td>{name}</td><td>{state}</td>" in page, name
    assert ex.get("/nope")[0] == 404


def test_openmetrics_and_gzip(fixture_exporter):
    ex = fixture_exporter
    status, body, headers = ex.get("/metrics", {"Accept": "application/openmetrics-text;version=1.0.0",
                                                "Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n") and "# TYPE nodenet_softnet_dropped counter" in text


def test_only_get_and_head(fixture_exporter):
    import urllib.request
    req = urllib.request.Request(fixture_exporter.url + "/metrics", data=b"x", method="POST")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("POST accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 405


def test_one_broken_collector_leaves_the_others(tmp_path):
    tree = tmp_path / "root"
    shutil.copytree(os.path.join(FIX, "root"), tree)
    (tree / "proc" / "net" / "softnet_stat").write_text("this is not softnet_stat\n")
    args = [a.replace(f"{FIX}/root", str(tree)) for a in FIXTURE_ARGS]
    with ExporterProcess(args) as ex:
        s = parse_samples(ex.scrape())
        log = ex.log()
    assert sample(s, "nodenet_scrape_collector_success", collector="softnet") == 0
    assert sample(s, "nodenet_scrape_collector_success", collector="cpu") == 1
    assert sample(s, "nodenet_scrape_collector_success", collector="sysctl") == 1
    assert sample(s, "nodenet_cpus") == 4
    assert sample(s, "nodenet_softnet_dropped_total", cpu="0") is None
    assert '"collector": "softnet"' in log and "collector failed" in log


def test_unreadable_file_costs_only_its_collector(tmp_path):
    tree = tmp_path / "root"
    shutil.copytree(os.path.join(FIX, "root"), tree)
    os.unlink(tree / "proc" / "stat")
    os.mkdir(tree / "proc" / "stat")  # read fails with EISDIR, even for root
    args = [a.replace(f"{FIX}/root", str(tree)) for a in FIXTURE_ARGS]
    with ExporterProcess(args) as ex:
        s = parse_samples(ex.scrape())
    assert sample(s, "nodenet_scrape_collector_success", collector="cpu") == 0
    assert sample(s, "nodenet_scrape_collector_success", collector="softnet") == 1


def test_real_proc_has_every_cpu():
    with ExporterProcess(["--collector.disable-defaults", "--collector.cpu",
                          "--collector.softnet", "--collector.sysctl"]) as ex:
        s = parse_samples(ex.scrape())
    ncpu = os.cpu_count()
    assert sample(s, "nodenet_cpus") == ncpu
    with open("/proc/stat") as fh:
        cpus = [line.split()[0][3:] for line in fh if line.startswith("cpu") and line[3] != " "]
    assert len(cpus) == ncpu
    for cpu in cpus:
        assert sample(s, "nodenet_cpu_steal_seconds_total", cpu=cpu) is not None, cpu
        assert sample(s, "nodenet_softnet_processed_total", cpu=cpu) is not None, cpu
        assert sample(s, "nodenet_softnet_dropped_total", cpu=cpu) is not None, cpu
    with open("/proc/sys/net/core/netdev_max_backlog") as fh:
        backlog = int(fh.read())
    assert sample(s, "nodenet_sysctl_value", name="net.core.netdev_max_backlog", bound="") == backlog


def test_sigterm_during_scrape_finishes_it_and_exits_zero(tmp_path):
    # A fifo as /proc/stat makes the cpu collector block until we write it: a scrape in flight.
    tree = tmp_path / "root"
    shutil.copytree(os.path.join(FIX, "root"), tree)
    os.unlink(tree / "proc" / "stat")
    os.mkfifo(tree / "proc" / "stat")
    args = [a.replace(f"{FIX}/root", str(tree)) for a in FIXTURE_ARGS] + ["--collector.timeout=5s"]
    ex = ExporterProcess(args).start()
    try:
        result = {}
        t = threading.Thread(target=lambda: result.update(r=ex.get("/metrics")))
        t.start()
        time.sleep(0.5)
        ex.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with open(tree / "proc" / "stat", "w") as fh:
            fh.write(open(os.path.join(FIX, "root", "proc", "stat")).read())
        t0 = time.monotonic()
        rc = ex.proc.wait(timeout=5)
        t.join(5)
        assert rc == 0
        assert time.monotonic() - t0 < 2.0
        status, body, _ = result["r"]
        assert status == 200 and b'nodenet_scrape_collector_success{collector="cpu"} 1' in body
    finally:
        ex.stop(signal.SIGKILL)


def test_max_requests_answers_503(tmp_path):
    tree = tmp_path / "root"
    shutil.copytree(os.path.join(FIX, "root"), tree)
    os.unlink(tree / "proc" / "stat")
    os.mkfifo(tree / "proc" / "stat")
    args = [a.replace(f"{FIX}/root", str(tree)) for a in FIXTURE_ARGS] + [
        "--web.max-requests=1", "--collector.timeout=5s"]
    with ExporterProcess(args) as ex:
        result = {}
        t = threading.Thread(target=lambda: result.update(r=ex.get("/metrics")))
        t.start()
        time.sleep(0.5)
        status, body, _ = ex.get("/metrics")
        assert status == 503 and b"too many concurrent scrapes" in body
        with open(tree / "proc" / "stat", "w") as fh:
            fh.write(open(os.path.join(FIX, "root", "proc", "stat")).read())
        t.join(10)
        assert result["r"][0] == 200
