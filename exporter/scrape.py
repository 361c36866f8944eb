"""Runs the enabled collectors for one scrape: isolated, time-boxed and shared.

- Isolation: each collector runs in its own worker and its families are materialised inside
  a try; an exception costs only that collector (success 0), never the scrape.
- Time budget: a collector that has not finished within ``--collector.timeout`` is abandoned
  for this scrape (success 0).  It is not started again while its previous run is still
  stuck, so a hung netlink read costs one thread, not one per scrape.
- Sharing: scrapes that arrive while a collection is running wait for it and share its
  result (an HA pair of Prometheus servers reads the kernel once, not twice).  Rendering is
  per request and streamed (``scrape_chunks``): the writer is stateless, so concurrent
  renderings of the shared families need no lock.
"""
from __future__ import annotations

import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from . import __version__
from .metrics import GAUGE, ExpositionWriter, Metric

SCRAPE_SUCCESS = Metric("nodenet_scrape_collector_success", GAUGE,
                        "1 if the collector's last collection succeeded, 0 if it failed or timed out.",
                        ("collector",))
SCRAPE_DURATION = Metric("nodenet_scrape_collector_duration_seconds", GAUGE,
                         "Wall time the collector's collection took (the time budget if it timed out).",
                         ("collector",))
BUILD_INFO = Metric("nodenet_build_info", GAUGE,
                    "Always 1; labels give the exporter's version and the Python version.",
                    ("version", "python_version"))
META_METRICS = (SCRAPE_SUCCESS, SCRAPE_DURATION, BUILD_INFO)


@dataclass
class CollectorStatus:
    """What the landing page shows for a collector."""

    enabled: bool
    last_success: float | None = None  # unix time of the last successful collection
    last_duration: float | None = None
    last_error: str | None = None


@dataclass
class Result:
    families: list


class _Flight:
    def __init__(self):
        self.done = threading.Event()
        self.result: Result | None = None
        self.error: BaseException | None = None


class Gatherer:
    def __init__(self, collectors: dict, log, timeout: float, all_names=()):
        self.collectors = collectors  # name -> Collector instance (enabled ones)
        self.log = log
        self.timeout = timeout
        self.status = {name: CollectorStatus(enabled=name in collectors) for name in all_names}
        for name in collectors:
            self.status.setdefault(name, CollectorStatus(enabled=True))
        self._pool = ThreadPoolExecutor(max_workers=max(4, 2 * len(collectors)),
                                        thread_name_prefix="collector")
        self._running: dict = {}  # name -> future still running from an earlier scrape
        self._lock = threading.Lock()
        self._flight: _Flight | None = None
        self._writer = ExpositionWriter()
        self._build_info = BUILD_INFO.single(1, __version__, platform.python_version())

    def scrape(self, openmetrics: bool = False) -> bytes:
        return b"".join(self.scrape_chunks(openmetrics))

    def scrape_chunks(self, openmetrics: bool = False):
        """Collects (or joins the collection in flight), then returns an iterator over the
        exposition's byte chunks, rendered as they are consumed."""
        result = self._shared_collection()
        # a generator: rendered as consumed.  Memory is not trimmed after a big scrape, the
        # next one reuses it (exporter/memory.py)
        return self._writer.render_chunks(result.families, openmetrics)

    def _shared_collection(self) -> Result:
        with self._lock:
            flight = self._flight
            leader = flight is None
            if leader:
                flight = self._flight = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.result
        try:
            flight.result = self.collect()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting scrapes too
            flight.error = exc
            raise
        finally:
            with self._lock:
                self._flight = None
            flight.done.set()
        return flight.result

    def collect(self) -> Result:
        started = {}
        for name, collector in self.collectors.items():
            previous = self._running.get(name)
            if previous is not None and not previous.done():
                started[name] = None  # still stuck in an earlier scrape
                continue
            t0 = time.monotonic()
            future = self._pool.submit(_materialise, collector)
            self._running[name] = future
            started[name] = (future, t0)
        deadline = time.monotonic() + self.timeout
        families: list = []
        success = SCRAPE_SUCCESS.family()
        duration = SCRAPE_DURATION.family()
        for name, entry in started.items():
            status = self.status[name]
            log = self.log.bind(collector=name)
            previous_error = status.last_error
            if entry is None:
                ok, elapsed = False, self.timeout
                status.last_error = "previous collection still running"
            else:
                future, t0 = entry
                try:
                    fams, elapsed = future.result(timeout=max(0.0, deadline - time.monotonic()))
                    # only a collection still running is remembered: a finished future would
                    # keep this scrape's families (at IPVS scale ~15 MiB) alive until the next
                    del self._running[name], future
                    families.extend(fams)
                    ok = True
                    status.last_success = time.time()
                    status.last_error = None
                except FutureTimeout:
                    ok, elapsed = False, time.monotonic() - t0
                    status.last_error = f"timed out after {self.timeout:g}s"
                except Exception as exc:  # noqa: BLE001 - isolation is the point
                    ok, elapsed = False, time.monotonic() - t0
                    status.last_error = f"{type(exc).__name__}: {exc}"
            if status.last_error != previous_error:
                # Logged when the state changes, not on every scrape of a lasting failure.
                if status.last_error is None:
                    log.info("collector recovered")
                else:
                    log.error("collector failed", error=status.last_error)
            elif status.last_error is not None:
                log.debug("collector still failing", error=status.last_error)
            status.last_duration = elapsed
            success.add((name,), 1 if ok else 0)
            duration.add((name,), round(elapsed, 6))
        families.extend((success, duration, self._build_info))
        return Result(families)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for collector in self.collectors.values():
            try:
                collector.close()
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass


def _materialise(collector):
    t0 = time.monotonic()
    families = collector.run()   # Unavailable -> <subsystem>_available 0 (collectors/base.py)
    return families, time.monotonic() - t0
