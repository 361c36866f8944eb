"""NIC driver and cloud allowance counters (what is lost below the kernel's interface counters).

Devices: those with a driver, i.e. a ``device`` link in ``<sysfs>/class/net/<name>/`` (ena,
mlx5_core, ixgbe, i40e, gve, virtio_net, vmxnet3...), not veth/bridges/tunnels; selected further
by ``--collector.ethtool.device-include/-exclude`` (searched regexes, as netdev's).  Per device
and scrape: ETHTOOL_GDRVINFO and ETHTOOL_GSTATS; the statistic names (ETHTOOL_GSTRINGS) are read
once and again only when GDRVINFO reports another driver, version, firmware, bus or count
(:mod:`exporter.sources.ethtool`).

Name rule (:func:`fold`, :func:`classify`; pinned by tests on driver fixtures):

1. *Folding* removes the queue index from per-queue names, first matching pattern wins::

       rx0_drops, tx3_kicks           -> rx_drops, tx_kicks       (virtio_net, mlx5 rx<N>_/tx<N>_)
       rx_queue_3_drops               -> rx_drops                 (ixgbe, veth rx_queue_<N>_)
       queue_2_tx_cnt                 -> tx_cnt                   (ena queue_<N>_)
       tx-0.packets                   -> tx_packets               (i40e <rx|tx>-<N>.)
       ch5_events                     -> ch_events                (mlx5 channels)
       rx_dropped_pkt[7]              -> rx_dropped_pkt           (gve name[<N>])

   When the driver also prints a device total of the folded name (virtio_net prints rx_drops
   and rx0_drops), the total is exported and the queues are never added to it; otherwise the
   queues are summed.
2. *Classification* of the folded name, lower-cased, by the words it contains; the short
   words ``err``, ``miss``, ``full`` and ``no_buf`` count only where they start a token (after
   the start, ``_``, ``.``, ``-``, ``[``, a digit, or a glued ``rx``/``tx``), so
   ``unmask_interrupt`` is no error and ``transmission`` no drop:

   - drops: ``drop``, ``discard``, ``miss``, ``no_buf``/``nobuf``, ``out_of_buffer`` (mlx5's
     ring-empty drop), ``full``, ``overrun``, ``fifo``;
   - errors: ``err`` (error, errors, errs), ``timeout``, ``fail``, ``crc``, ``abort``;
   - drops are checked first (``rx_fifo_errors`` and ``rx_missed_errors`` are drops);
   - names known to count no loss although a word matches are neither (:data:`NOT_LOSS`:
     ixgbe's ``fdir_miss`` is a flow-director lookup miss, mlx5's ``rx_cache_full`` a page
     recycled to the allocator), so NodenetDriverDrops does not fire on normal traffic.

   Every name that classifies is exported from the first scrape, zeros included.
3. ENA's ``bw_in_allowance_exceeded``, ``bw_out_allowance_exceeded``, ``pps_allowance_exceeded``,
   ``conntrack_allowance_exceeded``, ``linklocal_allowance_exceeded`` become
   ``nodenet_interface_allowance_exceeded_total{allowance="bw_in|bw_out|pps|conntrack|linklocal"}``
   and ``conntrack_allowance_available`` the gauge
   ``nodenet_interface_conntrack_allowance_available`` (driver ``ena`` only).
4. ``--collector.ethtool.all-counters``: every other folded name, as
   ``nodenet_interface_driver_counter_total{counter}`` (node_exporter's ethtool behaviour).
"""
from __future__ import annotations

import errno
import re
from dataclasses import dataclass

from ..config import Option, parse_bool, parse_regex
from ..metrics import COUNTER, GAUGE, Metric
from ..sources import ParseError
from ..sources.ethtool import (
    DriverInfo,
    Ethtool,
    driver_devices,
)
from .base import Collector, DeviceFilter, register

IC = ("interface", "counter")

DROPS = Metric("nodenet_interface_driver_drops_total", COUNTER,
               "Packets the NIC driver counts as dropped (its own counter name, per-queue names "
               "folded; name rule in docs/interfaces.md), from ethtool statistics.", IC)
ERRORS = Metric("nodenet_interface_driver_errors_total", COUNTER,
                "Driver error counters (err, timeout, fail, crc, abort in the name; per-queue "
                "names folded), from ethtool statistics.", IC)
ALLOWANCE = Metric("nodenet_interface_allowance_exceeded_total", COUNTER,
                   "ENA: packets queued or dropped because an instance allowance was exceeded "
                   "(bw_in, bw_out, pps, conntrack, linklocal), from ethtool statistics.",
                   ("interface", "allowance"))
CT_AVAILABLE = Metric("nodenet_interface_conntrack_allowance_available", GAUGE,
                      "ENA: connections the instance can still track before its hypervisor "
                      "conntrack allowance is reached (conntrack_allowance_available).",
                      ("interface",))
DRIVER_INFO = Metric("nodenet_interface_driver_info", GAUGE,
                     "Always 1 per device with a driver: driver name, version and firmware "
                     "(ETHTOOL_GDRVINFO).", ("interface", "driver", "version", "firmware"))
COUNTERS = Metric("nodenet_interface_driver_counter_total", COUNTER,
                  "Every other driver statistic, per-queue names folded (only with "
                  "--collector.ethtool.all-counters).", IC)

_FOLDS = (
    (re.compile(r"^(rx|tx)\d+_(.+)$"), r"\1_\2"),
    (re.compile(r"^(rx|tx)_queue_\d+_(.+)$"), r"\1_\2"),
    (re.compile(r"^queue_\d+_(.+)$"), r"\1"),
    (re.compile(r"^(rx|tx)-\d+\.(.+)$"), r"\1_\2"),
    (re.compile(r"^ch\d+_(.+)$"), r"ch_\1"),
    (re.compile(r"^(.+)\[\d+\]$"), r"\1"),
)
# short words must start a token (after the start, a non-letter, or a glued rx/tx)
_TOKEN = r"(?:^|[^a-z]|(?<![a-z])[rt]x)"
_DROP_RE = re.compile(r"drop|discard|overrun|fifo|out_of_buffer|"
                      + _TOKEN + r"(?:miss|no_?buf|full)")
_ERROR_RE = re.compile(r"timeout|fail|crc|abort|" + _TOKEN + r"err")
NOT_LOSS = frozenset({"fdir_miss", "rx_cache_full"})
ENA_ALLOWANCES = {
    "bw_in_allowance_exceeded": "bw_in",
    "bw_out_allowance_exceeded": "bw_out",
    "pps_allowance_exceeded": "pps",
    "conntrack_allowance_exceeded": "conntrack",
    "linklocal_allowance_exceeded": "linklocal",
}
ENA_AVAILABLE = "conntrack_allowance_available"


def fold(name: str) -> str:
    """The name without its queue index (rule 1 of the module docstring)."""
    for pattern, repl in _FOLDS:
        folded, n = pattern.subn(repl, name)
        if n:
            return folded
    return name


def classify(name: str) -> str | None:
    """'drops', 'errors' or None for a (folded) statistic name (rule 2)."""
    low = name.lower()
    if low in NOT_LOSS:
        return None
    if _DROP_RE.search(low):
        return "drops"
    if _ERROR_RE.search(low):
        return "errors"
    return None


@dataclass(frozen=True)
class Plan:
    """What to export from one device's string set: (label, indexes summed) per family."""

    drops: tuple
    errors: tuple
    allowances: tuple
    available: int | None
    others: tuple


def build_plan(names, driver: str, all_counters: bool = False) -> Plan:
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)           # a name printed twice: the first one
    groups: dict[str, list[int]] = {}
    special: set[str] = set()
    allowances, available = [], None
    if driver == "ena":
        for raw, label in ENA_ALLOWANCES.items():
            if raw in index:
                allowances.append((label, (index[raw],)))
                special.add(raw)
        if ENA_AVAILABLE in index:
            available = index[ENA_AVAILABLE]
            special.add(ENA_AVAILABLE)
    for name, i in index.items():
        if name in special or not name:
            continue
        groups.setdefault(fold(name), []).append(i)
    drops, errors, others = [], [], []
    for folded, idxs in sorted(groups.items()):
        # a device total of the folded name wins; the queues are never added to it
        chosen = (index[folded],) if folded in index else tuple(idxs)
        kind = classify(folded)
        if kind == "drops":
            drops.append((folded, chosen))
        elif kind == "errors":
            errors.append((folded, chosen))
        elif all_counters:
            others.append((folded, chosen))
    return Plan(tuple(drops), tuple(errors), tuple(allowances), available, tuple(others))


@dataclass
class _Cached:
    info: DriverInfo
    names: tuple
    plan: Plan


@register
class EthtoolCollector(Collector):
    name = "ethtool"
    default_enabled = True
    description = "NIC driver drop/error counters, ENA allowances and driver info (ethtool)"
    source = "SIOCETHTOOL (GDRVINFO, GSTRINGS once per driver change, GSTATS) per device"
    metrics = (DROPS, ERRORS, ALLOWANCE, CT_AVAILABLE, DRIVER_INFO, COUNTERS)
    options = (
        Option("collector.ethtool.device-include", parse_regex, "",
               "Regex: read only devices whose name matches (searched); empty: every device "
               "with a driver", "REGEX"),
        Option("collector.ethtool.device-exclude", parse_regex, "",
               "Regex: do not read devices whose name matches; empty: none", "REGEX"),
        Option("collector.ethtool.all-counters", parse_bool, False,
               "Also export every other driver statistic as "
               "nodenet_interface_driver_counter_total (hundreds per NIC on some drivers)"),
    )

    def __init__(self, ctx, ethtool: Ethtool | None = None):
        super().__init__(ctx)
        s = ctx.settings
        self._wanted = DeviceFilter.from_settings(s, "ethtool")
        self._all = s["collector.ethtool.all-counters"]
        self._ethtool = ethtool
        self._cache: dict[str, _Cached] = {}

    def close(self) -> None:
        if self._ethtool is not None:
            self._ethtool.close()

    def devices(self) -> list[str]:
        return [n for n in driver_devices(self.ctx.sysfs) if self._wanted(n)]

    def read(self, et: Ethtool, name: str):
        """(DriverInfo, Plan or None, values) of one device; OSError (ENODEV) when it left."""
        info = et.drvinfo(name)
        cached = self._cache.get(name)
        for attempt in (0, 1):
            if cached is None or cached.info != info:
                try:
                    names = et.stat_names(name)
                except OSError as exc:
                    if exc.errno != errno.EOPNOTSUPP:
                        raise
                    names = ()
                cached = self._cache[name] = _Cached(info, names, build_plan(
                    names, info.driver, self._all))
            if not cached.names:
                return info, None, ()
            values = et.stats(name, len(cached.names))
            if len(values) == len(cached.names):
                return info, cached.plan, values
            if attempt:
                raise ParseError(f"{name}: {len(values)} statistics, {len(cached.names)} names")
            # the count moved between GDRVINFO and GSTATS (queues reconfigured): again
            info = et.drvinfo(name)
            cached = None
        raise AssertionError("unreachable")

    def collect(self):
        if self._ethtool is None:
            self._ethtool = Ethtool()
        et = self._ethtool
        fams = {m: m.family() for m in self.metrics}
        seen = set()
        for name in self.devices():
            try:
                info, plan, values = self.read(et, name)
            except OSError as exc:
                if exc.errno in (errno.ENODEV, errno.ENXIO):
                    continue                  # vanished mid-read: absent, not a failure
                if exc.errno == errno.EOPNOTSUPP:
                    continue                  # no GDRVINFO at all (e.g. some virtual devices)
                self.log.warning("ethtool read failed", interface=name, error=str(exc))
                self._cache.pop(name, None)
                continue
            except ParseError as exc:
                self.log.warning("ethtool read failed", interface=name, error=str(exc))
                self._cache.pop(name, None)
                continue
            seen.add(name)
            fams[DRIVER_INFO].add((name, info.driver, info.version, info.firmware), 1)
            if plan is None:
                continue
            for metric, entries in ((DROPS, plan.drops), (ERRORS, plan.errors),
                                    (COUNTERS, plan.others)):
                samples = fams[metric].samples
                for counter, idxs in entries:
                    value = values[idxs[0]] if len(idxs) == 1 else sum(values[i] for i in idxs)
                    samples.append(((name, counter), value))
            for allowance, idxs in plan.allowances:
                fams[ALLOWANCE].add((name, allowance), values[idxs[0]])
            if plan.available is not None:
                fams[CT_AVAILABLE].add((name,), values[plan.available])
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return [f for f in fams.values() if f.samples]
