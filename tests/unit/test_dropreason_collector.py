"""The dropreason collector where nothing can be loaded (no bpf(2) call is made): the reason
reported for each absent piece, logged once, success kept; and the explanation of refusals."""
from __future__ import annotations

import errno
import io
import json
import shutil
from pathlib import Path

from exporter import log as logmod
from exporter.cli import PROG, all_options, build
from exporter.collectors import dropreason as dr
from exporter.collectors.base import REGISTRY
from exporter.config import resolve
from exporter.sources import bpf as B

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "dropreason"


def make(tmp_path, format_version=None):
    sysfs = tmp_path / "sys"
    (sysfs / "devices" / "system" / "cpu").mkdir(parents=True)
    (sysfs / "devices" / "system" / "cpu" / "possible").write_text("0-1\n")
    tracefs = tmp_path / "tracing"
    if format_version:
        d = tracefs / "events" / "skb" / "kfree_skb"
        d.mkdir(parents=True)
        shutil.copy(FIX / f"kfree_skb-{format_version}.format", d / "format")
    stream = io.StringIO()
    settings = resolve(all_options(), ["--collector.disable-defaults", "--collector.dropreason",
                                       f"--path.sysfs={sysfs}", f"--path.tracefs={tracefs}"],
                       PROG, "test", set(REGISTRY))
    gatherer = build(settings, logmod.setup("info", "json", stream))
    return gatherer, stream


def scrape(gatherer) -> str:
    return gatherer.scrape().decode()


def log_records(stream) -> list[dict]:
    return [r for r in map(json.loads, stream.getvalue().splitlines())
            if r.get("collector") == "dropreason"]


def test_default_off_and_flag_listed():
    assert REGISTRY["dropreason"].default_enabled is False
    keys = {o.key for o in all_options()}
    assert {"collector.dropreason", "path.tracefs"} <= keys


def test_no_btf_no_tracefs_is_unavailable_with_both_reasons(tmp_path):
    g, stream = make(tmp_path)
    for _ in range(3):
        text = scrape(g)
        assert "nodenet_dropreason_available 0" in text
        assert 'nodenet_scrape_collector_success{collector="dropreason"} 1' in text
        assert "nodenet_packet_drops_total" not in text.replace("# HELP", "").split("# TYPE")[0]
    (rec,) = log_records(stream)
    assert "no BTF at" in rec["reason"] and "no skb/kfree_skb format file" in rec["reason"]


def test_kernel_before_5_17_is_unavailable(tmp_path):
    g, stream = make(tmp_path, "5.15")
    assert "nodenet_dropreason_available 0" in scrape(g)
    (rec,) = log_records(stream)
    assert "no reason field: Linux < 5.17" in rec["reason"], rec


def test_explain_missing_capabilities():
    exc = B.BpfError(errno.EPERM, "BPF_MAP_CREATE")
    text = dr.explain(exc, caps=1 << 12, seccomp=0)
    assert text.startswith("BPF_MAP_CREATE: EPERM")
    assert "missing CAP_BPF, CAP_PERFMON (CapEff=0x1000)" in text
    assert "missing CAP_PERFMON" in dr.explain(exc, caps=(1 << 12) | (1 << 39), seccomp=0)


def test_explain_seccomp_when_the_capabilities_are_there():
    exc = B.BpfError(errno.EPERM, "BPF_MAP_CREATE")
    caps = (1 << 12) | (1 << 38) | (1 << 39)
    text = dr.explain(exc, caps=caps, seccomp=2)
    assert "seccomp filter (Seccomp: 2)" in text and "deploy/components/dropreason" in text
    assert "seccomp" not in dr.explain(exc, caps=caps, seccomp=0)


def test_explain_verifier_log_tail_and_enosys():
    exc = B.BpfError(errno.EACCES, "BPF_PROG_LOAD",
                     log="\n".join(f"line {i}" for i in range(40)) + "\nR0 invalid mem access\n")
    text = dr.explain(exc, caps=0, seccomp=0)        # EACCES with a log: the verifier, not caps
    assert text.startswith("BPF_PROG_LOAD: EACCES") and "CAP_BPF" not in text
    assert text.count(" | ") == dr.LOG_TAIL_LINES - 1 and text.endswith("R0 invalid mem access")
    verifier = B.BpfError(errno.EINVAL, "BPF_PROG_LOAD", log="a\nb\nR0 invalid mem access\n")
    assert dr.explain(verifier, 0, 0).endswith("verifier log: a | b | R0 invalid mem access")
    assert "CONFIG_BPF_SYSCALL" in dr.explain(B.BpfError(errno.ENOSYS, "BPF_MAP_CREATE"), 0, 0)
