"""IPVS virtual servers (kube-proxy IPVS mode) and their real servers, over generic netlink.

Per service and per backend: connections, packets and bytes (the kernel's 64-bit counters),
the backends' active/inactive/persistent connections and weights, and how many backends of a
service can still take traffic.  IPVS absent on the node is not a failure:
`nodenet_ipvs_available 0`, success 1, and the kernel is never made to load ip_vs.
"""
from __future__ import annotations

import re

from ..config import Option, parse_bool, parse_list, parse_regex
from ..metrics import COUNTER, GAUGE, Metric, Table
from ..sources import ipvs
from .base import Collector, register

SERVICE_LABELS = ("protocol", "address", "port", "fwmark", "family")
BACKEND_LABELS = SERVICE_LABELS + ("backend_address", "backend_port")

AVAILABLE = Metric("nodenet_ipvs_available", GAUGE,
                   "1 if IPVS is present in the kernel (ip_vs loaded), 0 if not (the exporter "
                   "never loads it).")
SERVICES = Metric("nodenet_ipvs_services", GAUGE,
                  "IPVS virtual services exported (after the service include/exclude filter).")
BACKENDS = Metric("nodenet_ipvs_backends", GAUGE,
                  "IPVS real servers (backends) of the exported services.")
SERVICE_INFO = Metric("nodenet_ipvs_service_info", GAUGE,
                      "Always 1 per IPVS service; scheduler and flags (comma-separated, e.g. "
                      "persistent,sh-port,ops) as labels.",
                      SERVICE_LABELS + ("scheduler", "flags"))
SERVICE_CONNS = Metric("nodenet_ipvs_service_connections_total", COUNTER,
                       "Connections scheduled by the IPVS service.", SERVICE_LABELS)
SERVICE_INPKTS = Metric("nodenet_ipvs_service_incoming_packets_total", COUNTER,
                        "Packets from clients to the IPVS service.", SERVICE_LABELS)
SERVICE_OUTPKTS = Metric("nodenet_ipvs_service_outgoing_packets_total", COUNTER,
                         "Packets from the service's backends back to clients (seen only for "
                         "NAT forwarding).", SERVICE_LABELS)
SERVICE_INBYTES = Metric("nodenet_ipvs_service_incoming_bytes_total", COUNTER,
                         "Bytes from clients to the IPVS service.", SERVICE_LABELS)
SERVICE_OUTBYTES = Metric("nodenet_ipvs_service_outgoing_bytes_total", COUNTER,
                          "Bytes from the service's backends back to clients (NAT only).",
                          SERVICE_LABELS)
SERVICE_BACKENDS = Metric("nodenet_ipvs_service_backends", GAUGE,
                          "Backends configured for the IPVS service.", SERVICE_LABELS)
SERVICE_BACKENDS_AVAILABLE = Metric(
    "nodenet_ipvs_service_backends_available", GAUGE,
    "Backends of the IPVS service with weight > 0 (can take new connections); 0 means every "
    "new connection to the service fails.", SERVICE_LABELS)

B_ACTIVE = Metric("nodenet_ipvs_backend_connections_active", GAUGE,
                  "Active (established) connections to the backend.", BACKEND_LABELS)
B_INACTIVE = Metric("nodenet_ipvs_backend_connections_inactive", GAUGE,
                    "Inactive connections (closing, or UDP/SCTP flows) to the backend.",
                    BACKEND_LABELS)
B_PERSISTENT = Metric("nodenet_ipvs_backend_connections_persistent", GAUGE,
                      "Persistence templates pointing at the backend.", BACKEND_LABELS)
B_WEIGHT = Metric("nodenet_ipvs_backend_weight", GAUGE,
                  "Scheduling weight of the backend (0: takes no new connections).",
                  BACKEND_LABELS)
B_CONNS = Metric("nodenet_ipvs_backend_connections_total", COUNTER,
                 "Connections scheduled to the backend.", BACKEND_LABELS)
B_INPKTS = Metric("nodenet_ipvs_backend_incoming_packets_total", COUNTER,
                  "Packets forwarded to the backend.", BACKEND_LABELS)
B_OUTPKTS = Metric("nodenet_ipvs_backend_outgoing_packets_total", COUNTER,
                   "Packets from the backend back to clients (NAT only).", BACKEND_LABELS)
B_INBYTES = Metric("nodenet_ipvs_backend_incoming_bytes_total", COUNTER,
                   "Bytes forwarded to the backend.", BACKEND_LABELS)
B_OUTBYTES = Metric("nodenet_ipvs_backend_outgoing_bytes_total", COUNTER,
                    "Bytes from the backend back to clients (NAT only).", BACKEND_LABELS)
B_INFO = Metric("nodenet_ipvs_backend_info", GAUGE,
                "1 per backend; its forwarding method (masq, route, tunnel, local, bypass) as a "
                "label. With --collector.ipvs.backend-labels, the number of backends merged.",
                BACKEND_LABELS + ("forwarding",))

_SERVICE_METRICS = (SERVICE_INFO, SERVICE_CONNS, SERVICE_INPKTS, SERVICE_OUTPKTS,
                    SERVICE_INBYTES, SERVICE_OUTBYTES, SERVICE_BACKENDS,
                    SERVICE_BACKENDS_AVAILABLE)
_BACKEND_METRICS = (B_ACTIVE, B_INACTIVE, B_PERSISTENT, B_WEIGHT, B_CONNS, B_INPKTS,
                    B_OUTPKTS, B_INBYTES, B_OUTBYTES, B_INFO)


def _backend_labels(value):
    names = parse_list(value)
    unknown = [n for n in names if n not in BACKEND_LABELS]
    if unknown:
        raise ValueError(f"unknown backend label(s) {', '.join(unknown)} "
                         f"(known: {','.join(BACKEND_LABELS)})")
    return names


def service_id(svc: ipvs.Service) -> str:
    """What the include/exclude filters match: tcp/10.96.0.10:53, udp/[fd00::a]:53,
    fwmark/2 (IPv4) or fwmark/2/ipv6."""
    if svc.fwmark and not svc.address:
        return f"fwmark/{svc.fwmark}" + ("/ipv6" if svc.family == ipvs.AF_INET6 else "")
    host = f"[{svc.address}]" if svc.family == ipvs.AF_INET6 else svc.address
    return f"{svc.protocol_name}/{host}:{svc.port}"


def service_label_values(svc: ipvs.Service) -> tuple:
    if svc.fwmark and not svc.address:
        return ("fwmark", "", "", str(svc.fwmark), svc.family_name)
    return (svc.protocol_name, svc.address, str(svc.port), "", svc.family_name)


@register
class IPVSCollector(Collector):
    name = "ipvs"
    default_enabled = True
    description = "IPVS services and backends: traffic, connections, weights (generic netlink)"
    source = "generic netlink IPVS family (presence: /proc/net/ip_vs, /sys/module/ip_vs)"
    metrics = (AVAILABLE, SERVICES, BACKENDS) + _SERVICE_METRICS + _BACKEND_METRICS
    availability_metric = AVAILABLE
    options = (
        Option("collector.ipvs.backend-labels", _backend_labels, list(BACKEND_LABELS),
               "Labels kept on per-backend series; series that differ only in dropped labels "
               "are summed (as node_exporter's flag of the same name)", "LABELS"),
        Option("collector.ipvs.backends", parse_bool, True,
               "Export per-backend series (--no-collector.ipvs.backends: per-service only)"),
        Option("collector.ipvs.service-include", parse_regex, "",
               "Export only services whose id matches (search) this regex; ids look like "
               "tcp/10.96.0.10:53, udp/[fd00::a]:53, fwmark/2, fwmark/3/ipv6", "REGEX"),
        Option("collector.ipvs.service-exclude", parse_regex, "",
               "Do not export services whose id matches (search) this regex", "REGEX"),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        s = ctx.settings
        self.reader = ipvs.IPVSReader(ctx.procfs, ctx.sysfs)
        self.per_backend = bool(s.get("collector.ipvs.backends", True))
        keep = s.get("collector.ipvs.backend-labels", list(BACKEND_LABELS))
        keep = list(BACKEND_LABELS) if keep is None else keep
        self.keep_idx = tuple(i for i, n in enumerate(BACKEND_LABELS) if n in keep)
        self.aggregate = len(self.keep_idx) != len(BACKEND_LABELS)
        inc = s.get("collector.ipvs.service-include", "") or ""
        exc = s.get("collector.ipvs.service-exclude", "") or ""
        self.include = re.compile(inc) if inc else None
        self.exclude = re.compile(exc) if exc else None
        if self.aggregate:
            names = tuple(BACKEND_LABELS[i] for i in self.keep_idx)
            self.bmetrics = tuple(
                Metric(m.name, m.type, m.help,
                       names + (("forwarding",) if m is B_INFO else ()))
                for m in _BACKEND_METRICS)
        else:
            self.bmetrics = _BACKEND_METRICS

    def _wanted(self, svc) -> bool:
        if self.include is None and self.exclude is None:
            return True
        sid = service_id(svc)
        if self.include is not None and not self.include.search(sid):
            return False
        if self.exclude is not None and self.exclude.search(sid):
            return False
        return True

    def collect(self):
        flt = None if self.include is None and self.exclude is None else self._wanted
        # IPVS absent: scan() raises sources.Unavailable, which the framework turns into
        # nodenet_ipvs_available 0 (availability_metric), success 1
        out = self._collect(self.reader.scan(backends=True, service_filter=flt))
        yield self.availability(AVAILABLE, True)
        yield from out

    def _collect(self, services) -> list:
        # Tables: one rendered label set per service / backend, one value column per metric
        # (at 5,000 x 10 this is 540k samples; see docs/performance.md and docs/ipvs.md)
        st_ = Table(_SERVICE_METRICS, SERVICE_LABELS)
        s_sets, s_labelset = st_.labelsets, st_.labelset
        (s_info, s_conns, s_inp, s_outp, s_inb, s_outb, s_nb, s_nba) = (
            c.append for c in st_.columns)
        per_backend, aggregate = self.per_backend, self.aggregate
        if per_backend and not aggregate:
            bt = Table(self.bmetrics, BACKEND_LABELS)
            b_sets = bt.labelsets
            (a_act, a_inact, a_pers, a_w, a_conns, a_inp, a_outp, a_inb, a_outb, a_info) = (
                c.append for c in bt.columns)
        fwd_entries = {m: (1, n) for m, n in ipvs.FWD_NAMES.items()}
        info_entries: dict = {}
        agg: dict = {}
        nbackends = nservices = 0
        for svc in services:
            nservices += 1
            lv = service_label_values(svc)
            st = svc.stats
            svc_set = s_labelset(lv)
            s_sets.append(svc_set)
            ikey = (svc.scheduler, ",".join(svc.flag_names))
            s_info(info_entries.get(ikey) or info_entries.setdefault(ikey, (1,) + ikey))
            s_conns(st.conns)
            s_inp(st.inpkts)
            s_outp(st.outpkts)
            s_inb(st.inbytes)
            s_outb(st.outbytes)
            backends = svc.backends
            nbackends += len(backends)
            s_nb(len(backends))
            s_nba(sum(1 for b in backends if b.weight > 0))
            if not per_backend:
                continue
            if aggregate:
                self._aggregate(agg, lv, backends)
                continue
            svc_set += ',backend_address="'
            for b in backends:
                # hot path (50k backends at node scale): list appends, no method layers.
                # BACKEND_LABELS = SERVICE_LABELS + (backend_address, backend_port): the
                # service's rendered set is extended; the address comes from inet_ntop (no
                # character to escape), the port is an integer.
                b_sets.append(f'{svc_set}{b.address}",backend_port="{b.port}"')
                bs = b.stats
                a_act(b.active_conns)
                a_inact(b.inactive_conns)
                a_pers(b.persistent_conns)
                a_w(b.weight)
                a_conns(bs.conns)
                a_inp(bs.inpkts)
                a_outp(bs.outpkts)
                a_inb(bs.inbytes)
                a_outb(bs.outbytes)
                a_info(fwd_entries.get(b.fwd_method) or (1, str(b.fwd_method)))
        out = [SERVICES.single(nservices), BACKENDS.single(nbackends), st_]
        if per_backend and not aggregate:
            out.append(bt)
        elif per_backend:
            bf = [m.family() for m in self.bmetrics]
            b_info = bf[-1]
            for key, (acc, fwd) in agg.items():
                for fam, v in zip(bf, acc):
                    fam.add(key, v)
                for method, n in fwd.items():
                    b_info.add(key + (method,), n)
            out += bf
        return out

    def _aggregate(self, agg: dict, lv: tuple, backends) -> None:
        """Sum the backend values over the labels not kept (--collector.ipvs.backend-labels)."""
        keep = self.keep_idx
        for b in backends:
            blv = lv + (b.address, str(b.port))
            bs = b.stats
            vals = (b.active_conns, b.inactive_conns, b.persistent_conns, b.weight,
                    bs.conns, bs.inpkts, bs.outpkts, bs.inbytes, bs.outbytes)
            key = tuple(blv[i] for i in keep)
            cur = agg.get(key)
            if cur is None:
                agg[key] = cur = [[0] * len(vals), {}]
            acc = cur[0]
            for i, v in enumerate(vals):
                acc[i] += v
            cur[1][b.fwd_name] = cur[1].get(b.fwd_name, 0) + 1
