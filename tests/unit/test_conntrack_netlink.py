"""ctnetlink decoders against replies captured from the kernel (tests/fixtures/netlink).

The expected values come from Debian's conntrack tool and /proc read at capture time
(capture_conntrack.py), not from this decoder.
"""
import dataclasses
import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.sources import ParseError
from exporter.sources import conntrack as ct
from exporter.sources import netlink as nl
from exporter.sources import netns

from tests.helpers.conntrack_fixtures import ReplaySocket, expected, hex_buffers


def _join(name):
    return b"".join(hex_buffers(name))


def test_stats_cpu_equals_conntrack_S_field_by_field():
    reply = ct.decode_stats_cpu(_join("conntrack_stats_cpu.hex"))
    assert reply.done and reply.error is None
    got = [dataclasses.asdict(c) for c in reply.records]
    assert got == expected()["stats_cpu"]
    assert sum(c.early_drop for c in reply.records) > 0  # the capture did saturate


def test_stats_global_entries_and_max():
    reply = ct.decode_stats(_join("conntrack_stats.hex"))
    assert reply.done and reply.error is None
    (glob,) = reply.records
    want = expected()["stats"]
    assert (glob.entries, glob.max_entries) == (want["entries"], want["max_entries"])


def test_exp_stats_cpu_equals_conntrack_S_expect():
    reply = ct.decode_exp_stats_cpu(_join("conntrack_exp_stats_cpu.hex"))
    got = [{"cpu": r.cpu, "expect_new": r.new, "expect_create": r.create,
            "expect_delete": r.delete} for r in reply.records]
    assert reply.done and got == expected()["exp_stats_cpu"]


def test_expectation_dump_count():
    total = 0
    for buf in hex_buffers("conntrack_exp_dump.hex"):
        reply = ct.count_messages(buf, (ct.MSG_EXP_NEW, ct.MSG_EXP_GET))
        total += reply.records[0]
    assert reply.done and total == expected()["expect_count"]


def test_entry_dump_by_protocol_and_tcp_state():
    counter = ct.StateCounter()
    for buf in hex_buffers("conntrack_dump.hex"):
        counter.feed(buf)
    assert counter.done and counter.error is None
    want = expected()["dump"]
    assert counter.entries == want["total"]
    got = {f"{p}/{s}": n for (p, s), n in counter.named().items()}
    assert got == want["by_state"]


def test_entry_dump_limit_stops_early():
    counter = ct.StateCounter()
    (first, *_rest) = hex_buffers("conntrack_dump.hex")
    counter.feed(first, limit=4)
    assert counter.entries == 4 and not counter.done


def test_eperm_reply_is_an_error_not_a_parse_failure():
    reply = ct.decode_stats(_join("conntrack_eperm.hex"))
    assert reply.done and reply.error == errno.EPERM == expected()["eperm_errno"]
    assert reply.records == []


def test_socket_layer_raises_netlink_error_with_errno():
    sock = ReplaySocket({ct.MSG_CT_STATS: hex_buffers("conntrack_eperm.hex")})
    nl = ct.CtNetlink(transport=sock)
    with pytest.raises(ct.NetlinkError) as info:
        nl.stats()
    assert info.value.errno == errno.EPERM
    assert ct.is_permission(info.value) and not ct.is_unavailable(info.value)


def test_socket_layer_round_trip_over_replayed_kernel_bytes():
    sock = ReplaySocket({
        ct.MSG_CT_STATS: hex_buffers("conntrack_stats.hex"),
        ct.MSG_CT_STATS_CPU: hex_buffers("conntrack_stats_cpu.hex"),
        ct.MSG_EXP_GET: hex_buffers("conntrack_exp_dump.hex"),
        ct.MSG_CT_GET: hex_buffers("conntrack_dump.hex"),
    })
    nl = ct.CtNetlink(transport=sock)
    assert nl.stats().entries == expected()["stats"]["entries"]
    assert len(nl.stats_cpu()) == len(expected()["stats_cpu"])
    assert nl.expect_count() == expected()["expect_count"]
    counter, partial = nl.state_counts(max_entries=10**6, max_seconds=60)
    assert not partial and counter.entries == expected()["dump"]["total"]
    assert sock.sent_types == [ct.MSG_CT_STATS, ct.MSG_CT_STATS_CPU, ct.MSG_EXP_GET, ct.MSG_CT_GET]


def test_state_dump_entry_budget_marks_partial_and_closes():
    sock = ReplaySocket({ct.MSG_CT_GET: hex_buffers("conntrack_dump.hex")})
    counter, partial = ct.CtNetlink(transport=sock).state_counts(max_entries=3, max_seconds=60)
    assert partial and counter.entries == 3 and sock.closed


def test_unknown_attributes_are_skipped():
    # a per-CPU stats message with an attribute type from the future (99) and CTA_STATS_FOUND
    attrs = struct.pack("=HH", 8, 99) + b"\0\0\0\1" + struct.pack("=HH", 8, 2) + b"\0\0\0\x07"
    body = struct.pack("!BBH", 0, 0, 3) + attrs
    msg = struct.pack("=IHHII", 16 + len(body), ct.MSG_CT_STATS_CPU, 2, 1, 0) + body
    done = struct.pack("=IHHII", 20, ct.NLMSG_DONE, 2, 1, 0) + b"\0" * 4
    reply = ct.decode_stats_cpu(msg + done)
    assert reply.done and reply.records == [ct.CpuStats(cpu=3, found=7)]


@pytest.mark.parametrize("cut", [1, 10, 17, 21, 30])
def test_truncated_captured_reply_is_a_parse_error(cut):
    buf = _join("conntrack_stats_cpu.hex")
    with pytest.raises(ParseError):
        ct.decode_stats_cpu(buf[:cut])


def test_pod_uid_from_cgroup_paths():
    systemd = ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
               "1b2c3d4e_aaaa_bbbb_cccc_0123456789ab.slice/cri-containerd-abc.scope\n")
    cgroupfs = "0::/kubepods/burstable/pod1b2c3d4e-aaaa-bbbb-cccc-0123456789ab/abcdef\n"
    assert netns.pod_uid_from_cgroup(systemd) == "1b2c3d4e-aaaa-bbbb-cccc-0123456789ab"
    assert netns.pod_uid_from_cgroup(cgroupfs) == "1b2c3d4e-aaaa-bbbb-cccc-0123456789ab"
    assert netns.pod_uid_from_cgroup("0::/user.slice/session-1.scope\n") == ""


def test_fast_paths_agree_with_the_full_attribute_walk():
    walked = {}
    for buf in hex_buffers("conntrack_dump.hex"):
        for mtype, _f, _s, start, end in nl.iter_messages(buf):
            if mtype != ct.MSG_CT_NEW:
                continue
            key = ct.entry_state(buf, start + 4, end)
            walked[key] = walked.get(key, 0) + 1
            one = ct.StateCounter()
            one.feed(buf[start - 16:end])
            assert one.counts == {key: 1}
    counter = ct.StateCounter()
    for buf in hex_buffers("conntrack_dump.hex"):
        counter.feed(buf)
    assert counter.counts == walked


# --- the accelerator equals the generic decoder ----------------------------------------------

def _entry(proto, ipv6, state, before, after, tcp_extra, protoinfo_first):
    """One CT_NEW message as ctnetlink_fill_info writes it, with optional extra attributes."""
    CTA_TUPLE_IP, CTA_IP_V4_SRC, CTA_IP_V6_SRC = 1, 1, 3
    CTA_TUPLE_REPLY, CTA_STATUS, CTA_MARK = 2, 3, 8
    ip = nl.nested(CTA_TUPLE_IP, nl.attr(CTA_IP_V6_SRC if ipv6 else CTA_IP_V4_SRC,
                                         b"\1" * (16 if ipv6 else 4)))
    l4 = nl.nested(ct.CTA_TUPLE_PROTO, nl.attr_u8(ct.CTA_PROTO_NUM, proto),
                   nl.attr_be16(2, 1234))
    orig = nl.nested(ct.CTA_TUPLE_ORIG, ip, l4)
    attrs = [orig, nl.nested(CTA_TUPLE_REPLY, ip, l4), nl.attr_be32(CTA_STATUS, 0x18e)]
    attrs += [nl.attr_be32(CTA_MARK, v) for v in before]
    if state is not None:
        tcp = [nl.attr_u8(ct.CTA_PROTOINFO_TCP_STATE, state)]
        if tcp_extra is None:   # the kernel's layout: wscale x2, flags x2 (44-byte nest)
            tcp += [nl.attr_u8(2, 7), nl.attr_u8(3, 7), nl.attr(4, b"\x23\0"),
                    nl.attr(5, b"\x23\0")]
        else:
            tcp += [nl.attr_u8(2 + i, v) for i, v in enumerate(tcp_extra)]
        info = nl.nested(ct.CTA_PROTOINFO, nl.nested(ct.CTA_PROTOINFO_TCP, *tcp))
        if protoinfo_first:
            attrs.insert(1, info)
        else:
            attrs.append(info)
    attrs += [nl.attr_be32(CTA_MARK, v) for v in after]
    body = struct.pack("!BBH", 2 if not ipv6 else 10, 0, 0) + b"".join(attrs)
    return nl.message(ct.MSG_CT_NEW, nl.NLM_F_MULTI, 1, body)


ENTRY = st.builds(
    _entry, proto=st.sampled_from([6, 6, 17, 1, 132, 255]), ipv6=st.booleans(),
    state=st.one_of(st.none(), st.integers(0, 12)),
    before=st.lists(st.integers(0, 2**32 - 1), max_size=2),
    after=st.lists(st.integers(0, 2**32 - 1), max_size=2),
    tcp_extra=st.one_of(st.none(), st.lists(st.integers(0, 255), max_size=2)),
    protoinfo_first=st.booleans())


@settings(deadline=None, max_examples=400)
@given(st.lists(ENTRY, min_size=1, max_size=30), st.integers(1, 4))
def test_state_counter_equals_the_generic_entry_decoder(entries, datagrams):
    """StateCounter's fast paths (PROTO_NUM where the kernel puts it, PROTOINFO as the last
    attribute) against entry_state's full walk, over any split into datagrams."""
    want: dict = {}
    for m in entries:
        key = ct.entry_state(m, ct._HDR_LEN, nl.HDR.unpack_from(m)[0])
        want[key] = want.get(key, 0) + 1
    counter = ct.StateCounter()
    k = max(1, len(entries) // datagrams)
    chunks = [b"".join(entries[i:i + k]) for i in range(0, len(entries), k)]
    chunks[-1] += nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, b"\0" * 4)
    for c in chunks:
        counter.feed(c)
    assert counter.done and counter.error is None
    assert counter.counts == want and counter.entries == len(entries)


def test_kernel_layout_takes_the_fast_paths(monkeypatch):
    """The generated kernel layout really is the fast path's (no full walk), so the property
    test above compares both paths, not the walk with itself."""
    walks = []
    real = ct.entry_state
    monkeypatch.setattr(ct, "entry_state", lambda *a: walks.append(1) or real(*a))
    buf = b"".join(_entry(6, False, 3, [], [], None, False) for _ in range(5))
    buf += b"".join(_entry(17, True, None, [1], [], None, False) for _ in range(5))
    counter = ct.StateCounter()
    counter.feed(buf)
    assert counter.counts == {(6, 3): 5, (17, -1): 5} and walks == []
    counter.feed(_entry(6, False, 3, [], [9], None, False))   # PROTOINFO not last: walked
    assert walks == [1] and counter.counts[(6, 3)] == 6
