"""IPVS virtual servers (kube-proxy IPVS mode) and their real servers, over generic netlink.

Per service and per backend: connections, packets and bytes (the kernel's 64-bit counters),
the backends' active/inactive/persistent connections and weights, and how many backends of a
service can still take traffic.  IPVS absent on the node is not a failure:
`nodenet_ipvs_available 0`, success 1, and the kernel is never made to load ip_vs.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from ..config import Option, parse_bool, parse_list, parse_regex
from ..metrics import COUNTER, GAUGE, Column, Family, Info, Metric, Table, row_getter
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

# Each table is the one ordering of its metrics: (metric, value getter) per series of a
# service / a backend (dotted attribute paths, or callables; Info: value 1, labels from it).
SERVICE_COLUMNS: tuple[Column, ...] = (
    (SERVICE_CONNS, "stats.conns"),
    (SERVICE_INPKTS, "stats.inpkts"),
    (SERVICE_OUTPKTS, "stats.outpkts"),
    (SERVICE_INBYTES, "stats.inbytes"),
    (SERVICE_OUTBYTES, "stats.outbytes"),
    (SERVICE_BACKENDS, lambda svc: len(svc.backends)),
    (SERVICE_BACKENDS_AVAILABLE, lambda svc: sum(1 for b in svc.backends if b.weight > 0)),
    (SERVICE_INFO, Info("scheduler", lambda svc: ",".join(svc.flag_names))),
)
BACKEND_COLUMNS: tuple[Column, ...] = (
    (B_ACTIVE, "active_conns"),
    (B_INACTIVE, "inactive_conns"),
    (B_PERSISTENT, "persistent_conns"),
    (B_WEIGHT, "weight"),
    (B_CONNS, "stats.conns"),
    (B_INPKTS, "stats.inpkts"),
    (B_OUTPKTS, "stats.outpkts"),
    (B_INBYTES, "stats.inbytes"),
    (B_OUTBYTES, "stats.outbytes"),
    # last: --collector.ipvs.backend-labels counts it; the name is looked up once per method
    (B_INFO, Info("fwd_method", labels=lambda m: (ipvs.FWD_NAMES.get(m, str(m)),))),
)
_SERVICE_METRICS = tuple(m for m, _ in SERVICE_COLUMNS)
_BACKEND_METRICS = tuple(m for m, _ in BACKEND_COLUMNS)
_backend_values = row_getter([g for _, g in BACKEND_COLUMNS])


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
        return self.exclude is None or not self.exclude.search(sid)

    def collect(self):
        flt = None if self.include is None and self.exclude is None else self._wanted
        # IPVS absent: scan() raises sources.Unavailable, which the framework turns into
        # nodenet_ipvs_available 0 (availability_metric), success 1
        out = self._collect(self.reader.scan(backends=True, service_filter=flt))
        yield self.availability(AVAILABLE, True)
        yield from out

    def _collect(self, services: Iterable[ipvs.Service]) -> list[Family | Table]:
        # Tables: one rendered label set per service / backend, one value column per metric
        # (540k samples at 5,000 x 10: docs/performance.md "IPVS")
        st_ = Table.of(SERVICE_COLUMNS, SERVICE_LABELS)
        per_backend, aggregate = self.per_backend, self.aggregate
        bt = None
        if per_backend and not aggregate:
            bt = Table.of(tuple(zip(self.bmetrics, (g for _, g in BACKEND_COLUMNS),
                                    strict=True)), BACKEND_LABELS)
        agg: dict = {}
        nbackends = nservices = 0
        for svc in services:
            nservices += 1
            lv = service_label_values(svc)
            svc_set = st_.labelset(lv)
            st_.add_row(svc_set, svc)
            backends = svc.backends
            nbackends += len(backends)
            if bt is not None:
                # BACKEND_LABELS = SERVICE_LABELS + (backend_address, backend_port): the
                # service's rendered set is extended; the address comes from inet_ntop (no
                # character to escape), the port is an integer.
                svc_set += ',backend_address="'
                bt.add_rows([f'{svc_set}{b.address}",backend_port="{b.port}"' for b in backends],
                            backends)
            elif per_backend:
                self._aggregate(agg, lv, backends)
        out: list[Family | Table] = [SERVICES.single(nservices), BACKENDS.single(nbackends), st_]
        if bt is not None:
            out.append(bt)
        elif per_backend:
            bf = [m.family() for m in self.bmetrics]
            b_info = bf[-1]
            for key, (acc, fwd) in agg.items():
                for fam, v in zip(bf[:-1], acc, strict=True):   # b_info is last
                    fam.add(key, v)
                for method, n in fwd.items():
                    b_info.add(key + (method,), n)
            out += bf
        return out

    def _aggregate(self, agg: dict, lv: tuple, backends: list[ipvs.Backend]) -> None:
        """Sum the backend values over the labels not kept (--collector.ipvs.backend-labels);
        the info column counts the backends per forwarding method."""
        keep = self.keep_idx
        for b in backends:
            blv = lv + (b.address, str(b.port))
            *vals, (fwd,) = _backend_values(b)
            key = tuple(blv[i] for i in keep)
            cur = agg.get(key)
            if cur is None:
                agg[key] = cur = [[0] * len(vals), {}]
            acc = cur[0]
            for i, v in enumerate(vals):
                acc[i] += v
            cur[1][fwd] = cur[1].get(fwd, 0) + 1
