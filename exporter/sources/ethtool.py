"""NIC driver statistics through the ethtool ioctl (SIOCETHTOOL), no privilege, no binary.

Four commands, all of which the kernel serves without CAP_NET_ADMIN (net/ethtool/ioctl.c):

- ``ETHTOOL_GDRVINFO``: driver name, version, firmware, bus address and the number of
  statistics (``n_stats``), read every scrape: it is how a driver change is noticed;
- ``ETHTOOL_GSSET_INFO`` + ``ETHTOOL_GSTRINGS`` for ``ETH_SS_STATS``: the names of the
  statistics, read once per device and again only when GDRVINFO says something changed;
- ``ETHTOOL_GSTATS``: the values, one 64-bit word per name, every scrape.

The kernel sizes its GSTRINGS/GSTATS replies by the driver's current count, not by the count we
pass, so a buffer is always allocated with room to spare (:func:`capacity`) and a reply whose
count differs from the names we hold is refused (:class:`SetChanged`): the caller reads the names
again.  The wire format is decoded by pure functions (``parse_*``) that check every length and
count, so a fuzzed or truncated reply costs only its device.

The transport is one function ``ioctl(ifname, request: bytes) -> reply bytes`` (the same
length); :func:`kernel_ioctl` is the real one, tests pass replay or fuzzing transports.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import ParseError

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
ETHTOOL_GSTRINGS = 0x0000001B
ETHTOOL_GSTATS = 0x0000001D
ETHTOOL_GSSET_INFO = 0x00000037
ETH_SS_STATS = 1
ETH_GSTRING_LEN = 32
IFNAMSIZ = 16
MAX_STATS = 1 << 16          # no driver prints more; a bigger count is a bad reply

# struct ethtool_drvinfo: cmd, driver[32], version[32], fw_version[32], bus_info[32],
# erom_version[32], reserved2[12], n_priv_flags, n_stats, testinfo_len, eedump_len, regdump_len
_DRVINFO = struct.Struct("=I32s32s32s32s32s12sIIIII")
_SSET_HDR = struct.Struct("=IIQ")      # cmd, reserved, sset_mask (then u32 data[])
_GSTRINGS_HDR = struct.Struct("=III")  # cmd, string_set, len (then len * 32 bytes)
_GSTATS_HDR = struct.Struct("=II")     # cmd, n_stats (then n_stats * u64)

Ioctl = Callable[[str, bytes], bytes]


# Errors: a reply that cannot be decoded is a ParseError; a refusal of the ioctl is an OSError
# with the kernel's errno (ENODEV/ENXIO: the device vanished; EOPNOTSUPP: the driver has no such
# operation). A driver whose statistic count moved since its names were read answers with its
# own count: parse_strings/parse_stats return what the kernel wrote, and the caller compares.


@dataclass(frozen=True, slots=True)
class DriverInfo:
    driver: str
    version: str
    firmware: str
    bus_info: str
    n_stats: int


def capacity(n: int) -> int:
    """Entries to allocate for a reply expected to hold n: the kernel writes its own count."""
    return 2 * n + 64


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


# ---------------------------------------------------------------- requests and pure decoders


def drvinfo_request() -> bytes:
    return _DRVINFO.pack(ETHTOOL_GDRVINFO, *(b"",) * 6, 0, 0, 0, 0, 0)


def parse_drvinfo(reply: bytes) -> DriverInfo:
    if len(reply) < _DRVINFO.size:
        raise ParseError(f"drvinfo reply of {len(reply)} bytes, need {_DRVINFO.size}")
    f = _DRVINFO.unpack_from(reply)
    n_stats = f[8]
    if n_stats > MAX_STATS:
        raise ParseError(f"drvinfo n_stats {n_stats} out of range")
    return DriverInfo(_cstr(f[1]), _cstr(f[2]), _cstr(f[3]), _cstr(f[4]), n_stats)


def sset_request() -> bytes:
    return _SSET_HDR.pack(ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_STATS) + bytes(4)


def parse_sset_info(reply: bytes) -> int:
    """The number of ETH_SS_STATS strings; 0 when the driver has none."""
    if len(reply) < _SSET_HDR.size:
        raise ParseError(f"sset_info reply of {len(reply)} bytes")
    _cmd, _res, mask = _SSET_HDR.unpack_from(reply)
    if not mask & (1 << ETH_SS_STATS):
        return 0
    if len(reply) < _SSET_HDR.size + 4:
        raise ParseError("sset_info reply without its count")
    (count,) = struct.unpack_from("=I", reply, _SSET_HDR.size)
    if count > MAX_STATS:
        raise ParseError(f"sset_info count {count} out of range")
    return count


def strings_request(n: int) -> bytes:
    return _GSTRINGS_HDR.pack(ETHTOOL_GSTRINGS, ETH_SS_STATS, n) + bytes(
        capacity(n) * ETH_GSTRING_LEN)


def parse_strings(reply: bytes) -> tuple[str, ...]:
    """The names the kernel wrote (its own count: compare with the one asked for)."""
    if len(reply) < _GSTRINGS_HDR.size:
        raise ParseError(f"gstrings reply of {len(reply)} bytes")
    _cmd, sset, n = _GSTRINGS_HDR.unpack_from(reply)
    if sset != ETH_SS_STATS:
        raise ParseError(f"gstrings reply for string set {sset}")
    end = _GSTRINGS_HDR.size + n * ETH_GSTRING_LEN
    if len(reply) < end:
        raise ParseError(f"gstrings reply truncated: {n} strings in {len(reply)} bytes")
    return tuple(_cstr(reply[o:o + ETH_GSTRING_LEN])
                 for o in range(_GSTRINGS_HDR.size, end, ETH_GSTRING_LEN))


def stats_request(n: int) -> bytes:
    return _GSTATS_HDR.pack(ETHTOOL_GSTATS, n) + bytes(capacity(n) * 8)


def parse_stats(reply: bytes) -> tuple[int, ...]:
    """The values the kernel wrote (its own count: compare with the names held)."""
    if len(reply) < _GSTATS_HDR.size:
        raise ParseError(f"gstats reply of {len(reply)} bytes")
    _cmd, n = _GSTATS_HDR.unpack_from(reply)
    end = _GSTATS_HDR.size + 8 * n
    if len(reply) < end:
        raise ParseError(f"gstats reply truncated: {n} values in {len(reply)} bytes")
    return struct.unpack_from(f"={n}Q", reply, _GSTATS_HDR.size)


# ---------------------------------------------------------------- transport


def _errno_error(name: str, exc: OSError) -> OSError:
    return OSError(exc.errno, f"{name}: SIOCETHTOOL: {exc.strerror}")


class KernelIoctl:
    """SIOCETHTOOL on an AF_INET datagram socket of the caller's network namespace.

    ``struct ifreq`` is the interface name (16 bytes) and a pointer to the command buffer;
    the buffer is a ctypes array that stays alive (and in place) through the call."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def __call__(self, ifname: str, request: bytes) -> bytes:
        raw = os.fsencode(ifname)
        if not raw or len(raw) >= IFNAMSIZ:
            raise OSError(errno.ENODEV, f"{ifname!r}: not a valid interface name")
        buf = ctypes.create_string_buffer(request, len(request))
        ifreq = struct.pack(f"{IFNAMSIZ}sP16x", raw, ctypes.addressof(buf))
        try:
            fcntl.ioctl(self._sock.fileno(), SIOCETHTOOL, ifreq)
        except OSError as exc:
            raise _errno_error(ifname, exc) from None
        return buf.raw

    def close(self) -> None:
        self._sock.close()


class Ethtool:
    """The four reads, over any transport (``KernelIoctl()`` by default)."""

    def __init__(self, ioctl: Ioctl | None = None):
        self.ioctl = ioctl if ioctl is not None else KernelIoctl()

    def drvinfo(self, ifname: str) -> DriverInfo:
        return parse_drvinfo(self.ioctl(ifname, drvinfo_request()))

    def stat_names(self, ifname: str) -> tuple[str, ...]:
        n = parse_sset_info(self.ioctl(ifname, sset_request()))
        if n == 0:
            return ()
        names = parse_strings(self.ioctl(ifname, strings_request(n)))
        if len(names) != n:   # the set changed between the two calls: read again next time
            raise ParseError(f"{ifname}: {len(names)} stat names, {n} announced")
        return names

    def stats(self, ifname: str, n: int) -> tuple[int, ...]:
        if n == 0:
            return ()
        return parse_stats(self.ioctl(ifname, stats_request(n)))

    def close(self) -> None:
        close = getattr(self.ioctl, "close", None)
        if close is not None:
            close()


def driver_devices(sysfs: str) -> list[str]:
    """Names of the interfaces with a driver: a ``device`` link in class/net/<name>/ (physical
    and virtual NICs); veth, bridges and tunnels have none.  Missing class/net: []."""
    base = os.path.join(sysfs, "class", "net")
    try:
        entries = os.listdir(base)
    except FileNotFoundError:
        return []
    return sorted(name for name in entries
                  if os.path.exists(os.path.join(base, name, "device")))
