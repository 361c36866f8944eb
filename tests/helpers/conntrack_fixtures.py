"""Loading of the conntrack fixtures (hex receive buffers, expected witness values)."""
from __future__ import annotations

import json
import os
import struct

from exporter.sources.netlink import ReplayTransport

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")  # tests/fixtures
NETLINK = os.path.join(FIXTURES, "netlink")
PROC = os.path.join(FIXTURES, "proc", "conntrack")


def hex_buffers(name: str) -> list[bytes]:
    """One bytes object per receive buffer recorded in tests/fixtures/netlink/<name>."""
    with open(os.path.join(NETLINK, name)) as fh:
        return [bytes.fromhex(line.strip()) for line in fh
                if line.strip() and not line.startswith("#")]


def expected() -> dict:
    with open(os.path.join(NETLINK, "conntrack_expected.json")) as fh:
        return json.load(fh)


def proc_text(layout: str) -> str:
    with open(os.path.join(PROC, layout, "nf_conntrack")) as fh:
        return fh.read()


def proc_expected(layout: str) -> dict:
    path = os.path.join(PROC, layout, "expected.json")
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    with open(os.path.join(PROC, "expected.json")) as fh:
        return json.load(fh)[layout]


class ReplaySocket(ReplayTransport):
    """The kernel, replayed: answers each request with the buffers the kernel sent for the
    same request type when the fixtures were captured (exporter.sources.netlink's transport).
    ``sent`` here lists the request types, for assertions."""

    def __init__(self, replies: dict[int, list[bytes]]):
        super().__init__(replies)
        self.requests: list[bytes] = []

    @property
    def sent_types(self) -> list[int]:
        return [struct.unpack_from("=H", r, 4)[0] for r in self.sent]
