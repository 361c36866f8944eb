"""The exporter's memory policy (exporter/memory.py): it runs with PYTHONMALLOC=malloc by
re-executing itself once, in place, with the same command line; an operator's own
PYTHONMALLOC is kept; glibc is tuned at start-up.  Why: issue 8, page faults at IPVS scale."""
import json
import os
import platform
import sys

import pytest

from exporter import memory
from tests.helpers.exporter_proc import ExporterProcess

ARGS = ["--collector.disable-defaults", "--collector.cpu"]


def _environ(pid: int) -> dict:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        items = [x.split(b"=", 1) for x in fh.read().split(b"\0") if b"=" in x]
    return {k.decode(): v.decode(errors="replace") for k, v in items}


def _cmdline(pid: int) -> list:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return [x.decode() for x in fh.read().split(b"\0")[:-1]]


def _listening(log: str) -> dict:
    for line in log.splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "listening":
            return json.loads(line)
    raise AssertionError(f"no 'listening' log line in:\n{log}")


def test_reexecs_in_place_with_malloc_and_same_command_line():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
    ex = ExporterProcess(ARGS)
    ex.env = dict(env, PYTHONPATH=ex.env["PYTHONPATH"])
    with ex:
        pid = ex.proc.pid                      # exec keeps the PID the test started
        assert _environ(pid).get("PYTHONMALLOC") == "malloc"
        assert _cmdline(pid) == ex.cmd         # same argv (incl. -m exporter and the flags)
        assert "nodenet_cpu_steal_seconds_total" in ex.scrape()
        line = _listening(ex.log())
    assert line["allocator"] == "malloc"
    if platform.libc_ver()[0] == "glibc":
        assert line["glibc_tuned"] is True
    assert ex.proc.returncode == 0


def test_operator_choice_of_allocator_is_kept():
    with ExporterProcess(ARGS, env={"PYTHONMALLOC": "pymalloc"}) as ex:
        assert _environ(ex.proc.pid)["PYTHONMALLOC"] == "pymalloc"
        ex.scrape()
        assert _listening(ex.log())["allocator"] == "pymalloc"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's; this machine's C library is not glibc")
def test_tune_glibc_accepts_every_setting():
    # in a child: mallopt changes the process it runs in
    import subprocess
    out = subprocess.run([sys.executable, "-c", "from exporter import memory; "
                          "print(sorted(memory.tune_glibc().items()))"],
                         capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.stdout.strip() == str(sorted(
        {"arena_max": True, "mmap_threshold": True, "trim_threshold": True}.items()))
    assert memory.MMAP_THRESHOLD <= 32 << 20      # glibc refuses more than HEAP_MAX / 2
