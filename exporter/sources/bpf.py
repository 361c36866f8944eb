"""bpf(2) and perf_event_open(2) from Python: syscall table, attribute layouts, an assembler.

No libbpf, no compiler: the few commands the dropreason collector needs, each with its
``union bpf_attr`` member as a ctypes structure whose field offsets are the uapi's
(include/uapi/linux/bpf.h, perf_event.h; unit-tested), passed at exactly its own size (the
kernel accepts a shorter attr than its own and zero-fills the rest).

* :data:`ARCHES`: the syscall numbers and ioctl encoding per architecture (bpf(2) has no libc
  wrapper; its number differs: 321 on x86_64, 280 on arm64).  :func:`arch` refuses any other
  machine with :class:`Unavailable` rather than guessing.
* :class:`Asm`: eBPF instructions with labels; ``assemble()`` gives the bytes the kernel loads.
* :func:`map_create`, :func:`prog_load` (retried with the verifier log when refused),
  :func:`raw_tracepoint_open`, :func:`perf_tracepoint_attach`, :func:`lookup_batch` (one
  syscall for the whole array) with :func:`lookup_each` as the fallback for kernels < 5.6.

Every file descriptor the kernel returns is close-on-exec (bpf(2) always sets it; perf events
get PERF_FLAG_FD_CLOEXEC): programs and maps live exactly as long as their fds, so nothing of
ours outlives the process, whatever ends it.  Errors are :class:`BpfError` (an OSError that
names the step and carries the verifier log).
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from dataclasses import dataclass

from . import BpfError, Unavailable

# --------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class Arch:
    machine: str          # os.uname().machine
    nr_bpf: int
    nr_perf_event_open: int
    ioc_write: int        # _IOC_WRITE of asm-generic/ioctl.h (differs on powerpc/mips/sparc)
    byteorder: str        # the machine's: how a __be16 loaded as u16 reads


ARCHES = {
    "x86_64": Arch("x86_64", 321, 298, 1, "little"),
    "aarch64": Arch("aarch64", 280, 241, 1, "little"),
}


def arch(machine: str | None = None) -> Arch:
    machine = machine or os.uname().machine
    found = ARCHES.get(machine)
    if found is None or (machine == os.uname().machine and found.byteorder != sys.byteorder):
        raise Unavailable(f"architecture {machine!r} is not supported (bpf(2) syscall number "
                          f"unknown here; supported: {', '.join(sorted(ARCHES))})")
    return found


def ioc(a: Arch, direction: int, type_: int, nr: int, size: int) -> int:
    """_IOC(dir, type, nr, size) in the asm-generic layout (nr 8 bits, type 8, size 14)."""
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


def perf_ioc_enable(a: Arch) -> int:
    return ioc(a, 0, ord("$"), 0, 0)                   # _IO('$', 0)


def perf_ioc_set_bpf(a: Arch) -> int:
    return ioc(a, a.ioc_write, ord("$"), 8, 4)         # _IOW('$', 8, __u32)


# --------------------------------------------------------------------------- uapi constants

BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_PROG_LOAD = 0, 1, 5
BPF_OBJ_GET_INFO_BY_FD, BPF_RAW_TRACEPOINT_OPEN, BPF_MAP_LOOKUP_BATCH = 15, 17, 24
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_RAW_TRACEPOINT = 5, 17
BPF_OBJ_NAME_LEN = 16
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
PERF_ATTR_SIZE_VER0 = 64
LOG_SIZE = 1 << 20   # verifier log buffer when a load is refused


# --------------------------------------------------------------------------- attr layouts
# One structure per bpf_attr member used; field names are the kernel's.

class MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


class ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


class MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class MapBatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class RawTracepointAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


class InfoByFdAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to PERF_ATTR_SIZE_VER0; ``flags`` holds the bitfield word
    (disabled, inherit, ...: bit 0 is ``disabled``)."""
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32),
                ("config", ctypes.c_uint64), ("sample_period", ctypes.c_uint64),
                ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
                ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64)]


# struct bpf_prog_info offsets we read (uapi; fields are only ever appended).
PROG_INFO_SIZE = 232
PROG_INFO_ID = 4
PROG_INFO_NAME = 64
PROG_INFO_RECURSION_MISSES = 208   # 5.12+; zero-filled by older kernels


# --------------------------------------------------------------------------- syscalls

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]


def _addr(obj) -> int:
    return ctypes.addressof(obj)


def bpf(a: Arch, cmd: int, attr: ctypes.Structure, step: str) -> int:
    r = _libc.syscall(ctypes.c_long(a.nr_bpf), ctypes.c_long(cmd), ctypes.byref(attr),
                      ctypes.c_long(ctypes.sizeof(attr)))
    if r < 0:
        raise BpfError(ctypes.get_errno(), step)
    return int(r)


def map_create(a: Arch, map_type: int, key_size: int, value_size: int, max_entries: int,
               name: str) -> int:
    attr = MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                         max_entries=max_entries, map_name=name.encode()[:BPF_OBJ_NAME_LEN - 1])
    return bpf(a, BPF_MAP_CREATE, attr, "BPF_MAP_CREATE")


def prog_load(a: Arch, prog_type: int, insns: bytes, name: str, license: str = "GPL") -> int:
    """Loads a program; a refusal other than EPERM is retried with log_level 1 so that the
    BpfError carries the verifier's log."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())

    def attempt(log=None) -> int:
        attr = ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=_addr(code),
                            license=_addr(lic), prog_name=name.encode()[:BPF_OBJ_NAME_LEN - 1])
        if log is not None:
            attr.log_level, attr.log_size, attr.log_buf = 1, len(log), _addr(log)
        return bpf(a, BPF_PROG_LOAD, attr, "BPF_PROG_LOAD")

    try:
        return attempt()
    except BpfError as exc:
        if exc.errno in (errno.EPERM, errno.ENOSYS):
            raise
        log = ctypes.create_string_buffer(LOG_SIZE)
        try:
            return attempt(log)
        except BpfError as exc2:
            exc2.log = log.value.decode("utf-8", "replace")
            raise exc2 from None


def raw_tracepoint_open(a: Arch, name: str, prog_fd: int) -> int:
    buf = ctypes.create_string_buffer(name.encode())
    attr = RawTracepointAttr(name=_addr(buf), prog_fd=prog_fd)
    return bpf(a, BPF_RAW_TRACEPOINT_OPEN, attr, "BPF_RAW_TRACEPOINT_OPEN")


def perf_tracepoint_attach(a: Arch, tp_id: int, prog_fd: int) -> int:
    """One perf event for the tracepoint (pid -1, cpu 0: the program hangs off the
    tracepoint, not the CPU, so it runs on every CPU), the program set on it, enabled."""
    attr = PerfEventAttr(type=PERF_TYPE_TRACEPOINT, size=PERF_ATTR_SIZE_VER0, config=tp_id,
                         sample_period=1, wakeup_events=1)
    fd = _libc.syscall(ctypes.c_long(a.nr_perf_event_open), ctypes.byref(attr),
                       ctypes.c_long(-1), ctypes.c_long(0), ctypes.c_long(-1),
                       ctypes.c_long(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        raise BpfError(ctypes.get_errno(), "perf_event_open")
    try:
        for req, arg, step in ((perf_ioc_set_bpf(a), prog_fd, "PERF_EVENT_IOC_SET_BPF"),
                               (perf_ioc_enable(a), 0, "PERF_EVENT_IOC_ENABLE")):
            if _libc.ioctl(fd, req, arg) < 0:
                raise BpfError(ctypes.get_errno(), step)
    except BaseException:
        os.close(fd)
        raise
    return int(fd)


def prog_info(a: Arch, prog_fd: int) -> dict:
    """id, name and recursion_misses (runs the kernel skipped) of a loaded program."""
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    attr = InfoByFdAttr(bpf_fd=prog_fd, info_len=PROG_INFO_SIZE, info=_addr(info))
    bpf(a, BPF_OBJ_GET_INFO_BY_FD, attr, "BPF_OBJ_GET_INFO_BY_FD")
    raw = info.raw
    return {"id": struct.unpack_from("<I", raw, PROG_INFO_ID)[0],
            "name": raw[PROG_INFO_NAME:PROG_INFO_NAME + BPF_OBJ_NAME_LEN].split(b"\0")[0].decode(),
            "recursion_misses": struct.unpack_from("<Q", raw, PROG_INFO_RECURSION_MISSES)[0]}


class PercpuArrayReader:
    """Reads a whole per-CPU array of u64 values: one BPF_MAP_LOOKUP_BATCH (5.6+), else one
    BPF_MAP_LOOKUP_ELEM per key.  ``read()`` -> list of per-key sums over the possible CPUs."""

    def __init__(self, a: Arch, map_fd: int, n_keys: int, n_cpus: int):
        self.a, self.fd, self.n_keys, self.n_cpus = a, map_fd, n_keys, n_cpus
        self._keys = (ctypes.c_uint32 * n_keys)()
        self._values = (ctypes.c_uint64 * (n_keys * n_cpus))()
        self._sums = memoryview(self._values).cast("B").cast("Q")
        self._out_batch = ctypes.c_uint32()
        self.batch = True

    def read(self) -> list[int]:
        if self.batch:
            try:
                return self._read_batch()
            except BpfError as exc:
                if exc.errno != errno.EINVAL:   # EINVAL: a kernel without batch ops (< 5.6)
                    raise
                self.batch = False
        return self._read_each()

    def _read_batch(self) -> list[int]:
        attr = MapBatchAttr(out_batch=_addr(self._out_batch), keys=_addr(self._keys),
                            values=_addr(self._values), count=self.n_keys, map_fd=self.fd)
        try:
            bpf(self.a, BPF_MAP_LOOKUP_BATCH, attr, "BPF_MAP_LOOKUP_BATCH")
        except BpfError as exc:
            if exc.errno != errno.ENOENT:       # ENOENT: the batch reached the end (all read)
                raise
        n, ncpu, values = attr.count, self.n_cpus, self._sums
        out = [0] * self.n_keys
        for i in range(n):
            out[self._keys[i]] = sum(values[i * ncpu:(i + 1) * ncpu])
        return out

    def _read_each(self) -> list[int]:
        key = ctypes.c_uint32()
        vals = (ctypes.c_uint64 * self.n_cpus)()
        attr = MapElemAttr(map_fd=self.fd, key=_addr(key), value=_addr(vals))
        out = [0] * self.n_keys
        for k in range(self.n_keys):
            key.value = k
            bpf(self.a, BPF_MAP_LOOKUP_ELEM, attr, "BPF_MAP_LOOKUP_ELEM")
            out[k] = sum(vals)
        return out


def possible_cpus(sysfs: str = "/sys") -> int:
    """Number of possible CPUs (per-CPU map values are laid out for all of them):
    the highest id in devices/system/cpu/possible plus one."""
    with open(os.path.join(sysfs, "devices", "system", "cpu", "possible")) as fh:
        text = fh.read().strip()
    highest = -1
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        highest = max(highest, int(hi or lo))
    if highest < 0:
        raise ValueError(f"cannot read possible CPUs from {text!r}")
    return highest + 1


# --------------------------------------------------------------------------- assembler

BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
SIZE_BYTES = {BPF_W: 4, BPF_H: 2, BPF_B: 1, BPF_DW: 8}
BYTES_SIZE = {v: k for k, v in SIZE_BYTES.items()}
_LDX, _STX = 0x61, 0x63                    # BPF_LDX|BPF_MEM, BPF_STX|BPF_MEM (| size)
_ALU64_K, _ALU64_X, _ALU_X = 0x07, 0x0F, 0x0C
OP_ADD, OP_LSH, OP_RSH, OP_MOV = 0x00, 0x60, 0x70, 0xB0
_JMP_K = 0x05
J_JA, J_JEQ, J_JGE, J_JNE, J_JLT = 0x00, 0x10, 0x30, 0x50, 0xA0
_CALL, _EXIT = 0x85, 0x95
_LD_IMM64 = 0x18
BPF_PSEUDO_MAP_FD = 1
FN_MAP_LOOKUP_ELEM, FN_PROBE_READ_KERNEL = 1, 113
_INSN = struct.Struct("<BBhi")


class Asm:
    """Append instructions, then ``assemble()``; jumps name labels, resolved at the end."""

    def __init__(self):
        self._ins: list[list[int]] = []      # [code, dst, src, off, imm]
        self._labels: dict[str, int] = {}
        self._jumps: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._ins)

    def _emit(self, code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> None:
        self._ins.append([code, dst, src, off, imm])

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._ins)

    def ldx(self, size: int, dst: int, src: int, off: int) -> None:
        self._emit(_LDX | size, dst, src, off)

    def stx(self, size: int, dst: int, off: int, src: int) -> None:
        self._emit(_STX | size, dst, src, off)

    def mov(self, dst: int, imm: int) -> None:
        self._emit(_ALU64_K | OP_MOV, dst, 0, 0, imm)

    def movr(self, dst: int, src: int) -> None:
        self._emit(_ALU64_X | OP_MOV, dst, src)

    def movr32(self, dst: int, src: int) -> None:
        """w_dst = w_src: keeps the low 32 bits, zero-extends."""
        self._emit(_ALU_X | OP_MOV, dst, src)

    def alu(self, op: int, dst: int, imm: int) -> None:
        self._emit(_ALU64_K | op, dst, 0, 0, imm)

    def alur(self, op: int, dst: int, src: int) -> None:
        self._emit(_ALU64_X | op, dst, src)

    def jmp(self, op: int, dst: int, imm: int, target: str) -> None:
        self._jumps.append((len(self._ins), target))
        self._emit(_JMP_K | op, dst, 0, 0, imm)

    def ja(self, target: str) -> None:
        self.jmp(J_JA, 0, 0, target)

    def ld_map_fd(self, dst: int, fd: int) -> None:
        self._emit(_LD_IMM64, dst, BPF_PSEUDO_MAP_FD, 0, fd)
        self._emit(0)

    def call(self, helper: int) -> None:
        self._emit(_CALL, 0, 0, 0, helper)

    def exit(self) -> None:
        self._emit(_EXIT)

    def assemble(self) -> bytes:
        ins = [list(i) for i in self._ins]
        for at, target in self._jumps:
            if target not in self._labels:
                raise ValueError(f"jump to undefined label {target!r}")
            ins[at][3] = self._labels[target] - at - 1
        return b"".join(_INSN.pack(c, (s << 4) | d, o, i) for c, d, s, o, i in ins)
