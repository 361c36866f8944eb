"""Samples of what a collector returns, whatever the shape: a Family or a Table."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from exporter.health import parse_labelset
from exporter.metrics import Table


def samples(fam) -> Iterator[tuple[str, tuple[str, ...], float]]:
    """(metric name, label values, value) of a Family or of every column of a Table."""
    if isinstance(fam, Table):
        for i, spec in enumerate(fam.specs):
            for labelset, value in zip(fam.labelsets, fam.columns[i], strict=True):
                yield spec.name, tuple(parse_labelset(labelset).values()), value
    else:
        for labels, value in fam.samples:
            yield fam.spec.name, tuple(labels), value


def by_metric(families: Iterable) -> dict[str, dict[tuple[str, ...], float]]:
    """{metric name: {label values: value}} of every sample of ``families``."""
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for fam in families:
        for name, labels, value in samples(fam):
            out.setdefault(name, {})[labels] = value
    return out
