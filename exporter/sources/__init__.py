"""Pure readers: kernel text or netlink bytes -> typed dataclasses (no prometheus imports).

The one error vocabulary of every reader (as procfs's sentinels and node_exporter's ErrNoData):

- :class:`ParseError` - input that cannot be understood (costs that value or that collector);
- :class:`NetlinkError` - the kernel refused a netlink request (an ``OSError``, kernel errno);
- :class:`Unavailable` - the subsystem is absent here (module not loaded, no such family,
  not in this kernel): not a failure.  The collector framework turns it into
  ``nodenet_<subsystem>_available 0`` with success 1, the reason logged once.
"""
import os


class ParseError(ValueError):
    """Input that cannot be understood; the message says where."""


class NetlinkError(OSError):
    """The kernel answered a netlink request with an error; ``errno`` is the positive number."""

    def __init__(self, err: int, context: str = ""):
        msg = os.strerror(err) if 0 < err < 4096 else f"netlink error {err}"
        super().__init__(err, f"{context}: {msg}" if context else msg)


class Unavailable(Exception):  # noqa: N818 - the name says what it means to the framework
    """The subsystem is absent on this node (not a failure); the message gives the reason."""
