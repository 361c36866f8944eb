"""Per-socket attribution (collector sockets, sock_diag) in a namespace made here, with the
kernel's own tools as witnesses: `ss -ltn` (Recv-Q, Send-Q) and /proc/net/udp's drops column.

Run as root: ``python -m pytest tests/integration/test_sockets_attribution.py``.
"""
from __future__ import annotations

import json
import os
import sys

from tests.helpers.netns import netns, run

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "sockets_probe.py")

assert os.geteuid() == 0, "these tests need root (network namespaces)"


def probe(*args: str) -> dict:
    with netns("nn-sockdiag") as ns:
        return json.loads(run([sys.executable, PROBE, *args], netns=ns, timeout=120).stdout)


def pick(rows, name, **labels):
    return [v for n, lv, v in rows if n == name and lv == labels]


def test_listener_queue_and_udp_drops_equal_ss_and_proc_net_udp():
    data = probe()
    rows = data["samples"]
    ss = [ln.split() for ln in data["ss"].splitlines() if "127.0.0.1:7070" in ln]
    assert len(ss) == 1, data["ss"]
    recv_q, send_q = int(ss[0][1]), int(ss[0][2])
    assert send_q == 4 and recv_q >= 4
    assert pick(rows, "nodenet_tcp_listen_queue_length", address="127.0.0.1",
                port="7070") == [recv_q]
    assert pick(rows, "nodenet_tcp_listen_queue_limit", address="127.0.0.1",
                port="7070") == [send_q]
    # /proc/net/udp: local_address 0100007F:14E9 (5353), drops is the last column
    line = [ln.split() for ln in data["udp"].splitlines() if ":14E9 " in ln]
    assert len(line) == 1
    drops = int(line[0][-1])
    assert drops > 100
    assert pick(rows, "nodenet_udp_socket_drops_total", address="127.0.0.1",
                port="5353") == [drops]
    assert pick(rows, "nodenet_udp_socket_receive_buffer_bytes", address="127.0.0.1",
                port="5353")[0] > 0
    # the sender's socket is unbound-then-autobound in the ephemeral range: not a server
    assert len([r for r in rows if r[0] == "nodenet_udp_socket_drops_total"]) == 1
    assert not [r for r in rows if r[0] == "nodenet_ephemeral_ports_max_in_use"]


def test_ephemeral_ports_per_destination_in_a_narrowed_range():
    rows = probe("ephemeral")["samples"]
    assert pick(rows, "nodenet_ephemeral_ports_range_size") == [1000]
    assert pick(rows, "nodenet_ephemeral_ports_max_in_use") == [800]
    top = sorted(((v, lv["destination"], lv["source"]) for n, lv, v in rows
                  if n == "nodenet_ephemeral_ports_in_use"), reverse=True)
    assert top[0] == (800, "127.0.0.2:9090", "127.0.0.1")
    assert len(top) <= 5
    assert pick(rows, "nodenet_ephemeral_ports_partial") == [0]


def test_max_series_caps_listeners_and_udp_servers_and_says_so_once():
    data = probe("cap")
    rows = data["samples"]
    per_socket = [r for r in rows if r[0] in ("nodenet_tcp_listen_queue_length",
                                             "nodenet_udp_socket_drops_total")]
    assert len(per_socket) == 1, per_socket
    assert per_socket[0][1]["port"] == "7070"   # listeners first, then UDP servers
    said = [r for r in data["logs"] if "max-series" in r["event"]]
    assert len(said) == 1, data["logs"]
