"""CPU steal per CPU from /proc/stat, and the online CPU count."""
from __future__ import annotations

import os
import threading

from collections.abc import Iterator

from ..log import Once
from ..metrics import COUNTER, GAUGE, Family, Metric
from ..sources import ParseError, procfs
from .base import Collector, Context, register

STEAL = Metric("nodenet_cpu_steal_seconds_total", COUNTER,
               "Time the hypervisor ran something else while this CPU wanted to run (steal), "
               "in seconds. Never decreases: a per-CPU value that goes back (CPU hotplug) is held.",
               ("cpu",))
CPUS = Metric("nodenet_cpus", GAUGE,
              "Online CPUs; a node's steal fraction is "
              "sum(rate(nodenet_cpu_steal_seconds_total[5m])) / nodenet_cpus.")


@register
class CpuCollector(Collector):
    name = "cpu"
    default_enabled = True
    description = "CPU steal time per CPU and the online CPU count"
    source = "/proc/stat, /sys/devices/system/cpu/online"
    metrics = (STEAL, CPUS)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._once = Once(self.log)
        self.user_hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Family]:
        text = procfs.read_text(self.ctx.proc("stat"))
        steals = procfs.parse_stat_steal(text)
        fam = STEAL.family()
        with self._lock:
            for s in steals:
                ticks = s.steal_ticks
                held = self._held.get(s.cpu, 0)
                if ticks < held:
                    ticks = held  # counters must not go backwards
                self._held[s.cpu] = ticks
                fam.add((s.cpu,), ticks / self.user_hz)
        yield fam
        yield CPUS.single(self._online_cpus(text))

    def _online_cpus(self, stat_text: str) -> int:
        """CPUs in sysfs's online list; without one (absent, or a list we cannot read), the
        CPUs /proc/stat has a line for - the same set, as the kernel prints only online ones."""
        path = self.ctx.sys("devices", "system", "cpu", "online")
        try:
            return len(procfs.parse_cpu_list(procfs.read_text(path)))
        except FileNotFoundError:
            pass
        except (ParseError, OSError) as exc:
            self._once.report("online", "cpu online list unreadable: counting /proc/stat CPUs",
                              path=path, reason=str(exc))
        return len(procfs.parse_stat_cpus(stat_text))
