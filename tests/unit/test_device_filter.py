"""DeviceFilter: the device-include/-exclude regexes shared by netdev and ethtool."""
from exporter.collectors.base import DeviceFilter
from exporter.config import Settings, parse_regex


def _settings(inc: str, exc: str) -> Settings:
    return Settings({"collector.x.device-include": parse_regex(inc),
                     "collector.x.device-exclude": parse_regex(exc)}, {})


def test_empty_regexes_filter_nothing():
    f = DeviceFilter.from_settings(_settings("", ""), "x")
    assert not f.active
    assert [n for n in ("eth0", "lo", "veth1") if f(n)] == ["eth0", "lo", "veth1"]


def test_include_is_searched_and_exclude_wins():
    f = DeviceFilter.from_settings(_settings("eth|veth", "^veth9"), "x")
    assert f.active
    assert [n for n in ("eth0", "lo", "veth1", "veth9", "myeth") if f(n)] == [
        "eth0", "veth1", "myeth"]
