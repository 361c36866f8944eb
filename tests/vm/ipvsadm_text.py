"""Parsers of `ipvsadm -Ln ...` and `/proc/net/ip_vs` text: the independent witnesses the
IPVS tests compare the exporter's netlink decoding with (test code only; the exporter never
shells out to ipvsadm).

Service keys are (protocol, address, port, fwmark, family) with the exporter's label words:
("tcp", "127.10.0.1", 80, 0, "ipv4") or ("fwmark", "", 0, 2, "ipv6").
Backend keys are (address, port).
"""
from __future__ import annotations

import re
import socket
import struct

PROTOS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


def _split_hostport(s: str):
    if s.startswith("["):
        a, _, p = s[1:].partition("]:")
        return a, int(p), "ipv6"
    a, _, p = s.rpartition(":")
    return a, int(p), "ipv4"


def parse_ipvsadm(text: str) -> list:
    """Any `ipvsadm -Ln [--stats|--rate|--thresholds|--persistent-conn] [--exact]` output ->
    [(service_key, [service columns...], [((addr, port), [dest columns...]), ...])]."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("IP Virtual Server", "Prot ", "  -> RemoteAddress")):
            continue
        if line.lstrip().startswith("->"):
            parts = line.split()
            a, p, _ = _split_hostport(parts[1])
            out[-1][2].append(((a, p), parts[2:]))
            continue
        parts = line.split()
        if parts[0] == "FWM":
            mark = int(parts[1])
            rest = parts[2:]
            fam = "ipv4"
            if rest and rest[0] == "IPv6":
                fam, rest = "ipv6", rest[1:]
            key = ("fwmark", "", 0, mark, fam)
        else:
            a, p, fam = _split_hostport(parts[1])
            key = (PROTOS[parts[0]], a, p, 0, fam)
            rest = parts[2:]
        out.append((key, rest, []))
    return out


def parse_service_flags(cols: list) -> dict:
    """Service columns of plain `ipvsadm -Ln`: scheduler, (sched flags), persistent N,
    mask M, ops, pe NAME."""
    d = {"scheduler": cols[0], "flags": set(), "timeout": 0, "netmask": None}
    i = 1
    while i < len(cols):
        c = cols[i]
        if c.startswith("(") and c.endswith(")"):
            d["flags"].update(x for x in c[1:-1].split(",") if x)
        elif c == "persistent":
            d["flags"].add("persistent")
            d["timeout"] = int(cols[i + 1])
            i += 1
        elif c == "mask":
            d["netmask"] = cols[i + 1]
            i += 1
        elif c == "ops":
            d["flags"].add("ops")
        elif c == "pe":
            d["pe"] = cols[i + 1]
            i += 1
        i += 1
    return d


FWD_WORDS = {"Masq": "masq", "Route": "route", "Tunnel": "tunnel", "Local": "local",
             "Bypass": "bypass"}


def _hexaddr(h: str):
    if h.startswith("["):
        h = h[1:-1].replace(":", "")
        return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(h)), "ipv6"
    return socket.inet_ntoa(struct.pack("!I", int(h, 16))), "ipv4"


def parse_proc_ip_vs(text: str) -> list:
    """/proc/net/ip_vs -> [(service_key, [cols], [((addr, port), [fwd, weight, active,
    inactive]), ...])].  A fwmark service's family is taken from its first backend
    (the file does not say); "ipv4" when it has none."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("IP Virtual Server", "Prot ", "  -> RemoteAddress")):
            continue
        parts = line.split()
        if parts[0] == "->":
            m = re.match(r"^(.*):([0-9A-F]{4})$", parts[1])
            a, fam = _hexaddr(m.group(1))
            out[-1][2].append(((a, int(m.group(2), 16)), parts[2:]))
            continue
        if parts[0] == "FWM":
            out.append((["fwmark", "", 0, int(parts[1], 16), None], parts[2:], []))
        else:
            m = re.match(r"^(.*):([0-9A-F]{4})$", parts[1])
            a, fam = _hexaddr(m.group(1))
            out.append(([PROTOS[parts[0]], a, int(m.group(2), 16), 0, fam], parts[2:], []))
    res = []
    for key, cols, dests in out:
        if key[4] is None:
            key[4] = "ipv6" if dests and ":" in dests[0][0][0] else "ipv4"
        res.append((tuple(key), cols, dests))
    return res


FLAG_ORDER = ("persistent", "ops", "sh-fallback", "sh-port", "mh-fallback", "mh-port",
              "flag-1", "flag-2", "flag-3")


def service_labels(key) -> dict:
    proto, addr, port, mark, fam = key
    if proto == "fwmark":
        return dict(protocol="fwmark", address="", port="", fwmark=str(mark), family=fam)
    return dict(protocol=proto, address=addr, port=str(port), fwmark="", family=fam)


def expected_series(stats: str, ln: str, persistent: str) -> dict:
    """The complete nodenet_ipvs_* exposition (default flags) that ipvsadm's views of one
    moment imply: {(metric name, frozenset(labels.items())): value}."""
    out = {}

    def put(name, labels, value):
        out[(name, frozenset(labels.items()))] = value
    st = parse_ipvsadm(stats)
    lnp = {k: (c, d) for k, c, d in parse_ipvsadm(ln)}
    per = {k: dict(d) for k, _, d in parse_ipvsadm(persistent)}
    put("nodenet_ipvs_available", {}, 1)
    put("nodenet_ipvs_services", {}, len(st))
    put("nodenet_ipvs_backends", {}, sum(len(d) for _, _, d in st))
    for key, cols, dests in st:
        L = service_labels(key)
        scols, ldests = lnp[key]
        fl = parse_service_flags(scols)
        put("nodenet_ipvs_service_info",
            dict(L, scheduler=fl["scheduler"],
                 flags=",".join(f for f in FLAG_ORDER if f in fl["flags"])), 1)
        for metric, col in zip(("connections", "incoming_packets", "outgoing_packets",
                                "incoming_bytes", "outgoing_bytes"), cols):
            put(f"nodenet_ipvs_service_{metric}_total", L, int(col))
        lmap = dict(ldests)
        put("nodenet_ipvs_service_backends", L, len(dests))
        put("nodenet_ipvs_service_backends_available", L,
            sum(1 for a, _ in dests if int(lmap[a][1]) > 0))
        for addr, dcols in dests:
            B = dict(L, backend_address=addr[0], backend_port=str(addr[1]))
            for metric, col in zip(("connections", "incoming_packets", "outgoing_packets",
                                    "incoming_bytes", "outgoing_bytes"), dcols):
                put(f"nodenet_ipvs_backend_{metric}_total", B, int(col))
            fwd, w, act, inact = lmap[addr]
            put("nodenet_ipvs_backend_weight", B, int(w))
            put("nodenet_ipvs_backend_connections_active", B, int(act))
            put("nodenet_ipvs_backend_connections_inactive", B, int(inact))
            put("nodenet_ipvs_backend_connections_persistent", B, int(per[key][addr][1]))
            put("nodenet_ipvs_backend_info", dict(B, forwarding=FWD_WORDS[fwd]), 1)
    return out
