"""Why the kernel dropped packets: per-reason counters from skb:kfree_skb (Linux >= 5.17).

Source.  A 44-instruction eBPF program, assembled in Python (exporter/sources/kfree_skb.py)
and loaded with bpf(2), counts every ``kfree_skb`` with its ``enum skb_drop_reason`` and the
packet's L3 protocol in a per-CPU array; a scrape reads the whole array in one
``BPF_MAP_LOOKUP_BATCH`` and sums over CPUs (O(reasons), not O(drops)).  Preferred: the raw
tracepoint (``BPF_RAW_TRACEPOINT_OPEN "kfree_skb"``, layout from BTF, no tracefs); fallback:
the formatted tracepoint through perf_event_open, layout from tracefs's format file
(``--path.tracefs``).  The program and map are named ``nodenet_drops`` and live exactly as
long as the exporter's file descriptors (nothing pinned): nothing is left after any exit.

Scope.  The tracepoint is global: every network namespace of the node, and non-IP packets
(protocol "other": AF_UNIX, netlink...).  Series appear at a reason's first drop.

Unavailable (``nodenet_dropreason_available 0``, success 1, the reason logged once): an
unknown architecture, no BTF and no format file, a kernel < 5.17, no bpf(2), missing
CAP_BPF+CAP_PERFMON (CAP_SYS_ADMIN before 5.8), a seccomp filter refusing bpf(2), or a
verifier refusal (its log is in the reason).  Set-up is tried at the first scrape and again
at most every RETRY_SECONDS.
"""
from __future__ import annotations

import errno
import threading
import time

from ..config import Option, parse_list
from ..metrics import COUNTER, GAUGE, Metric
from ..sources import Unavailable
from ..sources import bpf as B
from ..sources import kfree_skb as K
from .base import Collector, register

DROPS = Metric("nodenet_packet_drops_total", COUNTER,
               "Packets the kernel freed as dropped (skb:kfree_skb), by the kernel's drop "
               "reason (enum skb_drop_reason without SKB_DROP_REASON_; SUBSYS_<NAME> for a drop "
               "subsystem such as openvswitch; a number the kernel's table does not name is "
               "exported as the number) and L3 protocol (ipv4, ipv6, arp, other). All network "
               "namespaces of the node. A series appears at its first drop.",
               ("reason", "protocol"))
AVAILABLE = Metric("nodenet_dropreason_available", GAUGE,
                   "1 if the drop-reason program is loaded and counting, 0 if not (the reason "
                   "is logged once: kernel < 5.17, no BTF/tracefs, no CAP_BPF+CAP_PERFMON, "
                   "seccomp, verifier).")
MISSED = Metric("nodenet_dropreason_missed_total", COUNTER,
                "Runs of the drop-reason program the kernel skipped because another BPF "
                "program was running on that CPU (recursion_misses): drops not counted.")

TRACEFS_DEFAULT = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
RETRY_SECONDS = 300.0
LOG_TAIL_LINES = 12
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


@register
class DropreasonCollector(Collector):
    name = "dropreason"
    default_enabled = False
    description = ("Packet drops by kernel drop reason and L3 protocol (eBPF on skb:kfree_skb; "
                   "needs CAP_BPF+CAP_PERFMON)")
    source = ("bpf(2) program on skb:kfree_skb; /sys/kernel/btf/vmlinux or the tracefs "
              "events/skb/kfree_skb/format")
    metrics = (DROPS, AVAILABLE, MISSED)
    options = (
        Option("path.tracefs", parse_list, TRACEFS_DEFAULT,
               "tracefs mount point(s) to look for events/skb/kfree_skb/format in, in order "
               "(dropreason's fallback when BTF cannot describe the raw tracepoint)", "PATHS"),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.tracefs = ctx.settings.get("path.tracefs") or TRACEFS_DEFAULT
        self.counter: K.DropCounter | None = None
        self.reason = ""
        self._next_try = 0.0
        self._lock = threading.Lock()

    def collect(self):
        with self._lock:
            if self.counter is None and time.monotonic() >= self._next_try:
                self._setup()
            if self.counter is None:
                return [self.availability(AVAILABLE, False, self.reason)]
            fam = DROPS.family()
            for (reason, proto), value in sorted(self.counter.read().items()):
                fam.add((reason, proto), value)
            out = [self.availability(AVAILABLE, True), MISSED.single(
                self.counter.info()["recursion_misses"])]
            if fam.samples:
                out.append(fam)
            return out

    def _setup(self) -> None:
        self._next_try = time.monotonic() + RETRY_SECONDS
        try:
            arch = B.arch()
        except Unavailable as exc:
            self.reason = str(exc)
            return
        found, why = K.plans(self.ctx.sys("kernel", "btf", "vmlinux"), self.tracefs)
        if not found:
            self.reason = "; ".join(why)
            return
        try:
            n_cpus = B.possible_cpus(self.ctx.settings["path.sysfs"])
        except (OSError, ValueError) as exc:
            self.reason = f"cannot count possible CPUs: {exc}"
            return
        failures = []
        for plan in found:
            try:
                self.counter = K.DropCounter(arch, plan, n_cpus)
            except B.BpfError as exc:
                failures.append(f"{plan.mode} ({plan.source}): {explain(exc, *self._own_status())}")
                if exc.errno in (errno.EPERM, errno.EACCES, errno.ENOSYS) and not exc.log:
                    why = []           # the other way needs the same permission: not tried
                    break
                continue
            self.log.info("counting drop reasons", mode=plan.mode, source=plan.source,
                          prog_id=self.counter.info()["id"], insns=self.counter.n_insns,
                          reasons=len(plan.table.core))
            self.reason = ""
            return
        self.reason = "; ".join(failures + why)

    @staticmethod
    def _own_status() -> tuple[int, int]:
        caps, seccomp = 0, 0
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    if key == "CapEff":
                        caps = int(value.strip(), 16)
                    elif key == "Seccomp":
                        seccomp = int(value.strip())
        except (OSError, ValueError):
            pass
        return caps, seccomp

    def close(self):
        with self._lock:
            if self.counter is not None:
                self.counter.close()
                self.counter = None


def explain(exc: B.BpfError, caps: int, seccomp: int) -> str:
    """The precise reason for a failed set-up step, given the process's effective
    capabilities (CapEff) and seccomp mode (0 none, 2 filter)."""
    text = exc.strerror or str(exc)
    if exc.errno == errno.ENOSYS:
        return f"{text}: the kernel has no bpf(2) (CONFIG_BPF_SYSCALL off) or a filter hides it"
    if exc.log:                        # the verifier refused the program (EACCES/EINVAL...)
        tail = [ln for ln in exc.log.strip().splitlines() if ln.strip()][-LOG_TAIL_LINES:]
        return f"{text}; verifier log: " + " | ".join(tail)
    if exc.errno in (errno.EPERM, errno.EACCES):
        has = (caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1) or caps >> CAP_SYS_ADMIN & 1
        if has and seccomp:
            return (f"{text} although the process holds the capabilities: refused by its "
                    f"seccomp filter (Seccomp: {seccomp}); container runtimes' default profiles "
                    "allow bpf(2)/perf_event_open(2) only with CAP_SYS_ADMIN - use the Localhost "
                    "profile of deploy/components/dropreason")
        missing = [n for n, bit in (("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON))
                   if not caps >> bit & 1]
        return (f"{text}: needs CAP_BPF and CAP_PERFMON (Linux >= 5.8; CAP_SYS_ADMIN before); "
                f"missing {', '.join(missing) or 'none'} (CapEff={caps:#x})")
    return text
