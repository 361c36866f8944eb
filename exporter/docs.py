"""Generates the README's collector table and metric reference from the code.

``python -m exporter.docs --write README.md`` rewrites the blocks between the
``<!-- BEGIN x -->`` / ``<!-- END x -->`` markers; ``--check`` fails if they are stale
(the unit tests run the check, so a metric cannot be added without its documentation).
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from .collectors import load_all
from .collectors.base import REGISTRY
from .metrics import Metric
from .scrape import META_METRICS
from .selfmetrics import SELF_METRICS


def all_metrics() -> dict[str, tuple[str, Metric]]:
    """metric name -> (collector name or 'exporter', spec)."""
    load_all()
    out = {m.name: ("exporter", m) for m in META_METRICS}
    out.update((m.name, ("exporter (process)", m)) for m in SELF_METRICS)
    for name, cls in sorted(REGISTRY.items()):
        for m in cls.metrics:
            if m.name in out and out[m.name][1] != m:
                raise ValueError(f"{m.name} declared twice with different specs")
            out[m.name] = (name, m)
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def collectors_table() -> str:
    load_all()
    rows = ["| collector | default | source | flags |", "|---|---|---|---|"]
    for name, cls in sorted(REGISTRY.items()):
        flags = [f"`--[no-]collector.{name}`"] + [f"`--{o.key}`" for o in cls.options]
        rows.append(f"| `{name}` | {'on' if cls.default_enabled else 'off'} | "
                    f"{_cell(cls.source)} | {'<br>'.join(flags)} |")
    return "\n".join(rows)


def metrics_table() -> str:
    rows = ["| metric | type | labels | collector | help |", "|---|---|---|---|---|"]
    for name, (collector, m) in sorted(all_metrics().items()):
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        rows.append(f"| `{name}` | {m.type} | {labels} | {collector} | {_cell(m.help)} |")
    return "\n".join(rows)


def options_table() -> str:
    from .cli import GLOBAL_OPTIONS
    load_all()
    options = list(GLOBAL_OPTIONS)
    for _, cls in sorted(REGISTRY.items()):
        options.extend(cls.options)
    rows = ["| flag / config key | default | meaning |", "|---|---|---|"]
    for o in options:
        if o.default is None:
            default = ""
        elif isinstance(o.default, (list, tuple)):
            default = ",".join(map(str, o.default))
        else:
            default = str(o.default)
        rows.append(f"| `--{o.key}` | `{_cell(default)}` | {_cell(o.help)} |")
    return "\n".join(rows)


BLOCKS = {"COLLECTORS": collectors_table, "METRICS": metrics_table, "OPTIONS": options_table}


def _replacer(body: str) -> Callable[[re.Match[str]], str]:
    return lambda m: m.group(1) + body + "\n" + m.group(2)


def render(text: str) -> str:
    for block, fn in BLOCKS.items():
        pattern = re.compile(rf"(<!-- BEGIN {block} -->\n).*?(<!-- END {block} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"README has no <!-- BEGIN {block} --> ... <!-- END {block} --> block")
        text = pattern.sub(_replacer(fn()), text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m exporter.docs")
    ap.add_argument("readme")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    with open(a.readme, encoding="utf-8") as fh:
        old = fh.read()
    new = render(old)
    if a.check:
        if new != old:
            print(f"{a.readme} is stale: run python -m exporter.docs --write {a.readme}",
                  file=sys.stderr)
            return 1
        return 0
    if new != old:
        with open(a.readme, "w", encoding="utf-8") as fh:
            fh.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
