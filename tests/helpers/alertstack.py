"""A real Prometheus + Alertmanager + webhook receiver inside a network namespace (test helper).

For end-to-end tests that need the whole alerting path on loopback. All processes run inside a
network namespace that the caller created, so fixed ports are free and nothing is exposed on
the host. Processes are started with ``ip netns exec`` and stopped by their own PID.

API:

``in_netns(ns, fn, *args)``
    run ``fn(*args)`` in a thread that has entered ``ns`` (sockets it opens live there) and
    return its result; e.g. ``in_netns(ns, http_get, "http://127.0.0.1:9090/-/ready")``.
``http_get(url, timeout=5) -> bytes`` / ``prom_query(ns, base, promql) -> list``
    plain HTTP GET; an instant query against a Prometheus inside ``ns``.
``NetnsProcess(ns, argv, log_path, env=None, cwd=None)``
    ``start()``, ``stop()`` (SIGTERM then SIGKILL, by PID), ``alive()``, ``log()``; a
    context manager.
``Webhook(ns, port)``
    an Alertmanager webhook receiver (``http.server`` in a thread inside ``ns``);
    ``url``, ``payloads`` (every JSON body received), ``alerts()`` (the alerts in them),
    ``wait_for(predicate, timeout)``; ``start()``/``stop()``; a context manager.
``prometheus(ns, workdir, *, rule_files, job, targets, alertmanager, interval="2s", port=9090)``
    a ``NetnsProcess`` for ``/usr/bin/prometheus`` with a generated config: one scrape job
    ``job`` over ``targets``, scrape and evaluation interval ``interval``, the given rule files
    loaded as they are, alerts sent to ``alertmanager`` ("host:port").
``alertmanager(ns, workdir, *, webhook_url, port=9093, group_wait="1s")``
    a ``NetnsProcess`` for ``/usr/bin/prometheus-alertmanager`` (clustering off) whose only
    route sends every alert to ``webhook_url``.
``wait_http(ns, url, timeout, proc=None)``
    poll until ``url`` answers 200 (fails early if ``proc`` died).
"""
from __future__ import annotations

import http.server
import json
import os
import pathlib
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import yaml

from tests.helpers.netns import call_in_netns, enter_netns

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def in_netns(ns: str, fn, *args, **kwargs):
    """Run ``fn`` in a fresh thread inside ``ns``; return its result or raise its exception."""
    return call_in_netns(ns, fn, *args, **kwargs)


def http_get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def prom_query(ns: str, base: str, promql: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = json.loads(in_netns(ns, http_get, url))
    if body.get("status") != "success":
        raise RuntimeError(f"query {promql!r} failed: {body}")
    return body["data"]["result"]


def wait_http(ns: str, url: str, timeout: float, proc: "NetnsProcess | None" = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.argv[4]} exited ({proc.proc.returncode}) before {url} "
                               f"answered; its log:\n{proc.log()[-3000:]}")
        try:
            in_netns(ns, http_get, url, 2)
            return
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise TimeoutError(f"{url} in {ns} did not answer within {timeout}s: {last}")


class NetnsProcess:
    def __init__(self, ns: str, argv: list[str], log_path: pathlib.Path,
                 env: dict | None = None, cwd: str | os.PathLike | None = None) -> None:
        self.argv = ["ip", "netns", "exec", ns, *argv]
        self.log_path = pathlib.Path(log_path)
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "NetnsProcess":
        self._log = open(self.log_path, "wb")
        # ip netns exec execs the command: self.proc.pid is the program itself.
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(grace)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Webhook:
    """Alertmanager webhook receiver running inside ``ns``."""

    def __init__(self, ns: str, port: int = 5001) -> None:
        self.ns, self.port = ns, port
        self.url = f"http://127.0.0.1:{port}/alerts"
        self.payloads: list[dict] = []
        self._cond = threading.Condition()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "Webhook":
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                try:
                    payload = json.loads(body)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                with hook._cond:
                    hook.payloads.append(payload)
                    hook._cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        ready = threading.Event()
        failure: list[BaseException] = []

        def serve():
            try:
                enter_netns(self.ns)
                self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
            except BaseException as e:  # noqa: BLE001
                failure.append(e)
                ready.set()
                return
            ready.set()
            self._server.serve_forever(poll_interval=0.2)

        self._thread = threading.Thread(target=serve, daemon=True, name="webhook")
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def alerts(self) -> list[dict]:
        with self._cond:
            return [a for p in self.payloads for a in p.get("alerts", [])]

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until ``predicate(self.alerts())`` is true; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate([a for p in self.payloads for a in p.get("alerts", [])]):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def require_binaries(*paths: str) -> None:
    missing = [p for p in paths if not (os.path.isabs(p) and os.access(p, os.X_OK))
               and not shutil.which(p)]
    if missing:
        raise RuntimeError(f"missing programs: {missing} (Debian packages: prometheus, "
                           f"prometheus-alertmanager, nftables, conntrack, iproute2)")


def prometheus(ns: str, workdir: pathlib.Path, *, rule_files: list[str], job: str,
               targets: list[str], alertmanager: str, interval: str = "2s",
               port: int = 9090) -> NetnsProcess:
    workdir = pathlib.Path(workdir)
    (workdir / "prometheus-data").mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "scrape_timeout": interval},
        "rule_files": [str(pathlib.Path(f).resolve()) for f in rule_files],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
    }
    cfg = workdir / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    return NetnsProcess(ns, [PROMETHEUS, f"--config.file={cfg}",
                             f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                             f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=info"],
                        workdir / "prometheus.log")


def alertmanager(ns: str, workdir: pathlib.Path, *, webhook_url: str, port: int = 9093,
                 group_wait: str = "1s") -> NetnsProcess:
    workdir = pathlib.Path(workdir)
    (workdir / "alertmanager-data").mkdir(parents=True, exist_ok=True)
    config = {
        "route": {"receiver": "test-webhook", "group_by": ["alertname", "instance"],
                  "group_wait": group_wait, "group_interval": "2s", "repeat_interval": "1h"},
        "receivers": [{"name": "test-webhook",
                       "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }
    cfg = workdir / "alertmanager.yml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    return NetnsProcess(ns, [ALERTMANAGER, f"--config.file={cfg}",
                             f"--storage.path={workdir / 'alertmanager-data'}",
                             f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address=", "--log.level=info"],
                        workdir / "alertmanager.log")


# --------------------------------------------------------------- issue 14: linked namespaces
def link_namespaces(a: str, b: str, a_addr: str, b_addr: str, prefix: int = 30) -> None:
    """A veth pair between namespaces ``a`` and ``b`` (both the caller's), addressed
    ``a_addr``/``b_addr`` on a /``prefix``: Prometheus in ``a`` scrapes an exporter in ``b``.
    The pair is deleted with either namespace."""
    tag = f"{abs(hash((a, b))) % 10**6:06d}"
    va, vb = f"nna{tag}", f"nnb{tag}"
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
    run("ip", "-n", a, "link", "add", va, "type", "veth", "peer", "name", vb, "netns", b)
    run("ip", "-n", a, "addr", "add", f"{a_addr}/{prefix}", "dev", va)
    run("ip", "-n", b, "addr", "add", f"{b_addr}/{prefix}", "dev", vb)
    run("ip", "-n", a, "link", "set", va, "up")
    run("ip", "-n", b, "link", "set", vb, "up")
