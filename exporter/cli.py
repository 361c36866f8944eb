"""Command line entry point: flags + config file -> collectors -> HTTP server."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import __version__, memory
from . import log as logmod
from .collectors import load_all
from .collectors.base import REGISTRY, Context
from .config import (ConfigError, Option, Settings, parse_bool, parse_duration,
                     parse_positive_int, resolve)
from .scrape import Gatherer
from .server import App, ExporterServer
from .webconfig import WebConfigError, WebConfigHolder

PROG = "nodenet-exporter"


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in allowed:
            raise ValueError(f"must be one of {'|'.join(allowed)}, not {value!r}")
        return text
    return parse


def _path(value: Any) -> str:
    text = str(value)
    if not text:
        raise ValueError("empty path")
    return text


def _telemetry_path(value: Any) -> str:
    text = str(value)
    if not text.startswith("/") or text in ("/", "/healthz"):
        raise ValueError(f"must start with / and differ from / and /healthz: {value!r}")
    return text


GLOBAL_OPTIONS = [
    Option("web.listen-address", str, ":9834",
           "Address to listen on: host:port, :port or [v6]:port", "ADDR"),
    Option("web.telemetry-path", _telemetry_path, "/metrics", "Path under which to expose metrics",
           "PATH"),
    Option("web.max-requests", parse_positive_int, 40,
           "Concurrent scrapes served at once; more are answered 503", "N"),
    Option("web.config.file", _path, None,
           "Web config (exporter-toolkit format): TLS, basic auth, headers; reloaded on SIGHUP",
           "FILE"),
    Option("web.read-header-timeout", parse_duration, 10.0,
           "Time a client has for the TLS handshake and the request head", "DURATION"),
    Option("web.idle-timeout", parse_duration, 90.0,
           "Time a kept-alive connection may wait for its next request", "DURATION"),
    Option("web.write-timeout", parse_duration, 30.0,
           "Time a client has to take the response", "DURATION"),
    Option("web.disable-exporter-metrics", parse_bool, False,
           "Leave out the exporter's own process_* and python_* metrics"),
    Option("collector.disable-defaults", parse_bool, False,
           "Disable every collector not explicitly enabled"),
    Option("collector.timeout", parse_duration, 4.0,
           "Time budget of one collector per scrape; slower ones report success 0", "DURATION"),
    Option("path.procfs", _path, "/proc", "procfs mount point", "PATH"),
    Option("path.sysfs", _path, "/sys", "sysfs mount point", "PATH"),
    Option("config.file", _path, None, "YAML file with the same settings as the flags (flags win)",
           "FILE"),
    Option("log.level", _choice("debug", "info", "warn", "error"), "info",
           "Log level: debug|info|warn|error", "LEVEL"),
    Option("log.format", _choice("json", "console"), None,
           "Log format: json|console (json when stderr is not a terminal)", "FORMAT"),
]


def all_options() -> list[Option]:
    load_all()
    options = list(GLOBAL_OPTIONS)
    for name, cls in sorted(REGISTRY.items()):
        state = "enabled" if cls.default_enabled else "disabled"
        options.append(Option(f"collector.{name}", parse_bool, None,
                              f"Enable the {name} collector ({state} by default): "
                              f"{cls.description}"))
        options.extend(cls.options)
    return options


def enabled_collectors(settings: Settings) -> list[str]:
    names = []
    for name, cls in sorted(REGISTRY.items()):
        explicit = settings[f"collector.{name}"]
        if explicit is None:
            explicit = cls.default_enabled and not settings["collector.disable-defaults"]
        if explicit:
            names.append(name)
    return names


def build(settings: Settings, log: Any) -> Gatherer:
    """Instantiates the enabled collectors and the gatherer (no sockets are opened here)."""
    collectors = {}
    for name in enabled_collectors(settings):
        ctx = Context(settings=settings, log=log.bind(collector=name))
        collectors[name] = REGISTRY[name](ctx)
    self_metrics = None
    if not settings["web.disable-exporter-metrics"]:
        from .selfmetrics import SelfMetrics
        self_metrics = SelfMetrics(log.bind(collector="exporter"))
    return Gatherer(collectors, log, settings["collector.timeout"], all_names=sorted(REGISTRY),
                    self_metrics=self_metrics)


@dataclass
class Running:
    """What build() made and serve() runs; shutdown() takes it apart."""

    settings: Settings
    log: Any
    web: WebConfigHolder
    gatherer: Gatherer
    server: ExporterServer


class StartupError(Exception):
    """A one-line reason the exporter cannot start, and the exit code."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def parse(argv: list[str]) -> Settings:
    """Flags and config file -> settings; ConfigError (one line) on a bad one."""
    return resolve(all_options(), argv, PROG, __version__, set(REGISTRY))


def start(settings: Settings) -> Running:
    """Logging, web config, collectors and the listening socket; StartupError on failure."""
    log = logmod.setup(settings["log.level"], settings["log.format"])
    try:
        web = WebConfigHolder(settings["web.config.file"], log)
    except WebConfigError as exc:
        raise StartupError(str(exc)) from None
    try:
        gatherer = build(settings, log)
    except Exception as exc:  # noqa: BLE001 - a collector refusing its settings
        raise StartupError(str(exc)) from None
    app = App(gatherer, settings, log, sorted(REGISTRY))
    address = settings["web.listen-address"]
    try:
        server = ExporterServer(address, app, web,
                                read_header_timeout=settings["web.read-header-timeout"],
                                idle_timeout=settings["web.idle-timeout"],
                                write_timeout=settings["web.write-timeout"])
    except (OSError, ValueError) as exc:
        gatherer.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupError(f"cannot listen on {address}: {reason}", code=1) from None
    return Running(settings, log, web, gatherer, server)


def serve(run: Running, glibc_tuned: bool) -> None:
    """Serves until SIGTERM/SIGINT (SIGHUP reloads the web config)."""
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        run.log.info("stopping", signal=signal.Signals(signum).name)
        threading.Thread(target=run.server.shutdown, daemon=True).start()

    def reload(_signum: int, _frame: object) -> None:
        threading.Thread(target=run.web.reload, name="web-config-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    run.log.info("listening", address=run.settings["web.listen-address"],
                 path=run.settings["web.telemetry-path"],
                 collectors=sorted(run.gatherer.collectors), version=__version__,
                 allocator=memory.allocator(), glibc_tuned=glibc_tuned,
                 **run.web.current().summary)
    run.server.serve_forever(poll_interval=0.2)


def shutdown(run: Running) -> None:
    """Stops accepting, drains requests in flight, closes the collectors, and leaves without
    collector threads stuck in a read that never returns (a hung netlink socket, a fifo):
    the interpreter would wait for them at exit (concurrent.futures joins its workers)."""
    run.server.socket.close()  # stop accepting at once
    drained = run.server.drain(1.5)
    run.gatherer.close()
    run.log.info("stopped", drained=drained)
    workers = [t for t in threading.enumerate() if t.name.startswith("collector")]
    deadline = time.monotonic() + 0.3
    for t in workers:  # idle ones end at once after gatherer.close()
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in workers if t.is_alive()]
    if stuck:
        run.log.warning("exiting with blocked collector threads", threads=len(stuck))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """parse -> (re-exec with the memory policy) -> start -> serve -> shut down;
    ``diagnose`` as the first argument runs the sub-command (exporter/diagnose.py)."""
    command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["diagnose"]:
        from .diagnose import main as diagnose
        return diagnose(argv[1:], argv_from_process=command_line)
    try:
        settings = parse(argv)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if command_line:   # the process itself (not a test calling main()): see exporter/memory.py
        memory.reexec_with_malloc()
    tuned = memory.tune_glibc()
    try:
        run = start(settings)
    except StartupError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    try:
        serve(run, glibc_tuned=bool(tuned) and all(tuned.values()))
    finally:
        shutdown(run)
    return 0
