"""The x_tables blob walker on tables captured from the real kernel, and fuzzed.

Fixtures: tests/fixtures/netfilter/legacy_* (capture_legacy.py; iptables-legacy-save of the same
namespace is the witness, read right after the capture).
"""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.sources import ParseError, Unavailable, iptables
from tests.helpers.netfilter_rules import save_counts

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "netfilter"
FAMS = {"ipv4": iptables.IPV4, "ipv6": iptables.IPV6}


def load(fam: str, table: str) -> tuple[iptables.Info, bytes]:
    info = bytes.fromhex((FIX / f"legacy_{fam}_{table}.info.hex").read_text())
    blob = bytes.fromhex((FIX / f"legacy_{fam}_{table}.entries.hex").read_text())
    return iptables.parse_info(info), blob


def cases():
    for fam in FAMS:
        witness = save_counts((FIX / f"legacy_{fam}.save.txt").read_text())
        for table, counts in witness.items():
            yield fam, table, counts


CASES = list(cases())


def test_fixtures_cover_four_ipv4_tables_and_ipv6():
    assert {(f, t) for f, t, _ in CASES} == {("ipv4", "filter"), ("ipv4", "nat"),
                                            ("ipv4", "mangle"), ("ipv4", "raw"),
                                            ("ipv6", "filter")}


@pytest.mark.parametrize("fam,table,counts", CASES, ids=[f"{f}-{t}" for f, t, _ in CASES])
def test_counts_equal_iptables_legacy_save(fam, table, counts):
    info, blob = load(fam, table)
    assert info.name == table and info.size == len(blob)
    t = iptables.parse_entries(FAMS[fam], info, blob)
    assert t.rules == counts["rules"]
    assert dict(t.chains) == dict(counts["chains"])
    # entries = rules + one policy per builtin chain + head and tail per user chain + end
    builtin = info.valid_hooks.bit_count()
    assert t.entries == t.rules + builtin + 2 * (len(t.chains) - builtin) + 1


def test_long_and_empty_user_chains():
    t = iptables.parse_entries(iptables.IPV4, *load("ipv4", "filter"))
    assert t.chains["C" * 28] == 1
    assert t.chains["EMPTY"] == 0
    assert list(t.chains)[:3] == ["INPUT", "FORWARD", "OUTPUT"]


def test_empty_blob_is_an_empty_table():
    info = iptables.Info("x", 0, (0,) * 5, (0,) * 5, 0, 0)
    t = iptables.parse_entries(iptables.IPV4, info, b"")
    assert (t.rules, t.chains) == (0, {})


def test_bad_next_offset_is_a_blob_error():
    info, blob = load("ipv4", "filter")
    off = iptables.IPV4.offsets_at
    bad = blob[:off + 2] + struct.pack("=H", 3) + blob[off + 4:]
    with pytest.raises(ParseError, match="next_offset 3"):
        iptables.parse_entries(iptables.IPV4, info, bad)


def test_short_getinfo_is_a_blob_error():
    with pytest.raises(ParseError):
        iptables.parse_info(b"\0" * 40)


def test_table_names_absent_file_is_none(tmp_path):
    assert iptables.table_names(str(tmp_path), iptables.IPV4) is None
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "ip_tables_names").write_text("nat\nfilter\n")
    assert iptables.table_names(str(tmp_path), iptables.IPV4) == ["nat", "filter"]


def test_scan_without_x_tables_is_unavailable_and_opens_no_socket(tmp_path, monkeypatch):
    def no_socket(*a, **kw):
        raise AssertionError("a socket was opened although no table family is present")
    monkeypatch.setattr(iptables.socket, "socket", no_socket)
    with pytest.raises(Unavailable, match="not loaded"):
        iptables.scan(str(tmp_path))


def test_scan_reads_only_the_listed_tables(tmp_path, monkeypatch):
    """The never-load-a-module rule: GET_INFO is asked only for names the kernel listed."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "ip_tables_names").write_text("filter\n")
    asked = []

    def fake_read(sock, fam, name):
        asked.append((fam.name, name))
        return iptables.parse_entries(fam, *load("ipv4", "filter"))
    monkeypatch.setattr(iptables, "read_table", fake_read)
    tables, problems = iptables.scan(str(tmp_path))
    assert asked == [("ipv4", "filter")] and problems == [] and tables[0].rules == 10


BLOBS = [(FAMS[f], *load(f, t)) for f, t, _ in CASES]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(BLOBS) - 1), data=st.data())
def test_fuzzed_blobs_raise_only_parse_errors(which, data):
    fam, info, blob = BLOBS[which]
    edits = data.draw(st.lists(st.tuples(st.integers(0, max(0, len(blob) - 1)),
                                         st.integers(0, 255)), max_size=8))
    mutated = bytearray(blob)
    for pos, val in edits:
        mutated[pos] = val
    cut = data.draw(st.integers(0, len(blob)))
    try:
        t = iptables.parse_entries(fam, info, bytes(mutated[:cut]))
    except ParseError:
        return
    assert t.rules >= 0 and all(n >= 0 for n in t.chains.values())
    assert t.rules <= len(blob) // fam.entry_size


def test_unreadable_names_file_is_denied_not_a_failure(tmp_path, monkeypatch):
    """/proc/net/ip_tables_names is mode 0440 root: a non-root exporter gets EACCES."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "ip_tables_names").write_text("filter\n")
    real_open = open

    def refusing_open(path, *a, **kw):
        if str(path).endswith("_tables_names"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **kw)
    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(PermissionError, match="root only"):
        iptables.scan(str(tmp_path))
