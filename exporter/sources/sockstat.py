"""Socket usage and the limits beside it: /proc/net/sockstat(6), /proc/sys range lists.

``/proc/net/sockstat`` and ``sockstat6`` are ``KEY: name value name value ...`` lines::

    sockets: used 16
    TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 249
    FRAG: inuse 0 memory 0

Scope, as the kernel keeps it (net/ipv4/proc.c, sockstat_seq_show): ``sockets used``,
``inuse``, ``tw`` and ``FRAG`` are per network namespace (4.x and later; 3.x kernels kept
``sockets used`` and ``tw`` machine-wide), ``orphan``, ``alloc`` and ``mem`` are machine-wide
(one counter for every namespace).  ``mem`` is in pages, ``FRAG memory`` in bytes.
One bad value costs only that value (listed in ``problems``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import ParseError

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_DEC = re.compile(r"[0-9]{1,20}")


@dataclass
class Sockstat:
    """``sections["TCP"]["tw"]``; ``sections["sockets"]["used"]``."""

    sections: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def get(self, section: str, name: str) -> int | None:
        return self.sections.get(section, {}).get(name)


def parse_sockstat(text: str, what: str = "sockstat") -> Sockstat:
    out = Sockstat()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        tokens = rest.split()
        if not sep or not _NAME.fullmatch(key) or len(tokens) % 2:
            out.problems.append(f"{what} line {lineno}: {line.strip()[:60]!r} is not "
                                "'KEY: name value ...'")
            continue
        section = out.sections.setdefault(key, {})
        for name, token in zip(tokens[::2], tokens[1::2], strict=True):
            if not _NAME.fullmatch(name) or not _DEC.fullmatch(token):
                out.problems.append(f"{what} line {lineno}: {key} {name[:20]} = "
                                    f"{token[:20]!r} is not a number")
                continue
            section.setdefault(name, int(token))
    return out


# ------------------------------------------------------------------------- port range lists

MAX_PORT = 65535


def parse_port_list(text: str) -> list[tuple[int, int]]:
    """ip_local_reserved_ports syntax ("8080,30000-32767", may be empty): sorted, merged,
    inclusive (lo, hi) ranges.  Raises ParseError."""
    ranges: list[tuple[int, int]] = []
    text = text.strip()
    if not text:
        return ranges
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not _DEC.fullmatch(lo) or (sep and not _DEC.fullmatch(hi)):
            raise ParseError(f"bad port list element {part[:40]!r}")
        a = int(lo)
        b = int(hi) if sep else a
        if not 0 <= a <= b <= MAX_PORT:
            raise ParseError(f"bad port range {part[:40]!r}")
        ranges.append((a, b))
    return merge(ranges)


def merge(ranges) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def count(ranges) -> int:
    return sum(b - a + 1 for a, b in ranges)


def intersect(ranges, lo: int, hi: int) -> list[tuple[int, int]]:
    """Parts of merged ``ranges`` inside [lo, hi]."""
    return [(max(a, lo), min(b, hi)) for a, b in ranges if a <= hi and b >= lo]


@dataclass(frozen=True)
class EphemeralPorts:
    range_size: int        # ports of ip_local_port_range that are not reserved
    reserved: int          # ports listed in ip_local_reserved_ports (anywhere)
    nodeport_overlap: int  # NodePort-range ports an outgoing connection may take


def ephemeral_ports(local_range: tuple[int, int], reserved: list[tuple[int, int]],
                    nodeport_range: tuple[int, int]) -> EphemeralPorts:
    """What connect() may pick: [lo, hi] of ip_local_port_range minus reserved ports
    (inet_is_local_reserved_port); and how many of those lie in the NodePort range."""
    lo, hi = local_range
    if hi < lo:
        return EphemeralPorts(0, count(reserved), 0)
    size = (hi - lo + 1) - count(intersect(reserved, lo, hi))
    a, b = max(lo, nodeport_range[0]), min(hi, nodeport_range[1])
    overlap = 0
    if a <= b:
        overlap = (b - a + 1) - count(intersect(reserved, a, b))
    return EphemeralPorts(size, count(reserved), overlap)


def parse_port_range_flag(value) -> tuple[int, int]:
    """--collector.sockets.nodeport-range: "30000-32767" (inclusive, 1..65535, lo <= hi)."""
    text = str(value).strip()
    lo, sep, hi = text.partition("-")
    if not sep or not _DEC.fullmatch(lo) or not _DEC.fullmatch(hi):
        raise ValueError(f"not a port range LOW-HIGH: {text!r}")
    a, b = int(lo), int(hi)
    if not 1 <= a <= b <= MAX_PORT:
        raise ValueError(f"port range {text!r} must satisfy 1 <= LOW <= HIGH <= 65535")
    return a, b
