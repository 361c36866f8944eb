"""Fuzzing the conntrack parsers: any input gives a typed result or ParseError.

Inputs: random bytes/text, the captured kernel replies truncated, extended with garbage or
with bytes flipped, and random (but well-framed) netlink messages with random attributes.
"""
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.sources import ParseError
from exporter.sources import conntrack as ct
from exporter.sources import netlink as nl
from exporter.sources import netns

from tests.helpers.conntrack_fixtures import hex_buffers, proc_text

# NODENET_FUZZ_EXAMPLES=5000 for a longer run by hand (33 s here, clean)
FUZZ = settings(max_examples=int(os.environ.get("NODENET_FUZZ_EXAMPLES", "400")), deadline=None,
                database=None, suppress_health_check=[HealthCheck.too_slow])

CAPTURED = [b"".join(hex_buffers(n)) for n in (
    "conntrack_stats_cpu.hex", "conntrack_stats.hex", "conntrack_exp_stats_cpu.hex",
    "conntrack_exp_dump.hex", "conntrack_dump.hex", "conntrack_eperm.hex")]
PROC = [proc_text(n) for n in ("kernel-6.18", "layout-16", "layout-17-searched",
                               "layout-17-clashres", "no-header")]


def _decoders():
    yield ct.decode_stats_cpu
    yield ct.decode_stats
    yield ct.decode_exp_stats_cpu
    yield lambda b: ct.count_messages(b, (ct.MSG_EXP_NEW, ct.MSG_EXP_GET))
    yield lambda b: list(nl.iter_messages(b))

    def dump(b):
        c = ct.StateCounter()
        c.feed(b)
        c.named()
        return c
    yield dump

    def dump_limited(b):
        c = ct.StateCounter()
        c.feed(b, limit=2)
        return c
    yield dump_limited


def check_bytes(buf: bytes):
    for decode in _decoders():
        try:
            result = decode(buf)
        except ParseError:
            continue
        assert isinstance(result, (ct.Reply, ct.StateCounter, list))
        if isinstance(result, ct.Reply):
            assert result.error is None or isinstance(result.error, int)
            for r in result.records:
                assert isinstance(r, (ct.CpuStats, ct.GlobalStats, ct.ExpectCpuStats, int))


def check_text(text: str):
    try:
        stat = ct.parse_proc_stat(text)
    except ParseError:
        return
    assert isinstance(stat, ct.ProcStat) and stat.cpus
    for c in stat.cpus:
        for name in ct.STAT_FIELDS:
            v = getattr(c, name)
            assert v is None or (isinstance(v, int) and v >= 0)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(buf):
    check_bytes(buf)


@FUZZ
@given(st.sampled_from(CAPTURED), st.data())
def test_captured_replies_truncated_flipped_extended(buf, data):
    cut = data.draw(st.integers(0, len(buf)))
    check_bytes(buf[:cut])
    if buf:
        pos = data.draw(st.integers(0, len(buf) - 1))
        value = data.draw(st.integers(0, 255))
        check_bytes(buf[:pos] + bytes([value]) + buf[pos + 1:])
    check_bytes(buf + data.draw(st.binary(max_size=64)))


_attr = st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=12))


@st.composite
def framed_messages(draw):
    """Well-framed netlink messages of the conntrack types with random attributes."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        mtype = draw(st.sampled_from([ct.MSG_CT_STATS_CPU, ct.MSG_CT_STATS, ct.MSG_CT_NEW,
                                      ct.MSG_EXP_NEW, ct.MSG_EXP_STATS_CPU_REPLY[0],
                                      ct.NLMSG_ERROR, ct.NLMSG_DONE, draw(st.integers(0, 0xFFFF))]))
        attrs = b""
        for atype, value in draw(st.lists(_attr, max_size=6)):
            alen = 4 + len(value)
            if draw(st.booleans()):
                alen = draw(st.integers(0, 0xFFFF))  # lie about the length
            attrs += struct.pack("=HH", alen & 0xFFFF, atype) + value + b"\0" * (-len(value) % 4)
        body = struct.pack("!BBH", draw(st.integers(0, 255)), 0, draw(st.integers(0, 0xFFFF)))
        body += attrs
        out += struct.pack("=IHHII", 16 + len(body), mtype, 2, 1, 0) + body
    return out


@FUZZ
@given(framed_messages())
def test_framed_messages_with_random_attributes(buf):
    check_bytes(buf)


@FUZZ
@given(st.text(max_size=600))
def test_random_text(text):
    check_text(text)


@FUZZ
@given(st.sampled_from(PROC), st.data())
def test_proc_files_truncated_and_mutated(text, data):
    check_text(text[: data.draw(st.integers(0, len(text)))])
    raw = text.encode()
    pos = data.draw(st.integers(0, len(raw) - 1))
    mutated = raw[:pos] + data.draw(st.binary(min_size=1, max_size=8)) + raw[pos + 1:]
    check_text(mutated.decode("utf-8", "replace"))
    check_text(text * data.draw(st.integers(2, 3)))  # repeated header lines


@FUZZ
@given(st.binary(max_size=300))
def test_cgroup_text_never_raises(raw):
    assert isinstance(netns.pod_uid_from_cgroup(raw.decode("utf-8", "replace")), str)
