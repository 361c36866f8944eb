"""Parsers for procfs/sysfs text: /proc/stat, /proc/net/softnet_stat, /proc/sys, cpu lists.

Each parser is a pure function of the file's text returning dataclasses, raising
:class:`ParseError` on input it cannot understand.  Readers that touch files are separate and
keep "file does not exist" (``FileNotFoundError``) apart from "could not parse".
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from . import ParseError

# Python's int() also takes "+1", "-1", "1_0", " 1", "0x1f" (base 16) and non-ASCII digits,
# and raises ValueError past 4300 digits; the kernel prints none of these and nothing wider
# than 64 bits, so a field must match one of these first.
_DEC = re.compile(r"[0-9]{1,20}")
_SIGNED_DEC = re.compile(r"-?[0-9]{1,20}")
_HEX = re.compile(r"[0-9a-fA-F]{1,16}")


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
        if not _DEC.fullmatch(cpu):
            raise ParseError(f"/proc/stat line {lineno}: bad cpu name {fields[0]!r}")
        if len(fields) < 9:
            continue
        if not _DEC.fullmatch(fields[8]):
            raise ParseError(f"/proc/stat line {lineno}: steal {fields[8][:40]!r} is not a number")
        steal = int(fields[8])
        out.append(CpuSteal(cpu, steal))
    return out


def parse_stat_cpus(text: str) -> list[str]:
    """The CPUs /proc/stat has a ``cpuN`` line for (the online ones), old kernels included."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name = line.split(maxsplit=1)[0][3:]
        if not _DEC.fullmatch(name):
            raise ParseError(f"/proc/stat line {lineno}: bad cpu name {line[:40]!r}")
        out.append(name)
    return out


MAX_CPUS = 1 << 16  # NR_CPUS is at most 8192 today; more than this is not a cpu list


def parse_cpu_list(text: str) -> list[int]:
    """Kernel cpu list syntax ("0-3,8,10-11") as in /sys/devices/system/cpu/online."""
    cpus: list[int] = []
    text = text.strip()
    if not text:
        return cpus
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        if not _DEC.fullmatch(lo) or (sep and not _DEC.fullmatch(hi)):
            raise ParseError(f"bad cpu list element {part[:40]!r}")
        a = int(lo)
        b = int(hi) if sep else a
        if b < a or b >= MAX_CPUS:
            raise ParseError(f"bad cpu range {part[:40]!r}")
        if b - a + 1 > MAX_CPUS - len(cpus):
            raise ParseError(f"cpu list names more than {MAX_CPUS} CPUs")
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


SOFTNET_MIN_COLUMNS = 9  # processed..cpu_collision: every kernel since 2.6 prints at least these


def parse_softnet(text: str, skipped: list[str] | None = None) -> list[SoftnetStat]:
    """/proc/net/softnet_stat: one line per online CPU, hex columns.

    Columns: processed dropped time_squeeze 0 0 0 0 0 cpu_collision received_rps
    flow_limit_count [backlog_len cpu_index [input_qlen process_qlen]].  Kernels before 5.10
    have no cpu index column and skip offline CPUs, so the line number is only a best guess.

    A row no kernel writes (fewer than 9 columns, a column that is not a 64-bit hex number) is
    left out, its reason appended to ``skipped``: it costs that CPU only.  ParseError when no
    row is valid.
    """
    out = []
    bad: list[str] = []
    for lineno, line in enumerate(text.splitlines()):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < SOFTNET_MIN_COLUMNS:
            bad.append(f"softnet_stat line {lineno + 1}: {len(fields)} columns, "
                       f"need >= {SOFTNET_MIN_COLUMNS}")
            continue
        if not all(_HEX.fullmatch(f) for f in fields):
            bad.append(f"softnet_stat line {lineno + 1}: non-hex column")
            continue
        values = [int(f, 16) for f in fields]
        n = len(values)
        cpu = str(values[12]) if n >= 13 else str(lineno)
        out.append(SoftnetStat(
            cpu=cpu, processed=values[0], dropped=values[1], time_squeeze=values[2],
            received_rps=values[9] if n >= 10 else None,
            flow_limit_count=values[10] if n >= 11 else None,
            backlog_len=values[11] if n >= 13 else None,
        ))
    if skipped is not None:
        skipped.extend(bad)
    if not out:
        raise ParseError(bad[0] if bad else "softnet_stat: no rows")
    return out


def parse_sysctl_value(text: str) -> list[int]:
    """A /proc/sys file holding one or more integers (tabs or spaces between)."""
    fields = text.split()
    if not fields:
        raise ParseError("empty sysctl value")
    if not all(_SIGNED_DEC.fullmatch(f) for f in fields):
        raise ParseError(f"sysctl value {text.strip()[:60]!r} is not numeric")
    return [int(f) for f in fields]


def sysctl_path(procfs: str, name: str) -> str:
    parts = name.split(".")
    if "/" in name or any(p in ("", "..") for p in parts):
        raise ValueError(f"bad sysctl name {name!r}")
    return os.path.join(procfs, "sys", *parts)


def read_text(path: str) -> str:
    with open(path, "rb") as fh:
        return fh.read().decode("utf-8", "replace")
