import pytest

from exporter.cli import all_options, enabled_collectors
from exporter.collectors.base import REGISTRY
from exporter.config import ConfigError, parse_duration, resolve


def settings(argv, tmp_path=None, yaml_text=None):
    if yaml_text is not None:
        p = tmp_path / "c.yaml"
        p.write_text(yaml_text)
        argv = [*argv, f"--config.file={p}"]
    return resolve(all_options(), argv, "nodenet-exporter", "0", set(REGISTRY))


def test_defaults():
    s = settings([])
    assert s["web.listen-address"] == ":9834"
    assert s["web.telemetry-path"] == "/metrics"
    assert s["web.max-requests"] == 40
    assert s["path.procfs"] == "/proc" and s["path.sysfs"] == "/sys"
    assert {"cpu", "softnet", "sysctl"} <= set(enabled_collectors(s))


def test_collector_flags_and_disable_defaults():
    s = settings(["--collector.disable-defaults", "--collector.cpu"])
    assert enabled_collectors(s) == ["cpu"]
    s = settings(["--no-collector.softnet"])
    assert "softnet" not in enabled_collectors(s) and "cpu" in enabled_collectors(s)


def test_config_file_flat_and_nested_and_flags_win(tmp_path):
    s = settings(["--web.max-requests=7"], tmp_path, """
web.max-requests: 3
web:
  telemetry-path: /m
collector:
  softnet: {enabled: false}
  sysctl:
    names: [net.core.somaxconn, fs.file-max]
""")
    assert s["web.max-requests"] == 7
    assert s["web.telemetry-path"] == "/m"
    assert "softnet" not in enabled_collectors(s)
    assert s["collector.sysctl.names"] == ["net.core.somaxconn", "fs.file-max"]


@pytest.mark.parametrize("yaml_text,needle", [
    ("web: [unclosed\n", "malformed YAML"),
    ("collector.nosuch: true\n", "unknown collector 'nosuch'"),
    ("web.bogus: 1\n", "unknown setting 'web.bogus'"),
    ("web.max-requests: zero\n", "web.max-requests"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_config_file(tmp_path, yaml_text, needle):
    with pytest.raises(ConfigError) as exc:
        settings([], tmp_path, yaml_text)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("argv,needle", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--web.max-requests=0"], "must be >= 1"),
    (["--log.level=loud"], "must be one of"),
    (["--collector.timeout=soon"], "not a duration"),
    (["--web.telemetry-path=metrics"], "must start with /"),
])
def test_bad_flags(argv, needle):
    with pytest.raises(ConfigError) as exc:
        settings(argv)
    assert needle in str(exc.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        settings([f"--config.file={tmp_path}/absent.yaml"])


def test_durations():
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2s") == 2 and parse_duration(3) == 3 and parse_duration("1m") == 60
    for bad in ("0s", "-1", "fast"):
        with pytest.raises(ValueError):
            parse_duration(bad)
