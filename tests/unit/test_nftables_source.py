"""nftables over nfnetlink, offline: the reader and collector on replayed kernel answers.

tests/fixtures/netfilter/nft_capture.json (capture_nftables.py) holds every request NftReader
sent to a 6.18 kernel with the datagrams it answered, and ``nft -j list ruleset`` of the same
namespace read right after: the counts must equal what nft shows.  Also: the presence check
(the rule that no request may make the kernel load nf_tables), the time bound, refusals, and
fuzzed datagrams.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import log as logmod
from exporter.cli import PROG, all_options, build
from exporter.collectors.base import REGISTRY
from exporter.config import resolve
from exporter.sources import NetlinkError, ParseError
from exporter.sources import netlink as nl
from exporter.sources import nftables
from tests.helpers.exporter_proc import parse_samples, sample
from tests.helpers.netfilter_rules import nft_json_counts

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "netfilter"
CAPTURE = json.loads((FIX / "nft_capture.json").read_text())
WITNESS = nft_json_counts(CAPTURE["nft_json"])
WITNESS.pop(None)


def zero_seq(data: bytes) -> bytes:
    return data[:8] + struct.pack("=I", 0) + data[12:]


ANSWERS = {bytes.fromhex(x["request"]): [bytes.fromhex(d) for d in x["datagrams"]]
           for x in CAPTURE["exchanges"]}


def replay_factory(answers=ANSWERS, missing=errno.EOPNOTSUPP, edit=None):
    def lookup(request: bytes):
        got = answers.get(zero_seq(request))
        if got is None:
            return None
        return edit(request, got) if edit else got

    def factory():
        return nl.NetlinkSocket(nl.NETLINK_NETFILTER,
                                transport=nl.ReplayTransport(lookup, missing=missing))
    return factory


def test_capture_covers_every_family_and_both_dumps():
    fams = {f for f, _t in WITNESS}
    assert fams == {"inet", "ip", "ip6", "arp", "bridge", "netdev"}
    kinds = {bytes.fromhex(x["request"])[4] for x in CAPTURE["exchanges"]}
    assert kinds == {nftables.NFT_MSG_GETGEN, nftables.NFT_MSG_GETTABLE, nftables.NFT_MSG_GETCHAIN,
                     nftables.NFT_MSG_GETSET, nftables.NFT_MSG_GETRULE, nftables.NFT_MSG_GETSETELEM}


def test_replayed_read_equals_nft_json():
    rs = nftables.NftReader(replay_factory()).read(5.0)
    assert rs.generation == CAPTURE["generation"] and not rs.partial
    got = {k: {"chains": dict(t.chains), "sets": t.sets, "elements": t.elements}
           for k, t in rs.tables.items()}
    want = {k: {"chains": dict(v["chains"]), "sets": v["sets"], "elements": v["elements"]}
            for k, v in WITNESS.items()}
    assert got == want
    assert rs.tables[("inet", "nn-test")].rules == 60
    assert rs.tables[("inet", "nn-test")].elements == 80  # 50 in the set (ranges once) + 30


def test_rule_dump_cut_by_the_deadline_is_partial():
    def cut(request, datagrams):
        if request[4] != nftables.NFT_MSG_GETRULE:
            return datagrams
        # the first half of the rule messages, no NLMSG_DONE: the replay then stays silent
        msgs = [bytes(d[s - nl.HDR_LEN:e]) + b"\0" * (-(e - s + nl.HDR_LEN) & 3)
                for d in datagrams for t, _f, _q, s, e in nl.iter_messages(d)
                if t >= nl.NLMSG_MIN_TYPE]
        return [b"".join(msgs[:len(msgs) // 2])]
    rs = nftables.NftReader(replay_factory(edit=cut)).read(0.2)
    assert rs.partial and not rs.elements_counted
    assert 0 < sum(t.rules for t in rs.tables.values()) < sum(
        v["chains"].total() for v in WITNESS.values())


def _collector(tmp_path, factory, sysfs_module=False, argv=()):
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "modules").write_text("")  # a modular kernel: presence must be shown
    sysfs = tmp_path / "sys"
    (sysfs / "module").mkdir(parents=True)
    if sysfs_module:
        (sysfs / "module" / "nf_tables").mkdir()
    stream = io.StringIO()
    settings_ = resolve(all_options(), ["--collector.disable-defaults", "--collector.netfilter",
                                        f"--path.procfs={proc}", f"--path.sysfs={sysfs}", *argv],
                        PROG, "test", set(REGISTRY))
    gatherer = build(settings_, logmod.setup("info", "json", stream))
    gatherer.collectors["netfilter"].nft = nftables.NftReader(factory)
    return gatherer, stream


def scrape(gatherer) -> dict:
    return parse_samples(gatherer.scrape().decode())


def test_collector_on_replay(tmp_path):
    g, _ = _collector(tmp_path, replay_factory(), sysfs_module=True)
    s = scrape(g)
    assert sample(s, "nodenet_netfilter_available") == 1
    assert sample(s, "nodenet_netfilter_ruleset_commits_total") == CAPTURE["generation"]
    assert sample(s, "nodenet_netfilter_rules", backend="nftables", family="inet",
                  table="nn-test") == 60
    assert sample(s, "nodenet_netfilter_chains", backend="nftables", family="bridge",
                  table="br") == 1
    assert sample(s, "nodenet_netfilter_chain_rules", backend="nftables", family="ip",
                  table="filter", chain="FORWARD") == 1
    assert sample(s, "nodenet_netfilter_rules_partial") == 0


def test_modular_kernel_without_nf_tables_sends_nothing(tmp_path):
    def factory():
        raise AssertionError("a netlink socket was opened although nf_tables is not loaded")
    g, stream = _collector(tmp_path, factory)
    s = scrape(g)
    # neither x_tables (no ip_tables_names) nor nf_tables: the collector says so, success 1
    assert sample(s, "nodenet_netfilter_available") == 0
    assert sample(s, "nodenet_scrape_collector_success", collector="netfilter") == 1
    assert "nf_tables not loaded" in stream.getvalue()


def test_refusal_is_available_0_success_1(tmp_path):
    g, stream = _collector(tmp_path, replay_factory(answers={}, missing=errno.EPERM),
                           sysfs_module=True)
    s = scrape(g)
    assert sample(s, "nodenet_netfilter_available") == 0
    assert sample(s, "nodenet_scrape_collector_success", collector="netfilter") == 1
    assert "CAP_NET_ADMIN" in stream.getvalue()


def test_other_kernel_errors_fail_the_collector_only(tmp_path):
    g, _ = _collector(tmp_path, replay_factory(answers={}, missing=errno.ENOMEM),
                      sysfs_module=True)
    s = scrape(g)
    assert sample(s, "nodenet_scrape_collector_success", collector="netfilter") == 0


@pytest.mark.parametrize("layout,want", [
    ({"sys/module/nf_tables/": None, "proc/modules": ""}, True),    # loaded module
    ({"proc/": None}, True),                                          # CONFIG_MODULES=n
    ({"proc/modules": ""}, False),                                    # modular, not loaded
    ({"proc/modules": "", "proc/config.gz": "CONFIG_NF_TABLES=m\n"}, False),
    ({"proc/modules": "", "proc/config.gz": "CONFIG_NF_TABLES=y\n"}, True),  # built in
    ({"proc/modules": "", "proc/config.gz": b"not gzip"}, False),
])
def test_presence_check(tmp_path, layout, want):
    for rel, content in layout.items():
        p = tmp_path / rel
        if rel.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".gz") and isinstance(content, str):
            p.write_bytes(gzip.compress(content.encode()))
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    (tmp_path / "proc").mkdir(exist_ok=True)
    (tmp_path / "sys").mkdir(exist_ok=True)
    present, why = nftables.nf_tables_present(str(tmp_path / "proc"), str(tmp_path / "sys"))
    assert present is want, why


def test_this_machine_builtin_kernel_is_present():
    """The kernel these tests run on has nf_tables built in and no /proc/modules."""
    present, why = nftables.nf_tables_present("/proc", "/sys")
    assert present, why


def test_decoders_refuse_a_message_without_names():
    m = nl.Message(nftables.msg_type(6), 0, 0, nftables.request_payload(2), 0, 4)
    with pytest.raises(ParseError, match="rule message"):
        nftables.decode_rule(m)
    with pytest.raises(ParseError):
        nftables.decode_gen(nl.Message(nftables.msg_type(15), 0, 0, b"\0\0", 0, 2))


DATAGRAMS = [(req, d) for req, ds in ANSWERS.items() for d in ds]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(DATAGRAMS) - 1), data=st.data())
def test_fuzzed_answers_raise_only_the_error_vocabulary(which, data):
    target_req, target = DATAGRAMS[which]
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(target) - 1), st.integers(0, 255)),
                               min_size=1, max_size=6))
    mutated = bytearray(target)
    for pos, val in edits:
        mutated[pos] = val
    cut = data.draw(st.integers(nl.HDR_LEN, len(target)))

    def edit(request, datagrams):
        if zero_seq(request) != target_req:
            return datagrams
        return [bytes(mutated[:cut]) if d == target else d for d in datagrams]
    try:
        rs = nftables.NftReader(replay_factory(edit=edit)).read(0.2)
    except (ParseError, NetlinkError, TimeoutError):
        return
    assert all(t.rules >= 0 and t.elements >= 0 for t in rs.tables.values())


# ------------------------------------------------------------- the rule dump's fast path
RULE_DATAGRAMS = [d for req, d in DATAGRAMS if req[4] == nftables.NFT_MSG_GETRULE]


def _generic_counts(data, seq):
    reply = nl.Reply(seq)
    out: dict = {}
    for m in reply.messages(data):
        key = nftables.decode_rule(m)
        if key is not None:
            out[key] = out.get(key, 0) + 1
    return out, reply


def _fast_counts(data, seq):
    reply = nl.Reply(seq)
    raw: dict = {}
    nftables.fold_rule_datagram(reply, data, raw)
    out: dict = {}
    for key, n in raw.items():
        names = nftables.rule_key_names(key)
        out[names] = out.get(names, 0) + n
    return out, reply


def _repeats_a_name_attribute(data) -> bool:
    for t, _f, _s, s, e in nl.iter_messages(data):
        if t != nftables.msg_type(6):
            continue
        types = [a for a, _s2, _e2 in nl.iter_attrs(data, s + nftables.NFGEN_LEN, e)]
        if types.count(nftables.NFTA_RULE_TABLE) > 1 or types.count(nftables.NFTA_RULE_CHAIN) > 1:
            return True
    return False


def test_fast_rule_path_equals_the_generic_decoder_on_the_capture():
    assert RULE_DATAGRAMS
    for d in RULE_DATAGRAMS:
        seq = struct.unpack_from("=I", d, 8)[0]
        fast, fr = _fast_counts(d, seq)
        generic, gr = _generic_counts(d, seq)
        assert fast == generic and (fr.done, fr.interrupted) == (gr.done, gr.interrupted)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, max(0, len(RULE_DATAGRAMS) - 1)), data=st.data())
def test_fast_rule_path_equals_the_generic_decoder_under_mutation(which, data):
    """Where the generic decoder accepts a datagram (and no message repeats its table or chain
    attribute, where "last wins" and "first two" would legitimately differ), the fast path
    gives the same counts and the same end-of-dump state."""
    d = RULE_DATAGRAMS[which]
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(d) - 1), st.integers(0, 255)),
                               min_size=1, max_size=4))
    m = bytearray(d)
    for pos, val in edits:
        m[pos] = val
    m = bytes(m[:data.draw(st.integers(nl.HDR_LEN, len(m)))])
    seq = struct.unpack_from("=I", d, 8)[0]
    try:
        generic, gr = _generic_counts(m, seq)
        repeated = _repeats_a_name_attribute(m)
    except (ParseError, NetlinkError):
        with contextlib.suppress(ParseError, NetlinkError):
            _fast_counts(m, seq)
        return
    if repeated:
        return
    fast, fr = _fast_counts(m, seq)
    assert fast == generic
    assert (fr.done, fr.interrupted) == (gr.done, gr.interrupted)


def test_an_unchanged_generation_reuses_the_ruleset_and_recounts_elements():
    transports = []

    def factory():
        t = nl.ReplayTransport(lambda req: ANSWERS.get(zero_seq(req)))
        transports.append(t)
        return nl.NetlinkSocket(nl.NETLINK_NETFILTER, transport=t)
    reader = nftables.NftReader(factory)
    first = reader.read(5.0)
    assert not reader.reused
    sent_before = sum(len(t.sent) for t in transports)
    second = reader.read(5.0)
    assert reader.reused and second.tables == first.tables
    kinds = [r[4] for t in transports for r in t.sent][sent_before:]
    assert nftables.NFT_MSG_GETRULE not in kinds and nftables.NFT_MSG_GETCHAIN not in kinds
    assert kinds[0] == nftables.NFT_MSG_GETGEN and nftables.NFT_MSG_GETSETELEM in kinds


def test_a_new_generation_or_a_partial_read_is_never_reused():
    gen = [CAPTURE["generation"]]

    def edit(request, datagrams):
        if request[4] != nftables.NFT_MSG_GETGEN:
            return datagrams
        # the captured NEWGEN with another generation id (NFTA_GEN_ID is its first attribute)
        d = bytearray(datagrams[0])
        struct.pack_into("!I", d, nl.HDR_LEN + nftables.NFGEN_LEN + 4, gen[0])
        return [bytes(d)]
    reader = nftables.NftReader(replay_factory(edit=edit))
    assert reader.read(5.0).generation == CAPTURE["generation"] and not reader.reused
    gen[0] += 1
    assert reader.read(5.0).generation == CAPTURE["generation"] + 1 and not reader.reused
    assert reader.read(5.0).generation == CAPTURE["generation"] + 1 and reader.reused

    def cut(request, datagrams):
        return datagrams[:0] if request[4] == nftables.NFT_MSG_GETRULE else datagrams
    partial = nftables.NftReader(replay_factory(edit=cut))
    assert partial.read(0.1).partial and partial.read(0.1).partial and not partial.reused


def test_collector_second_scrape_reuses_and_exports_the_same(tmp_path):
    g, _ = _collector(tmp_path, replay_factory(), sysfs_module=True)
    first = scrape(g)
    second = scrape(g)
    assert g.collectors["netfilter"].nft.reused

    def netfilter(s):
        return {k: v for k, v in s.items() if k[0].startswith("nodenet_netfilter_")}
    assert netfilter(first) == netfilter(second)
    assert sample(second, "nodenet_netfilter_chain_rules", backend="nftables", family="ip",
                  table="filter", chain="FORWARD") == 1
