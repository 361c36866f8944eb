"""Fuzzing the rtnetlink decoders (issue 7): garbage, truncated, mutated and attribute-soup input
either decodes to typed results or raises the module's own errors (ParseError for bytes it
cannot understand, NetlinkError when the bytes carry a kernel error) - never anything else.
Whatever decodes must also go through the collector and the exposition writer.
"""
from __future__ import annotations

import io
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import log as logmod
from exporter.cli import all_options
from exporter.collectors.base import REGISTRY, Context
from exporter.collectors.netdev import NetdevCollector, UnderlayResolver
from exporter.config import resolve
from exporter.metrics import ExpositionWriter
from exporter.sources import ParseError
from exporter.sources.links import (Link, NetlinkError, Route,
                                    parse_link_dump, parse_link_messages, parse_route_messages)
from nlbuild_netdev import attr, done, load_hex, nest, nlmsg, string

FIXTURE_NAMES = ["veth", "vxlan4", "vxlan6", "bridge", "macvlan", "tun"]
FIXTURES = [load_hex(f"links_{n}.hex") for n in FIXTURE_NAMES]
# NODENET_FUZZ_EXAMPLES=5000 for a longer run by hand
FUZZ = settings(max_examples=int(os.environ.get("NODENET_FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KINDS = ["vxlan", "geneve", "ipip", "sit", "ip6tnl", "gre", "gretap", "ip6gre", "ip6gretap",
         "wireguard", "veth", "bridge", "macvlan", "", "\xff"]


def _collector():
    s = resolve(all_options(), [], "test", "0", set(REGISTRY))
    return NetdevCollector(Context(settings=s, log=logmod.setup("error", "json",
                                                                 stream=io.StringIO())))


COLLECTOR = _collector()


class NoRoutes:
    def route_get(self, address):
        return None

    def dump_routes(self, family):
        return [Route(family, 0, 254, 1, 3, 0)]


def check_links(data):
    try:
        links = parse_link_dump(data)
    except (ParseError, NetlinkError) as exc:
        assert isinstance(exc, (ParseError, OSError))
        return None
    assert all(isinstance(link, Link) for link in links)
    by_index = {link.index: link for link in links}
    resolver = UnderlayResolver(NoRoutes(), by_index)
    underlays = {link.index: resolver.underlay(link) for link in links}
    fams = list(COLLECTOR.families(links, underlays))
    ExpositionWriter().render(fams)
    ExpositionWriter().render(fams, openmetrics=True)
    return links


@FUZZ
@given(st.binary(max_size=4096))
def test_garbage(data):
    check_links(data)
    try:
        parse_route_messages(data)
    except (ParseError, NetlinkError):
        pass
    try:
        parse_link_messages(data)
    except (ParseError, NetlinkError):
        pass


@FUZZ
@given(st.sampled_from(range(len(FIXTURES))), st.data())
def test_truncated_and_oversized_captures(which, data):
    raw = FIXTURES[which]
    cut = data.draw(st.integers(0, len(raw)))
    tail = data.draw(st.binary(max_size=64))
    check_links(raw[:cut] + tail)
    check_links(raw + tail)


@FUZZ
@given(st.sampled_from(range(len(FIXTURES))),
       st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_captures(which, flips):
    raw = bytearray(FIXTURES[which])
    for pos, value in flips:
        raw[pos % len(raw)] = value
    check_links(bytes(raw))


# payloads around the sizes the decoder expects (u8/u16/u32/in_addr/in6_addr/stats) and others
attr_payload = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17]).flatmap(
        lambda n: st.binary(min_size=n, max_size=n)),
    st.binary(max_size=48))
raw_attr = st.builds(attr, st.one_of(st.integers(0, 60), st.integers(0, 0xFFFF)), attr_payload)
data_attr = st.builds(attr, st.integers(0, 30), attr_payload)   # IFLA_<KIND>_* are small
info_data = st.lists(data_attr, max_size=12)


def sized(n):
    """A payload of the right size ``n`` 7 times out of 8, else a wrong size near it."""
    wrong = st.one_of(st.sampled_from(sorted({0, 1, 2, 3, 5, max(0, n - 1), n + 1, 16, 17})).flatmap(
        lambda k: st.binary(min_size=k, max_size=k)), attr_payload)
    return st.integers(0, 7).flatmap(
        lambda pick: wrong if pick == 0 else st.binary(min_size=n, max_size=n))


TOP_SIZES = {4: 4, 5: 4, 10: 4, 16: 1, 37: 4, 50: 4, 51: 4, 56: 8}
# per kind: attribute type -> expected payload size (addresses 4 or 16, links u32, flags...)
DATA_SIZES = {
    "vxlan": {1: 4, 2: 4, 3: 4, 4: 4, 16: 16, 17: 16, 25: 1},
    "geneve": {1: 4, 2: 4, 6: 0, 7: 16, 14: 0},
    "ipip": {1: 4, 2: 4, 3: 4, 8: 2, 15: 2, 16: 2, 19: 0},
    "sit": {1: 4, 2: 4, 3: 4, 8: 2, 15: 2, 16: 2, 19: 0},
    "ip6tnl": {1: 4, 2: 16, 3: 16, 8: 4, 15: 2, 16: 2, 19: 0},
    "gre": {1: 4, 3: 2, 6: 4, 7: 4, 14: 2, 15: 2, 18: 0},
    "gretap": {1: 4, 3: 2, 6: 4, 7: 4, 14: 2, 15: 2, 18: 0},
    "ip6gre": {1: 4, 3: 2, 6: 16, 7: 16, 13: 4, 14: 2, 15: 2, 18: 0},
    "ip6gretap": {1: 4, 3: 2, 6: 16, 7: 16, 13: 4, 14: 2, 15: 2, 18: 0},
}


@st.composite
def link_message(draw):
    body = struct.pack("=BxHiII", draw(st.integers(0, 255)), draw(st.integers(0, 0xFFFF)),
                       draw(st.integers(-2 ** 31, 2 ** 31 - 1)), draw(st.integers(0, 2 ** 32 - 1)),
                       0)
    attrs = [string(3, draw(st.text(max_size=20)))]
    for atype in draw(st.lists(st.sampled_from(sorted(TOP_SIZES)), max_size=8)):
        attrs.append(attr(atype, draw(sized(TOP_SIZES[atype]))))
    attrs += draw(st.lists(raw_attr, max_size=2))
    if draw(st.sampled_from([True, True, True, False])):
        kind = draw(st.sampled_from(KINDS))
        inner = [string(1, kind)]
        if draw(st.sampled_from([True] * 9 + [False])):
            sizes = DATA_SIZES.get(kind, {})
            data = [attr(t, draw(sized(sizes[t])))
                    for t in draw(st.lists(st.sampled_from(sorted(sizes) or [1]), max_size=10))
                    if t in sizes]
            data += draw(st.lists(data_attr, max_size=2))
            inner.append(nest(2, *data))
        attrs.append(nest(18, *inner))
    if draw(st.booleans()):
        size = draw(st.sampled_from([184, 192, 200, 208, 200, 200, 200, 200, -1]))
        attrs.append(attr(23, draw(st.binary(max_size=220) if size < 0 else
                                   st.binary(min_size=size, max_size=size))))
    draw(st.randoms()).shuffle(attrs)
    return nlmsg(16, body + b"".join(attrs))


@FUZZ
@given(st.lists(link_message(), max_size=6))
def test_attribute_soup(messages):
    check_links(b"".join(messages) + done())


@FUZZ
@given(st.lists(st.builds(lambda body, attrs: nlmsg(24, body + b"".join(attrs)),
                          st.binary(min_size=0, max_size=16), st.lists(raw_attr, max_size=6)),
                max_size=5))
def test_route_soup(messages):
    try:
        routes = parse_route_messages(b"".join(messages))
    except (ParseError, NetlinkError):
        return
    assert all(isinstance(r, Route) for r in routes)


def test_kernel_error_is_a_netlink_error():
    from nlbuild_netdev import error
    try:
        parse_link_dump(error(1))
    except NetlinkError as exc:
        assert exc.errno == 1
    else:
        raise AssertionError("NLMSG_ERROR not raised")
