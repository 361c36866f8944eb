import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# One marker per suite, given by the directory a test lives in (pyproject.toml lists them):
#   python -m pytest -m unit        offline, no root, under a minute
#   python -m pytest -m "not vm"    everything but User-Mode Linux
_SUITES = {"unit": "unit", "integration": "integration", "e2e": "e2e", "vm": "vm",
           "container": "container"}
# Offline modules that also run a Debian tool (promtool, kubectl): still unit (no root, no
# network), marked "tools" too, so `-m "unit and not tools"` runs with Python alone.
_TOOLS = {"test_alert_rules.py", "test_dashboards.py", "test_deploy_manifests.py",
          "test_netdev_collector.py"}
# UML boots a kernel per test module, and the container suite builds the image from nothing on
# a fresh machine (mmdebstrap, ~2-3 min) in its first test: both get a longer per-test timeout.
_VM_TIMEOUT = 1200
# Modules whose tests run longer than the default 300 s by design, each within a budget of its
# own (the timeout is a backstop above it): the alert pipeline waits out a 5m `for:`
# (TOTAL_BUDGET 540 s).
_LONG = {"test_alert_pipeline.py": 900}


def pytest_collection_modifyitems(config, items):
    tests_dir = os.path.join(ROOT, "tests")
    for item in items:
        rel = os.path.relpath(str(item.path), tests_dir)
        suite = _SUITES.get(rel.split(os.sep, 1)[0])
        if suite is None:
            continue
        item.add_marker(getattr(pytest.mark, suite))
        if os.path.basename(rel) in _TOOLS:
            item.add_marker(pytest.mark.tools)
        if item.get_closest_marker("timeout") is not None:
            continue
        if os.path.basename(rel) in _LONG:
            item.add_marker(pytest.mark.timeout(_LONG[os.path.basename(rel)]))
        elif suite in ("vm", "container"):
            item.add_marker(pytest.mark.timeout(_VM_TIMEOUT))
