"""exporter.sources.netns against the kernel: namespaces made here are discovered by name
and inode (witness: stat of /run/netns/<name>), entered and left again, walked by
run_in_namespaces with a netlink socket made inside each (witness: `ip -n <ns> -j link`),
and one deleted after discovery is skipped, not re-created."""
from __future__ import annotations

import json
import os
import struct

from exporter.sources import netlink as nl
from exporter.sources import netns
from tests.helpers.netns import netns as make_netns
from tests.helpers.netns import run

IFINFO = struct.Struct("=BxHiII")


def own_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def link_count(_ns=None) -> int:
    with nl.NetlinkSocket(nl.NETLINK_ROUTE) as s:
        return len(s.dump(18, IFINFO.pack(0, 0, 0, 0, 0)))


def test_discover_enter_and_walk():
    with make_netns("nn-nsapi") as a, make_netns("nn-nsapi") as b:
        run(["ip", "link", "add", "nsa0", "type", "veth", "peer", "name", "nsa1"], netns=b)
        found = {n.name: n for n in netns.discover(["/run/netns"], "/proc")}
        assert found[a].inode == os.stat(f"/run/netns/{a}").st_ino
        assert found[b].inode == os.stat(f"/run/netns/{b}").st_ino
        home = own_inode()
        with netns.entered(f"/run/netns/{a}"):
            assert own_inode() == found[a].inode
        assert own_inode() == home
        got, skipped = netns.run_in_namespaces([found[a], found[b]], link_count)
        witness = {n: len(json.loads(run(["ip", "-n", n, "-j", "link"]).stdout)) for n in (a, b)}
        assert {ns.name: v for ns, v in got} == witness == {a: 1, b: 3}
        assert skipped == [] and own_inode() == home


def test_namespace_deleted_after_discovery_is_skipped():
    with make_netns("nn-nsapi") as a, make_netns("nn-nsapi") as gone:
        found = [n for n in netns.discover(["/run/netns"], None) if n.name in (a, gone)]
        run(["ip", "netns", "del", gone])
        got, skipped = netns.run_in_namespaces(found, link_count)
        assert [ns.name for ns, _ in got] == [a]
        assert skipped == [f"{gone}: gone"]
        assert not os.path.exists(f"/run/netns/{gone}")
