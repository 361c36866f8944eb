"""/proc/net/dev: per-interface counters of one network namespace (pure parser).

Used by the pod view (collector ``netns``) on other namespaces' ``/proc/<pid>/net/dev``,
where no netlink socket of ours lives.  Format (every kernel since 2.6): two header lines,
then ``<name>: rx bytes packets errs drop fifo frame compressed multicast tx bytes packets
errs drop fifo colls carrier compressed``.  A line that does not parse costs only that line
(listed in ``problems``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

RX_ERRS, RX_DROP, TX_ERRS, TX_DROP = 2, 3, 10, 11


@dataclass
class DevCounters:
    rx_errors: int
    rx_drops: int
    tx_errors: int
    tx_drops: int


@dataclass
class NetDev:
    interfaces: dict[str, DevCounters] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def parse_net_dev(text: str) -> NetDev:
    out = NetDev()
    for lineno, line in enumerate(text.splitlines(), 1):
        name, sep, rest = line.partition(":")
        if not sep or "|" in line:
            continue  # the two header lines
        name = name.strip()
        fields = rest.split()
        if not name or len(fields) < 16 or not "".join(fields[:16]).isdigit():
            out.problems.append(f"net/dev line {lineno}: not 16 counters")
            continue
        out.interfaces[name] = DevCounters(int(fields[RX_ERRS]), int(fields[RX_DROP]),
                                           int(fields[TX_ERRS]), int(fields[TX_DROP]))
    return out
