"""nftables over nfnetlink: tables, chains, rules, sets, set elements and the generation id.

Built on :mod:`exporter.sources.netlink` (framing, attributes, socket, replay); this module
keeps only the nf_tables message types, attribute numbers and decoders
(include/uapi/linux/netfilter/nf_tables.h, nfnetlink.h):

- message type = ``NFNL_SUBSYS_NFTABLES (10) << 8 | NFT_MSG_*``; after the nlmsghdr comes
  ``struct nfgenmsg { u8 nfgen_family; u8 version; __be16 res_id; }`` (in a dump reply
  ``res_id`` is the low 16 bits of the ruleset generation it was read at).
- ``NFT_MSG_GETGEN`` (not a dump) answers ``NFT_MSG_NEWGEN`` with ``NFTA_GEN_ID`` (be32): the
  network namespace's ruleset generation, 1 when the namespace is created (nft_net->base_seq)
  and +1 with every committed transaction (each ``nft`` command, each ``iptables-nft-restore``,
  each kube-proxy sync that changes anything).  It lives in the kernel, per namespace, so an
  exporter restart never resets it: it is exported as a counter as is.
- Dumps with ``nfgen_family = NFPROTO_UNSPEC`` cover every family: GETTABLE, GETCHAIN,
  GETSET (per set: name, flags), GETRULE (per rule: table and chain names are read, the
  expressions never decoded), GETSETELEM per named set (a dump per set; interval-end markers
  are not elements as ``nft`` shows them).

Presence (:func:`nf_tables_present`): an nfnetlink request for subsystem 10 makes the kernel
``request_module("nfnetlink-subsys-10")`` when nf_tables is not loaded, so nothing is asked
unless nf_tables is known to be there: ``/sys/module/nf_tables`` exists (loaded module), or the
kernel cannot load modules at all (no ``/proc/modules``: CONFIG_MODULES=n, everything is built
in, a request loads nothing), or the kernel's own config (``/proc/config.gz``) says
``CONFIG_NF_TABLES=y``.

Cost: rules are the bulk (one message each).  :meth:`NftReader.read` takes a deadline; a dump
not finished by then leaves the counts partial (``Ruleset.partial``), never blocks the scrape.
"""
from __future__ import annotations

import dataclasses
import errno
import gzip
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import NetlinkError, ParseError
from . import netlink as nl

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE = 1, 4, 7
NFT_MSG_GETSET, NFT_MSG_GETSETELEM = 10, 13
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16


def msg_type(cmd: int) -> int:
    return NFNL_SUBSYS_NFTABLES << 8 | cmd


NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME = 1, 3
NFTA_RULE_TABLE, NFTA_RULE_CHAIN = 1, 2
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS = 1, 2, 3
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_FLAGS = 3
NFT_SET_ELEM_INTERVAL_END = 0x1
NFT_SET_ANONYMOUS = 0x1
NFT_SET_MAP = 0x8
NFTA_GEN_ID = 1

NFPROTO_UNSPEC = 0
FAMILY_NAMES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}

NFGEN = struct.Struct("!BBH")  # family, version, res_id (be16)
NFGEN_LEN = NFGEN.size
_ATTRS_AT = nl.HDR_LEN + NFGEN_LEN  # offset of a message's first attribute in its datagram


def family_name(af: int) -> str:
    return FAMILY_NAMES.get(af, str(af))


def request_payload(family: int = NFPROTO_UNSPEC, attrs: bytes = b"") -> bytes:
    return NFGEN.pack(family, 0, 0) + attrs


# --- decoders (pure: one Message -> a value) ------------------------------------------------

def _head(m: nl.Message) -> tuple[int, dict[int, tuple[int, int]]]:
    if m.end - m.start < NFGEN_LEN:
        raise ParseError(f"nftables message {m.type:#x}: shorter than nfgenmsg")
    return m.data[m.start], nl.attrs(m.data, m.start + NFGEN_LEN, m.end, "nftables")


def _name(m: nl.Message, a: dict, atype: int, what: str) -> str:
    span = a.get(atype)
    if span is None:
        raise ParseError(f"nftables {what} message without its name attribute {atype}")
    return nl.string(m.data, span)


def decode_table(m: nl.Message) -> tuple[int, str] | None:
    if m.type != msg_type(0):  # NFT_MSG_NEWTABLE
        return None
    af, a = _head(m)
    return af, _name(m, a, NFTA_TABLE_NAME, "table")


def decode_chain(m: nl.Message) -> tuple[int, str, str] | None:
    if m.type != msg_type(3):  # NFT_MSG_NEWCHAIN
        return None
    af, a = _head(m)
    return af, _name(m, a, NFTA_CHAIN_TABLE, "chain"), _name(m, a, NFTA_CHAIN_NAME, "chain")


def decode_rule(m: nl.Message) -> tuple[int, str, str] | None:
    """(family, table, chain) of one rule; its expressions are not decoded."""
    if m.type != msg_type(6):  # NFT_MSG_NEWRULE
        return None
    af, a = _head(m)
    return af, _name(m, a, NFTA_RULE_TABLE, "rule"), _name(m, a, NFTA_RULE_CHAIN, "rule")


_NEWRULE = NFNL_SUBSYS_NFTABLES << 8 | 6
_HDR = nl.HDR.unpack_from
_ATTR = nl.ATTR.unpack_from


def fold_rule_datagram(reply: nl.Reply, data, counts: dict) -> None:
    """Counts the rules of one GETRULE dump datagram into ``counts`` {key: n}, in one walk.

    The fast path for the bulk of a ruleset (one message per rule): the kernel writes
    NFTA_RULE_TABLE then NFTA_RULE_CHAIN first (nf_tables_fill_rule_info), so the key is the
    raw bytes from the nfgenmsg to the end of the chain attribute, and no attribute after
    them (handle, expressions) is read.  A message of another shape is decoded by
    :func:`decode_rule` and keyed by its names.  :func:`rule_key_names` turns keys into
    (family, table, chain); tests/unit/test_nftables_source.py keeps this equal to decoding
    every message with :func:`decode_rule`."""
    seq = reply.seq
    off, n = 0, len(data)
    while off + nl.HDR_LEN <= n:
        ln, mtype, flags, mseq, _pid = _HDR(data, off)
        if ln < nl.HDR_LEN or off + ln > n:
            raise ParseError(f"nftables GETRULE: message at offset {off} has length {ln}, "
                             f"{n - off} bytes left")
        if mseq == seq:
            if mtype < nl.NLMSG_MIN_TYPE:
                reply.control(data, off)
                if reply.done:
                    return
            else:  # a data message: the same end-of-reply rules as Reply.messages
                if flags & nl.NLM_F_DUMP_INTR:
                    reply.interrupted = True
                if not flags & nl.NLM_F_MULTI and not reply.ack:
                    reply.done = True
                if mtype != _NEWRULE:
                    off += (ln + 3) & ~3
                    continue
                s, e = off + nl.HDR_LEN, off + ln
                key: bytes | tuple[int, str, str] | None = None
                p1 = s + NFGEN_LEN
                if p1 + 4 <= e:
                    l1, t1 = _ATTR(data, p1)
                    p2 = p1 + ((l1 + 3) & ~3)
                    if (t1 & nl.NLA_TYPE_MASK) == NFTA_RULE_TABLE and l1 >= 4 and p2 + 4 <= e:
                        l2, t2 = _ATTR(data, p2)
                        if (t2 & nl.NLA_TYPE_MASK) == NFTA_RULE_CHAIN and l2 >= 4 and \
                                p2 + l2 <= e:
                            key = bytes(data[s:p2 + l2])
                if key is None:
                    key = decode_rule(nl.Message(mtype, flags, mseq, data, s, e))
                counts[key] = counts.get(key, 0) + 1
        off += (ln + 3) & ~3
    if off < n:
        raise ParseError(f"nftables GETRULE: {n - off} trailing bytes at offset {off}, shorter "
                         f"than a netlink header")


def rule_key_names(key) -> tuple[int, str, str]:
    """(family, table, chain) of a :func:`fold_rule_datagram` key."""
    if isinstance(key, tuple):
        return key
    a = nl.attrs(key, NFGEN_LEN, len(key), "nftables rule key")
    return (key[0], nl.string(key, a[NFTA_RULE_TABLE]), nl.string(key, a[NFTA_RULE_CHAIN]))


def decode_set(m: nl.Message) -> tuple[int, str, str, int] | None:
    """(family, table, set, flags)."""
    if m.type != msg_type(9):  # NFT_MSG_NEWSET
        return None
    af, a = _head(m)
    flags = nl.get_be32(m.data, a, NFTA_SET_FLAGS, 0, "set flags")
    return af, _name(m, a, NFTA_SET_TABLE, "set"), _name(m, a, NFTA_SET_NAME, "set"), flags


def count_elements(m: nl.Message) -> int:
    """Elements in one NEWSETELEM message, interval-end markers left out."""
    if m.type != msg_type(12):  # NFT_MSG_NEWSETELEM
        return 0
    _af, a = _head(m)
    span = a.get(NFTA_SET_ELEM_LIST_ELEMENTS)
    if span is None:
        return 0
    n = 0
    data = m.data
    for atype, s, e in nl.iter_attrs(data, span[0], span[1], "nftables set elements"):
        if atype != NFTA_LIST_ELEM:
            continue
        ea = nl.attrs(data, s, e, "nftables set element")
        if not nl.get_be32(data, ea, NFTA_SET_ELEM_FLAGS, 0, "element flags") & \
                NFT_SET_ELEM_INTERVAL_END:
            n += 1
    return n


def decode_gen(m: nl.Message) -> int | None:
    if m.type != msg_type(NFT_MSG_NEWGEN):
        return None
    _af, a = _head(m)
    gen = nl.get_be32(m.data, a, NFTA_GEN_ID, None, "generation id")
    if gen is None:
        raise ParseError("nftables NEWGEN message without NFTA_GEN_ID")
    return gen


# --- presence -------------------------------------------------------------------------------

def _config_says_builtin(procfs: str) -> bool:
    try:
        with gzip.open(os.path.join(procfs, "config.gz"), "rt", errors="replace") as fh:
            return any(line.strip() == "CONFIG_NF_TABLES=y" for line in fh)
    except (OSError, EOFError):
        return False


def nf_tables_present(procfs: str, sysfs: str,
                      builtin: Callable[[str], bool] = _config_says_builtin) -> tuple[bool, str]:
    """(present, how or why not), deciding without any netlink request."""
    if os.path.isdir(os.path.join(sysfs, "module", "nf_tables")):
        return True, "/sys/module/nf_tables"
    if not os.path.exists(os.path.join(procfs, "modules")):
        return True, "no /proc/modules: the kernel cannot load modules"
    if builtin(procfs):
        return True, "CONFIG_NF_TABLES=y in /proc/config.gz"
    return False, "nf_tables not loaded (no /sys/module/nf_tables; the exporter never loads it)"


# --- the ruleset ----------------------------------------------------------------------------

@dataclass
class TableCounts:
    chains: dict[str, int] = field(default_factory=dict)  # chain -> rules
    sets: int = 0  # named sets and maps (anonymous sets are part of rules)
    elements: int = 0
    extra_rules: int = 0  # rules whose chain the chain dump did not list (changed meanwhile)

    @property
    def rules(self) -> int:
        return sum(self.chains.values()) + self.extra_rules


@dataclass
class Ruleset:
    generation: int
    tables: dict[tuple[str, str], TableCounts] = field(default_factory=dict)
    partial: bool = False  # the deadline cut the rule or element dump
    elements_counted: bool = True


def build_ruleset(generation: int, tables: Iterable, chains: Iterable, sets: Iterable,
                  rules: Iterable) -> tuple[Ruleset, list]:
    """Pure assembly from decoded dumps; returns the ruleset and the named sets
    [(af, table, set)] whose elements are still to be counted."""
    rs = Ruleset(generation)
    out = rs.tables
    for af, name in tables:
        out.setdefault((family_name(af), name), TableCounts())
    for af, table, chain in chains:
        out.setdefault((family_name(af), table), TableCounts()).chains.setdefault(chain, 0)
    named = []
    for af, table, name, flags in sets:
        if flags & NFT_SET_ANONYMOUS:
            continue
        out.setdefault((family_name(af), table), TableCounts()).sets += 1
        named.append((af, table, name))
    for key, n in rules:
        af, table, chain = key
        t = out.setdefault((family_name(af), table), TableCounts())
        if chain in t.chains:
            t.chains[chain] += n
        else:
            t.extra_rules += n
    return rs, named


class NftReader:
    """Reads the calling thread's namespace's nftables ruleset counts (one socket per read)."""

    def __init__(self, socket_factory: Callable[[], nl.NetlinkSocket] | None = None,
                 reuse: bool = True):
        self.socket_factory = socket_factory or (
            lambda: nl.NetlinkSocket(nl.NETLINK_NETFILTER, timeout=1.0, deadline=5.0))
        # tables, chains, sets and rule counts of the last complete read, keyed by the
        # generation id read BEFORE its dumps: the ruleset cannot change without a commit,
        # so an unchanged generation means they are still right (set elements are not kept:
        # the packet path and timeouts change dynamic sets without a commit)
        self.reuse = reuse
        self._kept: tuple | None = None
        self.reused = False  # whether the last read() took them from the previous one

    @staticmethod
    def generation(sock: nl.NetlinkSocket) -> int:
        for m in sock.request(msg_type(NFT_MSG_GETGEN), request_payload(),
                              context="nftables GETGEN"):
            gen = decode_gen(m)
            if gen is not None:
                return gen
        raise ParseError("nftables GETGEN: no NEWGEN in the answer")

    @staticmethod
    def _bounded_dump(sock: nl.NetlinkSocket, cmd: int, payload: bytes, fold, t_end: float,
                      context: str, per_datagram=None) -> bool:
        """Runs one dump through ``fold(Message)`` (or ``per_datagram(reply, data)``);
        False if the deadline cut it."""
        reply = sock.send(msg_type(cmd), nl.NLM_F_DUMP, payload, context)
        try:
            for data in sock.datagrams(reply, deadline=max(0.0, t_end - time.monotonic())):
                if per_datagram is not None:
                    per_datagram(reply, data)
                    continue
                for m in reply.messages(data):
                    fold(m)
        except TimeoutError:
            return False
        return True

    def _dumps(self, sock: nl.NetlinkSocket, t_end: float) -> tuple:
        tables = sock.dump(msg_type(NFT_MSG_GETTABLE), request_payload(), decode_table,
                           context="nftables GETTABLE")
        chains = sock.dump(msg_type(NFT_MSG_GETCHAIN), request_payload(), decode_chain,
                           context="nftables GETCHAIN")
        sets = sock.dump(msg_type(NFT_MSG_GETSET), request_payload(), decode_set,
                         context="nftables GETSET")
        raw: dict = {}
        complete = self._bounded_dump(
            sock, NFT_MSG_GETRULE, request_payload(), None, t_end, "nftables GETRULE",
            per_datagram=lambda reply, data: fold_rule_datagram(reply, data, raw))
        counts: dict[tuple[int, str, str], int] = {}
        for key, n in raw.items():
            if key is not None:
                names = rule_key_names(key)
                counts[names] = counts.get(names, 0) + n
        return list(tables), list(chains), list(sets), counts, complete

    def read(self, seconds: float = 2.0, elements: bool = True) -> Ruleset:
        """The ruleset's counts; an unchanged generation reuses the last complete read's
        tables, chains, sets and rules (one GETGEN request), set elements are counted anew."""
        t_end = time.monotonic() + seconds
        with self.socket_factory() as sock:
            gen = self.generation(sock)
            kept = self._kept
            self.reused = kept is not None and kept[0] == gen
            if self.reused:
                assert kept is not None
                _gen, built, named = kept
                # fresh TableCounts (elements are counted below); the chains dicts are shared
                # read-only with the kept read
                rs = Ruleset(gen, {k: dataclasses.replace(t, elements=0)
                                   for k, t in built.tables.items()})
                complete = True
            else:
                self._kept = None
                tables, chains, sets, counts, complete = self._dumps(sock, t_end)
                rs, named = build_ruleset(gen, tables, chains, sets, counts.items())
                if complete and self.reuse:
                    self._kept = (gen, rs, named)
                    rs = Ruleset(gen, {k: dataclasses.replace(t) for k, t in rs.tables.items()})
        rs.partial = not complete
        if not complete:
            rs.elements_counted = False
            return rs
        rs.elements_counted = elements
        if elements and named:
            # a fresh socket: the rule dump's socket may hold the end of a cut dump
            with self.socket_factory() as sock:
                for af, table, name in named:
                    total = [0]

                    def fold_elems(m: nl.Message, total=total) -> None:
                        total[0] += count_elements(m)
                    payload = request_payload(af, nl.attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
                                              + nl.attr_str(NFTA_SET_ELEM_LIST_SET, name))
                    try:
                        ok = self._bounded_dump(sock, NFT_MSG_GETSETELEM, payload, fold_elems,
                                                t_end, "nftables GETSETELEM")
                    except NetlinkError as exc:
                        if exc.errno != errno.ENOENT:  # the set went away meanwhile
                            raise
                        continue
                    rs.tables[(family_name(af), table)].elements += total[0]
                    if not ok:
                        rs.partial = True
                        break
        return rs
