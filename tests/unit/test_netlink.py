"""exporter.sources.netlink, offline: framing, attributes, getters, requests, the socket's
bounds (deadline, byte budget, MSG_TRUNC, sequence filtering, interrupted-dump retry) and the
replay transport, on hand-built messages and on datagrams captured from a 6.18 kernel."""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.sources import NetlinkError, ParseError
from exporter.sources import netlink as nl

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "netlink")
RTM_GETLINK, RTM_NEWLINK = 18, 16


def msg(mtype, flags=nl.NLM_F_MULTI, seq=7, payload=b""):
    return nl.message(mtype, flags, seq, payload)


def done(seq=7, err=0):
    return msg(nl.NLMSG_DONE, nl.NLM_F_MULTI, seq, struct.pack("=i", -err))


def error(seq=7, err=0):
    return msg(nl.NLMSG_ERROR, 0, seq, struct.pack("=i", -err) + b"\0" * 16)


class Script:
    """A transport that plays exactly the given (datagram, flags) batches, then is silent."""

    def __init__(self, *batches):
        self.batches = list(batches)
        self.sent = []

    def send(self, data):
        self.sent.append(data)

    def recv(self):
        if not self.batches:
            raise TimeoutError(errno.ETIMEDOUT, "silent")
        return self.batches.pop(0)

    def close(self):
        pass


def sock_with(*batches, **kw):
    s = nl.NetlinkSocket(nl.NETLINK_ROUTE, transport=Script(*batches), **kw)
    s._seq = 6            # the next request gets seq 7, as the scripted answers
    return s


# --- framing --------------------------------------------------------------------------------

def test_iter_messages_walks_padded_messages():
    data = msg(20, payload=b"abc") + msg(21, payload=b"defg")
    got = list(nl.iter_messages(data))
    assert [(t, data[s:e]) for t, _f, _q, s, e in got] == [(20, b"abc"), (21, b"defg")]


@pytest.mark.parametrize("data", [b"\x01\x02", struct.pack("=IHHII", 15, 20, 0, 0, 0),
                                  struct.pack("=IHHII", 40, 20, 0, 0, 0)])
def test_iter_messages_rejects_bad_framing(data):
    with pytest.raises(ParseError):
        list(nl.iter_messages(data))


def test_reply_ends_at_done_and_skips_noop_and_other_sequences():
    r = nl.Reply(7)
    data = (msg(20, payload=b"a") + msg(nl.NLMSG_NOOP) + msg(20, seq=99, payload=b"x")
            + msg(20, payload=b"b") + done())
    got = r.messages(data)
    assert [m.payload for m in got] == [b"a", b"b"] and r.done and not r.interrupted


def test_reply_error_raises_netlink_error_with_errno():
    r = nl.Reply(7)
    with pytest.raises(NetlinkError) as ei:
        r.messages(error(err=errno.EPERM))
    assert ei.value.errno == errno.EPERM and isinstance(ei.value, OSError)


def test_done_with_an_errno_is_a_refusal():
    with pytest.raises(NetlinkError) as ei:
        nl.Reply(7).messages(done(err=errno.EMSGSIZE))
    assert ei.value.errno == errno.EMSGSIZE


def test_overrun_is_enobufs():
    with pytest.raises(NetlinkError) as ei:
        nl.Reply(7).messages(msg(nl.NLMSG_OVERRUN))
    assert ei.value.errno == errno.ENOBUFS


def test_non_multipart_answer_ends_a_plain_request_but_an_ack_request_waits():
    r = nl.Reply(7)
    r.messages(msg(20, flags=0, payload=b"x"))
    assert r.done
    r = nl.Reply(7, ack=True)
    r.messages(msg(20, flags=0, payload=b"x"))
    assert not r.done
    r.messages(error())
    assert r.done


def test_scan_agrees_with_messages():
    data = msg(20, payload=b"a") + msg(20, flags=nl.NLM_F_MULTI | nl.NLM_F_DUMP_INTR) + done()
    a, b = nl.Reply(7), nl.Reply(7)
    a.messages(data)
    b.scan(data)
    assert (a.done, a.interrupted) == (b.done, b.interrupted) == (True, True)


# --- attributes -----------------------------------------------------------------------------

def test_attrs_masks_flags_and_last_wins():
    data = (nl.attr_u32(1, 5) + nl.nested(2, nl.attr_u8(1, 9)) + nl.attr_u32(1, 6)
            + nl.attr(3 | nl.NLA_F_NET_BYTEORDER, b"\0\x01"))
    a = nl.attrs(data, 0, len(data))
    assert set(a) == {1, 2, 3}
    assert nl.u32(data, a[1]) == 6
    assert nl.be16(data, a[3]) == 1
    inner = nl.attrs(data, *a[2])
    assert nl.u8(data, inner[1]) == 9
    assert [t for t, _s, _e in nl.iter_attrs(data, 0, len(data))] == [1, 2, 1, 3]


@pytest.mark.parametrize("data", [struct.pack("=HH", 3, 1), struct.pack("=HH", 12, 1) + b"ab"])
def test_attrs_reject_bad_lengths(data):
    with pytest.raises(ParseError):
        nl.attrs(data, 0, len(data))
    with pytest.raises(ParseError):
        list(nl.iter_attrs(data, 0, len(data)))


def test_getters_check_the_size():
    data = nl.attr(1, b"\x01\x02") + nl.attr(2, b"\x01\0\0\0\0\0\0\0") + nl.attr_str(3, "eth0")
    a = nl.attrs(data, 0, len(data))
    assert nl.u16(data, a[1]) == 0x0201 and nl.be16(data, a[1]) == 0x0102
    with pytest.raises(ParseError):
        nl.u32(data, a[1])
    assert nl.uint(data, a[2]) == 1 and nl.u64(data, a[2]) == 1
    with pytest.raises(ParseError):
        nl.uint(data, a[1])
    assert nl.string(data, a[3]) == "eth0" and nl.get_string(data, a, 9, "-") == "-"
    assert nl.get_u32(data, a, 9, default=42) == 42
    assert nl.get_u16(data, a, 1) == 0x0201


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=200))
def test_walkers_raise_only_parse_error(data):
    for walk in (lambda: list(nl.iter_messages(data)), lambda: nl.Reply(7).messages(data),
                 lambda: nl.Reply(7).scan(data), lambda: nl.attrs(data, 0, len(data)),
                 lambda: list(nl.iter_attrs(data, 0, len(data)))):
        with contextlib.suppress(ParseError, NetlinkError):
            walk()


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.integers(1, nl.NLA_TYPE_MASK), st.binary(max_size=40)), max_size=20))
def test_built_attributes_walk_back(items):
    data = b"".join(nl.attr(t, p) for t, p in items)
    assert [(t, data[s:e]) for t, s, e in nl.iter_attrs(data, 0, len(data))] == items


# --- the socket -----------------------------------------------------------------------------

def test_request_sets_request_flag_and_sequence():
    s = sock_with([(msg(20, flags=0, payload=b"ok"), 0)])
    got = s.request(22, b"\0" * 4)
    assert [m.payload for m in got] == [b"ok"]
    ln, mtype, flags, seq, _pid = nl.HDR.unpack_from(s.transport.sent[0])
    assert (ln, mtype, flags & nl.NLM_F_REQUEST, seq) == (20, 22, 1, 7)


def test_stale_datagrams_of_another_request_are_dropped():
    s = sock_with([(msg(20, seq=3, payload=b"old") + done(3), 0)],
                  [(msg(20, payload=b"new"), 0), (done(), 0)])
    assert [m.payload for m in s.dump(20)] == [b"new"]


def test_truncated_datagram_is_a_parse_error():
    s = sock_with([(msg(20, payload=b"x"), socket.MSG_TRUNC)])
    with pytest.raises(ParseError, match="receive buffer"):
        s.dump(20)


def test_byte_budget():
    big = msg(20, payload=b"x" * 1000)
    s = sock_with(*[[(big, 0)]] * 5, max_bytes=3000)
    with pytest.raises(ParseError, match="larger than 3000"):
        s.dump(20)


def test_silence_is_a_timeout_and_the_deadline_bounds_a_trickle():
    with pytest.raises(TimeoutError):
        sock_with([(msg(20), 0)]).dump(20)

    class Trickle(Script):
        def recv(self):
            return [(msg(20), 0)]

    s = nl.NetlinkSocket(0, transport=Trickle(), deadline=0.05)
    s._seq = 6
    with pytest.raises(TimeoutError, match="not complete"):
        s.dump(20)


def test_interrupted_dump_is_retried_once():
    intr = nl.NLM_F_MULTI | nl.NLM_F_DUMP_INTR
    first = [(msg(20, flags=intr, payload=b"a"), 0), (done(), 0)]

    class Answers(Script):
        def send(self, data):
            super().send(data)
            seq = nl.HDR.unpack_from(data)[3]
            if len(self.sent) == 1:
                self.batches.append([(nl._with_seq(d, seq), f) for d, f in first])
            else:
                self.batches.append([(msg(20, seq=seq, payload=b"b") + done(seq), 0)])

    s = nl.NetlinkSocket(0, transport=Answers())
    out = s.dump(20, decode=lambda m: m.payload)
    assert list(out) == [b"b"] and not out.interrupted and len(s.transport.sent) == 2
    # interrupted on both runs: the second result is returned, marked, and no third run
    class Always(Script):
        def send(self, data):
            super().send(data)
            seq = nl.HDR.unpack_from(data)[3]
            self.batches.append([(nl._with_seq(d, seq), f) for d, f in first])

    s = nl.NetlinkSocket(0, transport=Always())
    out = s.dump(20, decode=lambda m: m.payload)
    assert out.interrupted and list(out) == [b"a"] and len(s.transport.sent) == 2
    s = nl.NetlinkSocket(0, transport=Always())
    assert s.dump(20, retry=False).interrupted and len(s.transport.sent) == 1


# --- replay ---------------------------------------------------------------------------------

def test_replay_rewrites_sequence_numbers_and_answers_unknown_requests_with_an_error():
    captured = [msg(RTM_NEWLINK, seq=12345, payload=b"\0" * 16), done(12345)]
    t = nl.ReplayTransport({RTM_GETLINK: captured})
    with nl.NetlinkSocket(0, transport=t) as s:
        got = s.dump(RTM_GETLINK, b"\0" * 16)
        assert len(got) == 1 and got[0].type == RTM_NEWLINK
        with pytest.raises(NetlinkError) as ei:
            s.dump(99)
        assert ei.value.errno == errno.EOPNOTSUPP
    assert t.closed and len(t.sent) == 2


def test_replay_key_can_name_the_first_payload_byte():
    t = nl.ReplayTransport({(nl.GENL_ID_CTRL, 3): [error(0)], nl.GENL_ID_CTRL: [error(0, 1)]})
    s = nl.NetlinkSocket(nl.NETLINK_GENERIC, transport=t)
    assert s.request(nl.GENL_ID_CTRL, nl.genl_header(3), flags=nl.NLM_F_ACK) == []
    with pytest.raises(NetlinkError):
        s.request(nl.GENL_ID_CTRL, nl.genl_header(1), flags=nl.NLM_F_ACK)


def test_genl_family_resolution_from_the_captured_dump():
    dump = nl.load_hex(os.path.join(FIXTURES, "ipvs_ctrl_getfamily.hex"))
    t = nl.ReplayTransport({(nl.GENL_ID_CTRL, nl.CTRL_CMD_GETFAMILY): dump})
    s = nl.NetlinkSocket(nl.NETLINK_GENERIC, transport=t)
    fam = nl.resolve_family(s, "IPVS")
    assert fam is not None and fam.name == "IPVS" and fam.id >= nl.GENL_ID_CTRL
    assert nl.resolve_family(s, "no-such-family") is None
    # asked by dump only, never by name
    for req in t.sent:
        ln, mtype, flags, _seq, _pid = nl.HDR.unpack_from(req)
        assert mtype == nl.GENL_ID_CTRL and flags & nl.NLM_F_DUMP == nl.NLM_F_DUMP
        assert ln == nl.GENL_HDR_LEN
    assert nl.parse_genl_families(dump)["IPVS"] == fam


def test_hex_round_trip(tmp_path):
    data = [msg(20, payload=b"abc"), done()]
    p = tmp_path / "x.hex"
    p.write_text(nl.format_hex(data, "captured\nby a test"))
    assert nl.load_hex(str(p)) == data


@settings(deadline=None, max_examples=300)
@given(st.lists(st.tuples(st.integers(1, 40), st.binary(max_size=12)), max_size=12))
def test_attr_index_and_at_getters_agree_with_attrs_and_span_getters(items):
    data = b"".join(nl.attr(t, p) for t, p in items)
    spans = nl.attrs(data, 0, len(data))
    index = nl.attr_index(data, 0, len(data))
    assert {t: nl.span(data, off) for t, off in index.items()} == spans
    for t, off in index.items():
        for at, plain in ((nl.u8_at, nl.u8), (nl.u16_at, nl.u16), (nl.u32_at, nl.u32),
                          (nl.s32_at, nl.s32), (nl.u64_at, nl.u64)):
            try:
                want = plain(data, spans[t])
            except ParseError:
                with pytest.raises(ParseError):
                    at(data, off)
            else:
                assert at(data, off) == want


@settings(deadline=None, max_examples=200)
@given(st.lists(st.binary(max_size=24), min_size=1, max_size=6), st.booleans(), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_replay_sets_every_sequence_number(payloads, same_length, with_done, seq):
    """Equal-length messages (rewritten in one slice, a trailing DONE too) and mixed ones
    (walked) alike."""
    if same_length:
        payloads = [payloads[0]] * len(payloads)
    data = b"".join(msg(20, seq=1, payload=p) for p in payloads)
    if with_done:
        data += done(1)
    got = nl._with_seq(data, seq)
    n = len(payloads) + with_done
    assert [q for _t, _f, q, _s, _e in nl.iter_messages(got)] == [seq] * n
    assert [got[s:e] for *_x, s, e in nl.iter_messages(got)][:len(payloads)] == payloads


# --- the shape of the code: one netlink socket, one error vocabulary -------------------------

EXPORTER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "exporter")


def _sources():
    for dirpath, _dirs, files in os.walk(EXPORTER):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path) as fh:
                    yield os.path.relpath(path, EXPORTER), fh.read()


def test_no_netlink_socket_outside_sources_netlink():
    import ast
    offenders = []
    for rel, text in _sources():
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "socket"
                    and any("AF_NETLINK" in ast.dump(a) for a in node.args)):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == ["sources/netlink.py:" + offenders[0].split(":")[1]], offenders


def test_sources_define_no_error_types_of_their_own():
    """ParseError, NetlinkError and Unavailable (exporter/sources/__init__.py) are the
    readers' whole vocabulary: no per-family alias comes back."""
    import ast
    extra = []
    for rel, text in _sources():
        if not rel.startswith("sources/") or rel == "sources/__init__.py":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(b, ast.Name) and (b.id.endswith("Error") or b.id == "Exception")
                    for b in node.bases):
                extra.append(f"{rel}: {node.name}")
    assert extra == []
