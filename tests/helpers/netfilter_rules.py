"""Rulesets for the netfilter tests and benchmark, and the kernel tools' own counts of them.

``legacy_restore_text`` writes iptables-legacy-restore input; ``save_counts`` counts an
iptables-save text the way the collector must (``-A`` lines per table and per chain, chains
from the ``:NAME`` lines).  ``kube_services`` builds the chain shape kube-proxy's iptables mode
generates (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-*).
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16].upper()


def legacy_spread(filter_rules: int, nat_rules: int, user_chains: int = 8) -> str:
    """filter and nat tables with rules spread over builtin and user chains."""
    out = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]"]
    chains = ["KUBE-SERVICES", "KUBE-FORWARD"] + [f"USR-{i}" for i in range(user_chains - 2)]
    out += [f":{c} - [0:0]" for c in chains]
    out.append("-A INPUT -j KUBE-SERVICES")
    out.append("-A FORWARD -j KUBE-FORWARD")
    for i in range(filter_rules - 2):
        chain = (["INPUT", "OUTPUT", "FORWARD"] + chains)[i % (3 + len(chains))]
        out.append(f"-A {chain} -s 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32 -p tcp "
                   f"-m tcp --dport {1 + i % 60000} -m comment --comment \"r{i}\" -j ACCEPT")
    out.append("COMMIT")
    out += ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]"]
    out.append("-A PREROUTING -j KUBE-SERVICES")
    out.append("-A POSTROUTING -j KUBE-POSTROUTING")
    for i in range(nat_rules - 2):
        chain = ("KUBE-SERVICES", "KUBE-POSTROUTING", "OUTPUT")[i % 3]
        target = ("-j MASQUERADE" if chain == "KUBE-POSTROUTING" else
                  f"-j DNAT --to-destination 10.244.0.{1 + i % 250}:53")
        out.append(f"-A {chain} -d 10.96.{i // 256 % 256}.{i % 256}/32 -p udp -m udp "
                   f"--dport {1 + i % 60000} {target}")
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def kube_services(services: int, endpoints: int = 2) -> tuple[str, int]:
    """iptables-restore text of a kube-proxy-like nat table; returns (text, rules)."""
    head = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]",
            ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]"]
    body = ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            ("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" "
             "-j KUBE-POSTROUTING"),
            "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MASQUERADE"]
    for s in range(services):
        ip = f"10.96.{s // 256 % 256}.{s % 256}"
        svc = "KUBE-SVC-" + _h(f"svc{s}")
        head.append(f":{svc} - [0:0]")
        body.append(f"-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"ns/svc{s}:http "
                    f"cluster IP\" -m tcp --dport 80 -j {svc}")
        for e in range(endpoints):
            sep = "KUBE-SEP-" + _h(f"sep{s}.{e}")
            head.append(f":{sep} - [0:0]")
            pod = f"10.{128 + s // 65536}.{s // 256 % 256}.{s % 256}"
            if e < endpoints - 1:
                body.append(f"-A {svc} -m comment --comment \"ns/svc{s}:http -> {pod}\" "
                            f"-m statistic --mode random --probability "
                            f"{1 / (endpoints - e):.11f} -j {sep}")
            else:
                body.append(f"-A {svc} -m comment --comment \"ns/svc{s}:http -> {pod}\" -j {sep}")
            body.append(f"-A {sep} -s {pod}/32 -m comment --comment \"ns/svc{s}:http\" "
                        "-j KUBE-MARK-MASQ")
            body.append(f"-A {sep} -p tcp -m comment --comment \"ns/svc{s}:http\" -m tcp "
                        f"-j DNAT --to-destination {pod}:{8080 + e}")
    body.append("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" "
                "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    return "\n".join(head + body + ["COMMIT"]) + "\n", len(body)


def kube_services_nft(services: int, endpoints: int = 2) -> tuple[str, int]:
    """The same shape in nft syntax (a table ip kube-proxy-bench, the way iptables-nft
    translates it: one chain per service and endpoint); returns (script, rules)."""
    lines = ["table ip kube-proxy-bench {", " chain nat-prerouting {",
             "  type nat hook prerouting priority dstnat; policy accept;",
             "  jump services", " }", " chain services {"]
    rules = 1
    chains: list[str] = []
    for s in range(services):
        ip = f"10.96.{s // 256 % 256}.{s % 256}"
        svc = "svc-" + _h(f"svc{s}").lower()
        lines.append(f"  ip daddr {ip} tcp dport 80 jump {svc}")
        rules += 1
        body = [f" chain {svc} {{"]
        for e in range(endpoints):
            sep = "sep-" + _h(f"sep{s}.{e}").lower()
            pod = f"10.{128 + s // 65536}.{s // 256 % 256}.{s % 256}"
            body.append(f"  numgen random mod {endpoints} {e} jump {sep}")
            chains += [f" chain {sep} {{", f"  ip saddr {pod} meta mark set 0x4000",
                       f"  meta l4proto tcp dnat to {pod}:{8080 + e}", " }"]
            rules += 3
        body.append(" }")
        chains += body
    lines.append(" }")
    return "\n".join(lines + chains + ["}"]) + "\n", rules


_TABLE = re.compile(r"^\*(\S+)")
_CHAIN = re.compile(r"^:(\S+)")
_RULE = re.compile(r"^-A (\S+)")


def save_counts(text: str) -> dict:
    """iptables-save text -> {table: {"rules": n, "chains": {chain: rules}}}."""
    out: dict = {}
    cur = None
    for line in text.splitlines():
        if m := _TABLE.match(line):
            cur = out.setdefault(m.group(1), {"rules": 0, "chains": Counter()})
        elif cur is not None and (m := _CHAIN.match(line)):
            cur["chains"].setdefault(m.group(1), 0)
        elif cur is not None and (m := _RULE.match(line)):
            cur["rules"] += 1
            cur["chains"][m.group(1)] += 1
    return out
