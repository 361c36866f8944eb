"""Pure readers: kernel text or netlink bytes -> typed dataclasses (no prometheus imports)."""
import os


class ParseError(ValueError):
    """Input that cannot be understood; the message says where."""


class NetlinkError(OSError):
    """The kernel answered a netlink request with an error; ``errno`` is the positive number."""

    def __init__(self, err: int, context: str = ""):
        msg = os.strerror(err) if 0 < err < 4096 else f"netlink error {err}"
        super().__init__(err, f"{context}: {msg}" if context else msg)
