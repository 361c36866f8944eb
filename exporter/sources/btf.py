"""A small reader of BTF, the kernel's own type information (/sys/kernel/btf/vmlinux).

Just what the dropreason collector asks of the running kernel, so that no enum value or struct
offset is written into our code:

* the values of an enum (``enum skb_drop_reason``, ``enum skb_drop_reason_subsys``),
  ``BTF_KIND_ENUM`` and ``BTF_KIND_ENUM64``, signed or not;
* the byte offset and size of a struct member, descending into anonymous struct/union members
  (``sk_buff.protocol`` sits in the anonymous ``struct_group(headers)``);
* the parameters of a function prototype behind a typedef (``btf_trace_kfree_skb``: the raw
  tracepoint's arguments after ``void *__data``).

Format (include/uapi/linux/btf.h): a 24-byte header, then a type section of variable-length
records (12 bytes + a kind-specific tail; type ids count from 1), then a string section.  A
kind this reader does not know cannot be skipped (its tail length is unknown): that is a
:class:`~exporter.sources.ParseError`, as is any out-of-range offset.  Pure: ``Btf(data)``
works on bytes; :func:`read` opens the file.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from . import ParseError

MAGIC = 0xEB9F
HEADER = struct.Struct("<HBBIIIII")   # magic, version, flags, hdr_len, type/str off+len
TYPE = struct.Struct("<III")          # name_off, info, size_or_type

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19

# Bytes after the 12-byte record, as a function of vlen (the low 16 bits of info).
_TAIL = {
    KIND_INT: lambda v: 4, KIND_PTR: lambda v: 0, KIND_ARRAY: lambda v: 12,
    KIND_STRUCT: lambda v: 12 * v, KIND_UNION: lambda v: 12 * v, KIND_ENUM: lambda v: 8 * v,
    KIND_FWD: lambda v: 0, KIND_TYPEDEF: lambda v: 0, KIND_VOLATILE: lambda v: 0,
    KIND_CONST: lambda v: 0, KIND_RESTRICT: lambda v: 0, KIND_FUNC: lambda v: 0,
    KIND_FUNC_PROTO: lambda v: 8 * v, KIND_VAR: lambda v: 4, KIND_DATASEC: lambda v: 12 * v,
    KIND_FLOAT: lambda v: 0, KIND_DECL_TAG: lambda v: 4, KIND_TYPE_TAG: lambda v: 0,
    KIND_ENUM64: lambda v: 12 * v,
}
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class Type(NamedTuple):
    kind: int
    name_off: int
    vlen: int
    kind_flag: bool
    size_or_type: int
    tail: int          # offset of the kind-specific data in the blob


@dataclass(frozen=True)
class Param:
    name: str
    type_id: int


class Btf:
    """Parsed BTF blob; look-ups by name are linear scans (done once at start-up)."""

    def __init__(self, data: bytes):
        if len(data) < HEADER.size:
            raise ParseError(f"BTF: {len(data)} bytes, shorter than the header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ParseError(f"BTF: bad magic {magic:#x} (not BTF, or the other byte order)")
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if hdr_len < HEADER.size or t0 + type_len > len(data) or s0 + str_len > len(data):
            raise ParseError("BTF: header points outside the data")
        self._data = data
        self._str0, self._str_end = s0, s0 + str_len
        self.types: list[Type | None] = [None]   # id 0 is void
        p, end = t0, t0 + type_len
        unpack = TYPE.unpack_from
        while p < end:
            if p + TYPE.size > end:
                raise ParseError(f"BTF: truncated type record at {p}")
            name_off, info, size_or_type = unpack(data, p)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            tail_len = _TAIL.get(kind)
            if tail_len is None:
                raise ParseError(f"BTF: type {len(self.types)} has unknown kind {kind}")
            self.types.append(Type(kind, name_off, vlen, bool(info >> 31), size_or_type,
                                   p + TYPE.size))
            p += TYPE.size + tail_len(vlen)
        if p != end:
            raise ParseError("BTF: last type record runs past the type section")
        self._by_name: dict[tuple[int, str], int] | None = None

    # -- strings and names ----------------------------------------------------------------

    def string(self, off: int) -> str:
        start = self._str0 + off
        if off < 0 or start >= self._str_end:
            raise ParseError(f"BTF: string offset {off} outside the string section")
        end = self._data.find(b"\0", start, self._str_end)
        if end < 0:
            raise ParseError(f"BTF: string at {off} is not terminated")
        return self._data[start:end].decode("utf-8", "replace")

    def type(self, type_id: int) -> Type:
        if not 0 < type_id < len(self.types):
            raise ParseError(f"BTF: type id {type_id} out of range")
        t = self.types[type_id]
        assert t is not None
        return t

    def find(self, kind: int | tuple[int, ...], name: str) -> int | None:
        """Id of the first named type of `kind` (or one of several kinds), None if absent."""
        if self._by_name is None:
            index: dict[tuple[int, str], int] = {}
            for i, t in enumerate(self.types[1:], 1):
                assert t is not None
                if t.name_off and t.kind in (KIND_ENUM, KIND_ENUM64, KIND_STRUCT, KIND_UNION,
                                             KIND_TYPEDEF):
                    index.setdefault((t.kind, self.string(t.name_off)), i)
            self._by_name = index
        for k in (kind if isinstance(kind, tuple) else (kind,)):
            found = self._by_name.get((k, name))
            if found is not None:
                return found
        return None

    def resolve(self, type_id: int) -> int:
        """Follows typedef/const/volatile/restrict/type_tag to the underlying type id."""
        for _ in range(64):
            if type_id == 0:
                return 0
            t = self.type(type_id)
            if t.kind not in _MODIFIERS:
                return type_id
            type_id = t.size_or_type
        raise ParseError("BTF: modifier chain longer than 64 (a loop?)")

    def size_of(self, type_id: int) -> int:
        t = self.type(self.resolve(type_id))
        if t.kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
            return t.size_or_type
        if t.kind == KIND_PTR:
            return 8
        raise ParseError(f"BTF: no size for a type of kind {t.kind}")

    def describe(self, type_id: int) -> str:
        """'enum skb_drop_reason', 'struct sk_buff *', 'u64'...: enough to match parameters."""
        type_id = self.resolve(type_id)
        if type_id == 0:
            return "void"
        t = self.type(type_id)
        name = self.string(t.name_off) if t.name_off else ""
        if t.kind == KIND_PTR:
            return self.describe(t.size_or_type) + " *"
        prefix = {KIND_STRUCT: "struct ", KIND_UNION: "union ", KIND_ENUM: "enum ",
                  KIND_ENUM64: "enum ", KIND_FWD: "struct "}.get(t.kind, "")
        return prefix + name

    # -- what the collector asks ----------------------------------------------------------

    def enum(self, name: str) -> dict[str, int] | None:
        """{enumerator name: value} of `enum name`, None if the kernel has no such enum."""
        type_id = self.find((KIND_ENUM, KIND_ENUM64), name)
        if type_id is None:
            return None
        t = self.type(type_id)
        signed = t.kind_flag
        out: dict[str, int] = {}
        if t.kind == KIND_ENUM:
            for j in range(t.vlen):
                n, v = struct.unpack_from("<Ii" if signed else "<II", self._data, t.tail + 8 * j)
                out[self.string(n)] = v
        else:
            for j in range(t.vlen):
                n, lo, hi = struct.unpack_from("<III", self._data, t.tail + 12 * j)
                v = (hi << 32) | lo
                if signed and v >= 1 << 63:
                    v -= 1 << 64
                out[self.string(n)] = v
        return out

    def member(self, struct_name: str, member: str) -> tuple[int, int] | None:
        """(byte offset, byte size) of `struct_name.member`, looking through anonymous
        struct/union members; None if absent.  A bitfield member is a ParseError."""
        type_id = self.find(KIND_STRUCT, struct_name)
        if type_id is None:
            return None
        found = self._walk(type_id, member, 0, 0)
        if found is None:
            return None
        bits, mtype, bitfield = found
        if bitfield or bits % 8:
            raise ParseError(f"BTF: {struct_name}.{member} is a bitfield")
        return bits // 8, self.size_of(mtype)

    def _walk(self, type_id: int, member: str, base_bits: int, depth: int):
        if depth > 16:
            raise ParseError("BTF: anonymous members nested deeper than 16")
        t = self.type(type_id)
        for j in range(t.vlen):
            n, mtype, off = struct.unpack_from("<III", self._data, t.tail + 12 * j)
            bits = off & 0xFFFFFF if t.kind_flag else off
            bitfield = bool(t.kind_flag and off >> 24)
            if n and self.string(n) == member:
                return base_bits + bits, mtype, bitfield
            if not n:
                inner = self.resolve(mtype)
                if inner and self.type(inner).kind in (KIND_STRUCT, KIND_UNION):
                    got = self._walk(inner, member, base_bits + bits, depth + 1)
                    if got is not None:
                        return got
        return None

    def typedef_proto(self, typedef: str) -> list[Param] | None:
        """Parameters of the function prototype a typedef points to (``typedef void
        (*btf_trace_X)(void *, ...)``), None if there is no such typedef."""
        type_id = self.find(KIND_TYPEDEF, typedef)
        if type_id is None:
            return None
        t = self.type(self.resolve(self.type(type_id).size_or_type))
        if t.kind == KIND_PTR:
            t = self.type(self.resolve(t.size_or_type))
        if t.kind != KIND_FUNC_PROTO:
            raise ParseError(f"BTF: typedef {typedef} is not a function pointer")
        params = []
        for j in range(t.vlen):
            n, ptype = struct.unpack_from("<II", self._data, t.tail + 8 * j)
            params.append(Param(self.string(n) if n else "", ptype))
        return params


def read(path: str) -> Btf:
    """Parses the BTF file at `path` (FileNotFoundError when the kernel has none)."""
    with open(path, "rb") as fh:
        return Btf(fh.read())
