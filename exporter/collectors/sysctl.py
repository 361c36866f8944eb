"""Kernel tunables that decide whether a node survives connection churn."""
from __future__ import annotations

from collections.abc import Iterator

from ..config import Option, parse_list
from ..log import Once
from ..metrics import GAUGE, Family, Metric
from ..sources import ParseError, procfs
from .base import Collector, Context, register

DEFAULT_NAMES = [
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_buckets",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_keepalive_time",
    "fs.file-max",
    "net.core.netdev_max_backlog",
    "net.core.netdev_budget",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
]
# Multi-value tunables: one series per value, told apart by the `bound` label.
BOUNDS = {"net.ipv4.ip_local_port_range": ("min", "max")}

VALUE = Metric("nodenet_sysctl_value", GAUGE,
               "Value of a kernel tunable (/proc/sys); multi-valued ones have one series per "
               "bound (e.g. ip_local_port_range min/max), single ones bound=\"\".",
               ("name", "bound"))


def _sysctl_names(value: str) -> list[str]:
    names = parse_list(value)
    for name in names:
        procfs.sysctl_path("/proc", name)  # validates the name
    return names


@register
class SysctlCollector(Collector):
    name = "sysctl"
    default_enabled = True
    description = "Selected kernel tunables (nf_conntrack_max, port range, backlog...)"
    source = "/proc/sys"
    metrics = (VALUE,)
    options = (Option("collector.sysctl.names", _sysctl_names, DEFAULT_NAMES,
                      "Comma-separated sysctl names to export", "NAMES"),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._once = Once(self.log)

    def collect(self) -> Iterator[Family]:
        """One series per value; a tunable that is not a number (kernel.seccomp.actions_avail)
        or cannot be read costs only itself: skipped, logged once at warn."""
        fam = VALUE.family()
        for name in self.ctx.settings["collector.sysctl.names"]:
            path = procfs.sysctl_path(self.ctx.procfs, name)
            try:
                values = procfs.parse_sysctl_value(procfs.read_text(path))
            except FileNotFoundError:
                continue  # not on this kernel (or module not loaded): left out
            except (ParseError, OSError) as exc:
                self._once.report(name, "sysctl skipped", name=name, reason=str(exc))
                continue
            self._once.report(name, None)
            bounds = BOUNDS.get(name)
            if bounds and len(values) == len(bounds):
                for bound, value in zip(bounds, values, strict=True):
                    fam.add((name, bound), value)
            elif len(values) == 1:
                fam.add((name, ""), values[0])
            else:
                for i, value in enumerate(values):
                    fam.add((name, str(i)), value)
        yield fam
