"""Per-reason packet drop counters: the skb:kfree_skb tracepoint, described by the running kernel.

Everything kernel-specific is read, never written here:

* the reason numbers and names: BTF's ``enum skb_drop_reason`` (and ``enum
  skb_drop_reason_subsys`` for the subsystem reasons whose high 16 bits are set), or the
  ``__print_symbolic(REC->reason, ...)`` table of the tracepoint's tracefs ``format`` file;
* where the reason is: BTF's prototype of the raw tracepoint (``btf_trace_kfree_skb``: the
  index of the ``enum skb_drop_reason`` argument), or the ``reason`` field's offset in the
  formatted record (28 on 5.17-6.10, 36 from 6.11 when rx_sk was inserted);
* where the L3 protocol is: ``sk_buff.protocol`` (offset and size from BTF, big-endian) for the
  raw tracepoint, or the record's ``protocol`` field (already host order) for the formatted one.

Pure parts (unit-tested on several kernels' layouts): :func:`parse_format`,
:class:`ReasonTable`, :func:`raw_layout_from_btf`, :func:`tracepoint_layout_from_format`,
:func:`build_program`.  :class:`DropCounter` loads the program and owns its file descriptors.

Map: one ``BPF_MAP_TYPE_PERCPU_ARRAY`` of u64, key ``slot * 4 + family`` (family 0 other,
1 IPv4, 2 IPv6, 3 ARP).  Slots: one per core reason number below the kernel's MAX, one per
drop subsystem (reason >> 16, 1 .. NUM-1), and a last slot for anything else (a number
beyond the kernel's own table, never expected: exported as ``UNKNOWN``).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

from . import ParseError, Unavailable
from . import bpf as B
from .btf import Btf

PROG_NAME = "nodenet_drops"      # BPF object names: 15 characters at most
MAP_NAME = "nodenet_drops"
TRACEPOINT = "kfree_skb"
FAMILIES = ("other", "ipv4", "ipv6", "arp")
NFAM = len(FAMILIES)
ETH_P = {1: 0x0800, 2: 0x86DD, 3: 0x0806}   # family index -> ethertype (wire constants)
# Names of enum skb_drop_reason that are not reasons (bookkeeping values).
NOT_REASONS = frozenset({"NOT_DROPPED_YET", "CONSUMED", "SUBSYS_MASK", "MAX"})
SUBSYS_SHIFT = 16
DEFAULT_SUBSYS_SLOTS = 16        # when no enum skb_drop_reason_subsys tells the number
MAX_CORE_SLOTS = 4096            # sanity bound on a kernel's table (6.18 has ~130)
UNKNOWN = "UNKNOWN"


# --------------------------------------------------------------------------- tracefs format


@dataclass(frozen=True)
class Field:
    type: str
    offset: int
    size: int
    signed: bool


@dataclass(frozen=True)
class Format:
    name: str
    id: int
    fields: dict[str, Field]
    symbols: dict[int, str]       # __print_symbolic(REC->reason, ...) number -> name


_FIELD_RE = re.compile(r"\s*field:(?P<decl>[^;]*);\s*offset:(?P<off>\d{1,9});"
                       r"\s*size:(?P<size>\d{1,9});\s*signed:(?P<signed>[01]);\s*")
_SYMBOL_RE = re.compile(r"\{\s*(0x[0-9a-fA-F]{1,16}|\d{1,20})\s*,\s*\"(\w{1,128})\"\s*\}")


def parse_format(text: str) -> Format:
    """Parses a tracefs ``events/<system>/<event>/format`` file."""
    name = ""
    tp_id = None
    fields: dict[str, Field] = {}
    print_fmt = ""
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("name:"):
            name = stripped[5:].strip()
        elif stripped.startswith("ID:"):
            value = stripped[3:].strip()
            if not value.isdigit() or len(value) > 9:
                raise ParseError(f"format line {lineno}: bad ID {value!r}")
            tp_id = int(value)
        elif stripped.startswith("field:"):
            m = _FIELD_RE.fullmatch(line)
            if not m:
                raise ParseError(f"format line {lineno}: cannot parse field {stripped[:80]!r}")
            decl = m.group("decl").strip()
            fm = re.fullmatch(r"(.*?)\s*\b(\w+)\s*(\[\d*\])?", decl)
            if not fm or not fm.group(1):
                raise ParseError(f"format line {lineno}: no type and name in {decl[:80]!r}")
            fname = fm.group(2)
            if fname in fields:
                raise ParseError(f"format line {lineno}: field {fname} twice")
            fields[fname] = Field(fm.group(1) + (fm.group(3) or ""), int(m.group("off")),
                                  int(m.group("size")), m.group("signed") == "1")
        elif stripped.startswith("print fmt:"):
            print_fmt = stripped[10:]
    if tp_id is None:
        raise ParseError("format: no ID line")
    return Format(name, tp_id, fields, _symbols(print_fmt, "REC->reason"))


def _symbols(print_fmt: str, arg: str) -> dict[int, str]:
    start = print_fmt.find(f"__print_symbolic({arg},")
    if start < 0:
        return {}
    out: dict[int, str] = {}
    for m in _SYMBOL_RE.finditer(print_fmt, start):
        out.setdefault(int(m.group(1), 0), m.group(2))
    return out


# --------------------------------------------------------------------------- reason names


@dataclass(frozen=True)
class ReasonTable:
    """Numbers -> exported names, and the slot layout of the map that the program fills."""
    core: dict[int, str]          # core reason number -> name (non-reasons left out)
    core_slots: int               # numbers 0 .. core_slots-1 have a slot each
    subsys: dict[int, str]        # subsystem id -> "SUBSYS_<NAME>"
    subsys_slots: int             # subsystem ids 1 .. subsys_slots-1 have a slot each
    excluded: frozenset[int]      # core numbers that are not reasons (never exported)

    def __post_init__(self):
        if not 0 < self.core_slots <= MAX_CORE_SLOTS:
            raise ParseError(f"drop reason table of {self.core_slots} numbers: not plausible")
        if not 1 <= self.subsys_slots <= 1 << 15:
            raise ParseError(f"{self.subsys_slots} drop subsystems: not plausible")

    @property
    def n_slots(self) -> int:
        return self.core_slots + self.subsys_slots   # core + subsystems 1.. + unknown

    @property
    def unknown_slot(self) -> int:
        return self.n_slots - 1

    def slot(self, reason: int) -> int:
        """The slot the program counts `reason` in (the program's logic, in Python)."""
        reason &= 0xFFFFFFFF
        sub = reason >> SUBSYS_SHIFT
        if sub == 0:
            return reason if reason < self.core_slots else self.unknown_slot
        if sub < self.subsys_slots:
            return self.core_slots + sub - 1
        return self.unknown_slot

    def slot_name(self, slot: int) -> str | None:
        """The exported reason of a slot; None for a non-reason (not exported)."""
        if slot < self.core_slots:
            if slot in self.excluded:
                return None
            return self.core.get(slot, str(slot))
        if slot < self.unknown_slot:
            sub = slot - self.core_slots + 1
            return self.subsys.get(sub, f"SUBSYS_{sub}")
        return UNKNOWN

    @classmethod
    def from_btf_enums(cls, reasons: dict[str, int],
                       subsys: dict[str, int] | None) -> ReasonTable:
        core: dict[int, str] = {}
        excluded: set[int] = set()
        limit = None
        for full, value in reasons.items():
            # One prefix only: SKB_DROP_REASON_SKB_CSUM is "SKB_CSUM"; SKB_CONSUMED is "CONSUMED".
            short = (full.removeprefix("SKB_DROP_REASON_") if full.startswith("SKB_DROP_REASON_")
                     else full.removeprefix("SKB_"))
            value &= 0xFFFFFFFF
            if short == "MAX":
                limit = value
            elif value >> SUBSYS_SHIFT:
                continue                      # SUBSYS_MASK and any other wide value
            elif short in NOT_REASONS or not full.startswith("SKB_DROP_REASON_"):
                excluded.add(value)
            else:
                core.setdefault(value, short)
        if limit is None:
            limit = max([*core, *excluded], default=-1) + 1
        return cls(core, limit, *_subsys(subsys), frozenset(excluded))

    @classmethod
    def from_format_symbols(cls, symbols: dict[int, str]) -> ReasonTable:
        core = {v: n for v, n in symbols.items() if n not in NOT_REASONS and not v >> 16}
        limit = next((v for v, n in symbols.items() if n == "MAX"), None)
        if limit is None:
            limit = max(core, default=-1) + 1
        excluded = frozenset(v for v, n in symbols.items() if n in NOT_REASONS and v < limit)
        return cls(core, limit, *_subsys(None), excluded)


def _subsys(enum: dict[str, int] | None) -> tuple[dict[int, str], int]:
    if enum is None:
        return {}, DEFAULT_SUBSYS_SLOTS
    names: dict[int, str] = {}
    limit = None
    for full, value in enum.items():
        short = full.removeprefix("SKB_DROP_REASON_")
        if short == "SUBSYS_NUM":
            limit = value
        elif short != "SUBSYS_CORE" and value > 0:
            names[value] = short if short.startswith("SUBSYS_") else f"SUBSYS_{short}"
    if limit is None:
        limit = max(names, default=0) + 1
    return names, max(limit, 1)


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class RawLayout:
    """BPF_PROG_TYPE_RAW_TRACEPOINT: ctx is u64 args[] (the prototype without __data)."""
    reason_arg: int
    skb_arg: int
    protocol_offset: int          # in struct sk_buff
    protocol_size: int            # 2 (__be16)


@dataclass(frozen=True)
class TracepointLayout:
    """BPF_PROG_TYPE_TRACEPOINT through perf_event_open: ctx is the formatted record."""
    tp_id: int
    reason_offset: int
    reason_size: int
    protocol_offset: int
    protocol_size: int


def reason_table_from_btf(btf: Btf) -> ReasonTable:
    reasons = btf.enum("skb_drop_reason")
    if reasons is None:
        raise Unavailable("the kernel's BTF has no enum skb_drop_reason: the kernel predates drop "
                     "reasons (Linux < 5.17)")
    return ReasonTable.from_btf_enums(reasons, btf.enum("skb_drop_reason_subsys"))


def raw_layout_from_btf(btf: Btf) -> RawLayout:
    params = btf.typedef_proto(f"btf_trace_{TRACEPOINT}")
    if params is None:
        raise Unavailable(f"the kernel's BTF has no btf_trace_{TRACEPOINT} (raw tracepoint "
                     "prototype)")
    args = [btf.describe(p.type_id) for p in params[1:]]      # params[0] is void *__data
    if "enum skb_drop_reason" not in args:
        raise Unavailable(f"raw tracepoint {TRACEPOINT}({', '.join(args)}) has no drop reason "
                     "argument: Linux < 5.17")
    if "struct sk_buff *" not in args:
        raise Unavailable(f"raw tracepoint {TRACEPOINT}({', '.join(args)}) has no sk_buff argument")
    member = btf.member("sk_buff", "protocol")
    if member is None:
        raise Unavailable("the kernel's BTF has no sk_buff.protocol")
    offset, size = member
    if size != 2:
        raise ParseError(f"sk_buff.protocol is {size} bytes, expected 2")
    return RawLayout(args.index("enum skb_drop_reason"), args.index("struct sk_buff *"),
                     offset, size)


def tracepoint_layout_from_format(fmt: Format) -> TracepointLayout:
    reason = fmt.fields.get("reason")
    if reason is None:
        raise Unavailable(f"tracepoint skb:{TRACEPOINT} has no reason field: Linux < 5.17")
    proto = fmt.fields.get("protocol")
    if proto is None:
        raise ParseError(f"tracepoint skb:{TRACEPOINT} has no protocol field")
    for fname, f, sizes in (("reason", reason, (1, 2, 4, 8)), ("protocol", proto, (2,))):
        if f.size not in sizes or f.offset % f.size:
            raise ParseError(f"field {fname}: size {f.size} at offset {f.offset} cannot be "
                             "loaded (size 1/2/4/8, aligned)")
    return TracepointLayout(fmt.id, reason.offset, reason.size, proto.offset, proto.size)


# --------------------------------------------------------------------------- the program


def _be16_as_loaded(value: int, byteorder: str) -> int:
    """What a big-endian 16-bit value reads as when loaded as u16 on this machine."""
    return int.from_bytes(value.to_bytes(2, "big"), "little" if byteorder == "little" else "big")


def build_program(layout: RawLayout | TracepointLayout, table: ReasonTable, map_fd: int,
                  byteorder: str = sys.byteorder) -> bytes:
    """The counting program as instruction bytes (r6 reason, r7 protocol, r8 family).

    Raw tracepoint: r6 = args[reason] (low 32 bits), r7 = skb->protocol read with
    bpf_probe_read_kernel (network order, so the ethertypes compared are byte-swapped on a
    little-endian machine).  Tracepoint: both read from the record (protocol host order).
    """
    a = B.Asm()
    if isinstance(layout, RawLayout):
        a.ldx(B.BPF_DW, 6, 1, 8 * layout.reason_arg)
        a.movr32(6, 6)
        a.ldx(B.BPF_DW, 3, 1, 8 * layout.skb_arg)           # r3 = skb
        a.alu(B.OP_ADD, 3, layout.protocol_offset)          # r3 = &skb->protocol
        a.mov(7, 0)
        a.stx(B.BPF_DW, 10, -16, 7)                         # zeroed scratch at fp-16
        a.movr(1, 10)
        a.alu(B.OP_ADD, 1, -16)
        a.mov(2, layout.protocol_size)
        a.call(B.FN_PROBE_READ_KERNEL)
        a.ldx(B.BPF_H, 7, 10, -16)
        protos = {fam: _be16_as_loaded(eth, byteorder) for fam, eth in ETH_P.items()}
    else:
        a.ldx(B.BYTES_SIZE[layout.reason_size], 6, 1, layout.reason_offset)
        if layout.reason_size == 8:
            a.movr32(6, 6)
        a.ldx(B.BPF_H, 7, 1, layout.protocol_offset)
        protos = dict(ETH_P)
    # slot: core reason, subsystem, or the unknown slot
    a.movr(8, 6)
    a.alu(B.OP_RSH, 8, SUBSYS_SHIFT)                        # r8 = subsystem
    a.jmp(B.J_JEQ, 8, 0, "core")
    a.jmp(B.J_JGE, 8, table.subsys_slots, "unknown")
    a.movr(6, 8)
    a.alu(B.OP_ADD, 6, table.core_slots - 1)
    a.ja("family")
    a.label("core")
    a.jmp(B.J_JLT, 6, table.core_slots, "family")
    a.label("unknown")
    a.mov(6, table.unknown_slot)
    a.label("family")
    a.mov(8, 0)
    for fam in (1, 2, 3):
        a.jmp(B.J_JNE, 7, protos[fam], f"not{fam}")
        a.mov(8, fam)
        a.ja("key")
        a.label(f"not{fam}")
    a.label("key")
    a.alu(B.OP_LSH, 6, 2)                                   # slot * NFAM
    a.alur(B.OP_ADD, 6, 8)                                  # + family
    a.stx(B.BPF_W, 10, -4, 6)
    a.movr(2, 10)
    a.alu(B.OP_ADD, 2, -4)
    a.ld_map_fd(1, map_fd)
    a.call(B.FN_MAP_LOOKUP_ELEM)
    a.jmp(B.J_JEQ, 0, 0, "out")
    # This CPU's slot; the kernel never runs the program nested on one CPU (it counts a
    # recursion miss instead), so a plain read-add-write cannot lose an update.
    a.ldx(B.BPF_DW, 1, 0, 0)
    a.alu(B.OP_ADD, 1, 1)
    a.stx(B.BPF_DW, 0, 0, 1)
    a.label("out")
    a.mov(0, 0)
    a.exit()
    return a.assemble()


# --------------------------------------------------------------------------- in the kernel


@dataclass(frozen=True)
class Plan:
    """What to load: the layout, the names, and where they came from (for the log)."""
    layout: RawLayout | TracepointLayout
    table: ReasonTable
    source: str

    @property
    def mode(self) -> str:
        return "raw_tracepoint" if isinstance(self.layout, RawLayout) else "tracepoint"


class DropCounter:
    """The map, the program and its attachment; ``read()`` sums the per-CPU counters.

    Construction does everything or nothing: on any failure the fds opened so far are closed
    and the BpfError propagates.  ``close()`` (or the process ending) frees it all.
    """

    def __init__(self, arch: B.Arch, plan: Plan, n_cpus: int):
        self.arch, self.plan, self.n_cpus = arch, plan, n_cpus
        self.map_fd = self.prog_fd = self.link_fd = -1
        table = plan.table
        try:
            self.map_fd = B.map_create(arch, B.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8,
                                       table.n_slots * NFAM, MAP_NAME)
            code = build_program(plan.layout, table, self.map_fd, arch.byteorder)
            if isinstance(plan.layout, RawLayout):
                self.prog_fd = B.prog_load(arch, B.BPF_PROG_TYPE_RAW_TRACEPOINT, code, PROG_NAME)
                self.link_fd = B.raw_tracepoint_open(arch, TRACEPOINT, self.prog_fd)
            else:
                self.prog_fd = B.prog_load(arch, B.BPF_PROG_TYPE_TRACEPOINT, code, PROG_NAME)
                self.link_fd = B.perf_tracepoint_attach(arch, plan.layout.tp_id, self.prog_fd)
        except BaseException:
            self.close()
            raise
        self.reader = B.PercpuArrayReader(arch, self.map_fd, table.n_slots * NFAM, n_cpus)
        self.n_insns = len(code) // 8

    def read(self) -> dict[tuple[str, str], int]:
        """{(reason, protocol): drops} for every non-zero counter (non-reasons left out)."""
        out: dict[tuple[str, str], int] = {}
        slot_name = self.plan.table.slot_name
        for key, value in enumerate(self.reader.read()):
            if value:
                slot, fam = divmod(key, NFAM)
                name = slot_name(slot)
                if name is not None:
                    k = (name, FAMILIES[fam])
                    out[k] = out.get(k, 0) + value
        return out

    def info(self) -> dict:
        return B.prog_info(self.arch, self.prog_fd)

    def close(self) -> None:
        for attr in ("link_fd", "prog_fd", "map_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)


# --------------------------------------------------------------------------- readers


def tracefs_format_path(tracefs_dirs: list[str]) -> str | None:
    """The kfree_skb format file under the first tracefs directory that has it."""
    for d in tracefs_dirs:
        path = os.path.join(d, "events", "skb", TRACEPOINT, "format")
        if os.path.exists(path):
            return path
    return None


def plans(btf_path: str, tracefs_dirs: list[str]) -> tuple[list[Plan], list[str]]:
    """What can be loaded here, best first (raw tracepoint from BTF, then the formatted
    tracepoint from tracefs), and why each missing way is missing."""
    found: list[Plan] = []
    why: list[str] = []
    btf = None
    try:
        from .btf import read as read_btf
        btf = read_btf(btf_path)
    except FileNotFoundError:
        why.append(f"no BTF at {btf_path} (CONFIG_DEBUG_INFO_BTF off)")
    except (OSError, ParseError) as exc:
        why.append(f"BTF at {btf_path} unreadable: {exc}")
    table = None
    if btf is not None:
        try:
            table = reason_table_from_btf(btf)
            found.append(Plan(raw_layout_from_btf(btf), table, f"BTF {btf_path}"))
        except (Unavailable, ParseError) as exc:
            why.append(str(exc))
    path = tracefs_format_path(tracefs_dirs)
    if path is None:
        why.append(f"no skb/{TRACEPOINT} format file under {' or '.join(tracefs_dirs)} "
                   "(tracefs not mounted or not readable)")
    else:
        try:
            with open(path) as fh:
                fmt = parse_format(fh.read())
            layout = tracepoint_layout_from_format(fmt)
            if table is None:
                table = ReasonTable.from_format_symbols(fmt.symbols)
            found.append(Plan(layout, table, path))
        except (Unavailable, ParseError) as exc:
            why.append(f"{path}: {exc}")
        except OSError as exc:
            why.append(f"{path}: {exc.strerror or exc}")
    return found, why
