"""The ethtool collector on driver fixtures (string sets and stats built from the public driver
sources in tests/fixtures/ethtool/), answered through the kernel's reply layout.

Pins the name rule (folding, totals vs queue sums, drop/error split), the ENA allowance
mapping, the string-set cache and the wire decoders; fuzzed replies cost only their device.
"""
from __future__ import annotations

import errno
import io
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import log as logmod
from exporter.cli import all_options
from exporter.collectors.base import REGISTRY, Context
from exporter.collectors.ethtool import (
    ALLOWANCE,
    COUNTERS,
    CT_AVAILABLE,
    DRIVER_INFO,
    DROPS,
    ERRORS,
    EthtoolCollector,
    build_plan,
    classify,
    fold,
)
from exporter.config import ConfigError, resolve
from exporter.metrics import ExpositionWriter
from exporter.sources import ParseError
from exporter.sources import ethtool as src
from tests.helpers.ethtool_replay import Device, Replay, load

FUZZ = settings(max_examples=int(os.environ.get("NODENET_FUZZ_EXAMPLES", "300")), deadline=None,
                database=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.function_scoped_fixture])
DRIVERS = ("ena", "gve", "i40e", "ixgbe", "mlx5_core", "virtio_net")


def sysfs_with(tmp_path, *names, without_driver=()):
    for name in names:
        d = tmp_path / "class" / "net" / name
        d.mkdir(parents=True)
        (tmp_path / "devices" / name).mkdir(parents=True)
        os.symlink(tmp_path / "devices" / name, d / "device")
    for name in without_driver:
        (tmp_path / "class" / "net" / name).mkdir(parents=True)
    return str(tmp_path)


def collector(sysfs, replay, *argv):
    settings_ = resolve(all_options(), [f"--path.sysfs={sysfs}", *argv], "test", "0",
                        set(REGISTRY))
    log = logmod.setup("error", "json", stream=io.StringIO())
    return EthtoolCollector(Context(settings=settings_, log=log.bind(collector="ethtool")),
                            ethtool=src.Ethtool(replay))


def scrape(c):
    fams = c.collect()
    ExpositionWriter().render(fams)          # renders: label counts right, no duplicates
    out: dict = {}
    for fam in fams:
        for labels, value in fam.samples:
            key = (fam.spec.name, labels)
            assert key not in out, f"duplicate series {key}"
            out[key] = value
    return out


def series(out, metric, dev="eth0"):
    return {labels[1] if len(labels) > 1 else None: v for (n, labels), v in out.items()
            if n == metric.name and labels[0] == dev}


# ------------------------------------------------------------------------- the name rule

@pytest.mark.parametrize("raw, folded", [
    ("rx0_drops", "rx_drops"), ("tx12_kicks", "tx_kicks"),           # virtio_net, mlx5
    ("rx_queue_3_drops", "rx_drops"), ("tx_queue_0_packets", "tx_packets"),  # ixgbe, veth
    ("queue_2_tx_cnt", "tx_cnt"), ("queue_0_xdp_tx_cnt", "xdp_tx_cnt"),      # ena
    ("tx-0.packets", "tx_packets"), ("rx-15.bytes", "rx_bytes"),             # i40e
    ("ch5_events", "ch_events"),                                             # mlx5 channels
    ("rx_dropped_pkt[7]", "rx_dropped_pkt"),                                 # gve
    ("rx_drops", "rx_drops"), ("rx_prio0_bytes", "rx_prio0_bytes"),          # no queue index
    ("tx_pb_0_pxon", "tx_pb_0_pxon"), ("port.rx_dropped", "port.rx_dropped"),
])
def test_fold(raw, folded):
    assert fold(raw) == folded


@pytest.mark.parametrize("name, kind", [
    ("rx_drops", "drops"), ("rx_dropped", "drops"), ("tx_xdp_tx_drops", "drops"),
    ("rx_discards_phy", "drops"), ("rx_missed_errors", "drops"), ("tx_missed_tx", "drops"),
    ("rx_no_buffer_count", "drops"), ("rx_nobuf", "drops"), ("rx_out_of_buffer", "drops"),
    ("rx_xdp_tx_full", "drops"), ("rx_overruns", "drops"), ("rx_fifo_errors", "drops"),
    ("rxdrop", "drops"),
    ("rx_errors", "errors"), ("tx_dma_mapping_err", "errors"), ("tx_tx_timeouts", "errors"),
    ("tx_timeout", "errors"), ("rx_page_alloc_fail", "errors"), ("linearize_failed", "errors"),
    ("rx_crc_errors", "errors"), ("ena_admin_q_aborted_cmd", "errors"), ("txerr", "errors"),
    ("unmask_interrupt", None), ("rx_kicks", None), ("tx_packets", None), ("rx_bytes", None),
    ("bw_in_allowance_exceeded", None), ("interface_up", None), ("rx_csum_bad", None),
    ("transmission", None), ("terror", None), ("fdir_miss", None), ("rx_cache_full", None),
])
def test_classify(name, kind):
    assert classify(name) == kind


# ------------------------------------------------------------------------- driver fixtures

def test_every_fixture_decodes_through_the_wire_layout(tmp_path):
    devs = {f"nic{i}": load(f"{d}.txt") for i, d in enumerate(DRIVERS)}
    c = collector(sysfs_with(tmp_path, *devs), Replay(devs))
    out = scrape(c)
    for name, dev in devs.items():
        info = [labels for (n, labels), _ in out.items() if n == DRIVER_INFO.name
                and labels[0] == name]
        assert info == [(name, dev.driver, dev.version, dev.firmware)]
        assert series(out, DROPS, name), f"{dev.driver}: no drop counter"
        assert series(out, ERRORS, name), f"{dev.driver}: no error counter"


def expected_value(dev: Device, counter: str, queue_names: list[str]) -> int:
    """The total when the driver prints one, else the sum of the named queue counters."""
    stats = dev.stats()
    if counter in stats:
        return stats[counter]
    assert queue_names, counter
    return sum(stats[q] for q in queue_names)


# driver -> {counter: queue names summed when no total exists ([] = a device total)}
PINNED = {
    "virtio_net": {
        "drops": {"rx_drops": [], "rx_xdp_drops": [], "tx_xdp_tx_drops": []},
        "errors": {"tx_tx_timeouts": []},
    },
    "ena": {
        "drops": {"rx_drops": [], "tx_drops": [], "rx_overruns": [],
                  "tx_missed_tx": ["queue_0_tx_missed_tx", "queue_1_tx_missed_tx"]},
        "errors": {"tx_timeout": [],
                   "tx_dma_mapping_err": ["queue_0_tx_dma_mapping_err",
                                          "queue_1_tx_dma_mapping_err"],
                   "rx_dma_mapping_err": ["queue_0_rx_dma_mapping_err",
                                          "queue_1_rx_dma_mapping_err"],
                   "tx_linearize_failed": ["queue_0_tx_linearize_failed",
                                           "queue_1_tx_linearize_failed"],
                   "tx_prepare_ctx_err": ["queue_0_tx_prepare_ctx_err",
                                          "queue_1_tx_prepare_ctx_err"],
                   "rx_page_alloc_fail": ["queue_0_rx_page_alloc_fail",
                                          "queue_1_rx_page_alloc_fail"],
                   "rx_skb_alloc_fail": ["queue_0_rx_skb_alloc_fail",
                                         "queue_1_rx_skb_alloc_fail"],
                   "ena_admin_q_aborted_cmd": []},
    },
    "gve": {
        "drops": {"rx_dropped": [], "tx_dropped": [], "rx_desc_err_dropped_pkt": [],
                  "rx_dropped_pkt": ["rx_dropped_pkt[0]", "rx_dropped_pkt[1]"],
                  "rx_queue_drop_cnt": ["rx_queue_drop_cnt[0]", "rx_queue_drop_cnt[1]"],
                  "rx_no_buffers_posted": ["rx_no_buffers_posted[0]", "rx_no_buffers_posted[1]"],
                  "rx_drops_packet_over_mru": ["rx_drops_packet_over_mru[0]",
                                               "rx_drops_packet_over_mru[1]"],
                  "rx_drops_invalid_checksum": ["rx_drops_invalid_checksum[0]",
                                                "rx_drops_invalid_checksum[1]"]},
        "errors": {"tx_timeouts": [], "rx_skb_alloc_fail": [], "rx_buf_alloc_fail": [],
                   "page_alloc_fail": [], "dma_mapping_error": [],
                   "tx_dma_mapping_error": ["tx_dma_mapping_error[0]", "tx_dma_mapping_error[1]"],
                   "adminq_cmd_fail": [], "adminq_timeouts": []},
    },
    "ixgbe": {
        "drops": {"rx_dropped": [], "tx_dropped": [], "rx_no_buffer_count": [],
                  "rx_fifo_errors": [], "rx_missed_errors": [], "tx_fifo_errors": [],
                  "rx_fcoe_dropped": []},
        "errors": {"rx_errors": [], "tx_errors": [], "rx_over_errors": [], "rx_crc_errors": [],
                   "rx_frame_errors": [], "tx_aborted_errors": [], "tx_carrier_errors": [],
                   "tx_heartbeat_errors": [], "tx_timeout_count": [], "rx_length_errors": [],
                   "rx_long_length_errors": [], "rx_short_length_errors": [],
                   "rx_csum_offload_errors": [], "alloc_rx_page_failed": [],
                   "alloc_rx_buff_failed": [], "tx_hwtstamp_timeouts": [],
                   "fcoe_bad_fccrc": []},
    },
    "i40e": {
        "drops": {"rx_dropped": [], "tx_dropped": [], "port.rx_dropped": [],
                  "port.tx_dropped_link_down": []},
        "errors": {"rx_errors": [], "tx_errors": [], "rx_length_errors": [], "rx_crc_errors": [],
                   "rx_alloc_fail": [], "rx_pg_alloc_fail": [], "port.rx_crc_errors": [],
                   "port.tx_timeout": [], "port.rx_length_errors": []},
    },
    "mlx5_core": {
        "drops": {"rx_xdp_drop": [], "rx_xdp_tx_full": [], "tx_queue_dropped": [],
                  "rx_out_of_buffer": [], "rx_discards_phy": [],
                  "tx_discards_phy": [], "rx_prio0_discards": [],
                  "tx_dropped": ["tx0_dropped", "tx1_dropped"]},
        "errors": {"rx_xdp_tx_err": [], "tx_cqe_err": [], "rx_wqe_err": [],
                   "rx_buff_alloc_err": [], "tx_errors_phy": [], "rx_crc_errors_phy": [],
                   "rx_symbol_err_phy": [], "rx_in_range_len_errors_phy": []},
    },
}


@pytest.mark.parametrize("driver", DRIVERS)
def test_driver_fixture_drops_and_errors_are_pinned(tmp_path, driver):
    dev = load(f"{driver}.txt")
    c = collector(sysfs_with(tmp_path, "eth0"), Replay({"eth0": dev}))
    out = scrape(c)
    for kind, metric in (("drops", DROPS), ("errors", ERRORS)):
        got = series(out, metric)
        want = PINNED[driver][kind]
        assert set(got) == set(want), f"{driver} {kind}"
        for counter, queues in want.items():
            assert got[counter] == expected_value(dev, counter, queues), (driver, counter)


def test_a_device_total_is_never_added_to_its_queues(tmp_path):
    """virtio_net prints rx_drops and rx0_drops/rx1_drops: the total alone is exported."""
    dev = load("virtio_net.txt")
    stats = dev.stats()
    assert stats["rx_drops"] != stats["rx0_drops"] + stats["rx1_drops"] + stats["rx_drops"]
    out = scrape(collector(sysfs_with(tmp_path, "eth0"), Replay({"eth0": dev})))
    assert series(out, DROPS)["rx_drops"] == stats["rx_drops"]
    assert series(out, ERRORS)["tx_tx_timeouts"] == stats["tx_tx_timeouts"]


def test_ena_allowances_and_conntrack_available(tmp_path):
    dev = load("ena.txt")
    stats = dev.stats()
    out = scrape(collector(sysfs_with(tmp_path, "eth0"), Replay({"eth0": dev})))
    assert series(out, ALLOWANCE) == {
        "bw_in": stats["bw_in_allowance_exceeded"], "bw_out": stats["bw_out_allowance_exceeded"],
        "pps": stats["pps_allowance_exceeded"],
        "conntrack": stats["conntrack_allowance_exceeded"],
        "linklocal": stats["linklocal_allowance_exceeded"]}
    assert out[(CT_AVAILABLE.name, ("eth0",))] == stats["conntrack_allowance_available"]


def test_ena_without_eni_stats_has_no_allowance_series(tmp_path):
    """Older ENA (no ENI stats support): the allowances are absent, not zero."""
    dev = load("ena.txt")
    keep = [i for i, n in enumerate(dev.names) if "allowance" not in n]
    dev.names = [dev.names[i] for i in keep]
    dev.values = [dev.values[i] for i in keep]
    out = scrape(collector(sysfs_with(tmp_path, "eth0"), Replay({"eth0": dev})))
    assert not series(out, ALLOWANCE) and (CT_AVAILABLE.name, ("eth0",)) not in out
    assert series(out, DROPS)


def test_allowance_names_map_only_for_ena(tmp_path):
    dev = Device("other", names=["bw_in_allowance_exceeded", "rx_drops"], values=[5, 1])
    out = scrape(collector(sysfs_with(tmp_path, "eth0"), Replay({"eth0": dev})))
    assert not series(out, ALLOWANCE)
    assert series(out, DROPS) == {"rx_drops": 1}


def test_zeros_are_exported_from_the_first_scrape(tmp_path):
    dev = load("virtio_net.txt")
    dev.values = [0] * len(dev.values)
    out = scrape(collector(sysfs_with(tmp_path, "eth0"), Replay({"eth0": dev})))
    assert series(out, DROPS) == {"rx_drops": 0, "rx_xdp_drops": 0, "tx_xdp_tx_drops": 0}
    assert series(out, ERRORS) == {"tx_tx_timeouts": 0}


@pytest.mark.parametrize("driver", DRIVERS)
def test_all_counters_exports_every_other_folded_name_once(tmp_path, driver):
    dev = load(f"{driver}.txt")
    out = scrape(collector(sysfs_with(tmp_path, "eth0"), Replay({"eth0": dev}),
                           "--collector.ethtool.all-counters"))
    others, drops, errors = (series(out, m) for m in (COUNTERS, DROPS, ERRORS))
    specials = set()
    if driver == "ena":
        specials = {"bw_in_allowance_exceeded", "bw_out_allowance_exceeded",
                    "pps_allowance_exceeded", "conntrack_allowance_exceeded",
                    "linklocal_allowance_exceeded", "conntrack_allowance_available"}
    folded = {fold(n) for n in dev.names if n not in specials}
    assert set(others) | set(drops) | set(errors) == folded
    assert not set(others) & (set(drops) | set(errors))
    stats = dev.stats()
    for counter, value in others.items():
        queues = [n for n in dev.names if fold(n) == counter and n != counter]
        assert value == expected_value(dev, counter, queues), counter
    if driver == "virtio_net":
        assert others["rx_kicks"] == stats["rx_kicks"]


def test_default_exports_no_other_counter(tmp_path):
    out = scrape(collector(sysfs_with(tmp_path, "eth0"), Replay({"eth0": load("mlx5_core.txt")})))
    assert not series(out, COUNTERS)


# ------------------------------------------------------------------------- devices and cache

def test_only_devices_with_a_driver_link_and_filters(tmp_path):
    devs = {n: load("virtio_net.txt") for n in ("eth0", "eth1", "ens5")}
    sysfs = sysfs_with(tmp_path, *devs, without_driver=("veth1", "br0"))
    replay = Replay({**devs, "veth1": load("virtio_net.txt")})
    out = scrape(collector(sysfs, replay))
    assert {labels[0] for (n, labels) in out if n == DRIVER_INFO.name} == {"eth0", "eth1", "ens5"}
    out = scrape(collector(sysfs, replay, "--collector.ethtool.device-include=^eth",
                           "--collector.ethtool.device-exclude=1$"))
    assert {labels[0] for (n, labels) in out if n == DRIVER_INFO.name} == {"eth0"}


def test_bad_regex_fails_at_start_up():
    with pytest.raises(ConfigError):
        resolve(all_options(), ["--collector.ethtool.device-include=("], "t", "0", set(REGISTRY))


def test_strings_are_read_once_per_driver_change(tmp_path):
    dev = load("virtio_net.txt")
    replay = Replay({"eth0": dev})
    c = collector(sysfs_with(tmp_path, "eth0"), replay)
    for _ in range(3):
        scrape(c)
    cmds = [cmd for _, cmd in replay.calls]
    assert cmds.count(src.ETHTOOL_GSTRINGS) == 1 and cmds.count(src.ETHTOOL_GSTATS) == 3
    assert cmds.count(src.ETHTOOL_GDRVINFO) == 3
    dev.version = "1.0.1"                      # driver reloaded: the names are read again
    scrape(c)
    assert [cmd for _, cmd in replay.calls].count(src.ETHTOOL_GSTRINGS) == 2


def test_string_set_change_between_drvinfo_and_stats_is_read_again(tmp_path):
    """Queues reconfigured between GDRVINFO and GSTATS: the kernel answers with its new count;
    the collector reads the names again instead of mislabelling the values."""
    small, big = load("virtio_net.txt"), load("virtio_net.txt")
    keep = [i for i, n in enumerate(small.names) if not n.startswith(("rx1_", "tx1_"))]
    small.names = [small.names[i] for i in keep]
    small.values = [small.values[i] for i in keep]

    class Switching(Replay):
        def reply(self, dev, cmd, request):
            if cmd == src.ETHTOOL_GSTATS and dev is small:
                self.devices["eth0"] = big      # reconfigured just now
                dev = big
            return super().reply(dev, cmd, request)

    replay = Switching({"eth0": small})
    c = collector(sysfs_with(tmp_path, "eth0"), replay)
    out = scrape(c)
    assert series(out, DROPS)["rx_drops"] == big.stats()["rx_drops"]


def test_vanished_and_unsupported_devices_are_absent(tmp_path):
    class NoStats(Replay):
        def reply(self, dev, cmd, request):
            if dev.driver == "nostats" and cmd != src.ETHTOOL_GDRVINFO:
                raise OSError(errno.EOPNOTSUPP, "nostats: not supported")
            return super().reply(dev, cmd, request)

    devs = {"eth0": load("virtio_net.txt"), "eth2": Device("nostats", names=["x"], values=[1])}
    out = scrape(collector(sysfs_with(tmp_path, "eth0", "gone0", "eth2"), NoStats(devs)))
    names = {labels[0] for (n, labels) in out}
    assert names == {"eth0", "eth2"}
    assert [k for k in out if k[1][0] == "eth2"] == [(DRIVER_INFO.name,
                                                      ("eth2", "nostats", "", ""))]


def test_the_kernel_ioctl_refuses_a_name_too_long():
    with pytest.raises(OSError) as info:
        src.KernelIoctl()("x" * 16, src.drvinfo_request())
    assert info.value.errno == errno.ENODEV


# ------------------------------------------------------------------------- decoders and fuzz

def test_decoders_refuse_short_and_inconsistent_replies():
    with pytest.raises(ParseError):
        src.parse_drvinfo(b"\0" * 100)
    # a count other than the one asked for is the kernel's: returned as written
    assert len(src.parse_stats(struct.pack("=II", src.ETHTOOL_GSTATS, 3) + bytes(24))) == 3
    with pytest.raises(ParseError):
        src.parse_stats(struct.pack("=II", src.ETHTOOL_GSTATS, 3) + bytes(16))
    with pytest.raises(ParseError):
        src.parse_strings(struct.pack("=III", src.ETHTOOL_GSTRINGS, 1, 2) + bytes(40))
    with pytest.raises(ParseError):
        src.parse_strings(struct.pack("=III", src.ETHTOOL_GSTRINGS, 4, 1) + bytes(32))
    assert src.parse_sset_info(struct.pack("=IIQ", src.ETHTOOL_GSSET_INFO, 0, 0)) == 0
    with pytest.raises(ParseError):
        src.parse_sset_info(struct.pack("=IIQI", src.ETHTOOL_GSSET_INFO, 0, 2, 1 << 20))


class Fuzzed(Replay):
    """Replies with bytes flipped, truncated or extended, chosen by hypothesis."""

    def __init__(self, devices, data):
        super().__init__(devices)
        self.data = data

    def reply(self, dev, cmd, request):
        body = bytearray(super().reply(dev, cmd, request))
        how = self.data.draw(st.sampled_from(["keep", "flip", "truncate", "count"]))
        if how == "flip" and body:
            for _ in range(self.data.draw(st.integers(1, 8))):
                i = self.data.draw(st.integers(0, min(len(body), 400) - 1))
                body[i] ^= self.data.draw(st.integers(1, 255))
        elif how == "truncate":
            body = body[: self.data.draw(st.integers(0, len(body)))]
        elif how == "count" and len(body) >= 8:
            struct.pack_into("=I", body, 4 if cmd != src.ETHTOOL_GSTRINGS else 8,
                             self.data.draw(st.integers(0, 1 << 32 - 1)))
        return bytes(body)


@FUZZ
@given(data=st.data(), driver=st.sampled_from(DRIVERS))
def test_fuzzed_replies_cost_only_their_device(tmp_path, data, driver):
    devs = {"eth0": load(f"{driver}.txt")}
    good = {"eth1": load("virtio_net.txt")}
    sysfs = str(tmp_path / driver)
    if not os.path.exists(sysfs):
        sysfs_with(tmp_path / driver, "eth0", "eth1")

    class Mixed(Fuzzed):
        def reply(self, dev, cmd, request):
            if dev is good["eth1"]:
                return Replay.reply(self, dev, cmd, request)
            return super().reply(dev, cmd, request)

    c = collector(sysfs, Mixed({**devs, **good}, data), "--collector.ethtool.all-counters")
    for _ in range(2):
        out = scrape(c)
        assert series(out, DROPS, "eth1") == {"rx_drops": good["eth1"].stats()["rx_drops"],
                                              "rx_xdp_drops": good["eth1"].stats()["rx_xdp_drops"],
                                              "tx_xdp_tx_drops":
                                                  good["eth1"].stats()["tx_xdp_tx_drops"]}
        for value in out.values():
            assert isinstance(value, int) and 0 <= value < 1 << 64 + 16


def test_plan_counts_a_name_printed_twice_once():
    plan = build_plan(["rx_drops", "rx_drops", "rx0_drops"], "virtio_net")
    assert plan.drops == (("rx_drops", (0,)),)
