"""The pod view keeps each namespace's /proc/<pid>/net files open between scrapes: what that
costs the kernel (a held namespace) and how it is bounded, against the real kernel.

An open procfs net file holds its network namespace (the kernel takes a reference at open),
so a pod whose last process exited lives on while the exporter keeps its files.  The witness
is the one an SRE would see: a veth pair with one end in the "pod" namespace and the other in
a second namespace made here; the kernel deletes the pair only when the pod namespace is
freed.  The pod namespace is an ``unshare -n`` process's (no bind mount), so nothing but
that process and the exporter's files hold it.

Run as root: ``python -m pytest tests/integration/test_podview_keep_open.py``.
"""
from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers.netns import inside_netns, netns, run
from tests.helpers.podview import Scraper, series

assert os.geteuid() == 0, "these tests need root (network namespaces)"
ROOMY = "--collector.netns.timeout=15s"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class UnsharedPod:
    """A process in a network namespace of its own, with one end of a veth pair (the other
    end, ``peer_if``, in namespace ``peer``)."""

    def __init__(self, peer: str, tag: str):
        self.proc = subprocess.Popen(["unshare", "-n", "sleep", "120"])
        own = os.readlink("/proc/self/ns/net")
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end:
            try:
                if os.readlink(f"/proc/{self.proc.pid}/ns/net") != own:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        self.inode = int(os.readlink(f"/proc/{self.proc.pid}/ns/net")[5:-1])
        self.peer, self.peer_if, self.pod_if = peer, f"nnko{tag}0", f"nnko{tag}1"
        run(["ip", "-n", peer, "link", "add", self.peer_if, "type", "veth", "peer", "name",
             self.pod_if, "netns", str(self.proc.pid)])

    def exit(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def peer_exists(self) -> bool:
        return run(["ip", "-n", self.peer, "link", "show", self.peer_if],
                   check=False).returncode == 0


def wait_for(cond, seconds: float) -> bool:
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def pod_series(out: dict, pod: UnsharedPod) -> dict:
    return series(out, "nodenet_netns_interface_receive_drops_total",
                  netns_inode=str(pod.inode), interface=pod.pod_if)


@pytest.fixture
def peer():
    with netns("nn-ko-peer") as name:
        yield name


@contextlib.contextmanager
def scraped_then_exited(peer: str, tag: str, *flags: str):
    """A pod namespace the collector has read once, whose last process has just exited:
    (pod, scraper).  Both are cleaned up afterwards."""
    pod = UnsharedPod(peer, tag)
    s = Scraper("netns", "--collector.netns", ROOMY, *flags)
    try:
        assert pod_series(s.scrape(), pod), "the unshared namespace was not found"
        pod.exit()
        yield pod, s
    finally:
        pod.exit()
        s.collector.release()


def test_a_deleted_namespace_is_let_go_at_the_next_walk(peer):
    with scraped_then_exited(peer, "a") as (pod, s):
        # its files are open here: the kernel cannot free the namespace (this is the cost)
        time.sleep(1.0)
        assert pod.peer_exists(), "the namespace was freed although its files were open"
        out = s.scrape()          # the walk no longer finds it: its files are closed now
        assert not pod_series(out, pod)
        assert wait_for(lambda: not pod.peer_exists(), 15), \
            "the namespace is still alive 15 s after the walk that no longer found it"


def test_without_a_scrape_the_files_are_closed_after_keep_open(peer):
    with scraped_then_exited(peer, "b", "--collector.netns.keep-open=1s") as (pod, _s):
        t0 = time.monotonic()
        assert wait_for(lambda: not pod.peer_exists(), 15), \
            "no scrape, keep-open 1s: the namespace is still held after 15 s"
        assert time.monotonic() - t0 >= 0.5, "freed before keep-open ended: nothing was held"


def test_keep_open_0_holds_nothing_after_the_scrape(peer):
    with scraped_then_exited(peer, "c", "--collector.netns.keep-open=0") as (pod, _s):
        assert wait_for(lambda: not pod.peer_exists(), 15), \
            "keep-open 0: the namespace outlived its last process"


def test_kept_files_follow_the_counters():
    """Scrape, then more drops in the pod, then scrape: the kept files give the new value
    (the parse of an unchanged file is reused; a changed one is parsed again)."""
    with netns("nn-ko-udp") as ns:
        with inside_netns(ns):
            srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256)
            srv.bind(("127.0.0.1", 5353))
            cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "120"])
        s = Scraper("netns", "--collector.netns", ROOMY)
        try:
            assert wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/net")
                            == f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]", 10)
            inode = str(os.stat(f"/run/netns/{ns}").st_ino)

            def scraped() -> float:
                got = series(s.scrape(), "nodenet_netns_udp_receive_buffer_errors_total",
                             netns_inode=inode, family="ipv4")
                assert len(got) == 1, got
                return next(iter(got.values()))

            def own() -> int:
                with open(f"/proc/{holder.pid}/net/snmp") as fh:
                    rows = [ln.split() for ln in fh if ln.startswith("Udp:")]
                return int(dict(zip(rows[0][1:], rows[1][1:], strict=True))["RcvbufErrors"])

            values = []
            for _ in range(3):
                for _ in range(200):
                    cli.sendto(b"x" * 512, ("127.0.0.1", 5353))
                values.append((scraped(), own()))
            assert [v for v, _ in values] == [w for _, w in values], values
            assert values[0][0] > 0 and values[0][0] < values[1][0] < values[2][0], values
            assert scraped() == values[2][0]   # nothing sent: the same (reused) value
        finally:
            holder.kill()
            holder.wait()
            s.collector.release()
            srv.close()
            cli.close()


CHILD = r"""
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[2])))
from tests.helpers.podview import Scraper, series
s = Scraper("netns", "--collector.netns", "--collector.netns.timeout=15s")
runs = [s.scrape() for _ in range(2)]
inodes = [sorted({dict(k[1])["netns_inode"] for k in out
                  if k[0] == "nodenet_netns_tcp_timewait_sockets"}) for out in runs]
print(json.dumps({"inodes": inodes, "logs": [r.get("event") for r in s.logs()],
                  "kept": len(s.collector._open)}))
"""


def test_out_of_file_descriptors_every_namespace_is_still_read():
    """Soft = hard RLIMIT_NOFILE 64 (the limit cannot be raised): 20 namespaces need about
    120 kept files; those beyond the limit are read anew each scrape, none is lost."""
    procs = [subprocess.Popen(["unshare", "-n", "sleep", "120"]) for _ in range(20)]
    try:
        own = os.readlink("/proc/self/ns/net")
        assert wait_for(lambda: all(os.readlink(f"/proc/{p.pid}/ns/net") != own
                                    for p in procs), 10)
        ours = {os.readlink(f"/proc/{p.pid}/ns/net")[5:-1] for p in procs}
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert hard >= 64
        res = subprocess.run([sys.executable, "-c", CHILD, REPO, "64"], capture_output=True,
                             text=True, timeout=120, cwd=REPO)
        assert res.returncode == 0, res.stderr[-2000:]
        import json
        got = json.loads(res.stdout.strip().splitlines()[-1])
        for inodes in got["inodes"]:
            assert ours <= set(inodes), f"namespaces lost: {sorted(ours - set(inodes))}"
        assert 0 < got["kept"] < 20, got["kept"]
        said = [e for e in got["logs"] if e and "cannot keep namespace files open" in e]
        assert len(said) == 1, got["logs"]
    finally:
        for p in procs:
            p.kill()
            p.wait()
