import os

from exporter import docs
from exporter.collectors import load_all
from exporter.collectors.base import REGISTRY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_readme_generated_blocks_are_current():
    readme = os.path.join(ROOT, "README.md")
    assert docs.main([readme, "--check"]) == 0, "run: python -m exporter.docs --write README.md"


def test_every_metric_is_in_the_readme_reference():
    with open(os.path.join(ROOT, "README.md")) as fh:
        text = fh.read()
    for name in docs.all_metrics():
        assert f"| `{name}` |" in text, name


def test_every_collector_declares_metrics_and_a_source():
    load_all()
    assert {"cpu", "softnet", "sysctl"} <= set(REGISTRY)
    for name, cls in REGISTRY.items():
        assert cls.metrics, name
        assert cls.source and cls.description, name
        for m in cls.metrics:
            assert m.name.startswith("nodenet_"), m.name
