"""The exporter's own process metrics, as every Prometheus exporter exposes them.

prometheus_client computes them (``ProcessCollector``: ``process_*`` from ``/proc/<pid>``;
``PlatformCollector``: ``python_info``; ``GCCollector``: ``python_gc_*``); this module turns
its metric families into ours, so they go through the same writer as everything else (one
exposition, one HELP/TYPE per name, OpenMetrics or text).  They describe this process, so they
are read from the real ``/proc`` whatever ``--path.procfs`` says; they are present whatever
collectors are enabled, and ``--web.disable-exporter-metrics`` turns them off.

Only the families declared in :data:`SELF_METRICS` are exported (the README reference lists
them); a family a newer prometheus_client adds is left out until declared here.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from .metrics import COUNTER, GAUGE, Family, Metric

PYTHON_INFO_LABELS = ("implementation", "major", "minor", "patchlevel", "version")
SELF_METRICS = (
    Metric("process_cpu_seconds_total", COUNTER,
           "Total user and system CPU time spent in seconds."),
    Metric("process_resident_memory_bytes", GAUGE, "Resident memory size in bytes."),
    Metric("process_virtual_memory_bytes", GAUGE, "Virtual memory size in bytes."),
    Metric("process_open_fds", GAUGE, "Number of open file descriptors."),
    Metric("process_max_fds", GAUGE, "Maximum number of open file descriptors."),
    Metric("process_start_time_seconds", GAUGE,
           "Start time of the process since unix epoch in seconds."),
    Metric("python_info", GAUGE, "Python platform information.", PYTHON_INFO_LABELS),
    Metric("python_gc_objects_collected_total", COUNTER,
           "Objects collected during gc.", ("generation",)),
    Metric("python_gc_objects_uncollectable_total", COUNTER,
           "Uncollectable objects found during GC.", ("generation",)),
    Metric("python_gc_collections_total", COUNTER,
           "Number of times this generation was collected.", ("generation",)),
)
_BY_NAME = {m.name: m for m in SELF_METRICS}


class SelfMetrics:
    """``families()`` -> this process's metrics as our Families.

    Computed at most once per ``min_interval`` seconds and shared meanwhile (the writer only
    reads them): under 50 concurrent scrapers, computing them for every collection grew the
    RSS twice as fast as without them (tests/e2e/test_load.py).  ``proc`` and ``pid`` are
    prometheus_client's own parameters (its tests point them at a checked-in tree; so do
    ours).  A source that raises costs only its families, logged once.
    """

    def __init__(self, log: Any = None, proc: str = "/proc",
                 pid: Callable[[], int | str] = lambda: "self", min_interval: float = 1.0):
        self.log = log
        self.min_interval = min_interval
        self._cached: tuple[float, list[Family]] | None = None
        self._lock = threading.Lock()
        self._sources: list[tuple[str, Any]] = [
            ("process", ProcessCollector(proc=proc, pid=pid, registry=None)),
            ("platform", PlatformCollector(registry=None)),
            # GCCollector always registers itself: a registry of its own, never read
            ("gc", GCCollector(registry=CollectorRegistry(auto_describe=False))),
        ]
        self._failed: dict[str, str] = {}

    def families(self) -> list[Family]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.min_interval:
                self._cached = (now, self._compute())
            return self._cached[1]

    def _compute(self) -> list[Family]:
        out: list[Family] = []
        for name, source in self._sources:
            try:
                out.extend(convert(source.collect()))
            except Exception as exc:  # noqa: BLE001 - a self-metric must not cost the scrape
                reason = f"{type(exc).__name__}: {exc}"
                if self._failed.get(name) != reason and self.log is not None:
                    self.log.warning("exporter self-metrics failed", source=name, error=reason)
                self._failed[name] = reason
            else:
                self._failed.pop(name, None)
        return out


def convert(client_families: Iterable[Any]) -> list[Family]:
    """prometheus_client metric families -> our Families, for the declared names only.

    A counter's samples are named ``<family>_total`` (its ``_created`` samples are left out,
    as our writer exports none); a sample whose labels differ from the declared ones is left
    out rather than mislabelled."""
    out: list[Family] = []
    for cf in client_families:
        for sample in cf.samples:
            spec = _BY_NAME.get(sample.name)
            if spec is None or spec.type != cf.type:
                continue
            if set(sample.labels) != set(spec.labels):
                continue
            fam = next((f for f in out if f.spec is spec), None)
            if fam is None:
                fam = spec.family()
                out.append(fam)
            fam.add(tuple(sample.labels[k] for k in spec.labels), sample.value)
    return out
