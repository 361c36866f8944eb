"""Neighbour tables (ARP, IPv6 ND): one RTM_GETNEIGHTBL dump, /proc/net/stat as fallback.

The dump (rtnetlink, no privilege) answers one message per table with its name, thresholds
(NDTA_THRESH1-3: gc_thresh1-3), configuration (NDTA_CONFIG: ``ndtc_entries``, every entry,
permanent ones included) and statistics summed over CPUs (NDTA_STATS), followed by one message
per device's parameters (NDTA_NAME + NDTA_PARMS only, skipped here).  It costs O(tables +
devices), never O(entries).  The tables are machine-wide (every namespace sees the same numbers
in the dump), unlike the per-namespace gc_thresh sysctls which only the initial namespace has.

``/proc/net/stat/arp_cache`` and ``ndisc_cache`` (only in the initial namespace) hold per-CPU
hex lines with ``unresolved_discards``, which the dump lacks; they are also the fallback source
of entries and counters when the dump is refused (thresholds then come from
/proc/sys/net/ipv{4,6}/neigh/default/gc_thresh1-3, where visible).
"""
from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass, field

from . import ParseError
from . import netlink as nl

RTM_NEWNEIGHTBL, RTM_GETNEIGHTBL = 64, 66
NDTA_NAME, NDTA_THRESH1, NDTA_THRESH2, NDTA_THRESH3 = 1, 2, 3, 4
NDTA_CONFIG, NDTA_PARMS, NDTA_STATS, NDTA_GC_INTERVAL = 5, 6, 7, 8
NDTMSG = struct.Struct("=BBH")          # ndtmsg: family, pad1, pad2
# struct ndt_config: key_len, entry_size (u16), entries, last_flush, last_rand, hash_rnd,
# hash_mask, hash_chain_gc, proxy_qlen (u32)
NDT_CONFIG = struct.Struct("=HHIIIIIII")
# struct ndt_stats: u64 allocs destroys hash_grows res_failed lookups hits rcv_probes_mcast
# rcv_probes_ucast periodic_gc_runs forced_gc_runs [table_fulls (3.x+)]
STATS_FIELDS = ("allocs", "destroys", "hash_grows", "res_failed", "lookups", "hits",
                "rcv_probes_mcast", "rcv_probes_ucast", "periodic_gc_runs", "forced_gc_runs",
                "table_fulls")

FAMILY = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


@dataclass
class NeighTable:
    name: str                     # kernel name: arp_cache, ndisc_cache
    family: int
    entries: int | None = None
    thresholds: tuple[int | None, int | None, int | None] = (None, None, None)
    stats: dict[str, int] = field(default_factory=dict)
    unresolved_discards: int | None = None


def request() -> bytes:
    """The RTM_GETNEIGHTBL dump's payload: every family's tables."""
    return NDTMSG.pack(socket.AF_UNSPEC, 0, 0)


def decode(m: nl.Message) -> NeighTable | None:
    """One RTM_NEWNEIGHTBL message -> its table; None for per-device parameter messages."""
    if m.type != RTM_NEWNEIGHTBL:
        return None
    data, start, end = m.data, m.start, m.end
    if end - start < NDTMSG.size:
        raise ParseError("RTM_NEWNEIGHTBL shorter than struct ndtmsg")
    family = data[start]
    a = nl.attrs(data, start + NDTMSG.size, end, "RTM_NEWNEIGHTBL")
    if NDTA_NAME not in a or (NDTA_THRESH3 not in a and NDTA_CONFIG not in a):
        return None
    table = NeighTable(nl.string(data, a[NDTA_NAME]), family)
    table.thresholds = tuple(nl.get_u32(data, a, t) for t in
                             (NDTA_THRESH1, NDTA_THRESH2, NDTA_THRESH3))
    span = a.get(NDTA_CONFIG)
    if span is not None:
        if span[1] - span[0] < NDT_CONFIG.size:
            raise ParseError(f"{table.name}: NDTA_CONFIG of {span[1] - span[0]} bytes")
        table.entries = NDT_CONFIG.unpack_from(data, span[0])[2]
    span = a.get(NDTA_STATS)
    if span is not None:
        n = min((span[1] - span[0]) // 8, len(STATS_FIELDS))
        if n < 10:
            raise ParseError(f"{table.name}: NDTA_STATS of {span[1] - span[0]} bytes")
        table.stats = dict(zip(STATS_FIELDS[:n], struct.unpack_from(f"={n}Q", data, span[0]),
                               strict=True))
    return table


def parse_dump(messages) -> list[NeighTable]:
    out = []
    for m in messages:
        table = decode(m)
        if table is not None:
            out.append(table)
    return out


def dump(sock: nl.NetlinkSocket) -> list[NeighTable]:
    """The tables over an rtnetlink socket; raises NetlinkError if refused."""
    return list(sock.dump(RTM_GETNEIGHTBL, request(), decode, context="RTM_GETNEIGHTBL"))


# ------------------------------------------------------------------------- /proc/net/stat

_HEX = re.compile(r"[0-9a-fA-F]{1,16}")


@dataclass
class ProcStat:
    entries: int
    totals: dict[str, int]        # every column but entries, summed over CPUs


def parse_proc_stat(text: str, what: str = "arp_cache") -> ProcStat:
    """/proc/net/stat/<table>: a header of column names, then one hex line per CPU (entries
    is the table's count, the same on every line; the others are per-CPU)."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ParseError(f"{what}: empty")
    names = lines[0]
    if not names or names[0] != "entries" or not all(n.isidentifier() for n in names):
        raise ParseError(f"{what}: unexpected header {' '.join(names)[:60]!r}")
    totals = dict.fromkeys(names[1:], 0)
    entries = None
    for i, row in enumerate(lines[1:], 2):
        if len(row) != len(names) or not all(_HEX.fullmatch(v) for v in row):
            raise ParseError(f"{what} line {i}: {len(row)} columns for {len(names)} names, "
                             "or not hex")
        values = [int(v, 16) for v in row]
        entries = values[0]
        for name, value in zip(names[1:], values[1:], strict=True):
            totals[name] += value
    if entries is None:
        raise ParseError(f"{what}: no CPU lines")
    return ProcStat(entries, totals)


PROC_FAMILY = {"arp_cache": socket.AF_INET, "ndisc_cache": socket.AF_INET6}
