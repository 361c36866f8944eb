"""Neighbour tables (ARP, IPv6 ND): entries beside gc_thresh3, table overflows, GC, failures.

Source: one rtnetlink RTM_GETNEIGHTBL dump per scrape (no privilege; O(tables), never
O(entries): node_exporter's arp collector walks every entry), which carries thresholds and
statistics in every namespace.  ``nodenet_neighbour_unresolved_discards_total`` comes from
/proc/net/stat/arp_cache and ndisc_cache, which only the initial namespace has (left out
elsewhere).  If the dump is refused, /proc/net/stat is the fallback (thresholds then from the
gc_thresh sysctls where visible) and ``nodenet_neighbour_source_info{source="procfs"}`` says
so, as conntrack's does; with neither, ``nodenet_neighbour_available 0`` (success 1).

Scope: the tables, their entry counts, thresholds and statistics are machine-wide (every
network namespace sees the same numbers).  The entry count includes permanent entries, while
the kernel's overflow test (since 4.19) counts only entries it can garbage-collect: see
docs/limits.md for what that means for NodenetNeighbourTableNearFull.
"""
from __future__ import annotations

import errno
import threading

from ..metrics import COUNTER, GAUGE, Metric
from ..sources import ParseError, procfs
from ..sources import neighbour as nb
from ..sources import netlink as nl
from .base import Collector, register

_WIDE = " Machine-wide (every network namespace sees the same table)."
T = ("table",)

AVAILABLE = Metric("nodenet_neighbour_available", GAUGE,
                   "1 if the neighbour tables could be read (RTM_GETNEIGHTBL or "
                   "/proc/net/stat), 0 if not.")
SOURCE_INFO = Metric("nodenet_neighbour_source_info", GAUGE,
                     "Always 1; source is where the neighbour values came from: netlink "
                     "(RTM_GETNEIGHTBL dump) or procfs (/proc/net/stat fallback).", ("source",))
ENTRIES = Metric("nodenet_neighbour_entries", GAUGE,
                 "Entries in the neighbour table (table: arp_cache, ndisc_cache), permanent "
                 "ones included." + _WIDE, T)
LIMIT = Metric("nodenet_neighbour_entries_limit", GAUGE,
               "gc_thresh3 of the table: above it new entries are refused ('neighbor table "
               "overflow!'); the same value as nodenet_neighbour_gc_threshold_entries"
               "{level=\"3\"}." + _WIDE, T)
THRESH = Metric("nodenet_neighbour_gc_threshold_entries", GAUGE,
                "gc_thresh1-3 of the table (level 1: no GC below; 2: GC after 5 s above; "
                "3: hard limit)." + _WIDE, ("table", "level"))
FULLS = Metric("nodenet_neighbour_table_fulls_total", COUNTER,
               "Times the table was full and a forced GC could not make room: a new "
               "neighbour was refused (ndts_table_fulls)." + _WIDE, T)
FORCED_GC = Metric("nodenet_neighbour_forced_gc_runs_total", COUNTER,
                   "Forced garbage collections (entries above gc_thresh2 or 3)." + _WIDE, T)
RES_FAILED = Metric("nodenet_neighbour_resolution_failures_total", COUNTER,
                    "Neighbour resolutions that failed (no ARP/ND answer)." + _WIDE, T)
UNRESOLVED = Metric("nodenet_neighbour_unresolved_discards_total", COUNTER,
                    "Packets dropped while waiting for resolution (the per-neighbour queue was "
                    "full; /proc/net/stat, only in the initial namespace: absent elsewhere)."
                    + _WIDE, T)

PROC_SYSCTL = {"arp_cache": "ipv4", "ndisc_cache": "ipv6"}
REFUSED = (errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENOENT,
           errno.EAFNOSUPPORT)
NETLINK_TIMEOUT = 2.0


@register
class NeighbourCollector(Collector):
    name = "neighbour"
    default_enabled = True
    description = ("Neighbour (ARP/ND) tables: entries beside gc_thresh, table overflows, "
                   "forced GC, resolution failures")
    source = ("rtnetlink RTM_GETNEIGHTBL dump; /proc/net/stat/arp_cache, ndisc_cache "
              "(unresolved discards, fallback)")
    metrics = (AVAILABLE, SOURCE_INFO, ENTRIES, LIMIT, THRESH, FULLS, FORCED_GC, RES_FAILED,
               UNRESOLVED)

    def __init__(self, ctx):
        super().__init__(ctx)
        # Opens an rtnetlink socket in the exporter's namespace (tests substitute a replay).
        self.socket_factory = lambda: nl.NetlinkSocket(nl.NETLINK_ROUTE, timeout=NETLINK_TIMEOUT,
                                                       deadline=NETLINK_TIMEOUT)
        self._sock: nl.NetlinkSocket | None = None
        self._lock = threading.Lock()
        self._source: str | None = None
        self._bad: set[str] = set()

    def collect(self):
        with self._lock:
            return list(self._collect())

    def _netlink(self) -> list[nb.NeighTable]:
        if self._sock is None:
            self._sock = self.socket_factory()
        try:
            return nb.dump(self._sock)
        except BaseException:
            self._close_socket()    # never reuse a socket with a reply possibly queued
            raise

    def _proc_stat(self, table: str, quiet: bool = False) -> nb.ProcStat | None:
        """/proc/net/stat/<table>; None when absent (not the initial namespace) or, with
        ``quiet`` (only unresolved_discards wanted), when unreadable (logged once)."""
        if table not in nb.PROC_FAMILY:
            return None
        try:
            text = procfs.read_text(self.ctx.proc("net", "stat", table))
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return nb.parse_proc_stat(text, table)
        except ParseError as exc:
            if not quiet:
                raise
            if str(exc) not in self._bad:
                self._bad.add(str(exc))
                self.log.warning("unresolved_discards left out", problem=str(exc))
            return None

    def _procfs_tables(self) -> list[nb.NeighTable]:
        out = []
        for name, family in nb.PROC_FAMILY.items():
            stat = self._proc_stat(name)
            if stat is None:
                continue
            table = nb.NeighTable(name, family, stat.entries, stats=dict(stat.totals))
            table.thresholds = tuple(self._gc_thresh(name, i)  # type: ignore[assignment]
                                     for i in (1, 2, 3))
            out.append(table)
        return out

    def _gc_thresh(self, table: str, level: int) -> int | None:
        proto = PROC_SYSCTL.get(table)
        if proto is None:
            return None
        try:
            values = procfs.parse_sysctl_value(procfs.read_text(self.ctx.proc(
                "sys", "net", proto, "neigh", "default", f"gc_thresh{level}")))
        except (FileNotFoundError, NotADirectoryError, ParseError):
            return None
        return values[0] if len(values) == 1 else None

    def _collect(self):
        try:
            tables, source = self._netlink(), "netlink"
            reason = None
        except OSError as exc:
            if exc.errno not in REFUSED:
                raise
            reason = f"RTM_GETNEIGHTBL refused ({exc.strerror or exc})"
            tables, source = self._procfs_tables(), "procfs"
            if not tables:
                self._note_source(None)
                yield self.availability(AVAILABLE, False, f"{reason} and no /proc/net/stat "
                                        "neighbour files")
                return
        self._note_source(source, reason)
        yield self.availability(AVAILABLE, True)
        yield SOURCE_INFO.single(1, source)
        fams = {m: m.family() for m in (ENTRIES, LIMIT, THRESH, FULLS, FORCED_GC, RES_FAILED,
                                        UNRESOLVED)}
        for table in tables:
            key = (table.name,)
            if table.entries is not None:
                fams[ENTRIES].add(key, table.entries)
            for level, value in zip(("1", "2", "3"), table.thresholds, strict=True):
                if value is not None:
                    fams[THRESH].add((table.name, level), value)
            if table.thresholds[2] is not None:
                fams[LIMIT].add(key, table.thresholds[2])
            for metric, field in ((FULLS, "table_fulls"), (FORCED_GC, "forced_gc_runs"),
                                  (RES_FAILED, "res_failed")):
                value = table.stats.get(field)
                if value is not None:
                    fams[metric].add(key, value)
            if source == "netlink":
                stat = self._proc_stat(table.name, quiet=True)
                discards = stat.totals.get("unresolved_discards") if stat else None
            else:
                discards = table.stats.get("unresolved_discards")
            if discards is not None:
                fams[UNRESOLVED].add(key, discards)
        yield from (f for f in fams.values() if f.samples)

    def _note_source(self, source, reason=None):
        if source == self._source:
            return
        if source == "procfs":
            self.log.warning(f"{reason}; reading /proc/net/stat instead (thresholds only where "
                             "the gc_thresh sysctls are visible)", source="procfs")
        elif source == "netlink" and self._source is not None:
            self.log.info("reading neighbour tables over rtnetlink again", source="netlink")
        self._source = source

    def _close_socket(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self):
        with self._lock:
            self._close_socket()
