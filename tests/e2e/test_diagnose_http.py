"""/diagnose of the real exporter over HTTP, on a copy of the fixture procfs tree that the test
changes between scrapes: auth like /metrics, text and JSON forms, and findings from the
readings the scrapes left."""
from __future__ import annotations

import base64
import json
import os
import shutil
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import jsonschema_lite
from tests.helpers.exporter_proc import ROOT, ExporterProcess
from tests.helpers.tls import bcrypt_hash

FIX = os.path.join(ROOT, "tests", "fixtures", "root")
with open(os.path.join(ROOT, "docs", "diagnose.schema.json")) as _fh:
    SCHEMA = json.load(_fh)
USER, PASSWORD = "sre", "night shift"


def softnet_stat(*rows: tuple[int, int]) -> str:
    return "".join(f"{p:08x} {d:08x} " + " ".join(["00000000"] * 10) + f" {cpu:08x} 00000000"
                   " 00000000\n" for cpu, (p, d) in enumerate(rows))


def get(url: str, auth: bool = True, method: str = "GET"):
    req = urllib.request.Request(url, method=method)
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


@pytest.fixture
def tree(tmp_path):
    shutil.copytree(FIX, tmp_path / "root")
    softnet = tmp_path / "root" / "proc" / "net" / "softnet_stat"
    softnet.write_text(softnet_stat((1000, 0), (1000, 0)))
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  {USER}: '{bcrypt_hash(PASSWORD, 10)}'\n")
    args = [f"--path.procfs={tmp_path / 'root' / 'proc'}",
            f"--path.sysfs={tmp_path / 'root' / 'sys'}", "--collector.disable-defaults",
            "--collector.cpu", "--collector.softnet", "--collector.sysctl",
            f"--web.config.file={web}"]
    return args, softnet


def test_diagnose_page_needs_auth_and_reports_what_the_scrapes_saw(tree):
    args, softnet = tree
    with ExporterProcess(args) as ex:
        status, _, _ = get(ex.url + "/diagnose", auth=False)
        assert status == 401
        status, _, page = get(ex.url + "/")
        assert status == 200 and '<a href="/diagnose">Diagnose</a>' in page
        t0 = time.monotonic()
        status, headers, text = get(ex.url + "/diagnose")   # one reading only: waits 2 s
        assert status == 200, text
        assert time.monotonic() - t0 >= 1.9
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert headers["X-Nodenet-Diagnose-Status"] == "ok"
        assert text.startswith("OK: no finding on ")
        # 50 drops on cpu1, then Prometheus scrapes: /diagnose pairs that scrape's reading
        time.sleep(2.0)
        softnet.write_text(softnet_stat((1500, 0), (1200, 50)))
        assert get(ex.url + "/metrics")[0] == 200
        status, headers, body = get(ex.url + "/diagnose?output=json")
        status_head, headers_head, empty = get(ex.url + "/diagnose", method="HEAD")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert jsonschema_lite.errors(doc, SCHEMA) == []
    assert headers["X-Nodenet-Diagnose-Status"] == doc["status"] == "warning"
    assert [f["check"] for f in doc["findings"]] == ["NodenetSoftnetDrops"]
    finding = doc["findings"][0]
    # interval_seconds is rounded to the millisecond
    assert finding["value"] == pytest.approx(50 / doc["interval_seconds"], rel=1e-3)
    assert doc["interval_seconds"] >= 2.0
    assert "(cpu1 " in finding["message"] and finding["collector"] == "softnet"
    assert status_head == 200 and empty == ""
    assert headers_head["X-Nodenet-Diagnose-Status"] == "warning"


def test_a_collector_stuck_in_a_read_is_a_finding_and_the_command_still_ends(tmp_path):
    """A FIFO as /proc/net/softnet_stat blocks its reader forever (as a hung kernel read
    would): the collector times out, diagnose reports it and exits 1 without waiting."""
    import subprocess
    import sys

    shutil.copytree(FIX, tmp_path / "root")
    fifo = tmp_path / "root" / "proc" / "net" / "softnet_stat"
    fifo.unlink()
    os.mkfifo(fifo)
    # timeout: a process held by the stuck reader thread would never end (TimeoutExpired)
    res = subprocess.run([sys.executable, "-m", "exporter", "diagnose",
                          f"--path.procfs={tmp_path / 'root' / 'proc'}",
                          f"--path.sysfs={tmp_path / 'root' / 'sys'}", "--only=softnet,cpu",
                          "--collector.timeout=500ms", "--interval=200ms", "--output=json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert jsonschema_lite.errors(doc, SCHEMA) == []
    assert [(f["check"], f["labels"]) for f in doc["findings"]] == [
        ("NodenetCollectorFailing", {"collector": "softnet"})]
    assert "previous collection still running" in doc["findings"][0]["message"]
    assert [c["name"] for c in doc["collectors"] if not c["success"]] == ["softnet"]
    assert "timed out after 0.5s" in res.stderr   # the log (stderr) says why
