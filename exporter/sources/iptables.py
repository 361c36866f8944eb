"""iptables-legacy tables read from the kernel's x_tables getsockopt interface.

What ``iptables-legacy-save`` reads, without the iptables binary and without a raw socket:

- ``IPT_SO_GET_INFO`` (``IP6T_SO_GET_INFO``) gives a table's valid hooks, the offsets of each
  builtin chain's first entry (``hook_entry``) and of its policy (``underflow``), the number of
  entries and the blob size, in O(1).
- ``IPT_SO_GET_ENTRIES`` copies the table blob once; :func:`parse_entries` walks it by each
  entry's ``next_offset`` and reads only the entry's target name (matches are never decoded).

The blob (as libiptc lays it out): the builtin chains in hook order, each ending with its policy
entry (at ``underflow``); then each user chain as an ``ERROR`` entry carrying the chain name
(its head), its rules, and a ``RETURN`` tail; then one final ``ERROR`` entry named ``ERROR``.
So every chain ends with exactly one entry that ``iptables-save`` does not print as ``-A``:
rules of a chain = its non-ERROR entries - 1.

The calls need CAP_NET_ADMIN in the socket's network namespace; a plain UDP socket is enough
(iptables opens SOCK_RAW, which also needs CAP_NET_RAW).  Only tables listed in
``/proc/net/ip_tables_names`` / ``ip6_tables_names`` are asked for: a GET_INFO for a table not
loaded makes the kernel ``request_module("iptable_<name>")``.

Struct layouts (include/uapi/linux/netfilter_ipv4/ip_tables.h, netfilter_ipv6/ip6_tables.h,
netfilter/x_tables.h), x86-64 and every 64-bit ABI Linux has (natural alignment):

    struct ipt_getinfo { char name[32]; u32 valid_hooks; u32 hook_entry[5];
                         u32 underflow[5]; u32 num_entries; u32 size; }          84 bytes
    struct ipt_get_entries { char name[32]; u32 size; struct ipt_entry entrytable[]; }
                                                        entrytable at 40 (u64-aligned)
    struct ipt_entry { struct ipt_ip ip /* 84 */; u32 nfcache; u16 target_offset;
                       u16 next_offset; u32 comefrom; struct xt_counters counters; }  112
    struct ip6t_entry { struct ip6t_ip6 ipv6 /* 136 */; u32 nfcache; u16 target_offset;
                        u16 next_offset; u32 comefrom; /* pad 4 */ xt_counters; }     168
    struct xt_entry_target { u16 target_size; char name[29]; u8 revision; }  data at 32
    struct xt_error_target { xt_entry_target target; char errorname[30]; }
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from dataclasses import dataclass, field

from . import ParseError, Unavailable

IPT_SO_GET_INFO = 64  # IPT_BASE_CTL; IP6T_SO_GET_INFO has the same value on SOL_IPV6
IPT_SO_GET_ENTRIES = 65
SOL_IP = 0
SOL_IPV6 = 41
TABLE_MAXNAMELEN = 32
NUMHOOKS = 5
HOOK_NAMES = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")

_GETINFO = struct.Struct(f"={TABLE_MAXNAMELEN}sI{NUMHOOKS}I{NUMHOOKS}III")  # 84 bytes
_GET_ENTRIES_HDR = 40  # name[32] + size, padded to the u64 alignment of ipt_entry
_TARGET_NAME = 2  # xt_entry_target: u16 target_size, then char name[29]
_TARGET_DATA = 32  # sizeof(struct xt_entry_target): errorname / verdict follow
_OFFSETS = struct.Struct("=HH")  # target_offset, next_offset


@dataclass(frozen=True)
class Family:
    name: str  # the label value: ipv4 | ipv6
    af: int
    level: int
    names_file: str  # under /proc/net
    entry_size: int  # sizeof(struct ipt_entry) / ip6t_entry
    offsets_at: int  # offset of target_offset in the entry


IPV4 = Family("ipv4", socket.AF_INET, SOL_IP, "ip_tables_names", 112, 88)
IPV6 = Family("ipv6", socket.AF_INET6, SOL_IPV6, "ip6_tables_names", 168, 140)
FAMILIES = (IPV4, IPV6)


@dataclass(frozen=True)
class Info:
    name: str
    valid_hooks: int
    hook_entry: tuple[int, ...]
    underflow: tuple[int, ...]
    num_entries: int
    size: int


@dataclass
class Table:
    family: str
    name: str
    size: int  # bytes of the entries blob (IPT_SO_GET_INFO size)
    entries: int  # kernel entries incl. chain heads, policies, tails and the end marker
    rules: int = 0  # as iptables-save counts its -A lines
    chains: dict[str, int] = field(default_factory=dict)  # chain -> rules (builtin first)


def parse_info(buf: bytes) -> Info:
    if len(buf) < _GETINFO.size:
        raise ParseError(f"ipt_getinfo of {len(buf)} bytes (< {_GETINFO.size})")
    v = _GETINFO.unpack_from(buf)
    return Info(v[0].split(b"\0", 1)[0].decode("ascii", "replace"), v[1],
                tuple(v[2:7]), tuple(v[7:12]), v[12], v[13])


def _cstr(blob, start: int, length: int) -> bytes:
    return bytes(blob[start:start + length]).split(b"\0", 1)[0]


def parse_entries(fam: Family, info: Info, blob, family_label: str | None = None,
                  ) -> Table:
    """Counts chains and rules of one table blob (IPT_SO_GET_ENTRIES' entrytable)."""
    hooks = {info.hook_entry[h]: HOOK_NAMES[h]
             for h in range(NUMHOOKS) if info.valid_hooks & (1 << h)}
    table = Table(family_label or fam.name, info.name, info.size, 0)
    chains = table.chains
    chain: str | None = None
    in_chain = 0  # non-ERROR entries seen in the current chain
    off, end, seen = 0, len(blob), 0
    unpack = _OFFSETS.unpack_from
    min_entry = fam.entry_size + _TARGET_DATA
    while off < end:
        if end - off < min_entry:
            raise ParseError(f"truncated entry at offset {off}")
        target_offset, next_offset = unpack(blob, off + fam.offsets_at)
        if next_offset < min_entry or target_offset < fam.entry_size or \
                target_offset + _TARGET_DATA > next_offset or off + next_offset > end:
            raise ParseError(f"entry at offset {off}: target_offset {target_offset}, "
                            f"next_offset {next_offset}")
        seen += 1
        hook = hooks.get(off)
        tgt = off + target_offset
        # the target's name, compared in place (most entries: "" = standard, or an extension)
        is_error = blob[tgt + _TARGET_NAME:tgt + _TARGET_NAME + 6] == b"ERROR\0"
        if hook is not None or is_error:
            if chain is not None:  # close the chain: its last entry is a policy / tail
                chains[chain] = max(0, in_chain - 1)
            chain, in_chain = None, 0
        if is_error:
            name = _cstr(blob, tgt + _TARGET_DATA, 30).decode("utf-8", "replace")
            if name == "ERROR":  # the table's end marker
                off += next_offset
                break
            chain = name
        else:
            if hook is not None:
                chain = hook
            if chain is None:
                raise ParseError(f"entry at offset {off} belongs to no chain")
            in_chain += 1
        off += next_offset
    else:
        if chain is not None:  # no end marker: still count what was seen
            chains[chain] = max(0, in_chain - 1)
    table.entries = info.num_entries or seen
    table.rules = sum(chains.values())
    return table


def table_names(procfs: str, fam: Family) -> list[str] | None:
    """Tables of this network namespace, or None when the family's x_tables is absent.

    The names files are root's only (mode 0440): a process that is not root cannot read them
    (PermissionError), as it could not read the tables either."""
    path = os.path.join(procfs, "net", fam.names_file)
    try:
        with open(path, encoding="ascii") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise PermissionError(exc.errno, f"{path}: {exc.strerror} (readable by root only; the "
                              "tables need CAP_NET_ADMIN as root)") from None


_libc = ctypes.CDLL(None, use_errno=True)
_libc.getsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                             ctypes.POINTER(ctypes.c_uint32))


def _getsockopt(sock: socket.socket, level: int, opt: int, buf) -> int:
    n = ctypes.c_uint32(len(buf))
    if _libc.getsockopt(sock.fileno(), level, opt, buf, ctypes.byref(n)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return n.value


def read_raw(sock: socket.socket, fam: Family, name: str, attempts: int = 5,
             ) -> tuple[bytes, memoryview]:
    """(ipt_getinfo bytes, entries blob) of one table: GET_INFO then GET_ENTRIES; a table
    replaced between the two calls (EAGAIN: its size changed) is read again.  The blob is a
    view of the one buffer the kernel copied the table into (no further copy: a table of
    35,000 kube-proxy rules is ~15 MiB)."""
    raw = name.encode("ascii")
    if len(raw) >= TABLE_MAXNAMELEN:
        raise ValueError(f"table name {name!r} too long")
    for _ in range(attempts):
        ibuf = ctypes.create_string_buffer(raw, _GETINFO.size)
        _getsockopt(sock, fam.level, IPT_SO_GET_INFO, ibuf)
        info = parse_info(ibuf.raw)
        hdr = raw.ljust(TABLE_MAXNAMELEN, b"\0") + struct.pack("=I", info.size)
        ebuf = ctypes.create_string_buffer(hdr, _GET_ENTRIES_HDR + info.size)
        try:
            _getsockopt(sock, fam.level, IPT_SO_GET_ENTRIES, ebuf)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                continue
            raise
        return ibuf.raw, memoryview(ebuf).cast("B")[_GET_ENTRIES_HDR:]
    raise OSError(errno.EAGAIN, f"table {name} changed during {attempts} reads")


def read_table(sock: socket.socket, fam: Family, name: str) -> Table:
    info, blob = read_raw(sock, fam, name)
    return parse_entries(fam, parse_info(info), blob)


def scan(procfs: str) -> tuple[list[Table], list[str]]:
    """Every legacy table of the calling thread's network namespace.

    Returns (tables, problems): a table that vanished between the names file and the read is
    left out quietly; another failure of one table is a problem string, the rest still read.
    Raises :class:`Unavailable` when no family has x_tables, PermissionError when the
    kernel refuses the calls (EPERM: no CAP_NET_ADMIN) or the names file is root's."""
    tables: list[Table] = []
    problems: list[str] = []
    present = False
    for fam in FAMILIES:
        names = table_names(procfs, fam)
        if names is None:
            continue
        present = True
        if not names:
            continue
        with socket.socket(fam.af, socket.SOCK_DGRAM) as sock:
            for name in names:
                try:
                    tables.append(read_table(sock, fam, name))
                except OSError as exc:
                    if exc.errno in (errno.EPERM, errno.EACCES):
                        raise PermissionError(exc.errno, f"{fam.name} table {name}: "
                                              f"{exc.strerror} (needs CAP_NET_ADMIN)") from None
                    if exc.errno == errno.ENOENT:
                        continue
                    problems.append(f"{fam.name} table {name}: {exc}")
                except ParseError as exc:
                    problems.append(f"{fam.name} table {name}: {exc}")
    if not present:
        raise Unavailable("ip_tables / ip6_tables not loaded (no /proc/net/ip_tables_names)")
    return tables, problems
