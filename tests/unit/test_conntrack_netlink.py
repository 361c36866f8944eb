"""ctnetlink decoders against replies captured from the kernel (tests/fixtures/netlink).

The expected values come from Debian's conntrack tool and /proc read at capture time
(capture_conntrack.py), not from this decoder.
"""
import dataclasses
import errno
import struct

import pytest

from exporter.sources import conntrack as ct
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
    nl = ct.CtNetlink(sock=sock)
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
    nl = ct.CtNetlink(sock=sock)
    assert nl.stats().entries == expected()["stats"]["entries"]
    assert len(nl.stats_cpu()) == len(expected()["stats_cpu"])
    assert nl.expect_count() == expected()["expect_count"]
    counter, partial = nl.state_counts(max_entries=10**6, max_seconds=60)
    assert not partial and counter.entries == expected()["dump"]["total"]
    assert sock.sent == [ct.MSG_CT_STATS, ct.MSG_CT_STATS_CPU, ct.MSG_EXP_GET, ct.MSG_CT_GET]


def test_state_dump_entry_budget_marks_partial_and_closes():
    sock = ReplaySocket({ct.MSG_CT_GET: hex_buffers("conntrack_dump.hex")})
    counter, partial = ct.CtNetlink(sock=sock).state_counts(max_entries=3, max_seconds=60)
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
    with pytest.raises(ct.ConntrackParseError):
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
        for mtype, _f, _s, start, end in ct.iter_messages(buf):
            if mtype != ct.MSG_CT_NEW:
                continue
            key = ct._walk_entry(buf, start + 4, end)
            walked[key] = walked.get(key, 0) + 1
            one = ct.StateCounter()
            one.feed(buf[start - 16:end])
            assert one.counts == {key: 1}
    counter = ct.StateCounter()
    for buf in hex_buffers("conntrack_dump.hex"):
        counter.feed(buf)
    assert counter.counts == walked
