"""sock_diag decoders, offline: inet_diag_msg bytes built here by the kernel's layout."""
from __future__ import annotations

import socket
import struct

import pytest

from exporter.sources import netlink as nl
from exporter.sources import sockdiag as sd


def diag_msg(family, state, src, sport, dst, dport, rqueue=0, wqueue=0, inode=1, mem=None):
    raw_src = socket.inet_pton(family, src).ljust(16, b"\0")
    raw_dst = socket.inet_pton(family, dst).ljust(16, b"\0")
    body = struct.pack("=BBBB", family, state, 0, 0) + struct.pack("!HH", sport, dport)
    body += raw_src + raw_dst + struct.pack("=I8s", 0, b"\0" * 8)
    body += struct.pack("=IIIII", 0, rqueue, wqueue, 0, inode)
    assert len(body) == sd.MSG_LEN
    if mem is not None:
        body += nl.attr(sd.INET_DIAG_SKMEMINFO, struct.pack("=9I", *mem))
    return nl.message(sd.SOCK_DIAG_BY_FAMILY, nl.NLM_F_MULTI, 1, body)


def test_listener_fields_and_addresses():
    data = (diag_msg(socket.AF_INET, sd.TCP_LISTEN, "127.0.0.1", 7070, "0.0.0.0", 0, 5, 4)
            + diag_msg(socket.AF_INET6, sd.TCP_LISTEN, "::", 443, "::", 0, 0, 4096)
            + nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, b"\0" * 4))
    a, b = sd.decode(data)
    assert (a.source, a.sport, a.rqueue, a.wqueue) == ("127.0.0.1", 7070, 5, 4)
    assert (b.source, b.sport, b.wqueue) == ("::", 443, 4096)


def test_udp_servers_sum_reuseport_groups_and_skip_ephemeral_and_connected():
    mem = lambda rmem, rcvbuf, drops: (rmem, rcvbuf, 0, 0, 0, 0, 0, 0, drops)
    data = b"".join([
        diag_msg(socket.AF_INET, sd.TCP_CLOSE, "0.0.0.0", 53, "0.0.0.0", 0, mem=mem(10, 100, 3)),
        diag_msg(socket.AF_INET, sd.TCP_CLOSE, "0.0.0.0", 53, "0.0.0.0", 0, mem=mem(5, 100, 4)),
        diag_msg(socket.AF_INET6, sd.TCP_CLOSE, "::1", 4789, "::", 0, mem=mem(0, 200, 1)),
        diag_msg(socket.AF_INET, sd.TCP_CLOSE, "10.0.0.1", 40000, "0.0.0.0", 0, mem=mem(0, 1, 9)),
        diag_msg(socket.AF_INET, sd.TCP_CLOSE, "10.0.0.1", 5000, "10.0.0.2", 53, mem=mem(0, 1, 9)),
    ])
    servers = sd.udp_servers(sd.decode(data, meminfo=True), 32768, 60999)
    assert set(servers) == {("0.0.0.0", 53), ("::1", 4789)}
    dns = servers[("0.0.0.0", 53)]
    assert (dns.drops, dns.queue, dns.rcvbuf, dns.sockets) == (7, 15, 200, 2)


def test_ephemeral_groups_key_and_ipv6_brackets():
    data = b"".join(diag_msg(socket.AF_INET, sd.TCP_ESTABLISHED, "10.0.0.5", 40000 + i,
                             "10.96.0.10", 443) for i in range(3))
    data += diag_msg(socket.AF_INET6, sd.TCP_ESTABLISHED, "fd00::5", 40010, "fd00::1", 443)
    data += diag_msg(socket.AF_INET, sd.TCP_ESTABLISHED, "10.0.0.5", 8080, "10.0.0.9", 5555)
    groups = sd.ephemeral_groups(sd.decode(data), 32768, 60999)
    assert groups == {("10.0.0.5", "10.96.0.10:443"): 3, ("fd00::5", "[fd00::1]:443"): 1}


def test_a_short_message_is_a_parse_error():
    with pytest.raises(nl.ParseError):
        sd.decode(nl.message(sd.SOCK_DIAG_BY_FAMILY, 0, 1, b"\0" * 40))


def test_streaming_walk_equals_decode_then_group():
    """ephemeral_walk (raw keys, no object per socket) == decode + ephemeral_groups."""
    data = b"".join(diag_msg(socket.AF_INET, sd.TCP_ESTABLISHED, "10.0.0.5", 32768 + i % 900,
                             f"10.96.0.{i % 3}", 443 + i % 2) for i in range(500))
    data += b"".join(diag_msg(socket.AF_INET6, sd.TCP_ESTABLISHED, "fd00::5", 40000 + i,
                              "fd00::1", 53) for i in range(7))
    want = sd.ephemeral_groups(sd.decode(data), 32768, 60999)

    class Reply:
        done = False

        def scan(self, _data):
            self.done = True

    class Sock:
        def __init__(self):
            self.sent = 0

        def send(self, *_a):
            self.sent += 1
            return Reply()

        def datagrams(self, reply):
            if self.sent == 1:   # the IPv4 request: everything; IPv6: nothing more
                yield data

    got, complete = sd.ephemeral_walk(Sock(), 32768, 60999)
    assert complete and got == want
