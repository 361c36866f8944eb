"""The process's memory policy: keep the working set of a big scrape instead of refaulting it.

A big scrape (IPVS at thousands of services) allocates and frees tens of MiB.  With CPython's
defaults, pymalloc hands every emptied 1 MiB arena back to the kernel at once and glibc trims
its heap top (or maps big blocks afresh), so every scrape faults the same pages in again and
the kernel zeroes them.  Where page faults are expensive (User-Mode Linux, gVisor, nested
virtualisation) that was more than half of the scrape (figures: docs/performance.md "What keeps
a scrape cheap", Memory, and "Memory: what a node sees").

So the exporter runs with ``PYTHONMALLOC=malloc`` (the entry point re-executes itself once
with it when the variable is unset; any value the operator sets is kept, e.g.
``PYTHONMALLOC=pymalloc`` to opt out) and tunes glibc at start-up:

* one malloc arena: Python code runs under the GIL anyway, and with a per-thread arena each
  HTTP or collector thread would keep its own copy of a big scrape's memory;
* no mmap below 32 MiB: blocks come from the heap and are reused, not mapped and unmapped;
* the heap top is given back only when more than 64 MiB of it is free.

RSS then stays at the largest scrape's working set and does not grow from scrape to scrape;
small nodes are unaffected.
"""
from __future__ import annotations

import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
TRIM_THRESHOLD = 64 << 20
MMAP_THRESHOLD = 32 << 20
ARENA_MAX = 1
_ENV = "PYTHONMALLOC"


def reexec_with_malloc() -> None:
    """Re-execute this very command line once with PYTHONMALLOC=malloc, when the variable
    is unset (never twice: the new process has it).  Returns if it cannot (not Linux, no
    interpreter path, exec refused), the exporter then runs with pymalloc."""
    if os.environ.get(_ENV) or sys.platform != "linux" or not sys.executable:
        return
    argv = list(getattr(sys, "orig_argv", ()) or ())
    if not argv:
        return
    env = dict(os.environ, **{_ENV: "malloc"})
    try:
        os.execve(sys.executable, argv, env)
    except OSError:
        return


def tune_glibc() -> dict:
    """mallopt() as described in the module docstring; {setting: accepted} (empty when the C
    library is not glibc)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return {"arena_max": bool(mallopt(M_ARENA_MAX, ARENA_MAX)),
            "mmap_threshold": bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)),
            "trim_threshold": bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))}


def allocator() -> str:
    """The allocator the interpreter was started with ("pymalloc" unless PYTHONMALLOC)."""
    return os.environ.get(_ENV) or "pymalloc"
