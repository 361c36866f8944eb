"""In-process scrapes of one collector for the pod-view tests (real kernel, real /proc)."""
from __future__ import annotations

import io
import json

from prometheus_client.parser import text_string_to_metric_families

from exporter import log as logmod
from exporter.cli import all_options
from exporter.collectors import load_all
from exporter.collectors.base import REGISTRY, Context
from exporter.config import resolve
from exporter.metrics import ExpositionWriter

load_all()


class Scraper:
    """One collector instance kept across scrapes (its log-once state too)."""

    def __init__(self, name: str, *argv: str):
        self.stream = io.StringIO()
        settings = resolve(all_options(), list(argv), "t", "0", set(REGISTRY))
        log = logmod.setup("info", "json", stream=self.stream).bind(collector=name)
        self.collector = REGISTRY[name](Context(settings=settings, log=log))

    def scrape(self) -> dict:
        families = self.collector.run()
        declared = set(self.collector.metrics)
        undeclared = [f.spec.name for f in families if f.spec not in declared]
        assert not undeclared, f"families not declared in metrics: {undeclared}"
        body = ExpositionWriter().render(families).decode()
        out = {}
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


def value(out: dict, name: str, **labels) -> float | None:
    return out.get((name, tuple(sorted(labels.items()))))


def series(out: dict, name: str, **match) -> dict:
    """{labels dict as tuple: value} of the samples of name whose labels include match."""
    return {k[1]: v for k, v in out.items()
            if k[0] == name and all(dict(k[1]).get(a) == b for a, b in match.items())}
