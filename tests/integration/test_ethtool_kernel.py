"""The ethtool collector against real drivers, `ethtool` as the witness.

- eth0, this machine's virtio_net NIC (read only: nothing is sent on it): every exported value
  equals `ethtool -S eth0` read around the same scrape (a counter that moves, such as rx_kicks
  and tx_kicks with --collector.ethtool.all-counters, lies between the two readings);
- veth pairs in a namespace made for the test, with 3 queues, so per-queue folding and sums
  are checked against the kernel; one device is deleted mid-read and is absent.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import time

import pytest

from exporter import log as logmod
from exporter.cli import all_options
from exporter.collectors.base import REGISTRY, Context
from exporter.collectors.ethtool import (
    COUNTERS,
    DRIVER_INFO,
    DROPS,
    ERRORS,
    EthtoolCollector,
    fold,
)
from exporter.config import resolve
from exporter.sources import ethtool as src
from tests.helpers.ethtool_replay import parse_ethtool_s
from tests.helpers.netns import call_in_netns, netns, run

ETHTOOL = shutil.which("ethtool")


def make(sysfs: str, *argv, ethtool=None) -> EthtoolCollector:
    s = resolve(all_options(), [f"--path.sysfs={sysfs}", *argv], "test", "0", set(REGISTRY))
    log = logmod.setup("error", "json", stream=io.StringIO())
    return EthtoolCollector(Context(settings=s, log=log.bind(collector="ethtool")),
                            ethtool=ethtool)


def samples(fams) -> dict:
    return {(f.spec.name, labels): v for f in fams for labels, v in f.samples}


def witness(dev: str, ns: str | None = None) -> dict:
    assert ETHTOOL, "ethtool missing: tests/run.sh installs Debian's ethtool"
    return parse_ethtool_s(run([ETHTOOL, "-S", dev], netns=ns).stdout)


def expected_range(before: dict, after: dict, counter: str) -> tuple[int, int]:
    """(low, high) the kernel allows for a folded counter: its total if printed, else the sum
    of its queue counters, between the two readings."""
    if counter in before:
        return before[counter], after[counter]
    names = [n for n in before if fold(n) == counter]
    assert names, f"{counter}: no such statistic in ethtool -S"
    return sum(before[n] for n in names), sum(after[n] for n in names)


def check_against_witness(out: dict, dev: str, before: dict, after: dict) -> int:
    checked = 0
    for (metric, labels), value in out.items():
        if metric not in (DROPS.name, ERRORS.name, COUNTERS.name) or labels[0] != dev:
            continue
        low, high = expected_range(before, after, labels[1])
        assert low <= value <= high, (labels, low, value, high)
        checked += 1
    return checked


def test_eth0_equals_ethtool_s():
    if not os.path.exists("/sys/class/net/eth0/device"):
        pytest.fail("this test needs eth0 with a driver (the machine's virtio_net NIC)")
    info = dict(line.split(": ", 1) for line in run([ETHTOOL or "ethtool", "-i", "eth0"])
                .stdout.splitlines() if ": " in line)
    c = make("/sys", "--collector.ethtool.device-include=^eth0$",
             "--collector.ethtool.all-counters")
    moved: set = set()
    rounds = 0
    # at least 3 rounds; up to 20 (about 5 s) until a counter moves between the two readings
    while rounds < 3 or (not moved and rounds < 20):
        rounds += 1
        time.sleep(0.25)
        before = witness("eth0")
        out = samples(c.collect())
        after = witness("eth0")
        assert out[(DRIVER_INFO.name, ("eth0", info["driver"], info["version"],
                                       info.get("firmware-version", "")))] == 1
        exported = {labels[1] for (m, labels) in out
                    if m in (DROPS.name, ERRORS.name, COUNTERS.name)}
        assert exported == {fold(n) for n in before}, "every statistic, folded, exactly once"
        assert check_against_witness(out, "eth0", before, after) == len(exported)
        moved |= {n for n in before if before[n] != after[n]}
    # the default set: drops and errors only, values as ethtool prints them
    before = witness("eth0")
    out = samples(make("/sys", "--collector.ethtool.device-include=^eth0$").collect())
    after = witness("eth0")
    drops = {labels[1] for (m, labels) in out if m == DROPS.name}
    errors = {labels[1] for (m, labels) in out if m == ERRORS.name}
    if info["driver"] == "virtio_net":
        assert {"rx_drops", "rx_xdp_drops", "tx_xdp_tx_drops"} <= drops
        assert "tx_tx_timeouts" in errors
    assert not any(m == COUNTERS.name for m, _ in out)
    assert check_against_witness(out, "eth0", before, after) == len(drops) + len(errors)
    print(f"eth0 counters that moved during {rounds} scrapes: {sorted(moved) or 'none'}")


def test_veth_queues_and_a_device_that_vanishes_mid_read(tmp_path):
    with netns("nn-ethtool") as ns:
        for i in range(2):
            run(["ip", "link", "add", f"va{i}", "numtxqueues", "3", "numrxqueues", "3",
                 "type", "veth", "peer", "name", f"vb{i}", "numtxqueues", "3",
                 "numrxqueues", "3"], netns=ns)
        for name in ("va0", "va1"):       # veths have no driver link: a fixture sysfs gives one
            d = tmp_path / "class" / "net" / name
            d.mkdir(parents=True)
            os.symlink(tmp_path, d / "device")
        want = witness("va1", ns)
        assert any(n.startswith("rx_queue_2_") for n in want), want

        deleted = []

        def scrape_deleting_va0():
            kernel = src.KernelIoctl()

            def ioctl(ifname, request):
                reply = kernel(ifname, request)
                if ifname == "va0" and not deleted:
                    subprocess.run(["ip", "-n", ns, "link", "del", "va0"], check=True)
                    deleted.append(ifname)
                return reply

            c = make(str(tmp_path), "--collector.ethtool.all-counters",
                     ethtool=src.Ethtool(ioctl))
            try:
                return samples(c.collect())
            finally:
                kernel.close()

        out = call_in_netns(ns, scrape_deleting_va0)
        assert deleted == ["va0"]
        assert {labels[0] for (_m, labels) in out} == {"va1"}, "va0 vanished: absent"
        exported = {labels[1] for (m, labels) in out
                    if m in (DROPS.name, ERRORS.name, COUNTERS.name)}
        assert exported == {fold(n) for n in want}
        assert check_against_witness(out, "va1", want, want) == len(exported)
        # veth prints no device total: rx_drops is the sum of its three queues
        assert (DROPS.name, ("va1", "rx_drops")) in out
        assert sum(1 for n in want if fold(n) == "rx_drops") == 3
