"""Writes BTF blobs (the format of /sys/kernel/btf/vmlinux) for unit tests of exporter.sources.btf.

Independent of the reader: it follows include/uapi/linux/btf.h directly.  Types get ids in the
order they are added (from 1); ``layout(...)`` builds the few types the dropreason collector
asks about, in the shapes of several kernels.
"""
from __future__ import annotations

import struct

KINDS = {"int": 1, "ptr": 2, "array": 3, "struct": 4, "union": 5, "enum": 6, "fwd": 7,
         "typedef": 8, "volatile": 9, "const": 10, "func": 12, "func_proto": 13, "enum64": 19}


class BtfBuilder:
    def __init__(self):
        self._types: list[bytes] = []
        self._strings = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}

    def s(self, name: str) -> int:
        if name not in self._offsets:
            self._offsets[name] = len(self._strings)
            self._strings += name.encode() + b"\0"
        return self._offsets[name]

    def _add(self, kind: str, name: str, vlen: int, size_or_type: int, tail: bytes = b"",
             kind_flag: bool = False) -> int:
        info = (KINDS[kind] << 24) | vlen | (int(kind_flag) << 31)
        self._types.append(struct.pack("<III", self.s(name), info, size_or_type) + tail)
        return len(self._types)

    def int_(self, name: str, size: int, signed: bool = False) -> int:
        encoding = 1 if signed else 0
        return self._add("int", name, 0, size, struct.pack("<I", (encoding << 24) | size * 8))

    def ptr(self, target: int) -> int:
        return self._add("ptr", "", 0, target)

    def typedef(self, name: str, target: int) -> int:
        return self._add("typedef", name, 0, target)

    def const(self, target: int) -> int:
        return self._add("const", "", 0, target)

    def fwd(self, name: str) -> int:
        return self._add("fwd", name, 0, 0)

    def struct(self, name: str, size: int, members, union: bool = False,
               kind_flag: bool = False) -> int:
        """members: (name, type id, bit offset[, bitfield size])"""
        tail = b""
        for m in members:
            mname, mtype, bits = m[:3]
            off = bits | ((m[3] << 24) if kind_flag and len(m) > 3 else 0)
            tail += struct.pack("<III", self.s(mname), mtype, off)
        return self._add("union" if union else "struct", name, len(members), size, tail,
                         kind_flag)

    def enum(self, name: str, values, size: int = 4, signed: bool = False) -> int:
        tail = b"".join(struct.pack("<Ii" if signed else "<II", self.s(n), v) for n, v in values)
        return self._add("enum", name, len(values), size, tail, signed)

    def enum64(self, name: str, values, signed: bool = False) -> int:
        tail = b""
        for n, v in values:
            v &= (1 << 64) - 1
            tail += struct.pack("<III", self.s(n), v & 0xFFFFFFFF, v >> 32)
        return self._add("enum64", name, len(values), 8, tail, signed)

    def func_proto(self, ret: int, params) -> int:
        tail = b"".join(struct.pack("<II", self.s(n), t) for n, t in params)
        return self._add("func_proto", "", len(params), ret, tail)

    def blob(self) -> bytes:
        types = b"".join(self._types)
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                          len(self._strings))
        return hdr + types + bytes(self._strings)


def layout(reasons: list[tuple[str, int]], *, subsys: list[tuple[str, int]] | None = None,
           rx_sk: bool = True, with_reason_arg: bool = True, protocol_bits: int = 176 * 8,
           grouped: bool = True, enum64: bool = False) -> bytes:
    """BTF with enum skb_drop_reason, struct sk_buff (protocol inside an anonymous
    union/struct like struct_group(headers), or a plain member) and btf_trace_kfree_skb."""
    b = BtfBuilder()
    u16 = b.int_("unsigned short", 2)
    be16 = b.typedef("__be16", b.typedef("__u16", u16))
    u32 = b.int_("unsigned int", 4)
    if grouped:
        inner = b.struct("", 8, [("mac_len", u16, 0), ("protocol", be16, 16), ("priority", u32, 32)])
        union = b.struct("", 8, [("", inner, 0), ("headers", inner, 0)], union=True)
        skb = b.struct("sk_buff", 232, [("len", u32, 0), ("", union, protocol_bits - 16)])
    else:
        skb = b.struct("sk_buff", 232, [("len", u32, 0), ("protocol", be16, protocol_bits)])
    sock = b.fwd("sock")
    void_ptr = b.ptr(0)
    if enum64:
        reason = b.enum64("skb_drop_reason", reasons)
    else:
        reason = b.enum("skb_drop_reason", reasons)
    if subsys is not None:
        b.enum("skb_drop_reason_subsys", subsys)
    params = [("__data", void_ptr), ("skb", b.ptr(skb)), ("location", void_ptr)]
    if with_reason_arg:
        params.append(("reason", reason))
    if rx_sk:
        params.append(("rx_sk", b.ptr(sock)))
    proto = b.func_proto(0, params)
    b.typedef("btf_trace_kfree_skb", b.ptr(proto))
    return b.blob()


def reasons_517() -> list[tuple[str, int]]:
    names = ["NOT_SPECIFIED", "NO_SOCKET", "PKT_TOO_SMALL", "TCP_CSUM", "SOCKET_FILTER",
             "UDP_CSUM", "NETFILTER_DROP", "OTHERHOST", "IP_CSUM", "IP_INHDR", "IP_RPFILTER",
             "UNICAST_IN_L2_MULTICAST", "MAX"]
    return [(f"SKB_DROP_REASON_{n}", i) for i, n in enumerate(names)]


def reasons_618() -> list[tuple[str, int]]:
    """The head and tail of 6.18's enum: two non-reasons first, renumbered reasons, MAX, mask."""
    names = ["NOT_SPECIFIED", "NO_SOCKET", "SOCKET_CLOSE", "SOCKET_FILTER", "SOCKET_RCVBUFF",
             "NETFILTER_DROP", "NEIGH_FAILED", "QDISC_DROP", "CPU_BACKLOG", "FULL_RING",
             "SKB_CSUM"]
    out = [("SKB_NOT_DROPPED_YET", 0), ("SKB_CONSUMED", 1)]
    out += [(f"SKB_DROP_REASON_{n}", i + 2) for i, n in enumerate(names)]
    out += [("SKB_DROP_REASON_MAX", len(names) + 2), ("SKB_DROP_REASON_SUBSYS_MASK", 0xFFFF0000)]
    return out


SUBSYS_618 = [("SKB_DROP_REASON_SUBSYS_CORE", 0), ("SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE", 1),
              ("SKB_DROP_REASON_SUBSYS_OPENVSWITCH", 2), ("SKB_DROP_REASON_SUBSYS_NUM", 3)]
