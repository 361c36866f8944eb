"""exporter.sources.netlink against the running kernel: an rtnetlink link dump inside a
namespace made here (witness: `ip -j link`), the generic-netlink family dump (witness:
`genl ctrl list`), kernel refusals as NetlinkError, the byte budget, batched and single
receives alike, and a recorded exchange replayed through the same socket class."""
from __future__ import annotations

import errno
import json
import re
import struct

import pytest

from exporter.sources import NetlinkError, ParseError
from exporter.sources import netlink as nl
from tests.helpers.netns import call_in_netns, netns, run

RTM_NEWLINK, RTM_GETLINK = 16, 18
IFINFO = struct.Struct("=BxHiII")
IFLA_IFNAME, IFLA_MTU = 3, 4


def decode_link(m: nl.Message):
    assert m.type == RTM_NEWLINK
    _fam, _type, index, _flags, _change = IFINFO.unpack_from(m.data, m.start)
    a = nl.attrs(m.data, m.start + IFINFO.size, m.end)
    return index, nl.get_string(m.data, a, IFLA_IFNAME), nl.get_u32(m.data, a, IFLA_MTU)


def link_dump(**kw):
    with nl.NetlinkSocket(nl.NETLINK_ROUTE, **kw) as s:
        return sorted(s.dump(RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0), decode_link))


@pytest.fixture(scope="module")
def ns():
    with netns("nn-netlink") as name:
        run(["ip", "link", "add", "nlt-a", "mtu", "1400", "type", "veth", "peer", "name",
             "nlt-b"], netns=name)
        run(["ip", "link", "add", "nlt-br", "type", "bridge"], netns=name)
        batch = "".join(f"link add nlt-d{i} mtu {1000 + i} type veth peer name nlt-e{i}\n"
                        for i in range(20))   # enough links for a dump of several datagrams
        run(["ip", "-batch", "-"], netns=name, input=batch)
        yield name


def test_link_dump_matches_ip_link(ns):
    witness = sorted((d["ifindex"], d["ifname"], d["mtu"])
                     for d in json.loads(run(["ip", "-j", "link", "show"], netns=ns).stdout))
    assert call_in_netns(ns, link_dump) == witness
    assert len(witness) == 44


@pytest.mark.parametrize("batched", [True, False])
def test_batched_and_single_receives_decode_alike(ns, batched):
    assert call_in_netns(ns, link_dump, batched=batched, recv_size=4096) == \
        call_in_netns(ns, link_dump)


def test_kernel_refusal_is_netlink_error(ns):
    def get_missing():
        with nl.NetlinkSocket(nl.NETLINK_ROUTE) as s:
            return s.request(RTM_GETLINK, IFINFO.pack(0, 0, 999_999, 0, 0))

    with pytest.raises(NetlinkError) as ei:
        call_in_netns(ns, get_missing)
    assert ei.value.errno == errno.ENODEV and isinstance(ei.value, OSError)


def test_byte_budget_stops_a_real_dump(ns):
    with pytest.raises(ParseError, match="larger than 2000 bytes"):
        call_in_netns(ns, link_dump, max_bytes=2000)


def test_genl_family_dump_matches_genl_ctrl_list():
    out = run(["genl", "ctrl", "list"]).stdout
    witness = dict((name, int(fid, 16)) for name, fid in
                   re.findall(r"Name: (\S+)\s+ID: (0x[0-9a-f]+)", out))
    assert "nlctrl" in witness
    with nl.NetlinkSocket(nl.NETLINK_GENERIC) as s:
        fams = nl.genl_families(s)
        assert {n: f.id for n, f in fams.items()} == witness
        assert nl.resolve_family(s, "nlctrl") == fams["nlctrl"]
        assert nl.resolve_family(s, "nodenet-no-such-family") is None


def test_recorded_exchange_replays_to_the_same_result(ns):
    def record():
        rec = nl.RecordingTransport(nl.KernelTransport(nl.NETLINK_ROUTE))
        with nl.NetlinkSocket(nl.NETLINK_ROUTE, transport=rec) as s:
            live = sorted(s.dump(RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0), decode_link))
        return live, rec.exchanges

    live, exchanges = call_in_netns(ns, record)
    (request, datagrams), = exchanges
    assert len(datagrams) >= 2
    replay = nl.ReplayTransport({RTM_GETLINK: datagrams})
    with nl.NetlinkSocket(nl.NETLINK_ROUTE, transport=replay) as s:
        assert sorted(s.dump(RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0), decode_link)) == live
    assert replay.sent[0][4:6] == request[4:6]
