"""Pure readers: kernel text or netlink bytes -> typed dataclasses (no prometheus imports)."""


class ParseError(ValueError):
    """Input that cannot be understood; the message says where."""
