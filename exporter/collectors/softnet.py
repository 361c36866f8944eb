"""Per-CPU softnet (NAPI/backlog) statistics from /proc/net/softnet_stat."""
from __future__ import annotations

from ..log import Once
from ..metrics import COUNTER, GAUGE, Family, Metric
from ..sources import procfs
from .base import Collector, Context, register

PROCESSED = Metric("nodenet_softnet_processed_total", COUNTER,
                   "Packets processed by the CPU's network softirq.", ("cpu",))
DROPPED = Metric("nodenet_softnet_dropped_total", COUNTER,
                 "Packets dropped because the CPU's input backlog was full "
                 "(net.core.netdev_max_backlog).", ("cpu",))
SQUEEZED = Metric("nodenet_softnet_times_squeezed_total", COUNTER,
                  "Times the softirq ran out of budget (net.core.netdev_budget) or time "
                  "with work left.", ("cpu",))
RECEIVED_RPS = Metric("nodenet_softnet_received_rps_total", COUNTER,
                      "Times this CPU was woken by an inter-processor interrupt for RPS.", ("cpu",))
FLOW_LIMIT = Metric("nodenet_softnet_flow_limit_count_total", COUNTER,
                    "Times the flow limit dropped a packet of a heavy flow.", ("cpu",))
BACKLOG = Metric("nodenet_softnet_backlog_packets", GAUGE,
                 "Packets waiting in the CPU's input backlog (kernels >= 5.10).", ("cpu",))


@register
class SoftnetCollector(Collector):
    name = "softnet"
    default_enabled = True
    description = "Per-CPU softnet backlog drops and time squeezes"
    source = "/proc/net/softnet_stat"
    metrics = (PROCESSED, DROPPED, SQUEEZED, RECEIVED_RPS, FLOW_LIMIT, BACKLOG)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._once = Once(self.log)

    def collect(self) -> list[Family]:
        """Rows the kernel cannot have written are skipped (logged once); none valid: fails."""
        skipped: list[str] = []
        stats = procfs.parse_softnet(procfs.read_text(self.ctx.proc("net", "softnet_stat")),
                                     skipped)
        self._once.report("rows", "softnet_stat rows skipped" if skipped else None,
                          rows=len(skipped), first=skipped[0] if skipped else "")
        fams = {m: m.family() for m in self.metrics}
        for s in stats:
            key = (s.cpu,)
            fams[PROCESSED].add(key, s.processed)
            fams[DROPPED].add(key, s.dropped)
            fams[SQUEEZED].add(key, s.time_squeeze)
            if s.received_rps is not None:
                fams[RECEIVED_RPS].add(key, s.received_rps)
            if s.flow_limit_count is not None:
                fams[FLOW_LIMIT].add(key, s.flow_limit_count)
            if s.backlog_len is not None:
                fams[BACKLOG].add(key, s.backlog_len)
        return [f for f in fams.values() if f.samples]
