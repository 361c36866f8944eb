"""Start the real exporter as a subprocess (optionally inside a network namespace) and scrape it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExporterProcess:
    """``with ExporterProcess(["--path.procfs", p]) as ex: text = ex.scrape()``"""

    def __init__(self, args=(), netns: str | None = None, port: int | None = None,
                 prefix=(), env=None, startup_timeout: float = 15.0):
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "exporter", f"--web.listen-address={self.address}",
               "--log.format=json", *args]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.cmd = [*prefix, *cmd]
        self.netns = netns
        self.env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.stderr_path = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self):
        import tempfile
        fd, self.stderr_path = tempfile.mkstemp(prefix="nodenet-exporter-", suffix=".log")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=fd, env=self.env,
                                     cwd=ROOT)
        os.close(fd)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited rc={self.proc.returncode}: {self.log()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"exporter did not answer /healthz within {self.startup_timeout}s: "
                           f"{self.log()}")

    def get(self, path: str, headers=None, timeout: float = 30.0):
        """(status, body, headers); from inside the exporter's network namespace if it has one."""
        from .netns import call_in_netns
        return call_in_netns(self.netns, self._get, path, headers, timeout)

    def _get(self, path, headers, timeout):
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def scrape(self, path: str = "/metrics") -> str:
        status, body, _ = self.get(path)
        if status != 200:
            raise AssertionError(f"scrape of {path} answered {status}: {body[:300]!r}")
        return body.decode()

    def log(self) -> str:
        if not self.stderr_path:
            return ""
        with open(self.stderr_path, errors="replace") as fh:
            return fh.read()[-4000:]

    def stop(self, sig=signal.SIGTERM, timeout: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if self.stderr_path and os.path.exists(self.stderr_path):
            os.unlink(self.stderr_path)


def parse_samples(text: str) -> dict:
    """Exposition text -> {(name, frozenset(labels.items())): value} via prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: dict, name: str, /, **labels):
    return samples.get((name, frozenset(labels.items())))
