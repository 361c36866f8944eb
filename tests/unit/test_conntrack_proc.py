"""/proc/net/stat/nf_conntrack parser against fixture files of each layout."""
import dataclasses

import pytest

from exporter.sources import ParseError
from exporter.sources import conntrack as ct

from tests.helpers.conntrack_fixtures import proc_expected, proc_text

LAYOUTS = ["kernel-6.18", "layout-16", "layout-17-searched", "layout-17-clashres", "no-header"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_decode_to_expected_values(layout):
    stat = ct.parse_proc_stat(proc_text(layout))
    want = proc_expected(layout)
    assert stat.entries == want["entries"]
    got = [dataclasses.asdict(c) for c in stat.cpus]
    assert got == want["cpus"]


def test_current_header_maps_clashres_and_chainlength():
    text = ("entries  clashres found new invalid ignore delete chainlength insert insert_failed "
            "drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n"
            "00000001  00000002 00000003 00000000 00000004 00000000 00000000 00000005 00000006 "
            "00000007 00000008 00000009 0000000a  00000000 00000000 00000000 0000000b\n")
    (cpu,) = ct.parse_proc_stat(text).cpus
    assert (cpu.clash_resolve, cpu.found, cpu.invalid, cpu.chaintoolong, cpu.insert,
            cpu.insert_failed, cpu.drop, cpu.early_drop, cpu.error, cpu.search_restart) == (
        2, 3, 4, 5, 6, 7, 8, 9, 10, 11)


def test_sum_over_cpus_keeps_missing_fields_missing():
    totals = ct.sum_stats(ct.parse_proc_stat(proc_text("layout-16")).cpus)
    assert totals["found"] == 17 + 33
    assert totals["search_restart"] is None and totals["clash_resolve"] is None


@pytest.mark.parametrize("text", [
    "",
    "\n\n",
    "entries found\n00000001 00000002\n",                       # too few columns
    "bogus  searched found new invalid ignore delete delete_list insert insert_failed drop "
    "early_drop icmp_error expect_new expect_create expect_delete\n",
    proc_text("layout-16").splitlines()[0] + "\n",             # header only, no rows
    proc_text("layout-16") + "00000001 00000002\n",            # short row
    proc_text("layout-16").replace("00000011", "0000zz11"),    # non-hex
])
def test_malformed_raises_parse_error(text):
    with pytest.raises(ParseError):
        ct.parse_proc_stat(text)


def test_empty_file_is_a_parse_error():
    with pytest.raises(ParseError):
        ct.parse_proc_stat("")
