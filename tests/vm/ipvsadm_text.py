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
