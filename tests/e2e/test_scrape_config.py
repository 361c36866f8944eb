"""deploy/prometheus-scrape.yaml in a real Prometheus: the job the alert rules select.

Debian's Prometheus is built without Kubernetes service discovery, so the job's
kubernetes_sd_configs is swapped for static targets that carry the meta labels Kubernetes
discovery would attach to the exporter's Endpoints (service name, port name, pod node name) and
to another service's. Everything else (relabel_configs, job_name, paths, intervals) is the file's,
unchanged. Prometheus must keep only the exporter's endpoint, label it job="nodenet-exporter",
instance=<node>, node=<node>, and scrape it (up == 1). All on 127.0.0.1.
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers.exporter_proc import ExporterProcess, free_port

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 30.0


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_scrape_job_keeps_the_exporter_and_names_it_nodenet_exporter(tmp_path):
    prometheus = shutil.which("prometheus")
    if not prometheus:
        pytest.fail("prometheus is not installed (Debian: prometheus)")
    (job,) = yaml.safe_load((REPO / "deploy" / "prometheus-scrape.yaml").read_text())["scrape_configs"]
    with ExporterProcess() as ex:
        other = free_port()
        static = copy.deepcopy(job)
        del static["kubernetes_sd_configs"]
        static["scrape_interval"] = "1s"
        static["scrape_timeout"] = "1s"
        static["static_configs"] = [
            {"targets": [ex.address], "labels": {
                "__meta_kubernetes_service_name": "nodenet-exporter",
                "__meta_kubernetes_endpoint_port_name": "metrics",
                "__meta_kubernetes_pod_node_name": "node-a"}},
            {"targets": [f"127.0.0.1:{other}"], "labels": {
                "__meta_kubernetes_service_name": "kube-dns",
                "__meta_kubernetes_endpoint_port_name": "metrics",
                "__meta_kubernetes_pod_node_name": "node-a"}},
        ]
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(yaml.safe_dump({"global": {"evaluation_interval": "1s"}, "scrape_configs": [static]}))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = (tmp_path / "prometheus.log").open("wb")
        prom = subprocess.Popen([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + WAIT_S
            up = []
            while time.monotonic() < deadline and not up:
                time.sleep(0.5)
                assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                try:
                    up = api(base, "/api/v1/query", query='up{job="nodenet-exporter"}')["data"]["result"]
                except OSError:
                    continue
            assert up, f"no up{{job=\"nodenet-exporter\"}} within {WAIT_S}s"
            targets = api(base, "/api/v1/targets")["data"]
        finally:
            prom.terminate()
            prom.wait(timeout=15)
            log.close()
    assert [s["metric"] for s in up] == [
        {"__name__": "up", "job": "nodenet-exporter", "instance": "node-a", "node": "node-a"}
    ]
    assert [s["value"][1] for s in up] == ["1"]
    (active,) = targets["activeTargets"]
    assert active["labels"] == {"job": "nodenet-exporter", "instance": "node-a", "node": "node-a"}
    assert active["scrapeUrl"] == f"http://{ex.address}/metrics"
    dropped = [t["discoveredLabels"]["__meta_kubernetes_service_name"] for t in targets["droppedTargets"]]
    assert dropped == ["kube-dns"]
