"""Parsers for procfs/sysfs text: /proc/stat, /proc/net/softnet_stat, /proc/sys, cpu lists.

Each parser is a pure function of the file's text returning dataclasses, raising
:class:`ParseError` on input it cannot understand.  Readers that touch files are separate and
keep "file does not exist" (``FileNotFoundError``) apart from "could not parse".
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import ParseError


@dataclass(frozen=True)
class CpuSteal:
    cpu: str          # "0", "1", ... as in the "cpuN" line
    steal_ticks: int  # USER_HZ ticks


def parse_stat_steal(text: str) -> list[CpuSteal]:
    """Per-CPU steal ticks from /proc/stat (8th value of each cpuN line).

    Kernels before 2.6.11 print only 7 values (no steal): those CPUs are left out.
    """
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        fields = line.split()
        cpu = fields[0][3:]
        if not cpu.isdigit():
            raise ParseError(f"/proc/stat line {lineno}: bad cpu name {fields[0]!r}")
        if len(fields) < 9:
            continue
        try:
            steal = int(fields[8])
        except ValueError:
            raise ParseError(f"/proc/stat line {lineno}: steal {fields[8]!r} is not a number") from None
        if steal < 0:
            raise ParseError(f"/proc/stat line {lineno}: negative steal")
        out.append(CpuSteal(cpu, steal))
    return out


def parse_cpu_list(text: str) -> list[int]:
    """Kernel cpu list syntax ("0-3,8,10-11") as in /sys/devices/system/cpu/online."""
    cpus: list[int] = []
    text = text.strip()
    if not text:
        return cpus
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ParseError(f"bad cpu list element {part!r}") from None
        if a < 0 or b < a or b - a > 1_000_000:
            raise ParseError(f"bad cpu range {part!r}")
        cpus.extend(range(a, b + 1))
    return cpus


@dataclass(frozen=True)
class SoftnetStat:
    cpu: str
    processed: int
    dropped: int
    time_squeeze: int
    received_rps: int | None = None      # since 2.6.35
    flow_limit_count: int | None = None  # since 3.11
    backlog_len: int | None = None       # since 5.10


def parse_softnet(text: str) -> list[SoftnetStat]:
    """/proc/net/softnet_stat: one line per online CPU, hex columns.

    Columns: processed dropped time_squeeze 0 0 0 0 0 cpu_collision received_rps
    flow_limit_count [backlog_len cpu_index [input_qlen process_qlen]].  Kernels before 5.10
    have no cpu index column and skip offline CPUs, so the line number is only a best guess.
    """
    out = []
    for lineno, line in enumerate(text.splitlines()):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 3:
            raise ParseError(f"softnet_stat line {lineno + 1}: {len(fields)} columns, need >= 3")
        try:
            values = [int(f, 16) for f in fields]
        except ValueError:
            raise ParseError(f"softnet_stat line {lineno + 1}: non-hex column") from None
        n = len(values)
        cpu = str(values[12]) if n >= 13 else str(lineno)
        out.append(SoftnetStat(
            cpu=cpu, processed=values[0], dropped=values[1], time_squeeze=values[2],
            received_rps=values[9] if n >= 10 else None,
            flow_limit_count=values[10] if n >= 11 else None,
            backlog_len=values[11] if n >= 13 else None,
        ))
    return out


def parse_sysctl_value(text: str) -> list[int]:
    """A /proc/sys file holding one or more integers (tabs or spaces between)."""
    fields = text.split()
    if not fields:
        raise ParseError("empty sysctl value")
    try:
        return [int(f) for f in fields]
    except ValueError:
        raise ParseError(f"sysctl value {text.strip()[:60]!r} is not numeric") from None


def sysctl_path(procfs: str, name: str) -> str:
    parts = name.split(".")
    if "/" in name or any(p in ("", "..") for p in parts):
        raise ValueError(f"bad sysctl name {name!r}")
    return os.path.join(procfs, "sys", *parts)


def read_text(path: str) -> str:
    with open(path, "rb") as fh:
        return fh.read().decode("utf-8", "replace")
