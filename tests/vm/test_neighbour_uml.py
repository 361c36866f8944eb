"""Neighbour table overflow for real, in User-Mode Linux (issue 14).

The guest lowers gc_thresh1-3 to 8/16/32 (its own kernel: nothing on this machine changes),
adds 200 ordinary ARP entries on a dummy device (every refused add is counted), and scrapes the neighbour collector before
and after (tests/vm/guest/neighbour_overflow.py).  Checked here: table_fulls rises as the
kernel's own `ip -s ntable` says (and as /proc/net/stat/arp_cache, read at the same moment),
entries equal the kernel's count, the limit is the lowered gc_thresh3, and the two neighbour
alerts' expressions are true on the scraped values under promtool.  Never a skip.
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import uml  # noqa: E402


@pytest.fixture(scope="module")
def result():
    res = uml.run_guest("$PY $CODE/tests/vm/guest/neighbour_overflow.py", timeout=180,
                        modules=("dummy",), tag="neighbour-overflow")
    res.assert_ok()
    return json.loads(res.read("neighbour.json"))


def samples(snap):
    return {(name, tuple(labels)): value for name, labels, value in snap["samples"]}


def ntable(text, key):
    m = re.search(rf"\b{key} (\d+)", text)
    assert m, (key, text)
    return int(m.group(1))


def proc_total(text, column):
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    i = lines[0].index(column)
    return sum(int(row[i], 16) for row in lines[1:])


def test_table_fulls_rise_as_the_kernel_says(result):
    before, after = samples(result["before"]), samples(result["after"])
    key = ("nodenet_neighbour_table_fulls_total", ("arp_cache",))
    assert after[key] == ntable(result["after"]["ntable"], "table_fulls")
    assert after[key] == proc_total(result["after"]["proc_stat"], "table_fulls")
    assert before[key] == ntable(result["before"]["ntable"], "table_fulls") == 0
    # each refused add is one table_full (entries older than 5 s become evictable by the
    # forced GC, so later adds succeed again: refusals come in bursts, all of them counted)
    assert after[key] - before[key] == result["refused"] > 0, result["ip_stderr"][-300:]


def test_entries_and_limits_are_the_kernels(result):
    after = samples(result["after"])
    assert after[("nodenet_neighbour_entries", ("arp_cache",))] == \
        ntable(result["after"]["ntable"], "entries")
    assert after[("nodenet_neighbour_entries_limit", ("arp_cache",))] == 32
    for level, value in zip(("1", "2", "3"), result["thresh"], strict=True):
        assert after[("nodenet_neighbour_gc_threshold_entries", ("arp_cache", level))] == value
    assert after[("nodenet_neighbour_source_info", ("netlink",))] == 1
    # initial namespace of the guest: /proc/net/stat exists, so unresolved discards are there
    assert ("nodenet_neighbour_unresolved_discards_total", ("arp_cache",)) in after


def test_the_alert_expressions_fire_on_the_scraped_values(result, tmp_path):
    """promtool evaluates the real rules on series made of the two scrapes (before at 0m, the
    overflowed values from 1m on) and must fire both neighbour alerts for arp_cache."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is needed"
    before, after = samples(result["before"]), samples(result["after"])
    lb = 'job="nodenet-exporter",instance="uml:9834",table="arp_cache"'
    series = []
    for name in ("nodenet_neighbour_entries", "nodenet_neighbour_entries_limit",
                 "nodenet_neighbour_table_fulls_total"):
        b, a = before[(name, ("arp_cache",))], after[(name, ("arp_cache",))]
        series.append({"series": f"{name}{{{lb}}}", "values": f"{b:g} {a:g}x20"})
    rules = str(ROOT / "alerts" / "nodenet.rules.yaml")
    test = {"rule_files": [rules], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        # Overflow: increase > 0 from 1m, for 1m -> firing at 2m; NearFull: for 10m -> 11m
        "promql_expr_test": [
            {"expr": 'ALERTS{alertname="NodenetNeighbourTableOverflow",alertstate="firing"}',
             "eval_time": "2m", "exp_samples": [
                 {"labels": 'ALERTS{alertname="NodenetNeighbourTableOverflow",'
                            f'alertstate="firing",{lb},severity="critical"}}', "value": 1}]},
            {"expr": 'ALERTS{alertname="NodenetNeighbourTableNearFull",alertstate="firing"}',
             "eval_time": "11m", "exp_samples": [
                 {"labels": 'ALERTS{alertname="NodenetNeighbourTableNearFull",'
                            f'alertstate="firing",{lb},severity="warning"}}', "value": 1}]}]}]}
    path = tmp_path / "neighbour-uml.test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    res = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
