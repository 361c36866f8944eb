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


def nft_script(rules: int = 500, chains: int = 20, table: str = "nn-test",
               family: str = "inet") -> str:
    """An nft -f script: `chains` chains (the first two base chains, the others jumped to)
    holding `rules` rules in all, a named set of 50 elements (with ranges) and a map."""
    per = rules // chains
    names = ["input", "forward"] + [f"chain-{i:02d}" for i in range(chains - 2)]
    out = [f"table {family} {table} {{",
           "  set allowed { type ipv4_addr; flags interval; elements = { "
           + ", ".join([f"10.1.{i}.0/24" for i in range(40)]
                       + [f"192.0.2.{i}" for i in range(10)]) + " } }",
           "  map ports { type inet_service : ipv4_addr; elements = { "
           + ", ".join(f"{1000 + i} : 10.2.0.{i + 1}" for i in range(30)) + " } }"]
    for ci, chain in enumerate(names):
        out.append(f"  chain {chain} {{")
        if ci == 0:
            out.append("    type filter hook input priority 0; policy accept;")
        elif ci == 1:
            out.append("    type filter hook forward priority 0; policy accept;")
        n = per + (1 if ci < rules % chains else 0)
        for r in range(n):
            if ci < 2 and r == 0 and len(names) > 2:
                out.append(f"    jump {names[2 + ci]}")
            elif r % 5 == 0:
                out.append(f"    ip saddr @allowed tcp dport {{ {r + 1}, {r + 2} }} accept")
            else:
                out.append(f"    ip daddr 10.3.{ci}.{r % 250} tcp dport {r + 1} counter drop")
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def _elements(obj: dict) -> int:
    return len(obj.get("elem", []))


def nft_json_counts(doc: dict) -> dict:
    """nft -j list ruleset -> {(family, table): {"chains": {chain: rules}, "sets": n,
    "elements": n}}, and the metainfo under key None."""
    out: dict = {}
    for item in doc["nftables"]:
        ((kind, obj),) = item.items()
        if kind == "metainfo":
            out[None] = obj
            continue
        if kind == "table":
            out.setdefault((obj["family"], obj["name"]),
                           {"chains": Counter(), "sets": 0, "elements": 0})
            continue
        t = out.setdefault((obj["family"], obj["table"]),
                           {"chains": Counter(), "sets": 0, "elements": 0})
        if kind == "chain":
            t["chains"].setdefault(obj["name"], 0)
        elif kind == "rule":
            t["chains"][obj["chain"]] += 1
        elif kind in ("set", "map"):
            t["sets"] += 1
            t["elements"] += _elements(obj)
    return out
