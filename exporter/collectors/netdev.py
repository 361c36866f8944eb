"""Interfaces: kind, MTU, counters and overlay MTU problems, from one rtnetlink dump.

Every link of the exporter's network namespace is read with one RTM_GETLINK dump
(:mod:`exporter.sources.links`, 64-bit IFLA_STATS64 counters); there is no per-interface
sysfs walk.  Tunnels without an explicit underlay cost one more netlink request each (a route
lookup, see below); nothing else touches the kernel.

Encapsulation overhead (bytes added in front of an overlay packet of the tunnel's MTU) per
tunnel kind and underlay family: the table is in docs/interfaces.md ("Encapsulation overhead")
and in ``encap_overhead`` below.

Address family: taken from the addresses the kernel reports for the tunnel (VXLAN group/local,
Geneve remote, the GRE/ip tunnel kind itself).  A VXLAN or Geneve with no address (metadata
mode, e.g. Cilium) counts as IPv4, as the kernel itself does when it caps the tunnel's MTU.
WireGuard peers live in genetlink, not in rtnetlink: the IPv6 figure (80) is used, which is
also what the kernel's default WireGuard MTU of 1420 assumes.  Geneve options are per packet
and not visible in the link: ``--collector.netdev.geneve-option-bytes`` adds a fixed amount
(e.g. 8 for one 8-byte option, 0 by default; metadata-mode tunnels such as OVN's get no headroom).

Underlay of a tunnel, in this order:

1. the lower device the tunnel is bound to (``dev`` of ``ip link add ... type vxlan``:
   IFLA_VXLAN_LINK, IFLA_GRE_LINK, IFLA_IPTUN_LINK);
2. else, when the tunnel has a remote (or multicast group) address: the output device of the
   kernel's route to that address (RTM_GETROUTE, so policy routing is honoured);
3. else: the output device of the main table's default route (of the tunnel's family; IPv4
   then IPv6 when the family is unknown), lowest metric first.

When the lower device is in another network namespace (IFLA_LINK_NETNSID), has vanished, or
the lookup finds nothing (or the tunnel itself), the underlay is unknown: ``underlay=""`` and
no headroom series.  For vlan, macvlan, ipvlan and similar stacked devices the underlay label
is their lower device (IFLA_LINK); for veth it is empty (IFLA_LINK is the peer, not an underlay).

Headroom = underlay MTU - overhead - tunnel MTU (negative: a full-size overlay packet cannot
cross the underlay whole).  The device MTU of the underlay is used, not a per-route MTU.

``nodenet_interface_mtu_above_overlay_bytes`` rule: the overlay MTU of a namespace is the
smallest MTU among its tunnel interfaces that are administratively up.  Every veth and bridge
interface that is not itself an underlay (of a tunnel, or the lower device of a macvlan, vlan...)
gets ``max(0, its MTU - that overlay MTU)``.  A namespace without an up tunnel exports no such
series.  Routing is not consulted:
a pod-facing link is assumed to route into the smallest overlay of its node.

Kind label: IFLA_INFO_KIND (veth, vxlan, bridge, ...); without one: ``loopback`` for the
loopback device, ``physical`` for devices with a parent bus device (IFLA_PARENT_DEV_NAME: NICs,
virtio), else ``device``.

Include/exclude regexes select which interfaces are exported (searched anywhere in the name,
as node_exporter does; include first, then exclude).  Overlay detection and underlays are
always computed from every link, so excluding an interface never changes another's values.
"""
from __future__ import annotations

import socket
import time
from operator import itemgetter

from ..config import Option, parse_bool, parse_regex
from ..metrics import COUNTER, GAUGE, Family, Metric, Table
from ..sources.links import (
    ARPHRD_LOOPBACK,
    STATS_INDEX,
    Link,
    LinkLayouts,
    RtNetlink,
    default_route,
)
from .base import Collector, DeviceFilter, register

IF = ("interface",)

INFO = Metric("nodenet_interface_info", GAUGE,
              "Always 1 per interface; kind from IFLA_INFO_KIND (physical/loopback/device when "
              "none), master (bridge/bond) and underlay (the device a tunnel or stacked device "
              "sends through) by name, empty when none or unknown.",
              ("interface", "kind", "operstate", "master", "underlay"))
MTU = Metric("nodenet_interface_mtu_bytes", GAUGE, "MTU of the interface in bytes.", IF)
MIN_MTU = Metric("nodenet_interface_min_mtu_bytes", GAUGE,
                 "Smallest MTU the kernel accepts for the interface (IFLA_MIN_MTU).", IF)
MAX_MTU = Metric("nodenet_interface_max_mtu_bytes", GAUGE,
                 "Largest MTU the kernel accepts for the interface (IFLA_MAX_MTU); absent when "
                 "the kernel reports no limit (0).", IF)

# (metric, LinkStats field)
COUNTERS = (
    (Metric("nodenet_interface_receive_bytes_total", COUNTER, "Bytes received.", IF),
     "rx_bytes"),
    (Metric("nodenet_interface_receive_packets_total", COUNTER, "Packets received.", IF),
     "rx_packets"),
    (Metric("nodenet_interface_receive_drops_total", COUNTER,
            "Received packets dropped by the kernel or the driver (rx_dropped).", IF),
     "rx_dropped"),
    (Metric("nodenet_interface_receive_errors_total", COUNTER,
            "Receive errors, all kinds (rx_errors).", IF), "rx_errors"),
    (Metric("nodenet_interface_transmit_bytes_total", COUNTER, "Bytes transmitted.", IF),
     "tx_bytes"),
    (Metric("nodenet_interface_transmit_packets_total", COUNTER, "Packets transmitted.", IF),
     "tx_packets"),
    (Metric("nodenet_interface_transmit_drops_total", COUNTER,
            "Packets dropped on transmit (tx_dropped; e.g. a veth whose peer is down).", IF),
     "tx_dropped"),
    (Metric("nodenet_interface_transmit_errors_total", COUNTER,
            "Transmit errors, all kinds (tx_errors).", IF), "tx_errors"),
)
DETAILS = (
    (Metric("nodenet_interface_receive_length_errors_total", COUNTER,
            "Frames received with a bad length (rx_length_errors).", IF), "rx_length_errors"),
    (Metric("nodenet_interface_receive_over_errors_total", COUNTER,
            "Receiver ring buffer overflows (rx_over_errors).", IF), "rx_over_errors"),
    (Metric("nodenet_interface_receive_crc_errors_total", COUNTER,
            "Frames received with a bad CRC (rx_crc_errors).", IF), "rx_crc_errors"),
    (Metric("nodenet_interface_receive_frame_errors_total", COUNTER,
            "Frame alignment errors, or malformed frames from user space on tun/tap "
            "(rx_frame_errors).", IF), "rx_frame_errors"),
    (Metric("nodenet_interface_receive_fifo_errors_total", COUNTER,
            "Receive FIFO overruns (rx_fifo_errors).", IF), "rx_fifo_errors"),
    (Metric("nodenet_interface_receive_missed_errors_total", COUNTER,
            "Packets the NIC missed for lack of host buffers (rx_missed_errors).", IF),
     "rx_missed_errors"),
    (Metric("nodenet_interface_transmit_aborted_errors_total", COUNTER,
            "Transmissions aborted (tx_aborted_errors).", IF), "tx_aborted_errors"),
    (Metric("nodenet_interface_transmit_carrier_errors_total", COUNTER,
            "Transmit carrier losses (tx_carrier_errors).", IF), "tx_carrier_errors"),
    (Metric("nodenet_interface_transmit_fifo_errors_total", COUNTER,
            "Transmit FIFO underruns (tx_fifo_errors).", IF), "tx_fifo_errors"),
)
NOHANDLER = Metric("nodenet_interface_receive_nohandler_total", COUNTER,
                   "Packets dropped because no protocol handler took them (rx_nohandler, "
                   "Linux 4.6+; e.g. on inactive bond slaves).", IF)
HEADROOM = Metric("nodenet_overlay_mtu_headroom_bytes", GAUGE,
                  "Underlay MTU minus encapsulation overhead minus the tunnel's MTU; negative "
                  "means full-size overlay packets cannot cross the underlay whole (they are "
                  "fragmented or dropped). Not exported for metadata-mode (external) tunnels, "
                  "which use per-route MTUs. Overhead table: docs/interfaces.md.",
                  ("interface", "kind", "underlay"))
ABOVE_OVERLAY = Metric("nodenet_interface_mtu_above_overlay_bytes", GAUGE,
                       "For veth and bridge interfaces on a node with an up tunnel: bytes by "
                       "which their MTU exceeds the smallest MTU of the up tunnels; exported "
                       "only for the interfaces above (absent: not above). Underlays of tunnels "
                       "or stacked devices are left out.", IF)


# ---- pod interfaces (issue 17): veths whose peer lives in another network namespace
POD = ("master", "kind")
POD_COUNT = Metric("nodenet_pod_interfaces", GAUGE,
                   "Pod interfaces (veths whose peer is in another network namespace) per master "
                   "(bridge; empty when none) and kind.", POD)
POD_COUNTERS = tuple(
    (Metric("nodenet_pod_interfaces_" + m.name[len("nodenet_interface_"):], COUNTER,
            f"Sum over the master's pod interfaces: {m.help} Interfaces that left keep "
            f"counting (the sum never goes back).", POD), field)
    for m, field in COUNTERS)
POD_MTU_MIN = Metric("nodenet_pod_interfaces_mtu_min_bytes", GAUGE,
                     "Smallest MTU among the master's pod interfaces.", POD)
POD_MTU_MAX = Metric("nodenet_pod_interfaces_mtu_max_bytes", GAUGE,
                     "Largest MTU among the master's pod interfaces.", POD)
POD_ABOVE = Metric("nodenet_pod_interfaces_above_overlay", GAUGE,
                   "Pod interfaces whose MTU is above the smallest up tunnel's MTU (only on a "
                   "node with an up tunnel).", POD)
POD_ABOVE_MAX = Metric("nodenet_pod_interfaces_above_overlay_max_bytes", GAUGE,
                       "Largest number of bytes by which a pod interface's MTU exceeds the "
                       "smallest up tunnel's MTU (0: none above; only on a node with an up "
                       "tunnel).", POD)
POD_METRICS = ((POD_COUNT,) + tuple(m for m, _ in POD_COUNTERS)
               + (POD_MTU_MIN, POD_MTU_MAX, POD_ABOVE, POD_ABOVE_MAX))
# the counters whose non-zero value keeps a pod interface's own series (top N)
_LOSS_FIELDS = itemgetter(*(STATS_INDEX[f] for f in ("rx_dropped", "tx_dropped", "rx_errors",
                                                      "tx_errors")))
_POD_FIELDS = tuple(STATS_INDEX[field] for _, field in POD_COUNTERS)
_POD_PICK = itemgetter(*_POD_FIELDS)


# a pod interface whose drops or errors rose keeps its own series first for this long (s)
POD_LOSS_HOLD = 900.0


def is_pod_interface(link: Link) -> bool:
    """A veth whose peer lives in another network namespace (IFLA_LINK_NETNSID set)."""
    return link.kind == "veth" and link.link_netnsid is not None


def _pod_mode(value) -> str:
    text = str(value).strip().lower()
    if text not in ("summary", "full"):
        raise ValueError(f"must be summary or full: {value!r}")
    return text


def _top(value) -> int:
    text = str(value).strip()
    if type(value) is bool or not text.isdigit():
        raise ValueError(f"not a non-negative integer: {value!r}")
    number = int(text)
    if not 0 <= number <= 100_000:
        raise ValueError(f"must be between 0 and 100000: {value!r}")
    return number


def _mtu_samples(link: Link, lv: tuple, mtu: Family, min_mtu: Family, max_mtu: Family) -> None:
    """The MTU series of a link the MTU table cannot hold (a limit the kernel did not give)."""
    if link.mtu is not None:
        mtu.samples.append((lv, link.mtu))
    if link.min_mtu is not None:
        min_mtu.samples.append((lv, link.min_mtu))
    if link.max_mtu:
        max_mtu.samples.append((lv, link.max_mtu))


def _table(specs, keys: list, rows: list) -> Table:
    """A Table filled at once: one rendered label set per key, columns transposed in C."""
    table = Table(specs)
    labelset = table.labelset
    table.labelsets = [labelset(k) for k in keys]
    table.columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in specs]
    return table


class PodSums:
    """Per (master, kind) sums of the pod interfaces' counters that never go back: the last
    counters of an interface that left (pod deleted) stay in a carry, so rate() of a sum sees
    no false reset.  Kept between scrapes (the only state of the collector)."""

    def __init__(self):
        self._carry: dict = {}      # key -> list of carried totals
        self._last: dict = {}       # key -> {ifindex: tuple of the member's counters}

    def update(self, members: dict) -> dict:
        """members: key -> {ifindex: counters tuple}; returns key -> summed list.

        A member that left, or whose first counter went back (a new device under the same
        ifindex starts from 0), hands its last counters to the carry."""
        out = {}
        for key in set(self._last) | set(members):
            now = members.get(key, {})
            last = self._last.get(key, {})
            carry = self._carry.setdefault(key, [0] * len(_POD_FIELDS))
            gone = [old for ifindex, old in last.items()
                    if (new := now.get(ifindex)) is None or new[0] < old[0]]
            if gone:
                for i, column in enumerate(zip(*gone, strict=True)):
                    carry[i] += sum(column)
            if now:
                columns = zip(*now.values(), strict=True)
                out[key] = [c + sum(col) for c, col in zip(carry, columns, strict=True)]
                self._last[key] = now
            else:
                self._last.pop(key, None)   # the carry stays: the master may get pods again
        return out


ABOVE_OVERLAY_KINDS = frozenset({"veth", "bridge"})
# stacked devices whose IFLA_LINK is the device they send through
_NO_UNDERLAY_KINDS = frozenset({"veth"})
_ENCAP_HLEN = {0: 0, 1: 8, 2: 12, 3: 4}  # none, FOU, GUE (+8 with remote csum), MPLS
TUNNEL_ENCAP_FLAG_REMCSUM = 1 << 2


def kind_of(link: Link) -> str:
    if link.kind:
        return link.kind
    if link.type == ARPHRD_LOOPBACK:
        return "loopback"
    return "physical" if link.parent_dev else "device"


def _gre_hlen(oflags: int) -> int:
    return 4 + 4 * bool(oflags & 0x8000) + 4 * bool(oflags & 0x2000) + 4 * bool(oflags & 0x1000)


def _encap_hlen(tun) -> int:
    extra = _ENCAP_HLEN.get(tun.encap_type, 0)
    if tun.encap_type == 2 and tun.encap_flags & TUNNEL_ENCAP_FLAG_REMCSUM:
        extra += 8
    return extra


def encap_overhead(link: Link, geneve_option_bytes: int = 0) -> int | None:
    """Bytes the tunnel adds in front of an overlay packet (table in the module docstring)."""
    tun, kind = link.tunnel, link.kind
    if tun is None:
        return None
    v6 = tun.family == 6
    outer = 40 if v6 else 20
    if kind == "vxlan":
        return outer + 8 + 8 + 14
    if kind == "geneve":
        return outer + 8 + 8 + (0 if tun.inner_l3 else 14) + geneve_option_bytes
    if kind == "wireguard":
        return (20 if tun.family == 4 else 40) + 8 + 32
    if kind in ("ipip", "sit"):
        return 20 + _encap_hlen(tun)
    if kind == "ip6tnl":
        return 40 + (8 if tun.encap_limit_option else 0) + _encap_hlen(tun)
    if kind in ("gre", "gretap", "ip6gre", "ip6gretap"):
        total = outer + _gre_hlen(tun.gre_oflags) + _encap_hlen(tun)
        if v6 and tun.encap_limit_option:
            total += 8
        if kind.endswith("tap"):
            total += 14
        return total
    return None


def _non_negative_int(value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    number = int(str(value).strip())
    if not 0 <= number <= 1024:
        raise ValueError(f"must be between 0 and 1024: {value!r}")
    return number


class UnderlayResolver:
    """Finds the underlay of each tunnel of one dump (route lookups cached per scrape)."""

    def __init__(self, nl, by_index: dict):
        self.nl = nl
        self.by_index = by_index
        self._routes: dict = {}
        self._defaults: dict = {}

    def underlay(self, link: Link) -> Link | None:
        tun = link.tunnel
        if tun is None:
            if link.kind in _NO_UNDERLAY_KINDS or not link.link or link.link == link.index:
                return None
            if link.link_netnsid is not None:
                return None
            return self.by_index.get(link.link)
        if tun.link:
            if link.link_netnsid is not None:
                return None  # bound to a device of another namespace
            found = self.by_index.get(tun.link)
        elif link.link_netnsid is not None:
            return None  # routes of this namespace say nothing about the other one
        elif tun.remote is not None:
            found = self._route_oif(tun.remote)
        else:
            found = self._default_oif(tun.family)
        if found is None or found.index == link.index:
            return None
        return found

    def _route_oif(self, address: bytes) -> Link | None:
        if address not in self._routes:
            route = self.nl.route_get(address)
            self._routes[address] = route.oif if route is not None else 0
        return self.by_index.get(self._routes[address])

    def _default_oif(self, family: int | None) -> Link | None:
        families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)
        if family == 4:
            families = (socket.AF_INET,)
        elif family == 6:
            families = (socket.AF_INET6,)
        for af in families:
            if af not in self._defaults:
                route = default_route(self.nl.dump_routes(af))
                self._defaults[af] = route.oif if route is not None else 0
            found = self.by_index.get(self._defaults[af])
            if found is not None:
                return found
        return None


@register
class NetdevCollector(Collector):
    name = "netdev"
    default_enabled = True
    description = ("Interfaces over rtnetlink: kind, MTU, 64-bit counters and errors, "
                   "overlay MTU headroom")
    source = "rtnetlink RTM_GETLINK dump (IFLA_STATS64, IFLA_LINKINFO), RTM_GETROUTE"
    metrics = ((INFO, MTU, MIN_MTU, MAX_MTU) + tuple(m for m, _ in COUNTERS)
               + tuple(m for m, _ in DETAILS) + (NOHANDLER, HEADROOM, ABOVE_OVERLAY)
               + POD_METRICS)
    options = (
        Option("collector.netdev.device-include", parse_regex, "",
               "Regex: export only interfaces whose name matches (searched, like "
               "node_exporter); empty: all", "REGEX"),
        Option("collector.netdev.device-exclude", parse_regex, "",
               "Regex: do not export interfaces whose name matches; empty: none", "REGEX"),
        Option("collector.netdev.detailed-errors", parse_bool, True,
               "Export the detailed error kinds (length/over/crc/frame/fifo/missed, "
               "aborted/carrier/fifo, nohandler) per interface"),
        Option("collector.netdev.geneve-option-bytes", _non_negative_int, 0,
               "Geneve option bytes per packet added to the Geneve overhead (e.g. 8 for one "
               "8-byte option; fixed-remote Geneve only)",
               "BYTES"),
        Option("collector.netdev.pod-interfaces", _pod_mode, "summary",
               "summary: pod interfaces (veths whose peer is in another network namespace) "
               "are summed per master, only the top N with drops or errors keep their own "
               "series; full: every pod interface has its own series", "summary|full"),
        Option("collector.netdev.pod-interfaces.top", _top, 10,
               "summary mode: how many pod interfaces with non-zero drops or errors keep their "
               "own series (the worst by drops + errors)", "N"),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        s = ctx.settings
        self._wanted = DeviceFilter.from_settings(s, "netdev")
        self._details = s["collector.netdev.detailed-errors"]
        self._geneve_options = s["collector.netdev.geneve-option-bytes"]
        self._timeout = float(s.get("collector.timeout", 4.0) or 4.0)
        self.transport_factory = None   # tests: a netlink.ReplayTransport factory
        self._pods_full = s["collector.netdev.pod-interfaces"] == "full"
        self._pods_top = s["collector.netdev.pod-interfaces.top"]
        self._pod_sums = PodSums()
        self._layouts = LinkLayouts()   # compiled link-message shapes, kept across scrapes
        self._pod_loss: dict = {}   # ifindex -> (drops + errors, monotonic time it last rose)

    def read(self):
        """(links, {ifindex: underlay Link or None}) for this namespace."""
        transport = self.transport_factory() if self.transport_factory else None
        with RtNetlink(timeout=self._timeout, deadline=self._timeout, transport=transport,
                       layouts=self._layouts) as nl:
            links = nl.dump_links()
            by_index = {link.index: link for link in links}
            resolver = UnderlayResolver(nl, by_index)
            underlays = {}
            for link in links:
                if link.tunnel is not None or (link.link and link.link != link.index):
                    underlays[link.index] = resolver.underlay(link)
        return links, underlays

    def collect(self):
        links, underlays = self.read()
        yield from self.families(links, underlays)

    def families(self, links, underlays):
        """Per-interface series go into :class:`Table`s (one rendered label set per interface,
        one int column per metric, written in batches by the exposition writer); what does
        not fit a table's shape (no stats, no rx_nohandler, no MTU limits) falls back to plain
        families, so the exposition is the same either way."""
        by_index = {link.index: link for link in links}
        specs = COUNTERS + DETAILS if self._details else COUNTERS
        counter_specs = tuple(m for m, _ in specs)
        pick = itemgetter(*(STATS_INDEX[field] for _, field in specs))
        nohandler_i = STATS_INDEX["rx_nohandler"]
        details = self._details
        # rows (label values, values tuple) of the tables, filled in one go at the end
        info_keys: list = []
        nh_keys: list = []
        nh_rows: list = []
        ct_keys: list = []
        ct_rows: list = []
        mtu_keys: list = []
        mtu_rows: list = []
        mtu, min_mtu, max_mtu = MTU.family(), MIN_MTU.family(), MAX_MTU.family()
        headroom, above = HEADROOM.family(), ABOVE_OVERLAY.family()

        carriers = {u.index for u in underlays.values() if u is not None}
        overlay_mtus = [link.mtu for link in links
                        if link.tunnel is not None and not link.tunnel.external
                        and link.up and link.mtu]
        overlay_mtu = min(overlay_mtus) if overlay_mtus else None
        pod_fams, hidden = self.pod_summary(links, by_index, overlay_mtu, carriers)
        filtered = self._wanted.active

        for link in links:
            name = link.name
            if link.index in hidden or (filtered and not self._wanted(name)):
                continue
            lv = (name,)
            kind = link.kind or kind_of(link)
            master = by_index.get(link.master) if link.master else None
            under = underlays.get(link.index)
            info_keys.append((name, kind, link.operstate, master.name if master else "",
                              under.name if under else ""))
            if link.mtu is not None and link.min_mtu is not None and link.max_mtu:
                mtu_keys.append(lv)
                mtu_rows.append((link.mtu, link.min_mtu, link.max_mtu))
            else:
                _mtu_samples(link, lv, mtu, min_mtu, max_mtu)
            stats = link.stats
            if stats is not None:
                nohandler = stats[nohandler_i]
                if details and nohandler is not None:
                    nh_keys.append(lv)
                    nh_rows.append(pick(stats) + (nohandler,))
                else:
                    ct_keys.append(lv)
                    ct_rows.append(pick(stats))
            # Metadata-mode ("external") tunnels (Cilium's cilium_vxlan, OVS genev_sys_6081)
            # pick remote and underlay per packet and rely on per-route MTUs: their device MTU
            # is not the path's limit, so a static headroom would be a false alarm.
            if (link.tunnel is not None and not link.tunnel.external and under is not None
                    and link.mtu and under.mtu):
                overhead = encap_overhead(link, self._geneve_options)
                if overhead is not None:
                    headroom.add((name, kind, under.name), under.mtu - overhead - link.mtu)
            if (overlay_mtu is not None and link.kind in ABOVE_OVERLAY_KINDS
                    and link.index not in carriers and link.mtu is not None
                    and link.mtu > overlay_mtu):
                above.samples.append((lv, link.mtu - overlay_mtu))

        yield _table((INFO,), info_keys, [(1,)] * len(info_keys))
        yield _table((MTU, MIN_MTU, MAX_MTU), mtu_keys, mtu_rows)
        for fam in (mtu, min_mtu, max_mtu):
            if fam.samples:
                yield fam
        if nh_keys:
            yield _table(counter_specs + (NOHANDLER,), nh_keys, nh_rows)
        if ct_keys or not nh_keys:
            yield _table(counter_specs, ct_keys, ct_rows)
        yield headroom
        yield above
        yield from pod_fams

    def _rank_losses(self, losses, now: float | None = None) -> list:
        """Pod interfaces with drops or errors, best first: those whose count rose within
        POD_LOSS_HOLD seconds (dropping now; by count), then the others by count.  A count
        that rose once when the pod started stays non-zero for ever: ranking by the total alone
        would fill the top N with such veths and hide the one dropping now."""
        now = time.monotonic() if now is None else now
        state = self._pod_loss
        ranked = []
        for neg_loss, name, index in losses:
            loss = -neg_loss
            old = state.get(index)
            rose = old[1] if old is not None and loss <= old[0] else (
                now if old is not None else None)
            state[index] = (loss, rose)
            recent = rose is not None and now - rose < POD_LOSS_HOLD
            ranked.append((0 if recent else 1, neg_loss, name, index))
        seen = {index for *_, index in ranked}
        for index in [i for i in state if i not in seen]:
            del state[index]
        ranked.sort()
        return ranked

    def pod_summary(self, links, by_index, overlay_mtu, carriers=frozenset()):
        """(summary families, ifindexes of pod interfaces whose own series are left out).

        A veth that is the underlay of a tunnel or stacked device (``carriers``: a node whose
        uplink is a veth) is not a pod interface.  Summary per (master name or "", kind) of
        the wanted pod interfaces: their count, the
        sums of the traffic/drop/error counters (never going back, see PodSums), smallest and
        largest MTU and, on a node with an up tunnel, how many are above the overlay MTU and
        by how much at most.  In summary mode every pod interface is left out except the top
        N with drops or errors (:meth:`_rank_losses`: dropping now first), so a dashboard or
        an alert can still name the veth."""
        groups: dict = {}
        members: dict = {}
        losses = []
        filtered = self._wanted.active
        for link in links:
            if (link.link_netnsid is None or link.kind != "veth" or link.index in carriers
                    or (filtered and not self._wanted(link.name))):
                continue
            master = by_index.get(link.master) if link.master else None
            key = (master.name if master else "", kind_of(link))
            groups.setdefault(key, []).append(link)
            stats = link.stats
            if stats is not None:
                members.setdefault(key, {})[link.index] = _POD_PICK(stats)
                loss = sum(_LOSS_FIELDS(stats))
                if loss:
                    losses.append((-loss, link.name, link.index))
        sums = self._pod_sums.update(members)
        fams = {m: m.family() for m in POD_METRICS}
        for key in sorted(groups):
            group = groups[key]
            fams[POD_COUNT].add(key, len(group))
            totals = sums.get(key)
            if totals is not None:
                for (metric, _), value in zip(POD_COUNTERS, totals, strict=True):
                    fams[metric].add(key, value)
            mtus = [link.mtu for link in group if link.mtu is not None]
            if mtus:
                fams[POD_MTU_MIN].add(key, min(mtus))
                fams[POD_MTU_MAX].add(key, max(mtus))
                if overlay_mtu is not None:
                    excess = [m - overlay_mtu for m in mtus if m > overlay_mtu]
                    fams[POD_ABOVE].add(key, len(excess))
                    fams[POD_ABOVE_MAX].add(key, max(excess, default=0))
        hidden: set = set()
        if not self._pods_full:
            keep = {index for *_, index in self._rank_losses(losses)[: self._pods_top]}
            hidden = {link.index for group in groups.values() for link in group
                      if link.index not in keep}
        return [f for f in fams.values() if f.samples], hidden
