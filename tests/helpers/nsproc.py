"""A long-lived process in a network namespace, held by a test: started, ready, stopped by PID.

The process (a helper script such as tests/integration/podview_pod.py or tests/helpers/ctflows.py,
or a shell) sets itself up inside the namespace, prints one line when it is ready (what it made,
or just "ready"), then holds its sockets until its stdin closes or it is signalled, bounded in
time by the script itself. `ip netns exec` and `unshare --net` both exec the command, so the
Popen's pid is the process itself: /proc/<pid>/ns/net is the namespace.
"""
from __future__ import annotations

import select
import signal
import subprocess
import time


class NsProcess:
    """`NsProcess(argv, netns="nn-x")` runs argv in /run/netns/nn-x; `netns=None` in a new,
    unnamed namespace of its own (`unshare --net`: known only as /proc/<pid>/ns/net).

    stop_by: "stdin" (the script ends when its stdin closes) or "sigterm" (e.g. `sleep`);
    either way SIGTERM, then SIGKILL, follow if it does not end in time."""

    def __init__(self, argv: list[str], netns: str | None, *, stop_by: str = "stdin",
                 ready_timeout: float = 30.0):
        assert stop_by in ("stdin", "sigterm"), stop_by
        prefix = ["ip", "netns", "exec", netns] if netns else ["unshare", "--net"]
        self.netns, self.stop_by = netns, stop_by
        self.proc = subprocess.Popen([*prefix, *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        try:
            self.first_line = self._first_line(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _first_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.proc.args!r}: not ready within {timeout} s")
            if select.select([self.proc.stdout], [], [], left)[0]:
                line = self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"{self.proc.args!r} exited before it was ready "
                                         f"(rc {self.proc.wait(5)})")
                return line.strip()

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> int:
        """Ends the process (only this one, by its PID) and returns its exit code."""
        if self.proc.poll() is None:
            if self.stop_by == "stdin" and self.proc.stdin:
                self.proc.stdin.close()
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(grace)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream and not stream.closed:
                stream.close()
        return self.proc.returncode

    def __enter__(self) -> NsProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
