"""The netfilter collector's nftables backend against real nf_tables state in a namespace.

Witnesses: ``nft -j list ruleset`` read before and after the scrape (equal, so both describe
the scrape's moment), and ``nft monitor``, which prints the kernel's generation id after each
commit ("# new generation N by process ..."), for the commit counter.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests.helpers.exporter_proc import ExporterProcess, parse_samples, sample
from tests.helpers.netfilter_rules import nft_json_counts, nft_script
from tests.helpers.netns import netns, run

ARGS = ["--collector.disable-defaults", "--collector.netfilter"]


@pytest.fixture(autouse=True)
def _needs_tools():
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces, nft)")
    if not shutil.which("nft"):
        pytest.fail("nft missing (apt-get install nftables)")


def nft_json(ns: str) -> dict:
    return json.loads(run(["nft", "-j", "list", "ruleset"], netns=ns).stdout)


def without_counters(doc: dict) -> str:
    return re.sub(r'"(packets|bytes)": \d+', "", json.dumps(doc, sort_keys=True))


def series(samples: dict, name: str) -> dict:
    return {tuple(sorted(dict(lv).items())): v for (n, lv), v in samples.items() if n == name}


def test_500_rules_in_20_chains_equal_nft_json():
    with netns("nn-nf-nft") as ns:
        run(["nft", "-f", "-"], netns=ns, input=nft_script(500, 20))
        # iptables-nft's view of the same kernel: family ip, table filter
        run(["iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
            netns=ns)
        before = nft_json(ns)
        with ExporterProcess(ARGS, netns=ns) as ex:
            samples = parse_samples(ex.scrape())
        after = nft_json(ns)
        assert without_counters(before) == without_counters(after), "ruleset moved"
        want = nft_json_counts(before)
        want.pop(None)
        assert want[("inet", "nn-test")]["chains"].total() == 500
        assert len(want[("inet", "nn-test")]["chains"]) == 20

        assert sample(samples, "nodenet_netfilter_available") == 1
        assert sample(samples, "nodenet_netfilter_rules_partial") == 0

        def key(fam, table):
            return (("backend", "nftables"), ("family", fam), ("table", table))
        got = {name: {k: v for k, v in series(samples, f"nodenet_netfilter_{name}").items()
                      if dict(k)["backend"] == "nftables"}
               for name in ("rules", "chains", "sets", "set_elements")}
        assert got["rules"] == {key(f, t): c["chains"].total() for (f, t), c in want.items()}
        assert got["chains"] == {key(f, t): len(c["chains"]) for (f, t), c in want.items()}
        assert got["sets"] == {key(f, t): c["sets"] for (f, t), c in want.items()}
        assert got["set_elements"] == {key(f, t): c["elements"] for (f, t), c in want.items()}
        assert got["sets"][key("inet", "nn-test")] == 2
        assert got["set_elements"][key("inet", "nn-test")] == 80
        assert got["rules"][key("ip", "filter")] == 1
        per_chain = series(samples, "nodenet_netfilter_chain_rules")
        # the default regex names builtin iptables chains: iptables-nft's INPUT is one
        assert per_chain == {(("backend", "nftables"), ("chain", "INPUT"), ("family", "ip"),
                              ("table", "filter")): 1}


def _monitor_generations(proc: subprocess.Popen) -> list[int]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    return [int(g) for g in re.findall(r"# new generation (\d+)", out)]


def test_commits_counter_follows_the_kernels_generation():
    with netns("nn-nf-gen") as ns:
        run(["nft", "-f", "-"], netns=ns, input=nft_script(40, 4))
        with ExporterProcess(ARGS, netns=ns) as ex:
            g1 = sample(parse_samples(ex.scrape()), "nodenet_netfilter_ruleset_commits_total")
            mon = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "monitor"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                time.sleep(0.5)  # monitor subscribed before the first commit
                run(["nft", "add", "rule", "inet", "nn-test", "input", "accept"], netns=ns)
                run(["nft", "add", "chain", "inet", "nn-test", "extra"], netns=ns)
                run(["nft", "-f", "-"], netns=ns,  # one transaction of two commands
                    input="add rule inet nn-test extra drop\nadd rule inet nn-test extra drop\n")
                time.sleep(0.5)
            finally:
                gens = _monitor_generations(mon)
            samples = parse_samples(ex.scrape())
        g2 = sample(samples, "nodenet_netfilter_ruleset_commits_total")
        assert len(gens) == 3, gens
        assert g2 == gens[-1]
        assert g2 - g1 == 3 == gens[-1] - gens[0] + 1
        rules = sample(samples, "nodenet_netfilter_rules", backend="nftables", family="inet",
                       table="nn-test")
        assert rules == 40 + 3
