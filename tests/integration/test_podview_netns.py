"""The pod view (collector netns) against the real kernel: two "pod" namespaces made here.

Pod A holds a never-accepting listener (backlog 1, 20 connections), pod B a never-read UDP
socket on port 53 with the smallest receive buffer (500 datagrams).  Each holds a long-lived
process, so the exporter finds it both through /run/netns and /proc/<pid>/ns/net.  Witness:
the namespace's own /proc/<pid>/net files read (by this test's own parsing) just before and
after the scrape.  Privilege: the discovery is run again as uid 0 with only the podview
component's capabilities (setpriv), with pod B's process under another uid (65535).

Run as root: ``python -m pytest tests/integration/test_podview_netns.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.netns import netns, run
from tests.helpers.nsproc import NsProcess
from tests.helpers.podview import Scraper, series, value

HERE = os.path.dirname(os.path.abspath(__file__))
POD = os.path.join(HERE, "podview_pod.py")
REPO = os.path.dirname(os.path.dirname(HERE))

assert os.geteuid() == 0, "these tests need root (network namespaces)"
# the machine's other namespaces are walked too: a budget that a loaded host cannot exhaust
# (the budget itself is tested on its own below)
ROOMY = "--collector.netns.timeout=15s"


CGROUP = "/sys/fs/cgroup/freezer"   # a v1 hierarchy on this machine; nothing is frozen


class Pod:
    def __init__(self, ns: str, scenario: str, uid: int | None = None, pod_uid: str = ""):
        args = [sys.executable, POD, scenario] + ([str(uid)] if uid is not None else [])
        self.ns = ns
        self.proc = NsProcess(args, ns)
        assert self.proc.first_line == "ready", f"pod process in {ns}: {self.proc.first_line!r}"
        self.pid = self.proc.pid
        self.inode = os.stat(f"/run/netns/{ns}").st_ino
        self.pod_uid, self.cgroup = pod_uid, ""
        if pod_uid:   # a kubelet-like cgroup path: .../pod<uid>/ (removed in stop())
            assert os.path.isdir(CGROUP), f"{CGROUP} is needed to give the pod a pod UID"
            self.cgroup = os.path.join(CGROUP, f"nn-kubepods-{os.getpid()}", f"pod{pod_uid}")
            os.makedirs(self.cgroup)
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as fh:
                fh.write(str(self.pid))

    def mib(self, file: str, section: str, field: str) -> int:
        """An independent read of the pod's own /proc/<pid>/net/<file> (header/value pairs)."""
        with open(f"/proc/{self.pid}/net/{file}") as fh:
            rows = [ln.split() for ln in fh if ln.startswith(section + ":")]
        return int(dict(zip(rows[0][1:], rows[1][1:], strict=True))[field])

    def stop(self) -> None:
        self.proc.stop()
        if self.cgroup:
            os.rmdir(self.cgroup)
            os.rmdir(os.path.dirname(self.cgroup))
            self.cgroup = ""


B_UID = "0b5e7c1a-1d2e-4f00-9a55-000000000015"


@pytest.fixture(scope="module")
def pods():
    with netns("nn-pod-a") as a, netns("nn-pod-b") as b:
        pa = Pod(a, "listen")
        pb = Pod(b, "udp", uid=65535, pod_uid=B_UID)
        try:
            yield pa, pb
        finally:
            pa.stop()
            pb.stop()


def test_pod_counters_equal_each_pods_own_proc_files(pods):
    pa, pb = pods
    s = Scraper("netns", "--collector.netns", ROOMY)
    a_before = pa.mib("netstat", "TcpExt", "ListenOverflows")
    b_before = pb.mib("snmp", "Udp", "RcvbufErrors")
    out = s.scrape()
    a_after = pa.mib("netstat", "TcpExt", "ListenOverflows")
    b_after = pb.mib("snmp", "Udp", "RcvbufErrors")
    got_a = value(out, "nodenet_netns_tcp_listen_overflows_total", netns=pa.ns,
                  netns_inode=str(pa.inode), pod_uid="")
    assert got_a is not None, f"pod A missing: {sorted(k for k in out if pa.ns in str(k))[:5]}"
    assert a_before > 0, "the backlog-1 listener did not overflow in pod A"
    assert a_before <= got_a <= a_after
    got_b = value(out, "nodenet_netns_udp_receive_buffer_errors_total", netns=pb.ns,
                  netns_inode=str(pb.inode), pod_uid=B_UID, family="ipv4")
    assert b_before >= 400, f"only {b_before} receive buffer errors in pod B"
    assert got_b == b_before == b_after
    # pod B's listen overflows are its own (0), not A's, and A's UDP errors are A's (0)
    assert value(out, "nodenet_netns_tcp_listen_overflows_total", netns=pb.ns,
                 netns_inode=str(pb.inode), pod_uid=B_UID) == pb.mib("netstat", "TcpExt",
                                                                     "ListenOverflows") == 0
    assert value(out, "nodenet_netns_udp_receive_buffer_errors_total", netns=pa.ns,
                 netns_inode=str(pa.inode), pod_uid="", family="ipv4") == 0
    # the exporter's own namespace: the node collector reads its own counter, not the pods'
    own_before = _own_listen_overflows()
    node = Scraper("netstat").scrape()
    own_after = _own_listen_overflows()
    assert own_before <= value(node, "nodenet_tcp_listen_overflows_total") <= own_after
    # ... and the pod view leaves it out
    own = str(os.stat("/proc/self/ns/net").st_ino)
    assert not series(out, "nodenet_netns_tcp_listen_overflows_total", netns_inode=own)
    # at most 16 series per namespace (the pods have lo only: 12 here)
    per_a = [k for k in out if dict(k[1]).get("netns") == pa.ns]
    assert 9 <= len(per_a) <= 16, per_a
    found = value(out, "nodenet_netns_namespaces")
    assert found is not None and found >= 2


def _own_listen_overflows() -> int:
    with open("/proc/self/net/netstat") as fh:
        rows = [ln.split() for ln in fh if ln.startswith("TcpExt:")]
    return int(dict(zip(rows[0][1:], rows[1][1:], strict=True))["ListenOverflows"])


def test_node_counters_stay_apart_from_the_pods(pods):
    """The node's own netstat collector reads the exporter's namespace only: in a fresh
    namespace of its own, the node counters are that namespace's (0), not the pods'."""
    pa, _ = pods
    with netns("nn-pod-own") as own:
        code = (f"import json,sys; sys.path.insert(0, {REPO!r})\n"
                "from tests.helpers.podview import Scraper\n"
                "out = Scraper('netstat').scrape()\n"
                "print(json.dumps([[k[0], dict(k[1]), v] for k, v in out.items()]))")
        res = run([sys.executable, "-c", code], netns=own)
        rows = json.loads(res.stdout)
        lo = [v for n, _, v in rows if n == "nodenet_tcp_listen_overflows_total"]
        witness = run(["cat", "/proc/net/netstat"], netns=own).stdout
        assert lo == [0] and " ListenOverflows" in witness
    assert pa.mib("netstat", "TcpExt", "ListenOverflows") > 0


def test_a_namespace_deleted_while_scraping_disappears(pods):
    from tests.helpers.exporter_proc import ExporterProcess, parse_samples

    def held(pid: int) -> list[str]:
        """The exporter's fds on files of the gone pod's process (kept between scrapes)."""
        out = []
        for fd in os.listdir(f"/proc/{ex.proc.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{ex.proc.pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(f"/proc/{pid}/"):
                out.append(target)
        return out

    with netns("nn-pod-gone") as gone:
        pg = Pod(gone, "idle")
        statuses, present, held_at = [], [], {}
        with ExporterProcess(["--collector.netns", ROOMY, "--collector.timeout=20s"]) as ex:
            for i in range(100):
                if i == 40:
                    pg.stop()
                    run(["ip", "netns", "del", gone])
                status, body, _ = ex.get("/metrics")
                statuses.append(status)
                samples = parse_samples(body.decode())
                present.append(any(dict(k[1]).get("netns") == gone for k in samples))
                if i in (0, 39, 42, 99):
                    held_at[i] = held(pg.pid)
                if i == 0:
                    assert samples[("nodenet_scrape_collector_success",
                                    frozenset({("collector", "netns")}))] == 1
    assert statuses == [200] * 100
    assert all(present[:40]) and not any(present[42:]), present
    # its files were kept while it lived, and let go once a walk no longer found it
    assert len(held_at[0]) >= 6 and held_at[39] == held_at[0], held_at
    assert held_at[42] == [] and held_at[99] == [], held_at


CAPS = "net_admin"


def scrape_with_caps(caps: str, *argv: str) -> tuple[list, list]:
    """The netns collector run as uid 0 with only `caps` (effective, bounding: setpriv)."""
    code = (f"import json,sys; sys.path.insert(0, {REPO!r})\n"
            "from tests.helpers.podview import Scraper\n"
            f"s = Scraper('netns', '--collector.netns', {ROOMY!r}, *sys.argv[1:])\n"
            "s.collector.run(); out = s.scrape()\n"
            "print(json.dumps({'out': [[k[0], dict(k[1]), v] for k, v in out.items()],"
            " 'logs': s.logs()}))")
    res = subprocess.run(["setpriv", f"--inh-caps=-all,+{caps}", f"--ambient-caps=-all,+{caps}",
                          f"--bounding-set=-all,+{caps}", sys.executable, "-c", code, *argv],
                         capture_output=True, text=True, timeout=60, check=True)
    data = json.loads(res.stdout)
    return data["out"], data["logs"]


def pick(rows, name, **labels):
    return [v for n, lv, v in rows if n == name and all(lv.get(k) == x for k, x in labels.items())]


def test_with_only_net_admin_another_uids_ns_link_is_refused_but_its_files_are_read(pods):
    pa, pb = pods
    # the measured fact the design rests on (as uid 0 with only CAP_NET_ADMIN)
    probe = ("import os,sys; p=sys.argv[1]\n"
             "try: os.readlink(f'/proc/{p}/ns/net'); print('link ok')\n"
             "except PermissionError: print('link refused')\n"
             "print(os.stat(f'/proc/{p}/net/dev').st_ino, len(open(f'/proc/{p}/net/snmp').read()))")
    res = subprocess.run(["setpriv", "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
                          "--bounding-set=-all,+net_admin", sys.executable, "-c", probe,
                          str(pb.pid)], capture_output=True, text=True, check=True)
    lines = res.stdout.split("\n")
    assert lines[0] == "link refused"
    assert int(lines[1].split()[0]) == os.stat(f"/proc/{pb.pid}/net/dev").st_ino
    assert int(lines[1].split()[1]) > 100

    # the collector (no /run/netns, as the podview component): pod B (uid 65535, a pod UID)
    # read through /proc/<pid>/net with netns_inode ""; pod A's process (root with every
    # capability: also refused without CAP_SYS_PTRACE) has no pod UID: counted, not guessed
    empty = f"/tmp/nn-podview-empty-{os.getpid()}"
    os.makedirs(empty, exist_ok=True)
    try:
        rows, logs = scrape_with_caps(CAPS, f"--collector.netns.dirs={empty}")
    finally:
        os.rmdir(empty)
    b_now = pb.mib("snmp", "Udp", "RcvbufErrors")
    assert pick(rows, "nodenet_netns_udp_receive_buffer_errors_total", netns="",
                netns_inode="", pod_uid=B_UID, family="ipv4") == [b_now]
    assert not pick(rows, "nodenet_netns_tcp_listen_overflows_total", netns_inode=str(pa.inode))
    identity = pick(rows, "nodenet_netns_unread", reason="identity")
    assert identity and identity[0] >= 1
    assert pick(rows, "nodenet_netns_inode_unknown")[0] >= 1
    said = [r for r in logs if "CAP_SYS_PTRACE" in r["event"]]
    assert len(said) == 1, logs    # two collections, one log line

    # with CAP_SYS_PTRACE added, pod B is seen with its inode
    rows, logs = scrape_with_caps(CAPS + ",+sys_ptrace")
    assert pick(rows, "nodenet_netns_tcp_listen_overflows_total", netns_inode=str(pa.inode))
    got = pick(rows, "nodenet_netns_udp_receive_buffer_errors_total", netns_inode=str(pb.inode),
               pod_uid=B_UID, family="ipv4")
    assert got == [pb.mib("snmp", "Udp", "RcvbufErrors")]
    # (other processes of the machine - helpers' containers - may still be refused: the
    # pods made here are not among them)
    assert not pick(rows, "nodenet_netns_udp_receive_buffer_errors_total", netns_inode="",
                    pod_uid=B_UID)


def test_bind_mount_only_namespace_read_by_setns_or_counted_unread():
    with netns("nn-pod-mnt") as mnt:
        inode = str(os.stat(f"/run/netns/{mnt}").st_ino)
        rows, _ = scrape_with_caps("net_admin,+sys_admin")
        assert pick(rows, "nodenet_netns_tcp_timewait_sockets", netns=mnt, netns_inode=inode) == [0]
        rows, logs = scrape_with_caps("net_admin")
        assert not pick(rows, "nodenet_netns_tcp_timewait_sockets", netns=mnt)
        assert pick(rows, "nodenet_netns_unread", reason="setns")[0] >= 1
        assert len([r for r in logs if "setns needs CAP_SYS_ADMIN" in r["event"]]) == 1


def test_time_budget_gives_honest_partial_results(pods):
    """A budget of 1 us is spent by the discovery itself: nothing is read, all is counted."""
    del pods   # the two pods are among what is found
    s = Scraper("netns", "--collector.netns", "--collector.netns.timeout=0.001ms")
    out = s.scrape()
    assert value(out, "nodenet_netns_partial") == 1
    found = value(out, "nodenet_netns_namespaces")
    assert found >= 2
    unread = sum(series(out, "nodenet_netns_unread").values())
    assert value(out, "nodenet_netns_unread", reason="time_budget") >= 2
    assert unread == found    # every namespace found is accounted for, none exported
    assert not series(out, "nodenet_netns_tcp_listen_overflows_total")
    full = Scraper("netns", "--collector.netns", ROOMY).scrape()
    assert value(full, "nodenet_netns_partial") == 0
    assert value(full, "nodenet_netns_unread", reason="time_budget") == 0


def test_pod_sockets_inside_each_namespace(pods):
    pa, pb = pods
    s = Scraper("netns", "--collector.netns", "--collector.netns.sockets", ROOMY)
    out = s.scrape()
    ss = [ln.split() for ln in run(["ss", "-ltnH"], netns=pa.ns).stdout.splitlines()
          if "127.0.0.1:8080" in ln]
    head_a = {"netns": pa.ns, "netns_inode": str(pa.inode), "pod_uid": ""}
    assert value(out, "nodenet_netns_tcp_listen_queue_length", address="127.0.0.1",
                 port="8080", **head_a) == int(ss[0][1])
    assert value(out, "nodenet_netns_tcp_listen_queue_limit", address="127.0.0.1",
                 port="8080", **head_a) == int(ss[0][2]) == 1
    with open(f"/proc/{pb.pid}/net/udp") as fh:
        drops = [int(ln.split()[-1]) for ln in fh if ":0035 " in ln]
    assert drops and drops[0] >= 400
    assert value(out, "nodenet_netns_udp_socket_drops_total", address="127.0.0.1", port="53",
                 netns=pb.ns, netns_inode=str(pb.inode), pod_uid=B_UID) == drops[0]
    assert value(out, "nodenet_netns_sockets_unread") == 0
    # without CAP_SYS_ADMIN: counted and said once, the counters still there
    rows, logs = scrape_with_caps("net_admin,+sys_ptrace", "--collector.netns.sockets")
    assert not pick(rows, "nodenet_netns_tcp_listen_queue_length", netns=pa.ns)
    assert pick(rows, "nodenet_netns_tcp_listen_overflows_total", netns=pa.ns)
    assert pick(rows, "nodenet_netns_sockets_unread")[0] >= 2
    assert len([r for r in logs if "sockets of" in r["event"]]) == 1
