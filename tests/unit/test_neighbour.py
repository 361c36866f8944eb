"""The neighbour-table reader and collector on a captured RTM_GETNEIGHTBL dump (replayed through
the shared netlink layer), on hand-built messages, and on /proc/net/stat fixtures."""
from __future__ import annotations

import errno
import io
import json
import os
import re
import socket
import struct

import pytest

from exporter import log as logmod
from exporter.cli import all_options
from exporter.collectors import load_all
from exporter.collectors.base import REGISTRY, Context
from exporter.config import resolve
from exporter.sources import ParseError
from exporter.sources import neighbour as nb
from exporter.sources import netlink as nl

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NLFIX = os.path.join(HERE, "fixtures", "netlink")
PROCFIX = os.path.join(HERE, "fixtures", "proc", "limits")
load_all()


def replay(answers=None, missing=errno.EOPNOTSUPP):
    if answers is None:
        answers = {nb.RTM_GETNEIGHTBL: nl.load_hex(os.path.join(NLFIX, "neightbl_dump.hex"))}
    return nl.NetlinkSocket(nl.NETLINK_ROUTE, transport=nl.ReplayTransport(answers, missing))


def ip_ntable() -> dict:
    """An independent read of `ip -s ntable` text captured with the dump."""
    with open(os.path.join(NLFIX, "neightbl_dump.ip.txt")) as fh:
        blocks = fh.read().split("\n\n")
    out = {}
    for block in blocks:
        m = re.match(r"\s*inet6? (\S+)", block)
        if m and "thresh3" in block:
            words = block.split()
            out[m.group(1)] = {k: int(words[i + 1]) for i, k in enumerate(words[:-1])
                               if k in ("thresh1", "thresh2", "thresh3", "entries", "res_failed",
                                        "forced_gc_runs", "table_fulls")}
    return out


def test_captured_dump_equals_ip_s_ntable():
    with replay() as sock:
        tables = nb.dump(sock)
    want = ip_ntable()
    assert [t.name for t in tables] == ["arp_cache", "ndisc_cache"] == sorted(want)
    for t in tables:
        w = want[t.name]
        assert t.thresholds == (w["thresh1"], w["thresh2"], w["thresh3"])
        assert t.entries == w["entries"]
        for k in ("res_failed", "forced_gc_runs", "table_fulls"):
            assert t.stats[k] == w[k], k
    assert tables[0].family == socket.AF_INET and tables[1].family == socket.AF_INET6


def _table_msg(name, thresh=(128, 512, 1024), entries=7, stats=None, family=socket.AF_INET):
    attrs = [nl.attr_str(nb.NDTA_NAME, name)]
    attrs += [nl.attr_u32(t, v) for t, v in zip((nb.NDTA_THRESH1, nb.NDTA_THRESH2,
                                                 nb.NDTA_THRESH3), thresh, strict=True)]
    attrs.append(nl.attr(nb.NDTA_CONFIG, nb.NDT_CONFIG.pack(4, 336, entries, 0, 0, 0, 15, 0, 0)))
    if stats is not None:
        attrs.append(nl.attr(nb.NDTA_STATS, struct.pack(f"={len(stats)}Q", *stats)))
    return nl.message(nb.RTM_NEWNEIGHTBL, nl.NLM_F_MULTI, 1,
                      nb.NDTMSG.pack(family, 0, 0) + b"".join(attrs))


def _device_msg(name):
    return nl.message(nb.RTM_NEWNEIGHTBL, nl.NLM_F_MULTI, 1, nb.NDTMSG.pack(2, 0, 0)
                      + nl.attr_str(nb.NDTA_NAME, name) + nl.nested(nb.NDTA_PARMS))


DONE = nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, b"\0\0\0\0")


def test_device_parameter_messages_are_skipped_and_old_stats_lack_table_fulls():
    old = _table_msg("arp_cache", stats=list(range(1, 11)))        # 10 u64: no table_fulls
    data = old + _device_msg("arp_cache") + DONE
    with replay({nb.RTM_GETNEIGHTBL: [data]}) as sock:
        (t,) = nb.dump(sock)
    assert t.entries == 7 and t.stats["forced_gc_runs"] == 10 and "table_fulls" not in t.stats


def test_malformed_messages_are_parse_errors():
    short = _table_msg("arp_cache", stats=[1, 2, 3])
    with replay({nb.RTM_GETNEIGHTBL: [short + DONE]}) as sock, pytest.raises(ParseError):
        nb.dump(sock)
    bad_cfg = nl.message(nb.RTM_NEWNEIGHTBL, 2, 1, nb.NDTMSG.pack(2, 0, 0)
                         + nl.attr_str(nb.NDTA_NAME, "x") + nl.attr(nb.NDTA_CONFIG, b"\0" * 8))
    with replay({nb.RTM_GETNEIGHTBL: [bad_cfg + DONE]}) as sock, pytest.raises(ParseError):
        nb.dump(sock)


def test_proc_stat_sums_cpus():
    with open(os.path.join(PROCFIX, "neigh-initial", "net", "stat", "arp_cache")) as fh:
        text = fh.read()
    st = nb.parse_proc_stat(text)
    rows = [ln.split() for ln in text.splitlines()[1:] if ln.strip()]
    col = text.splitlines()[0].split().index("unresolved_discards")
    assert st.entries == int(rows[0][0], 16)
    assert st.totals["unresolved_discards"] == sum(int(r[col], 16) for r in rows)
    assert st.totals["hits"] == sum(int(r[5], 16) for r in rows)
    for bad in ("", "entries\n", "allocs x\n1 2\n", "entries allocs\n1\n", "entries a\nzz 1\n"):
        with pytest.raises(ParseError):
            nb.parse_proc_stat(bad)


def collector(procfs, sock_factory):
    stream = io.StringIO()
    settings = resolve(all_options(), [f"--path.procfs={procfs}"], "t", "0", set(REGISTRY))
    c = REGISTRY["neighbour"](Context(settings=settings, log=logmod.setup(
        "info", "json", stream=stream).bind(collector="neighbour")))
    c.socket_factory = sock_factory
    return c, stream


def values(families):
    return {(f.spec.name, labels): v for f in families for labels, v in f.samples}


def test_collector_netlink_with_proc_unresolved_discards():
    c, log = collector(os.path.join(PROCFIX, "neigh-initial"), replay)
    got = values(c.collect())
    want = ip_ntable()
    assert got[("nodenet_neighbour_source_info", ("netlink",))] == 1
    assert got[("nodenet_neighbour_available", ())] == 1
    for table, w in want.items():
        assert got[("nodenet_neighbour_entries", (table,))] == w["entries"]
        assert got[("nodenet_neighbour_entries_limit", (table,))] == w["thresh3"]
        for level in (1, 2, 3):
            assert got[("nodenet_neighbour_gc_threshold_entries", (table, str(level)))] == \
                w[f"thresh{level}"]
        assert got[("nodenet_neighbour_table_fulls_total", (table,))] == w["table_fulls"]
        assert ("nodenet_neighbour_unresolved_discards_total", (table,)) in got
    assert len(got) == 2 + 2 * 9     # the series count at default flags (two tables)
    assert log.getvalue() == ""


def test_collector_in_a_pod_namespace_has_no_unresolved_discards():
    c, _ = collector(os.path.join(PROCFIX, "6.18-pod"), replay)
    got = values(c.collect())
    assert not any(k[0] == "nodenet_neighbour_unresolved_discards_total" for k in got)
    assert got[("nodenet_neighbour_entries_limit", ("arp_cache",))] == 1024


def test_refused_dump_falls_back_to_proc_once_logged():
    c, log = collector(os.path.join(PROCFIX, "neigh-initial"),
                       lambda: replay({}, missing=errno.EPERM))
    for _ in range(3):
        got = values(c.collect())
    assert got[("nodenet_neighbour_source_info", ("procfs",))] == 1
    assert got[("nodenet_neighbour_entries_limit", ("arp_cache",))] == 1024
    assert ("nodenet_neighbour_unresolved_discards_total", ("ndisc_cache",)) in got
    lines = [json.loads(x) for x in log.getvalue().splitlines()]
    assert len(lines) == 1 and lines[0]["source"] == "procfs"
    assert "RTM_GETNEIGHTBL refused" in lines[0]["event"]


def test_refused_and_no_proc_is_available_0():
    c, log = collector("/nonexistent", lambda: replay({}, missing=errno.EPERM))
    got = values(c.collect())
    assert got == {("nodenet_neighbour_available", ()): 0}
    assert "not available" in log.getvalue()


def test_other_netlink_errors_fail_the_collector():
    c, _ = collector("/nonexistent", lambda: replay({}, missing=errno.EINVAL))
    with pytest.raises(OSError):
        c.collect()
