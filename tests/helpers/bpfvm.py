"""A tiny eBPF interpreter for unit tests: runs the dropreason program on a made-up context.

Covers exactly the instruction classes the program may use (and fails loudly on any other):
LDX/STX MEM, ALU64 K/X (mov, add, lsh, rsh), ALU32 mov X, JMP K (ja, jeq, jge, jne, jlt),
ld_imm64 with a map fd, calls to bpf_map_lookup_elem and bpf_probe_read_kernel, exit.
Written from the instruction-set document (Documentation/bpf/standardization), not from the
assembler under test.  Pointers are (region, offset) pairs, so a load through a non-pointer
or out of a region raises instead of reading garbage.
"""
from __future__ import annotations

import struct

SIZES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}
MASK64 = (1 << 64) - 1


class VMError(Exception):
    pass


def run(code: bytes, ctx: bytes, kernel: dict[int, bytes], maps: dict[int, dict[int, int]],
        max_steps: int = 10_000) -> int:
    """Runs `code`; ctx is r1's memory; kernel maps addresses to bytes (probe_read source);
    maps[fd][key] are u64 counters (a lookup of a missing key returns NULL).  Returns r0."""
    ins = [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), 8)]
    regions: dict[str, bytearray] = {"ctx": bytearray(ctx), "stack": bytearray(512)}
    reg: list = [0] * 11
    reg[1] = ("ctx", 0)
    reg[10] = ("stack", 512)
    pc = 0
    for _ in range(max_steps):
        if not 0 <= pc < len(ins):
            raise VMError(f"pc {pc} outside the program")
        op, regs, off, imm = ins[pc]
        dst, src = regs & 0xF, regs >> 4
        cls = op & 0x07
        if op == 0x18:                                    # ld_imm64
            if src != 1:
                raise VMError("only BPF_PSEUDO_MAP_FD ld_imm64 is expected")
            reg[dst] = ("mapref", imm)
            pc += 2
            continue
        if cls == 0x01:                                   # LDX MEM
            size = SIZES[op & 0x18]
            region, base = _ptr(reg[src])
            reg[dst] = _load(regions, region, base + off, size)
        elif cls == 0x03:                                 # STX MEM
            size = SIZES[op & 0x18]
            region, base = _ptr(reg[dst])
            value = reg[src]
            if not isinstance(value, int):
                raise VMError("storing a pointer")
            _store(regions, region, base + off, size, value)
        elif cls in (0x07, 0x04):                         # ALU64 / ALU
            alu = op & 0xF0
            operand = reg[src] if op & 0x08 else imm & MASK64
            if cls == 0x04:
                if alu != 0xB0 or not op & 0x08:
                    raise VMError(f"ALU32 op {op:#x} not expected")
                reg[dst] = _int(operand) & 0xFFFFFFFF
            elif alu == 0xB0:
                reg[dst] = operand
            elif alu == 0x00:
                cur = reg[dst]
                if isinstance(cur, tuple):
                    reg[dst] = (cur[0], cur[1] + _signed(_int(operand)))
                else:
                    reg[dst] = (cur + _int(operand)) & MASK64
            elif alu == 0x60:
                reg[dst] = (_int(reg[dst]) << _int(operand)) & MASK64
            elif alu == 0x70:
                reg[dst] = _int(reg[dst]) >> _int(operand)
            else:
                raise VMError(f"ALU64 op {alu:#x} not expected")
        elif cls == 0x05:                                 # JMP
            jop = op & 0xF0
            if jop == 0x90:
                return _int(reg[0])
            if jop == 0x80:
                reg[0] = _call(imm, reg, regions, kernel, maps)
                for r in (1, 2, 3, 4, 5):
                    reg[r] = None
                pc += 1
                continue
            if op & 0x08:
                raise VMError("register jumps not expected")
            a = reg[dst]
            b = imm & MASK64
            if jop == 0x00:
                taken = True
            elif isinstance(a, tuple):
                if jop not in (0x10, 0x50) or imm != 0:
                    raise VMError("pointer compared with a non-zero constant")
                taken = jop == 0x50                       # a real pointer is never NULL
            else:
                taken = {0x10: a == b, 0x30: a >= b, 0x50: a != b, 0xA0: a < b}[jop]
            if taken:
                pc += off
        else:
            raise VMError(f"instruction class {cls:#x} not expected")
        pc += 1
    raise VMError("step budget exhausted (a loop?)")


def _int(v) -> int:
    if not isinstance(v, int):
        raise VMError(f"{v!r} used as a number")
    return v


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


def _ptr(v):
    if not isinstance(v, tuple) or v[0] in ("mapref",):
        raise VMError(f"{v!r} used as a pointer")
    return v


def _load(regions, region, at, size):
    if region.startswith("value:"):
        _, fd, key = region.split(":")
        if at != 0 or size != 8:
            raise VMError("map value access other than the u64 at 0")
        return regions["maps"][int(fd)][int(key)]  # type: ignore[index]
    mem = regions[region]
    if at < 0 or at + size > len(mem):
        raise VMError(f"load of {size} at {at} outside {region}")
    return int.from_bytes(mem[at:at + size], "little")


def _store(regions, region, at, size, value):
    if region.startswith("value:"):
        _, fd, key = region.split(":")
        if at != 0 or size != 8:
            raise VMError("map value access other than the u64 at 0")
        regions["maps"][int(fd)][int(key)] = value & MASK64  # type: ignore[index]
        return
    if region == "ctx":
        raise VMError("store to ctx")
    mem = regions[region]
    if at < 0 or at + size > len(mem):
        raise VMError(f"store of {size} at {at} outside {region}")
    mem[at:at + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _call(helper, reg, regions, kernel, maps):
    regions["maps"] = maps  # type: ignore[assignment]
    if helper == 1:                                       # bpf_map_lookup_elem(map, &key)
        if not (isinstance(reg[1], tuple) and reg[1][0] == "mapref"):
            raise VMError("lookup without a map")
        fd = reg[1][1]
        region, at = _ptr(reg[2])
        key = _load(regions, region, at, 4)
        if key not in maps[fd]:
            return 0
        return (f"value:{fd}:{key}", 0)
    if helper == 113:                                     # bpf_probe_read_kernel(dst, n, src)
        region, at = _ptr(reg[1])
        size, src = _int(reg[2]), _int(reg[3])
        for base, mem in kernel.items():
            if base <= src and src + size <= base + len(mem):
                data = mem[src - base:src - base + size]
                break
        else:
            data = bytes(size)                            # a failed read zeroes dst
        for i, byte in enumerate(data):
            _store(regions, region, at + i, 1, byte)
        return 0
    raise VMError(f"helper {helper} not expected")
