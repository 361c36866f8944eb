"""The documented overhead table and underlay rule (docs/interfaces.md) applied to iproute2's
view of the links (`ip -d -j link`, `ip -j route`): an implementation written from the docs and
independent of exporter/collectors/netdev.py, for the tests to compare the exporter with.

Also the design of the UML tunnel topology (tests/vm/guest/netdev_topology.sh), shared by
tests/vm/test_netdev_tunnels_uml.py (live) and tests/unit/test_links_uml_fixtures.py (its
captured dump).
"""
from __future__ import annotations

# docs/interfaces.md, "Encapsulation overhead"
OUTER = {4: 20, 6: 40}
UDP, VXLAN_HDR, GENEVE_HDR, ETH = 8, 8, 8, 14
GRE_BASE, GRE_OPTION, ENCAP_LIMIT_OPTION = 4, 4, 8
TUNNEL_KINDS = {"vxlan", "geneve", "wireguard", "ipip", "sit", "ip6tnl", "gre", "gretap",
                "ip6gre", "ip6gretap"}


def info_data(w: dict) -> dict:
    return w.get("linkinfo", {}).get("info_data", {}) or {}


def kind(w: dict) -> str | None:
    return w.get("linkinfo", {}).get("info_kind")


def remote_of(w: dict) -> str | None:
    d = info_data(w)
    for key in ("remote", "remote6", "group", "group6"):
        if d.get(key) and d[key] != "any":
            return d[key]
    return None


def family(w: dict) -> int | None:
    """Underlay address family as iproute2 shows the tunnel; None when it shows no address."""
    k, d = kind(w), info_data(w)
    if k in ("ipip", "sit", "gre", "gretap"):
        return 4
    if k in ("ip6tnl", "ip6gre", "ip6gretap"):
        return 6
    if any(key in d for key in ("remote6", "local6", "group6")):
        return 6
    if any(key in d for key in ("remote", "local", "group")):
        return 4
    return None


def overhead(w: dict, geneve_option_bytes: int = 0) -> int:
    """Bytes in front of a packet of the tunnel's MTU, by the table in docs/interfaces.md."""
    k, d = kind(w), info_data(w)
    if d.get("encap_type", "none") not in ("none", None):
        raise NotImplementedError(f"{w['ifname']}: FOU/GUE/MPLS encapsulation not in this helper")
    fam = family(w)
    outer = OUTER[6 if fam == 6 else 4]  # no address (metadata mode): counted as IPv4
    if k == "vxlan":
        return outer + UDP + VXLAN_HDR + ETH
    if k == "geneve":
        return outer + UDP + GENEVE_HDR + (0 if d.get("inner_proto_inherit") else ETH) \
            + geneve_option_bytes
    if k == "wireguard":
        return (20 if fam == 4 else 40) + UDP + 16 + 16
    # the 8-byte encapsulation limit option: sent unless "encaplimit none" (a limit of 0 is
    # still an option)
    limit = ENCAP_LIMIT_OPTION if fam == 6 and not d.get("ip6_tnl_f_ign_encap_limit") else 0
    if k in ("ipip", "sit"):
        return 20
    if k == "ip6tnl":
        return 40 + limit
    if k in ("gre", "gretap", "ip6gre", "ip6gretap"):
        gre = GRE_BASE + GRE_OPTION * (("okey" in d) + bool(d.get("ocsum")) + bool(d.get("oseq")))
        return OUTER[fam] + gre + limit + (ETH if k.endswith("tap") else 0)
    raise ValueError(f"{w['ifname']}: {k} is not a tunnel kind")


def _route_dev(answer) -> str:
    """An `ip -j route` answer ([{...}]) or a witness {"ip": [...], ...} -> device name."""
    if isinstance(answer, dict):
        answer = answer["ip"]
    return answer[0]["dev"] if answer else ""


def expected_underlay(w: dict, routes: dict) -> str:
    """docs/interfaces.md "Which underlay", from iproute2's view.

    ``routes``: {"route_get": {remote: answer}, "default": {"-4": answer, "-6": answer}} where
    an answer is `ip -j route ...` output (or a dict holding it under "ip")."""
    k = kind(w)
    if k in TUNNEL_KINDS:
        d = info_data(w)
        if "link_netnsid" in w:
            return ""
        if d.get("link"):
            found = d["link"]
        elif remote_of(w):
            found = _route_dev(routes["route_get"][remote_of(w)])
        else:
            fams = {4: ("-4",), 6: ("-6",)}.get(family(w), ("-4", "-6"))
            found = ""
            for f in fams:
                found = _route_dev(routes["default"][f])
                if found:
                    break
        return "" if found == w["ifname"] else found
    if k == "veth" or "link_netnsid" in w:
        return ""
    return w.get("link") or ""


def expected_headroom(w: dict, by_name: dict, routes: dict, geneve_option_bytes: int = 0):
    """underlay MTU - overhead - tunnel MTU, or None when no series is due."""
    if kind(w) not in TUNNEL_KINDS:
        return None
    data = w.get("linkinfo", {}).get("info_data", {})
    if data.get("external") or data.get("collect_metadata"):
        return None  # metadata mode: per-route MTUs, no static headroom (docs/interfaces.md)
    under = expected_underlay(w, routes)
    if not under:
        return None
    return by_name[under]["mtu"] - overhead(w, geneve_option_bytes) - w["mtu"]


# ---------------------------------------------------------------- the UML topology's design

#: headroom by design (tests/vm/guest/netdev_topology.sh's header explains each group)
DESIGN_HEADROOM = {
    **{n: 0 for n in ("vx0", "vx60", "gn0", "gn60", "ii0", "iir0", "gr0", "grk0", "gt0", "gtk0",
                      "g60", "g6n0", "g6t0", "g6tn0", "st0", "t60", "t6n0", "t6l0")},
    **{n: -50 for n in ("vxneg", "gnneg", "gnneg6", "iineg", "grneg", "gtneg", "g6neg",
                        "stneg", "t6neg")},
    "iibig": -20, "g6big": -52,
    "gnl3": 14,
    "gn9": 7450,
    # "gnx" (metadata-mode Geneve, MTU 65465) has no headroom series by design
    **{n: 7500 for n in ("tunl0", "gre0", "gretap0", "sit0", "ip6tnl0", "ip6gre0")},
}
#: interface: (kind label, underlay label) by design, for every interface of the topology
DESIGN_INFO = {
    "lo": ("loopback", ""), "dummy0": ("dummy", ""), "bond0": ("bond", ""),
    "d1500": ("dummy", ""), "d1550": ("dummy", ""), "d9000": ("dummy", ""),
    "erspan0": ("erspan", ""),   # not an overlay tunnel for the exporter: no underlay/headroom
    "vl9": ("vlan", "d9000"), "bd": ("bond", ""), "ds1": ("dummy", ""), "ds2": ("dummy", ""),
    "vlb": ("vlan", "bd"),
    "tunl0": ("ipip", "d9000"), "gre0": ("gre", "d9000"), "gretap0": ("gretap", "d9000"),
    "sit0": ("sit", "d9000"), "ip6tnl0": ("ip6tnl", "d9000"), "ip6gre0": ("ip6gre", "d9000"),
    "vx0": ("vxlan", "d1500"), "vx60": ("vxlan", "d1500"), "gn0": ("geneve", "d1500"),
    "gn60": ("geneve", "d1500"), "ii0": ("ipip", "d1500"), "iir0": ("ipip", "d9000"),
    "gr0": ("gre", "d1500"), "grk0": ("gre", "d1500"), "gt0": ("gretap", "d1500"),
    "gtk0": ("gretap", "d1500"), "g60": ("ip6gre", "d1500"), "g6n0": ("ip6gre", "d1500"),
    "g6t0": ("ip6gretap", "d1500"), "g6tn0": ("ip6gretap", "d1500"), "st0": ("sit", "d1500"),
    "t60": ("ip6tnl", "d1500"), "t6n0": ("ip6tnl", "d1500"), "t6l0": ("ip6tnl", "d1500"),
    "gnl3": ("geneve", "d1500"), "gn9": ("geneve", "d9000"), "gnx": ("geneve", "d9000"),
    "vxneg": ("vxlan", "d1550"), "gnneg": ("geneve", "d1550"), "gnneg6": ("geneve", "d1550"),
    "iineg": ("ipip", "d1550"), "grneg": ("gre", "d1550"), "gtneg": ("gretap", "d1550"),
    "g6neg": ("ip6gre", "d1550"), "stneg": ("sit", "d1550"), "t6neg": ("ip6tnl", "d1550"),
    "iibig": ("ipip", "d1500"), "g6big": ("ip6gre", "d1500"),
}
#: bond slaves
DESIGN_MASTER = {"ds1": "bd", "ds2": "bd"}
