"""The collector interface and registry.

A collector is a class in ``exporter/collectors/<name>.py`` decorated with ``@register``::

    @register
    class CpuCollector(Collector):
        name = "cpu"                    # --collector.cpu / --no-collector.cpu
        default_enabled = True
        description = "CPU steal time per CPU"
        source = "/proc/stat"
        metrics = (STEAL, CPUS)         # every Metric it can emit (docs, HELP, golden checks)
        options = (Option("collector.cpu.foo", parse_bool, False, "..."),)

        def collect(self):              # -> iterable of Family, built fresh each scrape
            yield CPUS.single(4)

``self.ctx`` gives ``procfs``/``sysfs`` paths, ``settings`` and ``log`` (structlog, bound with
``collector=<name>``).  Raise anything to fail (success 0 for this collector only).  A
subsystem that is simply absent is not a failure: set ``availability_metric`` (its
``nodenet_<subsystem>_available`` gauge) and raise :class:`exporter.sources.Unavailable`
from collect() or the reader it calls: the framework (:meth:`Collector.run`) then exports
that gauge at 0, success 1, and logs the reason once (at info) whenever availability
changes.  ``yield self.availability(METRIC, True)`` when present; a collector with a
fallback of its own may also yield ``self.availability(METRIC, False, reason)`` itself.

A problem that persists across scrapes is logged once, not every scrape:
``self.say(key, message)`` logs ``message`` as a warning when it differs from the last one
said under ``key``; ``self.say(key, None)`` says the key is fine again (its next problem is
logged afresh).  Keys are the collector's own fixed words ("states", "netns"): bounded.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import Option, Settings
from ..log import Once
from ..metrics import Family, Metric
from ..sources import Unavailable

REGISTRY: dict[str, type[Collector]] = {}


@dataclass(frozen=True)
class DeviceFilter:
    """``--collector.<name>.device-include/-exclude`` (searched regexes, empty: no filter),
    shared by the collectors that filter interfaces by name (netdev, ethtool)."""

    include: re.Pattern[str] | None = None
    exclude: re.Pattern[str] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, collector: str) -> DeviceFilter:
        inc = settings[f"collector.{collector}.device-include"]
        exc = settings[f"collector.{collector}.device-exclude"]
        return cls(re.compile(inc) if inc else None, re.compile(exc) if exc else None)

    @property
    def active(self) -> bool:
        return self.include is not None or self.exclude is not None

    def __call__(self, name: str) -> bool:
        if self.include is not None and not self.include.search(name):
            return False
        return self.exclude is None or not self.exclude.search(name)


@dataclass
class Context:
    settings: Settings
    log: Any

    @property
    def procfs(self) -> str:
        return self.settings["path.procfs"]

    @property
    def sysfs(self) -> str:
        return self.settings["path.sysfs"]

    def proc(self, *parts: str) -> str:
        return os.path.join(self.procfs, *parts)

    def sys(self, *parts: str) -> str:
        return os.path.join(self.sysfs, *parts)


class Collector:
    name: ClassVar[str] = ""
    default_enabled: ClassVar[bool] = True
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]] = ()
    options: ClassVar[tuple[Option, ...]] = ()
    availability_metric: ClassVar[Metric | None] = None   # nodenet_<subsystem>_available

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.log = ctx.log
        self._available: bool | None = None

    def collect(self) -> Iterable[Family]:
        raise NotImplementedError

    def run(self) -> list[Family]:
        """One collection, materialised (what the scrape calls).  Unavailable raised by
        collect() becomes ``availability_metric`` 0 (success 1), its reason logged once;
        the families collected before it are dropped."""
        try:
            return list(self.collect())
        except Unavailable as exc:
            if self.availability_metric is None:
                raise
            return [self.availability(self.availability_metric, False, str(exc))]

    def close(self) -> None:
        """Release sockets or threads; called once at shutdown."""

    def say(self, key: str, message: str | None, **fields: Any) -> None:
        """Logs ``message`` (with ``fields``) as a warning when it is not what was last said
        under ``key``; None (or "") clears the key, logging nothing.  Only the message is
        compared: fields that change every scrape (a count) do not repeat the line."""
        once = getattr(self, "_said_once", None)
        if once is None:     # made on first use: a collector need not call __init__ for it
            once = self._said_once = Once(self.log)
        once.report(key, message or None, **fields)

    def availability(self, metric: Metric, available: bool, reason: str = "") -> Family:
        if available != self._available:
            if available:
                if self._available is not None:
                    self.log.info("subsystem available again")
            else:
                self.log.info("subsystem not available on this node", reason=reason)
            self._available = available
        return metric.single(1 if available else 0)


def register(cls: type[Collector]) -> type[Collector]:
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"collector name {cls.name!r} empty or registered twice")
    REGISTRY[cls.name] = cls
    return cls
