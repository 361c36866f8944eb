"""Parsers for the protocol MIB files: /proc/net/snmp, /proc/net/netstat, /proc/net/snmp6.

``snmp`` and ``netstat`` are pairs of lines, a header and its values, under one prefix::

    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors ...
    Udp: 52 0 0 53 0 ...

``snmp6`` is one ``Name value`` per line (``Udp6RcvbufErrors   0``).  Kernels add fields over
time (Udp IgnoredMulti in 3.19, MemErrors later, Icmp OutRateLimitGlobal in 6.x, Ip
OutTransmits in 6.3): the parsers are driven by the names the kernel prints, so a field a
kernel lacks is simply absent from the result (never 0).  Every value is kept per field: one
bad value costs only that field, and a header whose value line is missing or has a different
number of columns costs only that section (its values cannot be matched to names).  What was
dropped is listed in ``Mib.problems`` for the caller to log.

All of these counters are kept per network namespace by the kernel: the files read under
``/proc/net`` (= ``/proc/self/net``) describe the reader's namespace, and
``/proc/<pid>/net/...`` another process's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# The kernel prints unsigned 64-bit counters and a few signed values (Tcp MaxConn -1).
_VALUE = re.compile(r"-?[0-9]{1,20}")
_MAX_U64 = (1 << 64) - 1


def _value(text: str) -> int | None:
    if not _VALUE.fullmatch(text):
        return None
    value = int(text)
    return value if -_MAX_U64 <= value <= _MAX_U64 else None


def _all_unsigned(tokens: list[str]) -> bool:
    """The common case, checked in C: every token plain ASCII digits of at most 20 (a u64 has
    at most 20; a 20-digit value above 2**64-1 is caught by the caller's range check)."""
    joined = "".join(tokens)
    return joined.isascii() and joined.isdigit() and max(map(len, tokens)) <= 20


@dataclass
class Mib:
    """Sections of a MIB file: ``sections["TcpExt"]["ListenOverflows"]``; what was dropped."""

    sections: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def get(self, section: str, name: str) -> int | None:
        return self.sections.get(section, {}).get(name)


def parse_mib(text: str, what: str = "snmp", only: frozenset[str] | None = None) -> Mib:
    """/proc/net/snmp or /proc/net/netstat: header/value line pairs per ``Prefix:``.

    ``only``: the prefixes wanted (others are skipped unparsed: the collectors read a few
    sections of files that hold many)."""
    mib = Mib()
    pending: tuple[str, list[str], int] | None = None   # (prefix, names, line number)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        prefix, sep, rest = line.partition(":")
        if only is not None and sep and prefix not in only:
            continue
        tokens = rest.split()
        if not sep or not _NAME.fullmatch(prefix):
            mib.problems.append(f"{what} line {lineno}: not a 'Prefix: ...' line")
            continue
        if pending is not None and pending[0] == prefix:
            _values(mib, what, pending, tokens, lineno)
            pending = None
            continue
        if pending is not None:
            mib.problems.append(f"{what} line {pending[2]}: {pending[0]} header without values")
            pending = None
        if tokens and all(t.isidentifier() and t.isascii() for t in tokens):
            pending = (prefix, tokens, lineno)
        else:
            mib.problems.append(f"{what} line {lineno}: {prefix} values without a header")
    if pending is not None:
        mib.problems.append(f"{what} line {pending[2]}: {pending[0]} header without values")
    return mib


def _values(mib: Mib, what: str, pending, tokens: list[str], lineno: int) -> None:
    prefix, names, _ = pending
    if len(tokens) != len(names):
        mib.problems.append(f"{what} line {lineno}: {prefix} has {len(tokens)} values for "
                            f"{len(names)} names (section dropped)")
        return
    if prefix in mib.sections:
        mib.problems.append(f"{what} line {lineno}: {prefix} repeated (first kept)")
        return
    if _all_unsigned(tokens):
        values = list(map(int, tokens))
        if max(values) <= _MAX_U64:
            mib.sections[prefix] = dict(zip(names, values, strict=True))
            return
    section: dict[str, int] = {}
    for name, token in zip(names, tokens, strict=True):
        value = _value(token)
        if value is None:
            mib.problems.append(f"{what} line {lineno}: {prefix} {name} = {token[:30]!r} "
                                "is not a number")
        else:
            section[name] = value
    mib.sections[prefix] = section


def parse_snmp6(text: str, only: frozenset[str] | None = None) -> Mib:
    """/proc/net/snmp6: ``Ip6InReceives  1`` per line, kept in one section named ``""``.
    ``only``: the names wanted (other lines are skipped unparsed)."""
    mib = Mib()
    values: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or (only is not None and fields[0] not in only):
            continue
        value = _value(fields[1]) if len(fields) == 2 else None
        if value is None or not _NAME.fullmatch(fields[0]):
            mib.problems.append(f"snmp6 line {lineno}: {line.strip()[:60]!r} is not 'Name value'")
            continue
        values.setdefault(fields[0], value)
    mib.sections[""] = values
    return mib
