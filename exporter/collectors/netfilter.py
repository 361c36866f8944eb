"""The packet filter's size and churn: iptables-legacy and nftables rules, chains, commits.

Legacy (``backend="legacy"``, ``family`` ipv4 | ipv6): the x_tables getsockopt interface
(``IPT_SO_GET_INFO`` + one ``IPT_SO_GET_ENTRIES`` copy per table, walked without decoding
matches; see exporter/sources/iptables.py), only for the tables listed in
/proc/net/ip_tables_names and ip6_tables_names, so no table module is ever loaded.  Rules are
counted as ``iptables-save`` prints ``-A`` lines.  Legacy tables have no generation counter:
``nodenet_netfilter_table_bytes`` changes with every rewrite, so ``changes()`` of it shows churn.

Everything is about the network namespace the exporter runs in (the node's, with
hostNetwork).  CAP_NET_ADMIN is needed; without it ``nodenet_netfilter_available 0`` (the reason
logged once), success 1.  Cardinality: per backend, family and table (a handful), plus
``nodenet_netfilter_chain_rules`` for the chains matching ``--collector.netfilter.chains`` only
(never the per-Service KUBE-SVC-*/KUBE-SEP-* chains at the default); no per-rule series.
"""
from __future__ import annotations

import re

from ..config import Option, parse_regex
from ..metrics import GAUGE, Metric
from ..sources import iptables
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

LEGACY_METRICS = (RULES, CHAINS, TABLE_BYTES, CHAIN_RULES)


@register
class NetfilterCollector(Collector):
    name = "netfilter"
    default_enabled = True
    description = "Packet filter size and churn: iptables-legacy and nftables rules and chains"
    source = ("x_tables getsockopt IPT_SO_GET_INFO/GET_ENTRIES (tables in "
              "/proc/net/ip_tables_names, ip6_tables_names)")
    metrics = (AVAILABLE,) + LEGACY_METRICS
    options = (
        Option("collector.netfilter.chains", parse_regex, DEFAULT_CHAINS,
               "Chains whose rule count is exported (nodenet_netfilter_chain_rules); matched "
               "(search) against the chain name", "REGEX"),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        pattern = ctx.settings.get("collector.netfilter.chains", DEFAULT_CHAINS)
        self.chains_re = re.compile(pattern) if pattern else None
        self._problems: str | None = None

    def collect(self):
        try:
            tables, problems = iptables.scan(self.ctx.procfs)
        except iptables.Unavailable as exc:
            yield self.availability(AVAILABLE, False, str(exc))
            return
        self._log_problems(problems)
        yield self.availability(AVAILABLE, True)
        yield from self._legacy(tables)

    def _log_problems(self, problems: list[str]) -> None:
        text = "; ".join(problems) or None
        if text != self._problems and text:
            self.log.warning("netfilter tables left out", problems=text)
        self._problems = text

    def _legacy(self, tables: list[iptables.Table]):
        rules, chains, size, per_chain = (m.family() for m in LEGACY_METRICS)
        want = self.chains_re
        for t in sorted(tables, key=lambda t: (t.family, t.name)):
            lv = ("legacy", t.family, t.name)
            rules.add(lv, t.rules)
            chains.add(lv, len(t.chains))
            size.add(lv, t.size)
            if want is not None:
                for chain, n in t.chains.items():
                    if want.search(chain):
                        per_chain.add(lv + (chain,), n)
        return rules, chains, size, per_chain
