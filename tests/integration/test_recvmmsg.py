"""exporter.sources.recvmmsg against the real kernel: a generic-netlink family dump (the
request the IPVS reader starts with) read with recvmmsg batches and with one recvmsg per
datagram gives the same datagrams; the receive timeout surfaces as BlockingIOError on both.
The sockets are netlink.KernelTransport's (the exporter's one netlink socket)."""
import socket
import struct

import pytest

from exporter.sources import ParseError, ipvs, recvmmsg
from exporter.sources import netlink as nl


def _raw(timeout: float = 2.0) -> socket.socket:
    return nl.KernelTransport(nl.NETLINK_GENERIC, timeout).sock


def _dump_families(batched: bool, size: int = 4096) -> list:
    s = _raw()
    try:
        rx = recvmmsg.receiver(s, size, batched=batched)
        req = bytes((ipvs.CTRL_CMD_GETFAMILY, 1, 0, 0))
        s.send(struct.pack("=IHHII", 16 + len(req), ipvs.GENL_ID_CTRL,
                           ipvs.NLM_F_REQUEST | ipvs.NLM_F_DUMP, 1, 0) + req)
        out, calls = [], 0
        while True:
            batch = rx.recv()
            calls += 1
            for data, flags in batch:
                assert not flags & socket.MSG_TRUNC
                out.append(data)
            if any(struct.unpack_from("=H", d, 4)[0] == ipvs.NLMSG_DONE for d, _ in batch):
                return out, calls
            assert calls < 1000
    finally:
        s.close()


def _names(datagrams) -> list:
    names = []
    for d in datagrams:
        for s, e in ipvs.iter_genl_payloads(d):
            a = ipvs._nlas(d, s, e)
            if ipvs.CTRL_ATTR_FAMILY_NAME in a:
                ns, ne = a[ipvs.CTRL_ATTR_FAMILY_NAME]
                names.append(d[ns:ne].rstrip(b"\0").decode())
    return names


def test_batched_and_single_receive_the_same_dump():
    assert recvmmsg.BATCHED, "recvmmsg not reachable through ctypes on this machine"
    single, single_calls = _dump_families(False)
    batched, batched_calls = _dump_families(True)
    # at least the data and NLMSG_DONE, which the kernel sends in a datagram of its own (as
    # after each IPVS service's destinations): the batch takes both in one call
    assert len(single) >= 2
    assert _names(single) == _names(batched)
    assert "nlctrl" in _names(single)
    assert [len(d) for d in single] == [len(d) for d in batched]
    assert single_calls == len(single)          # one datagram per recvmsg
    assert batched_calls < single_calls          # several per recvmmsg


@pytest.mark.parametrize("batched", [True, False])
def test_receive_timeout_raises_blocking_io_error(batched):
    s = _raw(0.05)
    try:
        with pytest.raises(BlockingIOError):
            recvmmsg.receiver(s, 4096, batched=batched).recv()
    finally:
        s.close()


def test_netlink_socket_resolves_families_with_either_receiver(monkeypatch):
    ids = {}
    for batched in (True, False):
        monkeypatch.setattr(recvmmsg, "BATCHED", batched)
        with nl.NetlinkSocket(nl.NETLINK_GENERIC) as sock:
            assert isinstance(sock.transport.rx, recvmmsg._Single) != batched
            got = nl.resolve_family(sock, "nlctrl")
            ids[batched] = (got.id if got else None, nl.resolve_family(sock, "no-such-family"))
    assert ids[True] == ids[False] == (ipvs.GENL_ID_CTRL, None)


@pytest.mark.parametrize("batched", [True, False])
def test_netlink_socket_refuses_a_truncated_datagram(batched):
    with nl.NetlinkSocket(nl.NETLINK_GENERIC, recv_size=64, batched=batched) as sock:
        with pytest.raises(ParseError, match="larger than the receive buffer"):
            nl.genl_families(sock)


@pytest.mark.parametrize("batched", [True, False])
def test_a_datagram_larger_than_the_buffer_is_flagged_truncated(batched):
    """The IPVS reader refuses truncated replies (MSG_TRUNC): both receivers must report it."""
    s = _raw()
    try:
        req = bytes((ipvs.CTRL_CMD_GETFAMILY, 1, 0, 0))
        s.send(struct.pack("=IHHII", 16 + len(req), ipvs.GENL_ID_CTRL,
                           ipvs.NLM_F_REQUEST | ipvs.NLM_F_DUMP, 1, 0) + req)
        data, flags = recvmmsg.receiver(s, 64, batched=batched).recv()[0]
        assert flags & socket.MSG_TRUNC and len(data) == 64
    finally:
        s.close()
