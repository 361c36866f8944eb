"""Ethtool fixtures: `ethtool -S`-like text files and a transport that answers SIOCETHTOOL
requests from them with the kernel's own reply layout (net/ethtool/ioctl.c)."""
from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, field

from exporter.sources import ethtool as src

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "ethtool")


@dataclass
class Device:
    driver: str
    version: str = ""
    firmware: str = ""
    bus_info: str = "0000:00:05.0"
    names: list = field(default_factory=list)
    values: list = field(default_factory=list)

    def stats(self) -> dict:
        return dict(zip(self.names, self.values))


def load(driver_file: str) -> Device:
    meta, names, values = {}, [], []
    with open(os.path.join(FIXTURES, driver_file)) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if line.startswith("#"):
                key, _, value = line[1:].partition(":")
                meta[key.strip()] = value.strip()
            elif line.strip():
                name, _, value = line.rpartition(":")
                names.append(name.strip())
                values.append(int(value))
    return Device(meta["driver"], meta.get("version", ""), meta.get("firmware", ""),
                  names=names, values=values)


def parse_ethtool_s(text: str) -> dict:
    """`ethtool -S dev` output -> {name: value} (the witness's view)."""
    out = {}
    for line in text.splitlines()[1:]:
        name, sep, value = line.rpartition(":")
        if sep and value.strip().isdigit():
            out.setdefault(name.strip(), int(value))
    return out


def _pad(text: str, n: int) -> bytes:
    """As the kernel's char[n] fields: a name of exactly n bytes has no NUL (gve's
    adminq_dcfg_device_resources_cnt is 32)."""
    return text.encode()[:n].ljust(n, b"\0")


class Replay:
    """ioctl(ifname, request) -> reply, like the kernel: the reply has the request's length and
    the driver's own count (which may exceed what the caller asked for)."""

    def __init__(self, devices: dict):
        self.devices = devices
        self.calls: list = []

    def reply(self, dev: Device, cmd: int, request: bytes) -> bytes:
        n = len(dev.names)
        if cmd == src.ETHTOOL_GDRVINFO:
            body = struct.pack("=I32s32s32s32s32s12sIIIII", cmd, _pad(dev.driver, 32),
                               _pad(dev.version, 32), _pad(dev.firmware, 32),
                               _pad(dev.bus_info, 32), b"", b"", 0, n, 0, 0, 0)
        elif cmd == src.ETHTOOL_GSSET_INFO:
            body = struct.pack("=IIQI", cmd, 0, 1 << src.ETH_SS_STATS, n)
        elif cmd == src.ETHTOOL_GSTRINGS:
            body = struct.pack("=III", cmd, src.ETH_SS_STATS, n) + b"".join(
                _pad(s, 32) for s in dev.names)
        elif cmd == src.ETHTOOL_GSTATS:
            body = struct.pack("=II", cmd, n) + struct.pack(f"={n}Q", *dev.values)
        else:
            raise OSError(errno.EOPNOTSUPP, "not supported")
        if len(body) > len(request):
            raise AssertionError(f"reply of {len(body)} bytes would overflow a "
                                 f"{len(request)}-byte buffer")
        return body + request[len(body):]

    def __call__(self, ifname: str, request: bytes) -> bytes:
        (cmd,) = struct.unpack_from("=I", request)
        self.calls.append((ifname, cmd))
        dev = self.devices.get(ifname)
        if dev is None:
            raise OSError(errno.ENODEV, f"{ifname}: No such device")
        return self.reply(dev, cmd, request)
