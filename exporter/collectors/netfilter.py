"""The packet filter's size and churn: iptables-legacy and nftables rules, chains, commits.

Legacy (``backend="legacy"``, ``family`` ipv4 | ipv6): the x_tables getsockopt interface
(``IPT_SO_GET_INFO`` + one ``IPT_SO_GET_ENTRIES`` copy per table, walked without decoding
matches; see exporter/sources/iptables.py), only for the tables listed in
/proc/net/ip_tables_names and ip6_tables_names, so no table module is ever loaded.  Rules are
counted as ``iptables-save`` prints ``-A`` lines.  Legacy tables have no generation counter:
``nodenet_netfilter_table_bytes`` changes with every rewrite, so ``changes()`` of it shows churn.

nftables (``backend="nftables"``, ``family`` the nft names ip, ip6, inet, arp, bridge, netdev:
iptables-nft's tables appear as ``ip``/``ip6``): over nfnetlink (exporter/sources/nftables.py),
only when nf_tables is present (never loaded by us).  Per table chains, rules, named sets and
set elements; ``nodenet_netfilter_ruleset_commits_total`` is the kernel's ruleset generation id
(per namespace, since it was created: an exporter restart does not reset it).  Counting rules
and elements walks the ruleset, so it is bounded by ``--collector.netfilter.timeout`` (clipped
to 3/4 of --collector.timeout); cut short, ``nodenet_netfilter_rules_partial`` is 1.

Everything is about the network namespace the exporter runs in (the node's, with
hostNetwork).  CAP_NET_ADMIN is needed; without it ``nodenet_netfilter_available 0`` (the reason
logged once), success 1.  Cardinality: per backend, family and table (a handful), plus
``nodenet_netfilter_chain_rules`` for the chains matching ``--collector.netfilter.chains`` only
(never the per-Service KUBE-SVC-*/KUBE-SEP-* chains at the default); no per-rule series.
"""
from __future__ import annotations

import errno
import re
import time

from ..config import Option, parse_bool, parse_duration, parse_regex
from ..metrics import COUNTER, GAUGE, Metric
from ..sources import NetlinkError, ParseError, Unavailable, iptables, nftables
from .base import Collector, register

DEFAULT_CHAINS = ("^(KUBE-SERVICES|KUBE-NODEPORTS|KUBE-POSTROUTING|KUBE-FORWARD|"
                  "KUBE-EXTERNAL-SERVICES|KUBE-PROXY-FIREWALL|INPUT|OUTPUT|FORWARD|PREROUTING|"
                  "POSTROUTING)$")

TABLE_LABELS = ("backend", "family", "table")

AVAILABLE = Metric("nodenet_netfilter_available", GAUGE,
                   "1 if the packet filter's tables can be read (CAP_NET_ADMIN), 0 if not; "
                   "1 with no table series when the namespace has no table.")
RULES = Metric("nodenet_netfilter_rules", GAUGE,
               "Rules in the table (legacy: as iptables-save prints -A lines; nftables: rules "
               "of all its chains).", TABLE_LABELS)
CHAINS = Metric("nodenet_netfilter_chains", GAUGE,
                "Chains in the table (builtin and user-defined).", TABLE_LABELS)
TABLE_BYTES = Metric("nodenet_netfilter_table_bytes", GAUGE,
                     "Size of an iptables-legacy table's entries blob in the kernel; it changes "
                     "with most rewrites (legacy tables have no generation counter).",
                     TABLE_LABELS)
CHAIN_RULES = Metric("nodenet_netfilter_chain_rules", GAUGE,
                     "Rules in a chain matching --collector.netfilter.chains.",
                     TABLE_LABELS + ("chain",))

SETS = Metric("nodenet_netfilter_sets", GAUGE,
               "Named sets and maps in an nftables table (anonymous sets belong to rules).",
               TABLE_LABELS)
SET_ELEMENTS = Metric("nodenet_netfilter_set_elements", GAUGE,
                      "Elements of the named sets and maps of an nftables table (a range "
                      "counts once, as nft lists it).", TABLE_LABELS)
COMMITS = Metric("nodenet_netfilter_ruleset_commits_total", COUNTER,
                 "nftables ruleset commits in this network namespace since it was created: "
                 "the kernel's generation id (NFT_MSG_GETGEN), which starts at 1; an exporter "
                 "restart does not reset it.")
PARTIAL = Metric("nodenet_netfilter_rules_partial", GAUGE,
                 "1 if the nftables rule or set element count of this scrape was cut short by "
                 "--collector.netfilter.timeout (the counts cover what was read), else 0.")

TABLE_METRICS = (RULES, CHAINS, TABLE_BYTES, CHAIN_RULES, SETS, SET_ELEMENTS)
NO_CAP = (errno.EPERM, errno.EACCES)
# what a kernel without nf_tables answers (only asked when presence could not be ruled out)
NFT_ABSENT = (errno.EOPNOTSUPP, errno.ENOENT, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT)


@register
class NetfilterCollector(Collector):
    name = "netfilter"
    default_enabled = True
    description = "Packet filter size and churn: iptables-legacy and nftables rules and chains"
    source = ("x_tables getsockopt IPT_SO_GET_INFO/GET_ENTRIES (tables in "
              "/proc/net/ip_tables_names, ip6_tables_names); nfnetlink nf_tables (presence: "
              "/sys/module/nf_tables, built in)")
    metrics = (AVAILABLE,) + TABLE_METRICS + (COMMITS, PARTIAL)
    availability_metric = AVAILABLE  # Unavailable raised by collect(): 0, success 1
    options = (
        Option("collector.netfilter.chains", parse_regex, DEFAULT_CHAINS,
               "Chains whose rule count is exported (nodenet_netfilter_chain_rules); matched "
               "(search) against the chain name", "REGEX"),
        Option("collector.netfilter.timeout", parse_duration, 3.0,
               "Budget of the nftables rule and set element count per scrape (clipped to 3/4 "
               "of --collector.timeout)", "DURATION"),
        Option("collector.netfilter.set-elements", parse_bool, True,
               "Count the elements of nftables named sets and maps (one dump per set)"),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        s = ctx.settings
        pattern = s.get("collector.netfilter.chains", DEFAULT_CHAINS)
        self.chains_re = re.compile(pattern) if pattern else None
        self.timeout = s.get("collector.netfilter.timeout", 3.0)
        self.elements = s.get("collector.netfilter.set-elements", True)
        self.budget = s.get("collector.timeout") or 4.0
        self.nft = nftables.NftReader()
        self._problems: str | None = None
        self._selected: dict[int, tuple[dict, list]] = {}
        self._selected_now: dict[int, tuple[dict, list]] = {}

    def collect(self):
        t0 = time.monotonic()
        self._selected, self._selected_now = self._selected_now, {}
        fams = {m: m.family() for m in TABLE_METRICS}
        absent: list[str] = []
        problems: list[str] = []
        try:
            tables, problems = iptables.scan(self.ctx.procfs)
        except PermissionError as exc:
            raise Unavailable(str(exc)) from None
        except Unavailable as exc:
            absent.append(str(exc))
        else:
            self._legacy(fams, tables)
        extra: list = []
        present, why = nftables.nf_tables_present(self.ctx.procfs, self.ctx.sysfs)
        if not present:
            absent.append(why)
        else:
            seconds = min(self.timeout, max(0.05, t0 + 0.75 * self.budget - time.monotonic()))
            try:
                ruleset = self.nft.read(seconds, self.elements)
            except NetlinkError as exc:
                if exc.errno in NO_CAP:
                    raise Unavailable(f"nftables: {exc} (needs CAP_NET_ADMIN)") from None
                if exc.errno not in NFT_ABSENT:
                    raise
                absent.append(f"nftables: {exc}")
            except ParseError as exc:  # costs the nftables counts only
                problems.append(f"nftables: {exc}")
            else:
                extra = self._nftables(fams, ruleset)
        self._log_problems(problems)
        if len(absent) == 2:
            raise Unavailable("; ".join(absent))
        yield self.availability(AVAILABLE, True)
        yield from fams.values()
        yield from extra

    def _log_problems(self, problems: list[str]) -> None:
        text = "; ".join(problems) or None
        if text != self._problems and text:
            self.log.warning("netfilter tables left out", problems=text)
        self._problems = text

    def _chains(self, fams: dict, lv: tuple, chains: dict[str, int]) -> None:
        want = self.chains_re
        if want is None:
            return
        # an nftables read reused by generation hands the same chains dict again: its
        # selection (a regex search per chain, 15,000 at kube-proxy scale) is kept with it
        hit = self._selected.get(id(chains))
        if hit is not None and hit[0] is chains:
            picked = hit[1]
        else:
            picked = [(c, n) for c, n in chains.items() if want.search(c)]
        self._selected_now[id(chains)] = (chains, picked)
        per_chain = fams[CHAIN_RULES]
        for chain, n in picked:
            per_chain.add(lv + (chain,), n)

    def _legacy(self, fams: dict, tables: list[iptables.Table]) -> None:
        for t in sorted(tables, key=lambda t: (t.family, t.name)):
            lv = ("legacy", t.family, t.name)
            fams[RULES].add(lv, t.rules)
            fams[CHAINS].add(lv, len(t.chains))
            fams[TABLE_BYTES].add(lv, t.size)
            self._chains(fams, lv, t.chains)

    def _nftables(self, fams: dict, rs: nftables.Ruleset) -> list:
        for (family, name), t in sorted(rs.tables.items()):
            lv = ("nftables", family, name)
            fams[RULES].add(lv, t.rules)
            fams[CHAINS].add(lv, len(t.chains))
            fams[SETS].add(lv, t.sets)
            if rs.elements_counted:
                fams[SET_ELEMENTS].add(lv, t.elements)
            self._chains(fams, lv, t.chains)
        return [COMMITS.single(rs.generation), PARTIAL.single(1 if rs.partial else 0)]
