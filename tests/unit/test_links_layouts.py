"""links.LinkLayouts (the accelerator of the link decoder) gives what the generic decoder gives.

On every captured dump (this kernel's veth, vxlan, bridge, macvlan, tun; UML 6.1's tunnels),
on this machine's own live dump, and on fuzzed copies of real messages: the same Link, or the
same error.  A layout is compiled from the first message of a shape and used from the second
on, so each dump is decoded twice through one LinkLayouts.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nlbuild_netdev import load_hex

from exporter.sources import ParseError
from exporter.sources import netlink as nl
from exporter.sources.links import (
    RTM_NEWLINK,
    LinkLayouts,
    RtNetlink,
    _decode_link,
    parse_link_dump,
)

SCENARIOS = ["veth", "vxlan4", "vxlan6", "bridge", "macvlan", "tun", "uml_tunnels"]


def messages(raw: bytes) -> list[nl.Message]:
    reply = nl.Reply(None, context="link dump")
    return [m for m in reply.messages(raw) if m.type == RTM_NEWLINK]


def decode_both(layouts: LinkLayouts, m: nl.Message):
    """(generic, accelerated) outcome: a Link, or the error's type and text."""
    out = []
    for decode in (_decode_link, layouts.decode):
        try:
            out.append(decode(m))
        except ParseError as exc:
            out.append((type(exc), str(exc)))
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_captured_dump_decodes_alike_twice(scenario):
    raw = load_hex(f"links_{scenario}.hex")
    layouts = LinkLayouts()
    generic = parse_link_dump(raw)
    for _ in range(2):
        got = [layouts.decode(m) for m in messages(raw)]
        assert got == generic
    assert layouts.count >= 1, "no layout was compiled: the test would prove nothing"


def test_this_machines_own_dump_decodes_alike_through_layouts():
    with RtNetlink() as rt:
        raw = rt.dump_links_raw()
    layouts = LinkLayouts()
    generic = parse_link_dump(raw)
    assert generic, "the live dump has no link"
    for _ in range(2):
        assert [layouts.decode(m) for m in messages(raw)] == generic


def test_many_veths_share_few_layouts_and_tunnels_take_the_generic_path():
    """The veth dump's messages differ only by name length (and values): a handful of
    layouts serve every veth; a tunnel's shape is recorded as generic (its data per kind)."""
    veth = messages(load_hex("links_veth.hex"))
    layouts = LinkLayouts()
    for m in veth:
        layouts.decode(m)
    plans = [plan for tpls in layouts.templates.values() for _m, _s, plan in tpls]
    assert plans and any(plan is not None for plan in plans)
    tun = messages(load_hex("links_uml_tunnels.hex"))
    tl = LinkLayouts()
    for m in tun:
        tl.decode(m)
    generic_shapes = [p for tpls in tl.templates.values() for _m, _s, p in tpls if p is None]
    assert generic_shapes, "the tunnels' shapes should be decoded generically"
    assert [tl.decode(m) for m in tun] == parse_link_dump(load_hex("links_uml_tunnels.hex"))


def test_a_message_of_the_same_shape_but_another_kind_is_not_decoded_by_its_layout():
    """The kind string is part of the shape: a compiled 'veth' layout must not decode a
    message whose kind differs in content only (a tunnel kind of the same length)."""
    veth = messages(load_hex("links_veth.hex"))
    m = next(x for x in veth if b"veth\0" in bytes(x.data[x.start:x.end]))
    layouts = LinkLayouts()
    layouts.decode(m)
    body = bytearray(m.data[m.start:m.end])
    at = body.find(b"veth\0")
    body[at:at + 4] = b"ipip"[:4]   # "ipip\0": a tunnel kind of the same length
    hdr = struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, 0, 0, 0)
    other = nl.Message(RTM_NEWLINK, 0, 0, hdr + bytes(body), 16, 16 + len(body))
    generic, fast = decode_both(layouts, other)
    assert fast == generic
    assert not isinstance(generic, tuple) and generic.kind == "ipip"


_VETH = messages(load_hex("links_veth.hex"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(_VETH) - 1), flips=st.lists(
    st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzzed_messages_decode_alike(which, flips):
    """Bytes of a real message changed at random (values, names, and now and then a header):
    through a LinkLayouts that has compiled the original, the same Link or the same error."""
    m = _VETH[which]
    layouts = LinkLayouts()
    layouts.decode(m)
    body = bytearray(m.data[m.start:m.end])
    for pos, byte in flips:
        body[pos % len(body)] = byte
    hdr = struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, 0, 0, 0)
    fuzzed = nl.Message(RTM_NEWLINK, 0, 0, hdr + bytes(body), 16, 16 + len(body))
    generic, fast = decode_both(layouts, fuzzed)
    assert fast == generic
