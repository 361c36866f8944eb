"""The sockets and netstat collectors against the real kernel, in namespaces these tests make.

Each scenario runs limits_probe.py inside a fresh namespace: it makes the namespace sick (200+
TIME_WAIT sockets, a never-accepting listener with backlog 1 and 20 connects, a never-read UDP
socket with a tiny SO_RCVBUF and 500 datagrams, incomplete fragments with the namespace's
ipfrag_time at 1 s), collects, and reads the namespace's own /proc files just before and after
the collection; `ss` and `nstat` are the second witnesses.  Nothing here touches a global
sysctl: ipfrag_time, ip_local_port_range and ip_local_reserved_ports are per namespace.

Run as root: ``python -m pytest tests/integration/test_limits_netns.py``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers.netns import netns, run

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "limits_probe.py")
REPO = os.path.dirname(os.path.dirname(HERE))

assert os.geteuid() == 0, "these tests need root (network namespaces)"
for _tool in ("ip", "ss", "nstat", "sysctl"):
    assert shutil.which(_tool), f"{_tool} (iproute2/procps) is needed as a witness"


def probe(ns: str, scenario: str, count: int = 0) -> list[dict]:
    res = run([sys.executable, PROBE, scenario, str(count)], netns=ns, timeout=120)
    return json.loads(res.stdout)


def sample(snap: dict, name: str, *labels: str):
    for lv, value in snap["samples"].get(name, []):
        if tuple(lv) == labels:
            return value
    return None


def raw_pairs(text: str, prefix: str, field: str) -> int:
    """An independent read of a header/value MIB file (not the exporter's parser)."""
    lines = [ln.split() for ln in text.splitlines() if ln.startswith(prefix + ":")]
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))[field])


def raw_sockstat(text: str, key: str, field: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            words = line.split()[1:]
            return int(dict(zip(words[::2], words[1::2], strict=True))[field])
    raise KeyError(key)


def witnessed(snap: dict, path: str, reader, *args) -> tuple[int, int]:
    return reader(snap["before"][path], *args), reader(snap["after"][path], *args)


def nstat(ns: str) -> dict:
    env = dict(os.environ, NSTAT_HISTORY=f"/tmp/nodenet-nstat-{ns}")
    res = run(["nstat", "-asz", "--json"], netns=ns, env=env)
    data = json.loads(res.stdout)
    return data.get("kernel", data)


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


@pytest.fixture
def ns():
    with netns("nn-limits") as name:
        yield name


def test_timewait_sockets_equal_the_kernels_count(ns):
    (snap,) = probe(ns, "timewait", 250)
    got = sample(snap, "nodenet_tcp_timewait_sockets")
    lo, hi = witnessed(snap, "net/sockstat", raw_sockstat, "TCP", "tw")
    assert lo == hi and got == lo, (got, lo, hi)
    assert got >= 200
    listed = run(["ss", "-Htan", "state", "time-wait"], netns=ns).stdout.strip().splitlines()
    assert len(listed) == got          # TIME_WAIT lasts 60 s: still all there
    summary = run(["ss", "-s"], netns=ns).stdout
    assert f"timewait {got})" in summary, summary
    assert sample(snap, "nodenet_tcp_timewait_sockets_limit") == int(
        run(["sysctl", "-n", "net.ipv4.tcp_max_tw_buckets"], netns=ns).stdout)


def test_listen_overflows_rise_by_the_kernels_count(ns):
    first, second = probe(ns, "listen_overflow", 20)
    for name, field in (("nodenet_tcp_listen_overflows_total", "ListenOverflows"),
                        ("nodenet_tcp_listen_drops_total", "ListenDrops")):
        for snap in (first, second):
            lo, hi = witnessed(snap, "net/netstat", raw_pairs, "TcpExt", field)
            assert lo == hi == sample(snap, name), (name, lo, hi)
    rise = (sample(second, "nodenet_tcp_listen_overflows_total")
            - sample(first, "nodenet_tcp_listen_overflows_total"))
    assert rise > 0, "20 connects to a backlog-1 listener that never accepts must overflow"
    assert sample(first, "nodenet_tcp_listen_overflows_total") == 0   # a fresh namespace
    assert nstat(ns)["TcpExtListenOverflows"] >= rise   # SYN-ACK retries may add more later


def test_udp_receive_buffer_errors_rise_by_the_kernels_count(ns):
    first, second = probe(ns, "udp_rcvbuf", 500)
    for snap in (first, second):
        for name, field in (("nodenet_udp_receive_buffer_errors_total", "RcvbufErrors"),
                            ("nodenet_udp_in_errors_total", "InErrors"),
                            ("nodenet_udp_received_datagrams_total", "InDatagrams")):
            lo, hi = witnessed(snap, "net/snmp", raw_pairs, "Udp", field)
            assert lo == hi == sample(snap, name, "ipv4"), (name, lo, hi)
    errors = sample(second, "nodenet_udp_receive_buffer_errors_total", "ipv4")
    # every datagram either sat in the tiny buffer or was dropped and counted
    assert errors > 400 and errors + second["queued"] == 500, (errors, second["queued"])
    assert nstat(ns)["UdpRcvbufErrors"] == errors


def raw_snmp6(text: str, field: str) -> int:
    return int(dict(ln.split() for ln in text.splitlines() if ln.strip())[field])


def test_reassembly_timeouts_with_the_namespaces_ipfrag_time(ns):
    run(["sysctl", "-qw", "net.ipv4.ipfrag_time=1"], netns=ns)   # this namespace's own
    run(["sysctl", "-qw", "net.ipv6.ip6frag_time=1"], netns=ns)
    first, pending, last = probe(ns, "fragments", 10)
    for family, path, key in (("ipv4", "net/sockstat", "FRAG"), ("ipv6", "net/sockstat6",
                                                                  "FRAG6")):
        held = sample(pending, "nodenet_ip_fragment_memory_bytes", family)
        lo, hi = witnessed(pending, path, raw_sockstat, key, "memory")
        assert held > 0 and lo == hi == held, (family, held, lo, hi)
        assert sample(last, "nodenet_ip_fragment_memory_bytes", family) == 0
    for name, field in (("nodenet_ip_reassembly_timeouts_total", "ReasmTimeout"),
                        ("nodenet_ip_reassembly_failures_total", "ReasmFails")):
        lo, hi = witnessed(last, "net/snmp", raw_pairs, "Ip", field)
        assert lo == hi == sample(last, name, "ipv4")
        assert sample(last, name, "ipv4") - sample(first, name, "ipv4") == 10, name
        lo, hi = witnessed(last, "net/snmp6", raw_snmp6, "Ip6" + field)
        assert lo == hi == sample(last, name, "ipv6")
        assert sample(last, name, "ipv6") - sample(first, name, "ipv6") == 10, name
    kernel = nstat(ns)
    assert kernel["IpReasmTimeout"] == 10 and kernel["Ip6ReasmTimeout"] == 10


def test_ephemeral_ports_overlap_then_reserved(ns):
    run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"], netns=ns)
    (snap,) = probe(ns, "collect")
    assert sample(snap, "nodenet_ephemeral_ports_nodeport_overlap") == 2768
    assert sample(snap, "nodenet_ephemeral_ports_range_size") == 64512
    assert sample(snap, "nodenet_ephemeral_ports_reserved") == 0
    run(["sysctl", "-qw", "net.ipv4.ip_local_reserved_ports=30000-32767"], netns=ns)
    (snap,) = probe(ns, "collect")
    assert sample(snap, "nodenet_ephemeral_ports_nodeport_overlap") == 0
    assert sample(snap, "nodenet_ephemeral_ports_reserved") == 2768
    assert sample(snap, "nodenet_ephemeral_ports_range_size") == 64512 - 2768
    # the machine's own range is untouched
    assert read("/proc/sys/net/ipv4/ip_local_reserved_ports").strip() == ""


def test_file_handles_equal_file_nr_within_the_machines_churn(ns):
    (snap,) = probe(ns, "collect")
    got = sample(snap, "nodenet_file_handles")
    lo, hi = witnessed(snap, "sys/fs/file-nr", lambda t: int(t.split()[0]))
    slack = 64 + (max(lo, hi) - min(lo, hi))   # other processes open and close files
    assert min(lo, hi) - slack <= got <= max(lo, hi) + slack, (got, lo, hi)
    assert sample(snap, "nodenet_file_handles_limit") == int(read("/proc/sys/fs/file-max"))


def test_pod_namespace_leaves_initial_only_limits_out(ns):
    (snap,) = probe(ns, "collect")
    names = set(snap["samples"])
    for name in ("nodenet_tcp_orphan_sockets_limit", "nodenet_tcp_memory_limit_bytes",
                 "nodenet_udp_memory_limit_bytes"):
        assert name not in names, name          # absent from a non-initial namespace's /proc/sys
    for name in ("nodenet_tcp_memory_bytes", "nodenet_tcp_orphan_sockets",
                 "nodenet_tcp_timewait_sockets_limit", "nodenet_ip_fragment_memory_limit_bytes"):
        assert name in names, name
    # machine-wide: the namespace sees the node's TCP memory (sockstat 'mem' pages)
    lo, hi = witnessed(snap, "net/sockstat", raw_sockstat, "TCP", "mem")
    page = os.sysconf("SC_PAGE_SIZE")
    assert lo * page <= sample(snap, "nodenet_tcp_memory_bytes") <= hi * page or lo != hi


def _ntable(text: str, key: str) -> int:
    m = re.search(rf"\b{key} (\d+)", text)
    assert m, (key, text)
    return int(m.group(1))


def test_neighbour_entries_count_permanent_entries_machine_wide(ns):
    """Permanent entries only (never thousands of ordinary ones on this machine): 50 on a
    veth in our namespace raise the machine-wide arp_cache count, which the dump read
    from inside the namespace reports as `ip -s ntable` does."""
    run(["ip", "link", "add", "nd0", "type", "veth", "peer", "name", "nd1"], netns=ns)
    run(["ip", "link", "set", "nd0", "up"], netns=ns)
    run(["ip", "addr", "add", "10.78.0.1/24", "dev", "nd0"], netns=ns)
    (base,) = probe(ns, "neighbour")
    batch = "".join(f"neigh add 10.78.0.{i + 2} lladdr 02:00:00:00:00:{i:02x} dev nd0 "
                    "nud permanent\n" for i in range(50))
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True,
                   capture_output=True)
    (snap,) = probe(ns, "neighbour")
    got = sample(snap, "nodenet_neighbour_entries", "arp_cache")
    lo, hi = _ntable(snap["ntable_before"], "entries"), _ntable(snap["ntable_after"], "entries")
    assert min(lo, hi) <= got <= max(lo, hi), (got, lo, hi)
    rise = got - sample(base, "nodenet_neighbour_entries", "arp_cache")
    assert rise >= 50 - 5, rise      # others' ordinary entries may come and go meanwhile
    assert sample(snap, "nodenet_neighbour_entries_limit", "arp_cache") == \
        _ntable(snap["ntable_after"], "thresh3")
    assert sample(snap, "nodenet_neighbour_source_info", "netlink") == 1
    # not the initial namespace: no /proc/net/stat/arp_cache, so no unresolved discards
    assert "nodenet_neighbour_unresolved_discards_total" not in snap["samples"]


def test_default_collectors_succeed_in_a_bare_namespace_as_nobody(ns):
    """Every default-on collector: success 1 in a bare namespace without any capability, the
    real exporter scraped over HTTP.  (uid 0 with an empty bounding set here, because this
    machine's Python lives under /root; test_least_privilege.py runs the same exporter as the
    image's uid 65534 through a mount shim and checks every collector there too.)"""
    from netns_netdev import Process, parse

    class Named:
        name = ns

    argv = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
            "--no-new-privs", sys.executable, "-m", "exporter",
            "--web.listen-address=127.0.0.1:19861", "--log.level=warn"]
    proc = Process(Named, argv, 19861)
    try:
        parsed = parse(proc_scrape(proc))
    finally:
        proc.stop()
    success = {dict(lb)["collector"]: v for (n, lb), v in parsed.items()
               if n == "nodenet_scrape_collector_success"}
    for name in ("sockets", "netstat"):
        assert success.get(name) == 1, success
    failing = {k: v for k, v in success.items() if v != 1}
    assert not failing, f"default collectors failing as nobody in a bare netns: {failing}"
    assert parsed[("nodenet_ephemeral_ports_range_size", ())] == 28232


def proc_scrape(proc) -> bytes:
    from netns_netdev import http_get
    status, body = http_get(proc.ns, proc.port)
    assert status == 200
    return body
