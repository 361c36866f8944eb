"""Command line entry point: flags + config file -> collectors -> HTTP server."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from . import __version__
from .collectors import load_all
from .collectors.base import REGISTRY, Context
from .config import (ConfigError, Option, parse_bool, parse_duration, parse_positive_int,
                     resolve)

PROG = "nodenet-exporter"


def _choice(*allowed):
    def parse(value):
        text = str(value).strip().lower()
        if text not in allowed:
            raise ValueError(f"must be one of {'|'.join(allowed)}, not {value!r}")
        return text
    return parse


def _path(value) -> str:
    text = str(value)
    if not text:
        raise ValueError("empty path")
    return text


def _telemetry_path(value) -> str:
    text = str(value)
    if not text.startswith("/") or text in ("/", "/healthz"):
        raise ValueError(f"must start with / and differ from / and /healthz: {value!r}")
    return text


GLOBAL_OPTIONS = [
    Option("web.listen-address", str, ":9834", "Address to listen on: host:port, :port or [v6]:port",
           "ADDR"),
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
                              f"Enable the {name} collector ({state} by default): {cls.description}"))
        options.extend(cls.options)
    return options


def enabled_collectors(settings) -> list[str]:
    names = []
    for name, cls in sorted(REGISTRY.items()):
        explicit = settings[f"collector.{name}"]
        if explicit is None:
            explicit = cls.default_enabled and not settings["collector.disable-defaults"]
        if explicit:
            names.append(name)
    return names


def build(settings, log):
    """Instantiates the enabled collectors and the gatherer (no sockets are opened here)."""
    from .scrape import Gatherer

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


def main(argv=None) -> int:
    command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = resolve(all_options(), argv, PROG, __version__, set(REGISTRY))
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    from . import memory
    if command_line:   # the process itself (not a test calling main()): see exporter/memory.py
        memory.reexec_with_malloc()
    tuned = memory.tune_glibc()
    glibc_tuned = bool(tuned) and all(tuned.values())
    from . import log as logmod
    from .server import App, ExporterServer
    from .webconfig import WebConfigError, WebConfigHolder

    log = logmod.setup(settings["log.level"], settings["log.format"])
    try:
        web = WebConfigHolder(settings["web.config.file"], log)
    except WebConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        gatherer = build(settings, log)
    except Exception as exc:  # noqa: BLE001 - a collector refusing its settings
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    app = App(gatherer, settings, log, sorted(REGISTRY))
    address = settings["web.listen-address"]
    try:
        server = ExporterServer(address, app, web,
                                read_header_timeout=settings["web.read-header-timeout"],
                                idle_timeout=settings["web.idle-timeout"],
                                write_timeout=settings["web.write-timeout"])
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"{PROG}: error: cannot listen on {address}: {reason}", file=sys.stderr)
        gatherer.close()
        return 1

    stopping = threading.Event()

    def stop(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        log.info("stopping", signal=signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    def reload(_signum, _frame):
        threading.Thread(target=web.reload, name="web-config-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    log.info("listening", address=address, path=settings["web.telemetry-path"],
             collectors=sorted(gatherer.collectors), version=__version__,
             allocator=memory.allocator(), glibc_tuned=glibc_tuned,
             **web.current().summary)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.socket.close()  # stop accepting at once
        drained = server.drain(1.5)
        gatherer.close()
        log.info("stopped", drained=drained)
    # A collector stuck in a read that never returns (a hung netlink socket, a fifo) would make
    # the interpreter wait for its worker thread forever at exit: leave without it.
    # (concurrent.futures joins its workers at exit, daemon or not.)
    workers = [t for t in threading.enumerate() if t.name.startswith("collector")]
    deadline = time.monotonic() + 0.3
    for t in workers:  # idle ones end at once after gatherer.close()
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in workers if t.is_alive()]
    if stuck:
        log.warning("exiting with blocked collector threads", threads=len(stuck))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
