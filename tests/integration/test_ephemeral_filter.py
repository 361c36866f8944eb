"""The ephemeral-port walk's kernel-side filter on real sockets, in a namespace made here, with
`ss -tan` as the witness (its rows filtered by port in Python, not by the kernel).

The walk asks the kernel to run an inet_diag program ("lo <= local port <= hi") over every
TCP socket, in one TCPDIAG_GETSOCK dump of both families, or, if a kernel refuses that, in one
SOCK_DIAG_BY_FAMILY dump per family.  Here: the kernel accepts our program on both paths and
refuses a broken one (so acceptance means it was audited), and what comes back is exactly
ss's in-range sockets: clients of both families, TIME_WAIT included; not the servers' side
(port 9090), not a client bound to a port below the range, not a listener inside it.

Run as root: ``python -m pytest tests/integration/test_ephemeral_filter.py``.
"""
from __future__ import annotations

import errno
import shutil
import socket
import struct
import subprocess
import time

import pytest

from exporter.sources import netlink as nl
from exporter.sources import sockdiag as sd
from tests.helpers.netns import inside_netns, netns, run

LO, HI = 40000, 40099
V4_CLIENTS, V6_CLIENTS, TIME_WAITS = 30, 5, 4


def ss_rows(ns: str) -> list[tuple[str, str, int, str]]:
    """(state, local address, local port, peer address:port) of every TCP socket, from
    `ss -tanH` (all states), addresses without brackets as the exporter labels them."""
    out = []
    for line in run(["ss", "-tanH"], netns=ns).stdout.splitlines():
        state, _rq, _sq, local, peer = line.split()[:5]
        addr, _, port = local.rpartition(":")
        out.append((state, addr.strip("[]"), int(port), peer))
    return out


def hold_sockets(keep: list) -> None:
    """In the current namespace: servers on 9090 (IPv4) and 9091 (IPv6), outside the range;
    clients to each (ports from the range); a client bound to port 5555 (below it); a
    listener on a port inside it; clients to 9092 that closed first (TIME_WAIT)."""
    srv4 = socket.socket()
    srv4.bind(("127.0.0.1", 9090))
    srv4.listen(128)
    srv6 = socket.socket(socket.AF_INET6)
    srv6.bind(("::1", 9091))
    srv6.listen(128)
    inside = socket.socket()
    inside.bind(("127.0.0.1", HI - 1))
    inside.listen(1)
    keep += [srv4, srv6, inside]
    for family, addr, n in ((socket.AF_INET, ("127.0.0.1", 9090), V4_CLIENTS),
                            (socket.AF_INET6, ("::1", 9091), V6_CLIENTS)):
        for _ in range(n):
            c = socket.socket(family)
            c.connect(addr)
            keep.append(c)
    below = socket.socket()
    below.bind(("127.0.0.1", 5555))
    below.connect(("127.0.0.1", 9090))
    keep.append(below)
    srv_tw = socket.socket()
    srv_tw.bind(("127.0.0.1", 9092))
    srv_tw.listen(8)
    for _ in range(TIME_WAITS):   # the client closes first: its side waits in TIME_WAIT
        c = socket.socket()
        c.connect(("127.0.0.1", 9092))
        s, _ = srv_tw.accept()
        c.close()
        time.sleep(0.05)
        s.close()
    srv_tw.close()
    srv4.setblocking(False)
    try:
        while True:
            keep.append(srv4.accept()[0])
    except BlockingIOError:
        pass


class CompatRefused:
    """The real kernel, except that a TCPDIAG_GETSOCK request is answered EINVAL as a kernel
    without it would: the walk's per-family path, on real sockets."""

    def __init__(self):
        self.inner = nl.KernelTransport(nl.NETLINK_SOCK_DIAG)
        self.queue: list = []

    def send(self, data: bytes) -> None:
        if struct.unpack_from("=H", data, 4)[0] == sd.TCPDIAG_GETSOCK:
            seq = struct.unpack_from("=I", data, 8)[0]
            err = nl.message(nl.NLMSG_ERROR, 0, seq, struct.pack("=i", -errno.EINVAL) + data[:16])
            self.queue.append((err, 0))
        else:
            self.inner.send(data)

    def recv(self):
        if self.queue:
            return [self.queue.pop(0)]
        return self.inner.recv()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def world():
    keep: list = []
    with netns("nn-ephfilter") as ns:
        run(["sysctl", "-qw", f"net.ipv4.ip_local_port_range={LO} {HI}"], netns=ns)
        try:
            with inside_netns(ns):
                hold_sockets(keep)
                with nl.NetlinkSocket(nl.NETLINK_SOCK_DIAG) as sock:
                    walked = sd.ephemeral_walk(sock, LO, HI)
                    v2, _ = sd.dump(sock, socket.IPPROTO_TCP, sd.TCPF_CONNECTIONS,
                                    bytecode=sd.local_port_filter(LO, HI))
                    unfiltered, _ = sd.dump(sock, socket.IPPROTO_TCP, sd.TCPF_CONNECTIONS)
                    broken = []
                    for program in (sd.local_port_filter(LO, HI)[:12],      # op without port
                                    struct.pack("=BBH", sd.INET_DIAG_BC_S_GE, 8, 24)
                                    + struct.pack("=BBH", 0, 0, LO)):      # jump past the end
                        for mtype, payload in (
                                (sd.TCPDIAG_GETSOCK,
                                 sd.request_both_families(sd.TCPF_CONNECTIONS, program)),
                                (sd.SOCK_DIAG_BY_FAMILY,
                                 sd.request(socket.AF_INET, socket.IPPROTO_TCP,
                                            sd.TCPF_CONNECTIONS, 0, program))):
                            try:
                                sock.dump(mtype, payload)
                                broken.append("accepted")
                            except nl.NetlinkError as exc:
                                broken.append(exc.errno)
                with nl.NetlinkSocket(nl.NETLINK_SOCK_DIAG, transport=CompatRefused()) as sock:
                    per_family = sd.ephemeral_walk(sock, LO, HI)
            rows = ss_rows(ns)
        finally:
            for s in keep:
                s.close()
    return {"walked": walked, "per_family": per_family, "v2": v2, "unfiltered": unfiltered,
            "broken": broken, "ss": rows}


def witness_groups(rows) -> dict[tuple[str, str], int]:
    groups: dict[tuple[str, str], int] = {}
    for state, addr, port, peer in rows:
        if state != "LISTEN" and LO <= port <= HI:
            groups[(addr, peer)] = groups.get((addr, peer), 0) + 1
    return groups


def test_the_walk_counts_what_ss_shows_in_the_range_both_families_and_time_wait(world):
    want = witness_groups(world["ss"])
    assert want == {("127.0.0.1", "127.0.0.1:9090"): V4_CLIENTS,
                    ("::1", "[::1]:9091"): V6_CLIENTS,
                    ("127.0.0.1", "127.0.0.1:9092"): TIME_WAITS}, world["ss"]
    assert [r[3] for r in world["ss"] if r[0] == "TIME-WAIT"] == ["127.0.0.1:9092"] * TIME_WAITS
    groups, complete = world["walked"]
    assert complete and groups == want


def test_a_kernel_refusing_the_two_family_dump_gets_the_same_answer_per_family(world):
    assert world["per_family"] == world["walked"]


def test_the_kernel_filter_returns_only_the_range_and_the_rest_exists(world):
    in_range = sorted(port for state, _a, port, _p in world["ss"]
                      if state != "LISTEN" and LO <= port <= HI)
    assert sorted(s.sport for s in world["v2"]) == in_range
    ports = {s.sport for s in world["unfiltered"]}
    # what the filter left out is really there: the servers' side, the client bound below
    assert {9090, 9091, 5555} <= ports
    assert len(world["unfiltered"]) == len([r for r in world["ss"] if r[0] != "LISTEN"])
    assert len(world["unfiltered"]) > len(world["v2"]) == len(in_range) > 0


def test_the_kernel_audits_programs_and_refuses_broken_ones(world):
    # an op whose port is missing, a jump beyond length + 4: EINVAL from inet_diag_bc_audit,
    # on both request types, so the accepted program above was audited too
    assert world["broken"] == [errno.EINVAL] * 4


def ss_program(expression: str) -> bytes:
    """The inet_diag program ss sends for a filter expression, read from its sendmsg with
    strace (``-e write=``: a hex dump per iovec; the program follows the 4-byte
    INET_DIAG_REQ_BYTECODE attribute header)."""
    assert shutil.which("strace"), "strace is needed to read the program ss sends"
    res = subprocess.run(["strace", "-e", "trace=sendmsg", "-e", "write=3", "ss", "-tanH",
                          expression], capture_output=True, text=True, check=True, timeout=30)
    chunks: list[bytes] = []
    for line in res.stderr.splitlines():
        if not line.startswith(" | "):
            continue
        offset, _, rest = line[3:].partition("  ")
        data = bytes.fromhex(rest[:49].replace(" ", ""))
        if int(offset, 16) == 0:
            chunks.append(data)
        else:
            chunks[-1] += data
    attr = struct.pack("=HH", 4 + 4 * 4, sd.INET_DIAG_REQ_BYTECODE)
    programs = [chunks[i + 1] for i, c in enumerate(chunks[:-1]) if c == attr]
    assert programs, res.stderr[-2000:]
    return programs[0]


def test_our_program_is_the_one_ss_compiles_for_the_same_range():
    assert sd.local_port_filter(LO, HI) == ss_program(f"sport >= :{LO} and sport <= :{HI}")
    assert sd.local_port_filter(1024, 65535) == ss_program("sport >= :1024 and sport <= :65535")


def test_an_empty_range_matches_nothing_and_is_accepted():
    """lo > hi (a fixture's sysctl): a valid program that no socket passes, as the range's
    Python check did before the kernel filtered."""
    keep: list = []
    with netns("nn-ephfilter") as ns:
        try:
            with inside_netns(ns):
                hold_sockets(keep)
                with nl.NetlinkSocket(nl.NETLINK_SOCK_DIAG) as sock:
                    assert sd.ephemeral_walk(sock, 1, 65535)[0]   # there are sockets ...
                    assert sd.ephemeral_walk(sock, HI, LO) == ({}, True)   # ... none pass
        finally:
            for s in keep:
                s.close()
