"""Network namespaces made by tests: unique names, always deleted."""
from __future__ import annotations

import contextlib
import os
import subprocess
import uuid

from exporter.sources import netns as nsapi


def run(cmd, netns: str | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    if isinstance(cmd, str):
        cmd = cmd.split()
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


@contextlib.contextmanager
def netns(prefix: str = "nn-test"):
    if os.geteuid() != 0:
        raise RuntimeError("creating network namespaces needs root (run the suite via tests/run.sh)")
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    run(["ip", "netns", "add", name])
    try:
        run(["ip", "link", "set", "lo", "up"], netns=name)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _enter(fd: int, what: str) -> None:
    """setns(fd, CLONE_NEWNET) for the calling thread (the exporter's own call), the error
    saying `what` was attempted."""
    try:
        nsapi.setns(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: {exc.strerror}") from None


def enter_netns(name: str) -> None:
    """Moves the calling thread into network namespace `name` (/run/netns) for good."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _enter(fd, f"setns into {name}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside_netns(name: str):
    """Runs the block, in the calling thread, inside network namespace `name` (/run/netns),
    then puts the thread back where it was. Sockets made in the block live in `name`."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter_netns(name)
        try:
            yield
        finally:
            _enter(own, f"setns back from {name}")
    finally:
        os.close(own)


def call_in_netns(name: str | None, fn, *args, **kwargs):
    """Runs fn in a fresh thread that has entered network namespace `name` (sockets it creates
    live there), and returns its result; the calling thread itself stays where it is."""
    if not name:
        return fn(*args, **kwargs)
    import threading

    box: dict = {}

    def target():
        try:
            with inside_netns(name):
                box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
