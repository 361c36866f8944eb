"""The netfilter collector never makes the kernel load a module: proven on a modular kernel (UML).

This machine's kernel has nf_tables and ip_tables built in (no /proc/modules), so the rule can
only be unit-tested here (tests/unit/test_nftables_source.py, test_iptables_blob.py). Debian's
user-mode-linux 6.1 kernel builds x_tables, ip_tables, iptable_*, nfnetlink and nf_tables as
modules, and its modprobe serves the kernel's own autoload (tests/vm/uml.py), so there the rule
is checked for real: /proc/modules before and after every scrape (tests/vm/guest/
netfilter_suite.py). Two control steps make the forbidden requests on purpose (a GET_INFO for a
table not in ip_tables_names, an nfnetlink request with nf_tables absent) and show that each
does load a module, so "nothing was loaded" is an observation that could have failed.

Found on that kernel: `nft add table ip ...` is refused with EOPNOTSUPP even once nf_tables is
loaded (the nftables counts themselves are tested against this machine's kernel); a test pins
it, so it fails, asking for nftables cases here, the day the UML kernel accepts tables.

UML is fetched by tests/vm/setup_uml.sh.  A guest that cannot boot fails these tests; never a skip.
"""
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import uml  # noqa: E402
from tests.helpers.exporter_proc import parse_samples, sample  # noqa: E402

TABLE_MODULES = {"x_tables", "ip_tables", "ip6_tables", "iptable_filter", "iptable_nat",
                 "iptable_mangle", "iptable_raw", "nf_tables", "arp_tables"}


@pytest.fixture(scope="module")
def steps():
    res = uml.run_guest("$PY $CODE/tests/vm/guest/netfilter_suite.py", timeout=300,
                        modules=uml.NO_IPVS_MODULES, tag="netfilter")
    res.assert_ok()
    return {s["name"]: s for s in json.loads(res.read("steps.json"))}


def new_modules(step) -> set:
    return set(step["lsmod_after"]) - set(step["lsmod_before"])


def samples(step) -> dict:
    return parse_samples(step["scrape"])


def test_the_kernel_is_modular_and_starts_without_table_modules(steps):
    boot = steps["boot"]
    assert boot["proc_modules"] and not boot["sys_module_nf_tables"]
    assert "nfnetlink" in boot["lsmod_before"]  # conntrack's netlink is there, as on a node
    assert not TABLE_MODULES & set(boot["lsmod_before"]), boot["lsmod_before"]


def test_scrape_with_nothing_loaded_loads_nothing(steps):
    st = steps["scrape, nothing loaded"]
    assert new_modules(st) == set()
    s = samples(st)
    assert sample(s, "nodenet_netfilter_available") == 0
    assert sample(s, "nodenet_scrape_collector_success", collector="netfilter") == 1
    assert "nf_tables not loaded" in st["log"] and "ip_tables" in st["log"]


def test_scrape_of_legacy_filter_loads_no_other_table(steps):
    assert steps["modprobe ip_tables, iptables-legacy -A INPUT"]["names"] == ["filter"]
    st = steps["scrape, ip_tables + iptable_filter"]
    assert new_modules(st) == set()  # neither iptable_nat, ip6_tables nor nf_tables
    s = samples(st)
    assert sample(s, "nodenet_netfilter_available") == 1
    assert sample(s, "nodenet_netfilter_rules", backend="legacy", family="ipv4",
                  table="filter") == 1
    assert sample(s, "nodenet_netfilter_ruleset_commits_total") is None  # no nftables read


def test_controls_show_the_forbidden_requests_do_load_modules(steps):
    assert {"iptable_nat"} <= new_modules(steps["control: GET_INFO nat"])
    assert new_modules(steps["control: nfnetlink GETGEN"]) == {"nf_tables"}


def test_with_nf_tables_loaded_the_collector_reads_it_and_loads_nothing(steps):
    st = steps["scrape, nf_tables loaded"]
    assert new_modules(st) == set()
    s = samples(st)
    assert sample(s, "nodenet_netfilter_ruleset_commits_total") == 1
    assert sample(s, "nodenet_netfilter_rules_partial") == 0
    assert sample(s, "nodenet_netfilter_rules", backend="legacy", family="ipv4",
                  table="nat") == 0  # the control instantiated it; it is listed now


def test_uml_kernel_refuses_nftables_tables(steps):
    st = steps["nft add table ip uml"]
    assert st["sys_module_nf_tables"]
    (cmd, rc, err), *_ = st["nft"]
    assert rc != 0 and "Operation not supported" in err, (
        "the UML kernel now accepts nftables tables: add nftables cases (rules, sets, "
        "commits) to tests/vm/guest/netfilter_suite.py")
