"""exporter.sources.recvmmsg against the real kernel: a generic-netlink family dump (the
request the IPVS reader starts with) read with recvmmsg batches and with one recvmsg per
datagram gives the same datagrams; the receive timeout surfaces as BlockingIOError on both."""
import socket
import struct

import pytest

from exporter.sources import ipvs, recvmmsg


def _dump_families(batched: bool, size: int = 4096) -> list:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ipvs.NETLINK_GENERIC)
    try:
        s.bind((0, 0))
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
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ipvs.NETLINK_GENERIC)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 50_000))
        s.bind((0, 0))
        with pytest.raises(BlockingIOError):
            recvmmsg.receiver(s, 4096, batched=batched).recv()
    finally:
        s.close()


def test_ipvs_socket_resolves_families_with_either_receiver(monkeypatch):
    ids = {}
    for batched in (True, False):
        monkeypatch.setattr(recvmmsg, "BATCHED", batched)
        with ipvs._GenlSocket(2.0, 1 << 16) as sock:
            assert isinstance(sock.rx, recvmmsg._Single) != batched
            ids[batched] = (sock.family_id("nlctrl"), sock.family_id("no-such-family"))
    assert ids[True] == ids[False] == (ipvs.GENL_ID_CTRL, None)


@pytest.mark.parametrize("batched", [True, False])
def test_a_datagram_larger_than_the_buffer_is_flagged_truncated(batched):
    """The IPVS reader refuses truncated replies (MSG_TRUNC): both receivers must report it."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ipvs.NETLINK_GENERIC)
    try:
        s.bind((0, 0))
        req = bytes((ipvs.CTRL_CMD_GETFAMILY, 1, 0, 0))
        s.send(struct.pack("=IHHII", 16 + len(req), ipvs.GENL_ID_CTRL,
                           ipvs.NLM_F_REQUEST | ipvs.NLM_F_DUMP, 1, 0) + req)
        data, flags = recvmmsg.receiver(s, 64, batched=batched).recv()[0]
        assert flags & socket.MSG_TRUNC and len(data) == 64
    finally:
        s.close()
