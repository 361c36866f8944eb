"""Parsers of the sockets and netstat collectors on /proc fixtures of several kernels and on
odd input (tests/fixtures/proc/limits/README.md says where each fixture comes from)."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.sources import ParseError, snmp
from exporter.sources import sockstat as ss

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                   "proc", "limits")


def text(kernel, name):
    with open(os.path.join(FIX, kernel, "net", name)) as fh:
        return fh.read()


# ------------------------------------------------------------------------------ snmp/netstat

@pytest.mark.parametrize("kernel", ["3.10", "4.19", "5.10", "6.18"])
def test_every_kernel_parses_without_problems(kernel):
    for name in ("snmp", "netstat"):
        mib = snmp.parse_mib(text(kernel, name), name)
        assert mib.problems == [], mib.problems
        assert mib.sections
    six = snmp.parse_snmp6(text(kernel, "snmp6"))
    assert six.problems == [] and len(six.sections[""]) > 60


def test_fields_a_kernel_does_not_print_are_absent_not_zero():
    old = snmp.parse_mib(text("3.10", "snmp"))
    assert "MemErrors" not in old.sections["Udp"] and "IgnoredMulti" not in old.sections["Udp"]
    assert old.get("Udp", "RcvbufErrors") == 3112
    assert snmp.parse_mib(text("3.10", "netstat")).get("TcpExt", "TCPSynRetrans") is None
    assert snmp.parse_mib(text("4.19", "snmp")).get("Udp", "MemErrors") is None
    assert snmp.parse_mib(text("5.10", "snmp")).get("Udp", "MemErrors") == 5114
    assert snmp.parse_snmp6(text("5.10", "snmp6")).get("", "Udp6MemErrors") == 5214
    assert snmp.parse_snmp6(text("4.19", "snmp6")).get("", "Udp6MemErrors") is None
    new = snmp.parse_mib(text("6.18", "snmp"))
    assert "OutTransmits" in new.sections["Ip"] and "OutRateLimitHost" in new.sections["Icmp"]
    assert "OutTransmits" not in snmp.parse_mib(text("5.10", "snmp")).sections["Ip"]


def test_signed_and_64_bit_values():
    mib = snmp.parse_mib(text("5.10", "snmp"))
    assert mib.get("Tcp", "MaxConn") == -1
    assert mib.get("Tcp", "OutSegs") == 2**64 - 1


def test_icmpmsg_and_mptcp_sections_are_kept_apart():
    mib = snmp.parse_mib(text("6.18", "snmp"))
    assert set(mib.sections) == {"Ip", "Icmp", "IcmpMsg", "Tcp", "Udp", "UdpLite"}
    ext = snmp.parse_mib(text("6.18", "netstat"), "netstat")
    assert {"TcpExt", "IpExt", "MPTcpExt"} <= set(ext.sections)


def test_odd_snmp_costs_only_the_bad_values():
    mib = snmp.parse_mib(text("odd", "snmp"))
    ip = mib.sections["Ip"]
    assert "InReceives" not in ip and ip["ReasmTimeout"] == 7 and ip["FragCreates"] == 10
    assert "Tcp" not in mib.sections          # 5 values for 6 names: cannot be matched
    assert mib.sections["Udp"] == {"InDatagrams": 100, "NoPorts": 2, "InErrors": 3}  # "+4"
    assert mib.sections["Icmp"] == {"InMsgs": 5, "InDestUnreachs": 6, "OutDestUnreachs": 7}
    joined = "\n".join(mib.problems)
    for needle in ("InReceives = '12x'", "Tcp has 5 values for 6 names", "RcvbufErrors = '+4'",
                   "line 9: not a 'Prefix", "line 10: Icmp values without a header"):
        assert needle in joined, (needle, mib.problems)
    assert len(mib.problems) == 5


def test_odd_netstat_and_snmp6():
    mib = snmp.parse_mib(text("odd", "netstat"), "netstat")
    assert mib.sections["TcpExt"] == {"ListenOverflows": 21, "ListenDrops": 22}
    assert any("IpExt header without values" in p for p in mib.problems)
    six = snmp.parse_snmp6(text("odd", "snmp6"))
    assert six.sections[""] == {"Ip6ReasmFails": 4, "Icmp6InPktTooBigs": 3}
    assert len(six.problems) == 3


def test_empty_and_binary_input():
    assert snmp.parse_mib("").sections == {}
    mib = snmp.parse_mib("\x00\xff: \x01\nIp: A\nIp: 1\n")
    assert mib.sections == {"Ip": {"A": 1}} and len(mib.problems) == 1


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=st.sampled_from("IpTc: \n0123456789-xAB\t"), max_size=200))
def test_parse_mib_never_raises(data):
    mib = snmp.parse_mib(data)
    for section in mib.sections.values():
        assert all(isinstance(v, int) for v in section.values())


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=200))
def test_parse_snmp6_never_raises(data):
    snmp.parse_snmp6(data)


# ------------------------------------------------------------------------------ sockstat

def test_sockstat_of_each_kernel():
    s = ss.parse_sockstat(text("4.19", "sockstat"))
    assert s.problems == []
    assert s.get("sockets", "used") == 412 and s.get("TCP", "tw") == 1904
    assert s.get("TCP", "mem") == 17 and s.get("FRAG", "memory") == 0
    six = ss.parse_sockstat(text("4.19", "sockstat6"), "sockstat6")
    assert six.get("TCP6", "inuse") == 11 and six.get("FRAG6", "memory") == 2624
    live = ss.parse_sockstat(text("6.18", "sockstat"))
    assert live.problems == [] and set(live.sections) == {"sockets", "TCP", "UDP", "UDPLITE",
                                                          "RAW", "FRAG"}


def test_odd_sockstat():
    s = ss.parse_sockstat(text("odd", "sockstat"))
    assert s.sections["TCP"] == {"inuse": 1, "orphan": 0, "alloc": 1, "mem": 1}
    assert "UDP" not in s.sections
    assert len(s.problems) == 2


# ------------------------------------------------------------------------------ port ranges

def test_port_list():
    assert ss.parse_port_list("") == [] and ss.parse_port_list("\n") == []
    assert ss.parse_port_list("8080,30000-30099,30100-30200,9000") == [
        (8080, 8080), (9000, 9000), (30000, 30200)]
    for bad in ("30000-29000", "1-70000", "a", "1,,2", "-5"):
        with pytest.raises(ParseError):
            ss.parse_port_list(bad)


def test_the_issue_examples():
    np = (30000, 32767)
    assert ss.ephemeral_ports((1024, 65535), [], np) == ss.EphemeralPorts(64512, 0, 2768)
    reserved = ss.parse_port_list("30000-32767")
    assert ss.ephemeral_ports((1024, 65535), reserved, np) == ss.EphemeralPorts(61744, 2768, 0)
    assert ss.ephemeral_ports((32768, 60999), [], np) == ss.EphemeralPorts(28232, 0, 0)
    # reserved ports outside the local range count as reserved, not against the size
    assert ss.ephemeral_ports((32768, 60999), ss.parse_port_list("8080,32768"), np) == \
        ss.EphemeralPorts(28231, 2, 0)
    assert ss.ephemeral_ports((31000, 40000), ss.parse_port_list("31000-31009"), np) == \
        ss.EphemeralPorts(8991, 10, 1758)


@settings(deadline=None, max_examples=300)
@given(st.integers(1, 65535), st.integers(1, 65535),
       st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 300)), max_size=5),
       st.integers(1, 65535), st.integers(0, 5000))
def test_ephemeral_ports_equal_a_brute_force_count(lo, hi, res, nlo, nlen):
    reserved = ss.merge([(a, min(65535, a + n)) for a, n in res])
    nhi = min(65535, nlo + nlen)
    got = ss.ephemeral_ports((lo, hi), reserved, (nlo, nhi))
    taken = {p for a, b in reserved for p in range(a, b + 1)}
    usable = {p for p in range(lo, hi + 1) if p not in taken}
    assert got.range_size == len(usable)
    assert got.reserved == len(taken)
    assert got.nodeport_overlap == len({p for p in usable if nlo <= p <= nhi})


def test_nodeport_range_flag():
    assert ss.parse_port_range_flag("30000-32767") == (30000, 32767)
    assert ss.parse_port_range_flag(" 80-80 ") == (80, 80)
    for bad in ("30000", "32767-30000", "0-10", "1-65536", "a-b", "30000-32767-1"):
        with pytest.raises(ValueError):
            ss.parse_port_range_flag(bad)


@pytest.mark.parametrize("kernel", ["3.10", "4.19", "5.10", "6.18", "odd"])
def test_parsing_only_the_wanted_sections_gives_the_same_values(kernel):
    from exporter.collectors.netstat import WANTED
    for name in ("snmp", "netstat"):
        full = snmp.parse_mib(text(kernel, name), name)
        part = snmp.parse_mib(text(kernel, name), name, WANTED[name])
        assert part.sections == {k: v for k, v in full.sections.items() if k in WANTED[name]}
    full6 = snmp.parse_snmp6(text(kernel, "snmp6")).sections[""]
    part6 = snmp.parse_snmp6(text(kernel, "snmp6"), WANTED["snmp6"]).sections[""]
    assert part6 == {k: v for k, v in full6.items() if k in WANTED["snmp6"]}


@settings(deadline=None, max_examples=300)
@given(st.lists(st.one_of(st.integers(0, 2**64 + 5).map(str), st.sampled_from(
    ["-1", "+4", "1x", "０", "²", "0x10", "9" * 21, ""])), min_size=1, max_size=12))
def test_the_fast_value_path_equals_the_per_value_check(tokens):
    tokens = [t for t in tokens if t] or ["0"]
    names = [f"F{i}" for i in range(len(tokens))]
    mib = snmp.parse_mib(f"X: {' '.join(names)}\nX: {' '.join(tokens)}\n")
    slow = {n: snmp._value(t) for n, t in zip(names, tokens, strict=True)}
    assert mib.sections["X"] == {n: v for n, v in slow.items() if v is not None}
