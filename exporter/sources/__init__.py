"""Pure readers: kernel text or netlink bytes -> typed dataclasses (no prometheus imports).

The one error vocabulary of every reader (as procfs's sentinels and node_exporter's ErrNoData):

- :class:`ParseError` - input that cannot be understood (costs that value or that collector);
- :class:`NetlinkError` - the kernel refused a netlink request (an ``OSError``, kernel errno);
- :class:`BpfError` - the kernel refused a bpf(2) or perf_event_open(2) step (an ``OSError``,
  kernel errno, with the verifier's log when a program load was refused);
- :class:`Unavailable` - the subsystem is absent here (module not loaded, no such family,
  not in this kernel): not a failure.  The collector framework turns it into
  ``nodenet_<subsystem>_available 0`` with success 1, the reason logged once.
"""
import errno
import os


class ParseError(ValueError):
    """Input that cannot be understood; the message says where."""


class NetlinkError(OSError):
    """The kernel answered a netlink request with an error; ``errno`` is the positive number."""

    def __init__(self, err: int, context: str = ""):
        msg = os.strerror(err) if 0 < err < 4096 else f"netlink error {err}"
        super().__init__(err, f"{context}: {msg}" if context else msg)


class BpfError(OSError):
    """A bpf(2)/perf_event_open(2) step failed: ``step``, ``errno``, ``log`` (verifier)."""

    def __init__(self, err: int, step: str, log: str = ""):
        name = errno.errorcode.get(err, str(err))
        super().__init__(err, f"{step}: {name} ({os.strerror(err)})")
        self.step = step
        self.log = log


class Unavailable(Exception):
    """The subsystem is absent on this node (not a failure); the message gives the reason."""
