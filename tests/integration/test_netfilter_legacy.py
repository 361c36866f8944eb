"""The netfilter collector's legacy backend against real iptables-legacy tables in a namespace.

The witness is iptables-legacy-save (and ip6tables-legacy-save), read before and after the
scrape: the ruleset is unchanged in between (asserted), so both describe the same moment.
"""
from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.helpers.exporter_proc import ExporterProcess, parse_samples, sample
from tests.helpers.netfilter_rules import legacy_spread, save_counts
from tests.helpers.netns import netns, run

ARGS = ["--collector.disable-defaults", "--collector.netfilter"]


@pytest.fixture(autouse=True)
def _needs_tools():
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces, iptables-legacy)")
    for tool in ("iptables-legacy-restore", "iptables-legacy-save", "ip6tables-legacy-restore",
                 "ip6tables-legacy-save", "setpriv"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing (apt-get install iptables util-linux)")


def restore(ns: str, tool: str, text: str) -> None:
    run([tool], netns=ns, input=text)


def series(samples: dict, name: str) -> dict:
    return {tuple(sorted(dict(lv).items())): v for (n, lv), v in samples.items() if n == name}


def test_2000_rules_in_filter_and_nat_equal_iptables_legacy_save():
    with netns("nn-nf-legacy") as ns:
        restore(ns, "iptables-legacy-restore", legacy_spread(1200, 800))
        restore(ns, "ip6tables-legacy-restore",
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                ":KUBE-FORWARD - [0:0]\n-A FORWARD -j KUBE-FORWARD\n-A KUBE-FORWARD -j DROP\n"
                "-A OUTPUT -p tcp -j ACCEPT\nCOMMIT\n")
        before = {f: run([f"{f}-legacy-save"], netns=ns).stdout
                  for f in ("iptables", "ip6tables")}
        with ExporterProcess(ARGS, netns=ns) as ex:
            samples = parse_samples(ex.scrape())
        after = {f: run([f"{f}-legacy-save"], netns=ns).stdout for f in before}
        def strip(text):  # comments carry the time, policy lines the packet counters
            return [re.sub(r"\[\d+:\d+\]", "", ln) for ln in text.splitlines()
                    if not ln.startswith("#")]
        assert all(strip(before[f]) == strip(after[f]) for f in before), "ruleset moved"

        assert sample(samples, "nodenet_netfilter_available") == 1
        assert sample(samples, "nodenet_scrape_collector_success", collector="netfilter") == 1
        witness = {"ipv4": save_counts(before["iptables"]),
                   "ipv6": save_counts(before["ip6tables"])}
        assert witness["ipv4"]["filter"]["rules"] + witness["ipv4"]["nat"]["rules"] == 2000
        got_rules = series(samples, "nodenet_netfilter_rules")
        want_rules = {(("backend", "legacy"), ("family", fam), ("table", t)): c["rules"]
                      for fam, tables in witness.items() for t, c in tables.items()}
        assert got_rules == want_rules
        got_chains = series(samples, "nodenet_netfilter_chains")
        assert got_chains == {k: len(witness[dict(k)["family"]][dict(k)["table"]]["chains"])
                              for k in want_rules}
        # chain_rules: the default regex picks builtin and the KUBE-* chains it names only
        got_chain = series(samples, "nodenet_netfilter_chain_rules")
        assert got_chain[(("backend", "legacy"), ("chain", "KUBE-SERVICES"), ("family", "ipv4"),
                          ("table", "nat"))] == witness["ipv4"]["nat"]["chains"]["KUBE-SERVICES"]
        want_chain = {}
        for fam, tables in witness.items():
            for t, c in tables.items():
                for chain, n in c["chains"].items():
                    if not chain.startswith("USR-"):
                        want_chain[(("backend", "legacy"), ("chain", chain), ("family", fam),
                                    ("table", t))] = n
        assert got_chain == want_chain
        sizes = series(samples, "nodenet_netfilter_table_bytes")
        assert set(sizes) == set(want_rules) and all(v > 0 for v in sizes.values())


def test_namespace_without_tables_is_available_with_no_series():
    with netns("nn-nf-empty") as ns, ExporterProcess(ARGS, netns=ns) as ex:
        samples = parse_samples(ex.scrape())
    assert sample(samples, "nodenet_netfilter_available") == 1
    assert sample(samples, "nodenet_scrape_collector_success", collector="netfilter") == 1
    # no per-table series; the namespace-wide ones stay (nftables' generation exists with no
    # table: a flush is a commit too)
    node_wide = {"nodenet_netfilter_available", "nodenet_netfilter_ruleset_commits_total",
                 "nodenet_netfilter_rules_partial"}
    table_series = [k for k in samples if k[0].startswith("nodenet_netfilter_")
                    and k[0] not in node_wide]
    assert table_series == []
    assert sample(samples, "nodenet_netfilter_rules_partial") == 0


def test_without_cap_net_admin_available_0_success_1():
    with netns("nn-nf-nocap") as ns:
        restore(ns, "iptables-legacy-restore", legacy_spread(20, 10))
        prefix = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"]
        with ExporterProcess(ARGS, netns=ns, prefix=prefix) as ex:
            samples = parse_samples(ex.scrape())
            log = ex.log()
    assert sample(samples, "nodenet_netfilter_available") == 0
    assert sample(samples, "nodenet_scrape_collector_success", collector="netfilter") == 1
    assert series(samples, "nodenet_netfilter_rules") == {}
    assert "CAP_NET_ADMIN" in log, log
