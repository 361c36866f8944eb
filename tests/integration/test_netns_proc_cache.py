"""The /proc walk's cache (sources.netns.ProcNetCache) against the real kernel: a reused pid,
a process that joins a namespace after it was first seen, and the age bound.

The pid-reuse case runs in a PID namespace of its own (``unshare --pid --fork --mount-proc``),
whose ``ns_last_pid`` (per PID namespace, not a global sysctl) makes the next fork reuse the
pid of a process that just exited, as a busy node does after pid_max wraps.

Run as root: ``python -m pytest tests/integration/test_netns_proc_cache.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from exporter.sources import netns as nsapi
from tests.helpers.netns import netns

assert os.geteuid() == 0, "these tests need root (network and PID namespaces)"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

JOINER = r"""
import ctypes, os, sys
print("ready", flush=True)
target = sys.stdin.readline().strip()
fd = os.open(target, os.O_RDONLY)
assert ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0, ctypes.get_errno()
print("joined", flush=True)
sys.stdin.readline()
"""


class Joiner:
    """A process that starts in this namespace and setns()es into another when told."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", JOINER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def join(self, name: str) -> None:
        self.proc.stdin.write(f"/run/netns/{name}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "joined"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def pids_of(found, inode: int) -> set:
    return {int(p.split("/")[2]) for ns in found if ns.inode == inode for p in ns.paths
            if p.startswith("/proc/")}


def test_a_process_that_joins_a_namespace_after_its_first_walk_is_found():
    """runc init starts in the host namespace and joins the pod's within milliseconds: an
    answer is trusted only after two walks agree, so the next walk asks again."""
    cache = nsapi.ProcNetCache()
    with netns("nn-pc-join") as name:
        inode = os.stat(f"/run/netns/{name}").st_ino
        j = Joiner()
        try:
            first = nsapi.discover([], "/proc", cache=cache)
            assert j.proc.pid not in pids_of(first, inode)
            j.join(name)
            second = nsapi.discover([], "/proc", cache=cache)
            assert j.proc.pid in pids_of(second, inode), "the joined namespace was not found"
            # two agreeing walks: the third walk asks nobody it already knows
            nsapi.discover([], "/proc", cache=cache)
            nsapi.discover([], "/proc", cache=cache)
            listed = sum(1 for e in os.listdir("/proc") if e.isdigit())
            # only processes started since the walk before (this machine runs other jobs)
            assert cache.asked < max(20, listed // 4), \
                f"{cache.asked} of {listed} processes asked on a settled walk"
        finally:
            j.stop()


def test_a_settled_process_that_moves_later_is_seen_within_max_age():
    cache = nsapi.ProcNetCache(max_age=0.5)
    with netns("nn-pc-age") as name:
        inode = os.stat(f"/run/netns/{name}").st_ino
        j = Joiner()
        try:
            for _ in range(2):
                nsapi.discover([], "/proc", cache=cache)
            j.join(name)
            stale = nsapi.discover([], "/proc", cache=cache)
            assert j.proc.pid not in pids_of(stale, inode), \
                "a settled answer was asked again before max_age (the cache did nothing)"
            time.sleep(0.6)
            fresh = nsapi.discover([], "/proc", cache=cache)
            assert j.proc.pid in pids_of(fresh, inode), "not seen after max_age"
        finally:
            j.stop()


REUSE = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from exporter.sources import netns as nsapi
cache = nsapi.ProcNetCache()
a = subprocess.Popen(["sleep", "60"])          # in this (the walker's) network namespace
for _ in range(2):
    nsapi.discover([], "/proc", cache=cache)   # a is settled in the cache
a_ino = os.stat(f"/proc/{a.pid}").st_ino
pid = a.pid
a.kill(); a.wait()
with open("/proc/sys/kernel/ns_last_pid", "w") as fh:   # this PID namespace's only
    fh.write(str(pid - 1))
b = subprocess.Popen(["unshare", "-n", "sleep", "60"])
own = os.readlink("/proc/self/ns/net")
t_end = time.monotonic() + 10
while os.readlink(f"/proc/{b.pid}/ns/net") == own and time.monotonic() < t_end:
    time.sleep(0.01)
b_net = int(os.readlink(f"/proc/{b.pid}/ns/net")[5:-1])
found = nsapi.discover([], "/proc", cache=cache)
print(json.dumps({"pid_a": pid, "pid_b": b.pid, "a_ino": a_ino,
                  "b_ino": os.stat(f"/proc/{b.pid}").st_ino,
                  "found": [ns.pid for ns in found if ns.inode == b_net]}))
b.kill(); b.wait()
"""


def test_a_reused_pid_is_asked_again():
    res = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                          REUSE, REPO], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["pid_b"] == got["pid_a"], f"ns_last_pid did not make the pid reused: {got}"
    assert got["b_ino"] != got["a_ino"], f"a reused pid kept its /proc inode: {got}"
    assert got["found"] == [got["pid_b"]], f"the new process's namespace was missed: {got}"
