"""Conntrack: table size, limit and per-CPU statistics over ctnetlink, /proc as fallback.

Source.  Raw ctnetlink (``NETLINK_NETFILTER``): ``IPCTNL_MSG_CT_GET_STATS`` (entries and
nf_conntrack_max) and ``IPCTNL_MSG_CT_GET_STATS_CPU`` (per-CPU counters), each ~0.02 ms and
independent of the table size; the expectation count comes from a dump of the (small,
bounded) expectation table.  Netlink needs CAP_NET_ADMIN; without it (EPERM) the collector
reads ``/proc/sys/net/netfilter/nf_conntrack_{count,max}`` and ``/proc/net/stat/nf_conntrack``
(under ``--path.procfs``) instead, reports ``nodenet_conntrack_source_info{source="procfs"}``
and logs once which values it cannot see that way.  A node without conntrack is not a
failure: ``nodenet_conntrack_available 0``, success 1.  "Without" is decided before any
netlink request (no /proc/sys/net/netfilter/nf_conntrack_max and no /sys/module/nf_conntrack),
because a ctnetlink request would make the kernel autoload the modules; a kernel that has the
module but refuses ctnetlink and has no /proc files also ends up at available 0.

Scope.  Everything here is about the network namespace the exporter runs in (the node's, with
``hostNetwork``), except ``nodenet_conntrack_entries_limit``: nf_conntrack_max is global, and
every namespace's own count is compared with it (so one pod namespace can fill up and drop
while the node's table looks fine - see ``--collector.conntrack.netns``).

Options.
- ``--collector.conntrack.per-cpu``: the ``*_total`` counters per CPU (label ``cpu``) instead
  of summed.
- ``--collector.conntrack.states``: dump the table and count entries by protocol and TCP state
  (``nodenet_conntrack_entries_by_state``), under a hard budget
  (``--collector.conntrack.states.max-entries``, ``--collector.conntrack.states.timeout``);
  when the budget is hit the counts cover only what was read and
  ``nodenet_conntrack_entries_by_state_partial`` is 1.
- ``--collector.conntrack.netns``: ``nodenet_conntrack_netns_entries`` for every network
  namespace found under ``--collector.conntrack.netns.dirs`` (default /run/netns) and, with
  hostPID or the host's /proc as --path.procfs, every distinct /proc/<pid>/ns/net (at most
  ``--collector.conntrack.netns.max``).  Namespaces are opened, never created, and read
  through a socket made inside each one (needs CAP_SYS_ADMIN for setns and CAP_NET_ADMIN);
  one that disappears during the scrape is left out.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time

from ..config import Option, parse_bool, parse_duration, parse_list, parse_positive_int
from ..metrics import COUNTER, GAUGE, Column, Metric, Table
from ..sources import ParseError, Unavailable
from ..sources import conntrack as ct
from ..sources import netns, procfs
from .base import Collector, register

ENTRIES = Metric("nodenet_conntrack_entries", GAUGE,
                 "Conntrack entries in the exporter's network namespace (the node's with "
                 "hostNetwork); compare with nodenet_conntrack_entries_limit.")
LIMIT = Metric("nodenet_conntrack_entries_limit", GAUGE,
               "nf_conntrack_max: the global limit that each network namespace's own entry "
               "count is compared with; above it the kernel evicts (early_drop) or drops.")
BUCKETS = Metric("nodenet_conntrack_buckets", GAUGE,
                 "Size of the conntrack hash table (nf_conntrack_buckets / hashsize).")
EXPECT = Metric("nodenet_conntrack_expect_entries", GAUGE,
                "Conntrack expectations (helper-created, e.g. FTP data) in the exporter's "
                "network namespace.")
AVAILABLE = Metric("nodenet_conntrack_available", GAUGE,
                   "1 if this node has conntrack (ctnetlink or /proc), 0 if not (then no other "
                   "conntrack series are exported).")
SOURCE_INFO = Metric("nodenet_conntrack_source_info", GAUGE,
                     "Always 1; source is where the conntrack values came from: netlink "
                     "(ctnetlink, needs CAP_NET_ADMIN) or procfs (fallback).", ("source",))
BY_STATE = Metric("nodenet_conntrack_entries_by_state", GAUGE,
                  "Conntrack entries by protocol and TCP state (state is empty for other "
                  "protocols), from a budgeted table dump; see "
                  "nodenet_conntrack_entries_by_state_partial.", ("protocol", "state"))
BY_STATE_PARTIAL = Metric("nodenet_conntrack_entries_by_state_partial", GAUGE,
                          "1 if the last state dump stopped at its budget (entries or time), so "
                          "nodenet_conntrack_entries_by_state covers only part of the table.")
NETNS_ENTRIES = Metric("nodenet_conntrack_netns_entries", GAUGE,
                       "Conntrack entries in one network namespace (each namespace's count is "
                       "compared with the global nodenet_conntrack_entries_limit). netns is the "
                       "name under /run/netns if any, netns_inode identifies the namespace, "
                       "pod_uid is the Kubernetes pod of a process in it, if any.",
                       ("netns", "netns_inode", "pod_uid"))
NETNS_FOUND = Metric("nodenet_conntrack_netns_namespaces", GAUGE,
                     "Distinct network namespaces found (more than the number of "
                     "nodenet_conntrack_netns_entries series when the cap or the time budget "
                     "was hit, or a namespace vanished while being read).")
NETNS_AVAILABLE = Metric("nodenet_conntrack_netns_available", GAUGE,
                         "With --collector.conntrack.netns: 0 if network namespaces were found "
                         "but none could be read (setns needs CAP_SYS_ADMIN; the reason is "
                         "logged once), else 1.")

# CpuStats field -> counter name and help; the names are a contract (README "Metric reference").
COUNTER_NAMES = {
    "found": ("nodenet_conntrack_found_total",
              "Lookups that found an existing conntrack entry."),
    "invalid": ("nodenet_conntrack_invalid_total",
                "Packets conntrack could not track (malformed, or invalid for the protocol)."),
    "insert": ("nodenet_conntrack_inserts_total", "Entries inserted into the table."),
    "insert_failed": ("nodenet_conntrack_insert_failed_total",
                      "Entries that could not be inserted (e.g. a clash on insert)."),
    "drop": ("nodenet_conntrack_drops_total",
             "Packets dropped because a new entry could not be allocated: the table was full "
             "and nothing could be evicted (\"nf_conntrack: table full, dropping packet\")."),
    "early_drop": ("nodenet_conntrack_early_drops_total",
                   "Unassured entries evicted to make room because the table was full."),
    "error": ("nodenet_conntrack_errors_total",
              "ICMP(v6) errors that referred to no known connection (icmp_error)."),
    "search_restart": ("nodenet_conntrack_search_restarts_total",
                       "Table lookups restarted because a hash resize or change interfered."),
    "clash_resolve": ("nodenet_conntrack_clash_resolves_total",
                      "Insert clashes (e.g. parallel UDP DNS queries) resolved by reusing the "
                      "existing entry."),
    "chaintoolong": ("nodenet_conntrack_chain_too_long_total",
                     "Inserts refused because a hash chain was too long (hash flooding, or too "
                     "few buckets)."),
}
_CPU_NOTE = (" Summed over CPUs; per CPU (label cpu) with --collector.conntrack.per-cpu. "
             "Counts this network namespace's events.")
# Both variants share name and help; `metrics` declares the labelled one (what the label can be).
SUMMED = {f: Metric(n, COUNTER, h + _CPU_NOTE) for f, (n, h) in COUNTER_NAMES.items()}
PER_CPU = {f: Metric(n, COUNTER, h + _CPU_NOTE, ("cpu",)) for f, (n, h) in COUNTER_NAMES.items()}
# --collector.conntrack.per-cpu: one table, (metric, CpuStats field) per column
PER_CPU_COLUMNS: tuple[Column, ...] = tuple((PER_CPU[f], f) for f in COUNTER_NAMES)

NETLINK_TIMEOUT = 2.0


@register
class ConntrackCollector(Collector):
    name = "conntrack"
    default_enabled = True
    description = ("Conntrack entries, limit, buckets and per-CPU stats over ctnetlink "
                   "(/proc fallback); optional state breakdown and per-namespace counts")
    source = ("ctnetlink (CAP_NET_ADMIN); /proc/sys/net/netfilter, /proc/net/stat/nf_conntrack; "
              "/run/netns, /proc/<pid>/ns/net")
    metrics = (ENTRIES, LIMIT, BUCKETS, EXPECT, AVAILABLE, SOURCE_INFO, BY_STATE,
               BY_STATE_PARTIAL, NETNS_ENTRIES, NETNS_FOUND, NETNS_AVAILABLE, *PER_CPU.values())
    availability_metric = AVAILABLE   # Unavailable -> available 0, success 1 (base.py)
    options = (
        Option("collector.conntrack.per-cpu", parse_bool, False,
               "Export the conntrack *_total counters per CPU (label cpu) instead of summed"),
        Option("collector.conntrack.states", parse_bool, False,
               "Count conntrack entries by protocol and TCP state (dumps the table each scrape, "
               "within the budget below)"),
        Option("collector.conntrack.states.max-entries", parse_positive_int, 1_000_000,
               "Budget of --collector.conntrack.states: entries read per scrape", "N"),
        Option("collector.conntrack.states.timeout", parse_duration, 3.0,
               "Budget of --collector.conntrack.states: wall time per scrape", "DURATION"),
        Option("collector.conntrack.netns", parse_bool, False,
               "Export conntrack entries per network namespace (/run/netns and, with hostPID, "
               "/proc/<pid>/ns/net)"),
        Option("collector.conntrack.netns.max", parse_positive_int, 200,
               "At most this many namespaces are reported per scrape", "N"),
        Option("collector.conntrack.netns.dirs", parse_list, ["/run/netns"],
               "Directories of named network namespaces (nsfs bind mounts)", "DIRS"),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        s = ctx.settings
        self.per_cpu = s["collector.conntrack.per-cpu"]
        self.states = s["collector.conntrack.states"]
        self.states_max = s["collector.conntrack.states.max-entries"]
        self.states_timeout = s["collector.conntrack.states.timeout"]
        self.netns = s["collector.conntrack.netns"]
        self.netns_max = s["collector.conntrack.netns.max"]
        self.netns_dirs = s["collector.conntrack.netns.dirs"]
        self._proc_cache = netns.ProcNetCache()   # the /proc walk asks only new processes
        self.budget = s.get("collector.timeout") or 4.0
        # Opens a ctnetlink socket in the exporter's namespace (tests substitute a replay).
        self.netlink_factory = lambda: ct.CtNetlink(NETLINK_TIMEOUT)
        self._nl: ct.CtNetlink | None = None
        self._lock = threading.Lock()
        self._source: str | None = None

    # -- netlink ------------------------------------------------------------------------------

    def _netlink(self):
        """(GlobalStats, [CpuStats], expect count or None) over ctnetlink; raises OSError."""
        if self._nl is None:
            self._nl = self.netlink_factory()
        nl = self._nl
        try:
            glob = nl.stats()
            cpus = nl.stats_cpu()
            try:
                expect = nl.expect_count()
            except ct.NetlinkError as exc:
                if not (ct.is_unavailable(exc) or ct.is_permission(exc)):
                    raise
                expect = None  # no expectation support (nf_conntrack_netlink without exp)
        except BaseException:
            self._close_socket()  # never reuse a socket with a reply possibly still queued
            raise
        return glob, cpus, expect

    def _close_socket(self):
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    # -- procfs -------------------------------------------------------------------------------

    def _read_int(self, path: str) -> int | None:
        try:
            values = procfs.parse_sysctl_value(procfs.read_text(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if len(values) != 1:
            raise ParseError(f"{path}: {len(values)} values, expected 1")
        return values[0]

    def _buckets(self) -> int | None:
        value = self._read_int(self.ctx.proc("sys", "net", "netfilter", "nf_conntrack_buckets"))
        if value is None:
            value = self._read_int(self.ctx.sys("module", "nf_conntrack", "parameters",
                                                "hashsize"))
        return value

    def _procfs(self):
        """(entries, limit, [CpuStats] or None, expect or None, missing list) or None."""
        entries = self._read_int(self.ctx.proc("sys", "net", "netfilter", "nf_conntrack_count"))
        stat = None
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            stat = ct.parse_proc_stat(procfs.read_text(self.ctx.proc("net", "stat",
                                                                     "nf_conntrack")))
        if entries is None:
            if stat is None:
                return None
            entries = stat.entries
        limit = self._read_int(self.ctx.proc("sys", "net", "netfilter", "nf_conntrack_max"))
        expect = None
        try:
            with open(self.ctx.proc("net", "nf_conntrack_expect"), "rb") as fh:
                expect = sum(1 for line in fh if line.strip())
        except OSError:
            pass
        missing = []
        if stat is None:
            missing.append("all per-CPU counters (no /proc/net/stat/nf_conntrack: "
                           "CONFIG_NF_CONNTRACK_PROCFS off)")
        else:
            lacking = [f for f in ("clash_resolve", "chaintoolong")
                       if all(getattr(c, f) is None for c in stat.cpus)]
            if lacking:
                missing.append(f"{'/'.join(lacking)} (old /proc layout)")
        if expect is None:
            missing.append("expectation count")
        if limit is None:
            missing.append("entries limit")
        return entries, limit, (stat.cpus if stat else None), expect, missing

    # -- collect ------------------------------------------------------------------------------

    def collect(self):
        t0 = time.monotonic()
        with self._lock:
            families = list(self._collect(t0))
        return families

    def _module_present(self) -> bool:
        """nf_conntrack loaded (or built in)?  Checked first so that a ctnetlink request never
        makes the kernel autoload nf_conntrack(_netlink) on a node that does not use it."""
        return (os.path.exists(self.ctx.proc("sys", "net", "netfilter", "nf_conntrack_max"))
                or os.path.isdir(self.ctx.sys("module", "nf_conntrack")))

    def _collect(self, t0):
        if not self._module_present():
            self._note_source(None)
            raise Unavailable("nf_conntrack is not loaded (no /proc/sys/net/netfilter/"
                              "nf_conntrack_max, no /sys/module/nf_conntrack)")
        entries, limit, cpus, expect, source = self._read()
        yield self.availability(AVAILABLE, True)
        yield from self._emit(t0, entries, limit, cpus, expect, source)

    def _read(self):
        """(entries, limit, per-CPU stats, expectations, source) over ctnetlink, else /proc;
        Unavailable when neither can be read."""
        reason = None
        try:
            glob, cpus, expect = self._netlink()
            entries, limit, source = glob.entries, glob.max_entries, "netlink"
            if limit is None:
                limit = self._read_int(self.ctx.proc("sys", "net", "netfilter",
                                                     "nf_conntrack_max"))
        except OSError as exc:
            if ct.is_permission(exc):
                reason = "ctnetlink not permitted (EPERM: the exporter lacks CAP_NET_ADMIN)"
            elif ct.is_unavailable(exc):
                reason = f"ctnetlink not available ({exc.strerror or exc})"
            else:
                raise
            fallback = self._procfs()
            if fallback is None:
                self._note_source(None)
                raise Unavailable(f"{reason} and no /proc conntrack files") from None
            entries, limit, cpus, expect, missing = fallback
            source = "procfs"
            if self.states:
                missing.append("entries by state (--collector.conntrack.states)")
            if self.netns:
                missing.append("per-namespace entries (--collector.conntrack.netns)")
            self._note_source(source, reason, missing)
        else:
            self._note_source(source)
        return entries, limit, cpus, expect, source

    def _emit(self, t0, entries, limit, cpus, expect, source):
        yield SOURCE_INFO.single(1, source)
        yield ENTRIES.single(entries)
        if limit is not None:
            yield LIMIT.single(limit)
        buckets = self._buckets()
        if buckets is not None:
            yield BUCKETS.single(buckets)
        if expect is not None:
            yield EXPECT.single(expect)
        if cpus:
            yield from self._counters(cpus)
        if source == "netlink":
            if self.states:
                yield from self._states(t0)
            if self.netns:
                yield from self._namespaces(t0)

    def _note_source(self, source, reason=None, missing=()):
        if source == self._source:
            return
        if source == "procfs":
            self.log.warning(
                f"{reason}; reading /proc instead, which cannot show: "
                f"{', '.join(missing) if missing else 'nothing missing'}",
                source="procfs")
        elif source == "netlink" and self._source is not None:
            self.log.info("reading conntrack over ctnetlink again", source="netlink")
        self._source = source

    def _counters(self, cpus):
        if self.per_cpu:
            # one row per CPU; a counter this kernel lacks (None) is no sample
            table = Table.of(PER_CPU_COLUMNS, ("cpu",))
            table.add_rows([table.labelset((str(c.cpu),)) for c in cpus], cpus)
            yield table
        else:
            for fld, total in ct.sum_stats(cpus).items():
                if total is not None:
                    yield SUMMED[fld].single(total)

    def _states(self, t0):
        """The optional breakdown; its failure costs only itself (partial 1, a log line).

        Its time budget is also clipped to 3/4 of --collector.timeout (from the start of
        this collection), so the dump ends partial instead of the collector being abandoned.
        """
        fam = BY_STATE.family()
        seconds = min(self.states_timeout, max(0.05, t0 + 0.75 * self.budget - time.monotonic()))
        try:
            nl = self.netlink_factory()
            try:
                counter, partial = nl.state_counts(self.states_max, seconds)
            finally:
                nl.close()
        except (OSError, ParseError) as exc:
            self.say("states", f"conntrack state dump failed: {exc}")
            yield fam
            yield BY_STATE_PARTIAL.single(1)
            return
        self.say("states", None)
        for (proto, state), n in sorted(counter.named().items()):
            fam.add((proto, state), n)
        yield fam
        yield BY_STATE_PARTIAL.single(1 if partial else 0)

    def _namespaces(self, t0):
        found = netns.discover(self.netns_dirs, self.ctx.procfs, cache=self._proc_cache)
        chosen = found[: self.netns_max]
        netns.fill_pod_uids(chosen, self.ctx.procfs)
        deadline = t0 + 0.75 * self.budget
        counts, skipped = ct.count_in_namespaces(chosen, NETLINK_TIMEOUT, deadline)
        if skipped:
            self.log.debug("network namespaces skipped", skipped=skipped[:20])
        readable = not (chosen and not counts)
        if not readable:
            self.say("netns", "no network namespace could be read (setns needs "
                            f"CAP_SYS_ADMIN, ctnetlink CAP_NET_ADMIN): {'; '.join(skipped[:3])}")
        else:
            self.say("netns", None)
        yield NETNS_AVAILABLE.single(1 if readable else 0)
        fam = NETNS_ENTRIES.family()
        for c in counts:
            fam.add((c.ns.name, str(c.ns.inode), c.ns.pod_uid), c.entries)
        yield fam
        yield NETNS_FOUND.single(len(found))

    def close(self):
        with self._lock:
            self._close_socket()

