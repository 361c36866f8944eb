"""Settings: one table of options that yields both the command-line flags and the YAML keys.

Every option has a dotted key (``web.listen-address``, ``collector.sysctl.names``).  On the
command line it is ``--<key>`` (booleans also ``--no-<key>``); in the ``--config.file`` YAML
it is the same key, either flat (``web.listen-address: ":9834"``) or nested
(``web: {listen-address: ":9834"}``; a nested collector section may say ``enabled: false``).
Flags win over the file.  Any bad value, unknown key or unknown collector is a
:class:`ConfigError` with a one-line message.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, NoReturn

import yaml


class ConfigError(Exception):
    """A bad flag, config file or value; str() is the one-line reason."""


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = [v.strip() for v in str(value).split(",")]
    return [v for v in items if v]


def parse_regex(value: Any) -> str:
    text = "" if value is None else str(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {text!r}: {exc}") from None
    return text


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 2s, 1m)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


def parse_duration(value: Any) -> float:
    """Seconds, as a number or with a unit suffix: 500ms, 2s, 1m."""
    seconds = _seconds(value)
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {value!r}")
    return seconds


def parse_duration_or_zero(value: Any) -> float:
    """As :func:`parse_duration`, and 0 (``0``, ``0s``) meaning "off"."""
    seconds = _seconds(value)
    if seconds < 0:
        raise ValueError(f"duration must not be negative: {value!r}")
    return seconds


def parse_positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    number = int(str(value).strip())
    if number < 1:
        raise ValueError(f"must be >= 1: {value!r}")
    return number


@dataclass(frozen=True)
class Option:
    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str | None = None

    @property
    def is_bool(self) -> bool:
        return self.parse is parse_bool

    @property
    def dest(self) -> str:
        return self.key.replace(".", "__").replace("-", "_")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + error
        raise ConfigError(message)


class Settings:
    """Resolved settings: ``settings["web.listen-address"]``, each value already parsed by
    its option (a bool, float seconds, a list of str... ``Any`` here: the option decides)."""

    def __init__(self, values: dict[str, Any], options: dict[str, Option]) -> None:
        self._values = values
        self._options = options

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file: expected a mapping at {prefix or 'top level'}")
    for raw_key, value in tree.items():
        key = f"{prefix}.{raw_key}" if prefix else str(raw_key)
        if isinstance(value, dict):
            out.update(flatten(value, key))
        elif key.endswith(".enabled"):
            out[key[: -len(".enabled")]] = value
        else:
            out[key] = value
    return out


def read_yaml(path: str, what: str, error: type[Exception]) -> Any:
    """Parses a YAML file; any failure raises `error` with one line: '<what> <path>: ...'."""
    try:
        with open(path, "rb") as fh:
            return yaml.safe_load(fh)
    except OSError as exc:
        raise error(f"{what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{what} {path}:{where}: malformed YAML: {problem}") from None


def load_config_file(path: str) -> dict[str, Any]:
    data = read_yaml(path, "config file", ConfigError)
    if data is None:
        return {}
    return flatten(data)


def build_parser(options: list[Option], prog: str, version: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Prometheus exporter for node network health.",
                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"{prog} {version}")
    for opt in options:
        if opt.is_bool:
            parser.add_argument(f"--{opt.key}", dest=opt.dest, action="store_const", const=True,
                                default=None, help=f"{opt.help} (default: {opt.default})")
            parser.add_argument(f"--no-{opt.key}", dest=opt.dest, action="store_const",
                                const=False, default=None, help=argparse.SUPPRESS)
        else:
            parser.add_argument(f"--{opt.key}", dest=opt.dest, default=None,
                                metavar=opt.metavar or "VALUE",
                                help=f"{opt.help} (default: {_show(opt.default)})")
    return parser


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(value) or '""'
    return repr(value) if isinstance(value, str) else str(value)


def resolve(options: list[Option], argv: list[str], prog: str, version: str,
            collector_names: set[str]) -> Settings:
    """Flags (argv) over config file over defaults; raises ConfigError."""
    by_key = {opt.key: opt for opt in options}
    parser = build_parser(options, prog, version)
    ns = parser.parse_args(argv)
    flags = {opt.key: getattr(ns, opt.dest) for opt in options}
    file_values: dict[str, Any] = {}
    config_path = flags.get("config.file")
    if config_path:
        file_values = load_config_file(config_path)
        for key in file_values:
            if key in by_key:
                continue
            if key.startswith("collector."):
                name = key.split(".")[1]
                if name not in collector_names:
                    raise ConfigError(f"config file {config_path}: unknown collector {name!r} "
                                      f"(known: {', '.join(sorted(collector_names))})")
            raise ConfigError(f"config file {config_path}: unknown setting {key!r}")
        if "config.file" in file_values:
            raise ConfigError(f"config file {config_path}: 'config.file' cannot be set in a "
                              "config file")
    values: dict[str, Any] = {}
    for opt in options:
        raw, origin = flags[opt.key], f"--{opt.key}"
        if raw is None and opt.key in file_values:
            raw, origin = file_values[opt.key], f"{config_path}: {opt.key}"
        if raw is None:
            values[opt.key] = opt.default
            continue
        try:
            values[opt.key] = opt.parse(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{origin}: {exc}") from None
    return Settings(values, by_key)
