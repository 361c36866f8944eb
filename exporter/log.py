"""structlog set-up: one JSON object per line in production, key=value on a terminal."""
from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR}


def setup(level: str = "info", fmt: str | None = None, stream: TextIO | None = None) -> Any:
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger("nodenet")


class Once:
    """Logs a problem under a key when it appears or changes, not again every scrape.

    ``report(key, None)`` says the key is fine again (the next problem is logged afresh).
    Keys are the caller's fixed vocabulary (a configured name, "rows"): bounded by design.
    """

    def __init__(self, log: Any, level: str = "warning"):
        self._log = log
        self._level = level
        self._last: dict[str, str | None] = {}

    def report(self, key: str, message: str | None, **kw: Any) -> None:
        if self._last.get(key) == message:
            return
        self._last[key] = message
        if message is not None:
            getattr(self._log, self._level)(message, **kw)
