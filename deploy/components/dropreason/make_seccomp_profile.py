#!/usr/bin/env python3
"""Writes seccomp-dropreason.json: the container runtime's default profile plus bpf(2) and
perf_event_open(2), flattened for exactly the dropreason container's capabilities.

Input: a runtime default profile in the Docker/containers JSON format, with capability- and
architecture-conditional rules ("includes"/"excludes"); the file shipped here was made from
containers-common 0.50.1 (Debian bookworm's /usr/share/containers/seccomp.json: podman's and
CRI-O's RuntimeDefault, which gates bpf/perf_event_open on CAP_SYS_ADMIN).

Output: a flat profile (no conditional rules, so containerd, CRI-O and Docker read it alike):
the rules that apply to a container holding CAP_NET_ADMIN, CAP_BPF and CAP_PERFMON and
nothing else, on amd64 and arm64, plus one rule allowing bpf and perf_event_open.  The kernel
still checks CAP_BPF/CAP_PERFMON on every call: seccomp only stops hiding the calls.

    python deploy/components/dropreason/make_seccomp_profile.py [DEFAULT.json] [--check]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "seccomp-dropreason.json"
CAPS = {"CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"}
ARCHES = {"amd64", "arm64"}
ADDED = ["bpf", "perf_event_open"]
SCMP_ARCH = {"amd64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
             "arm64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]}


def applies(rule: dict) -> bool:
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= CAPS:
        return False
    if inc.get("arches") and not set(inc["arches"]) & ARCHES:
        return False
    if exc.get("caps") and set(exc["caps"]) & CAPS:
        return False
    if inc.get("minKernel") or exc.get("minKernel"):
        return False
    return not (exc.get("arches") and ARCHES <= set(exc["arches"]))


def flatten(default: dict) -> dict:
    rules = []
    for rule in default["syscalls"]:
        if not applies(rule):
            continue
        names = [n for n in rule["names"] if not (rule["action"] != "SCMP_ACT_ALLOW"
                                                  and n in ADDED)]
        if not names:
            continue
        flat = {"names": names, "action": rule["action"]}
        if rule.get("args"):
            flat["args"] = rule["args"]
        if rule.get("errnoRet") is not None:
            flat["errnoRet"] = rule["errnoRet"]
        rules.append(flat)
    rules.append({"names": ADDED, "action": "SCMP_ACT_ALLOW",
                  "comment": "nodenet dropreason: the kernel checks CAP_BPF/CAP_PERFMON"})
    return {
        "defaultAction": default["defaultAction"],
        "defaultErrnoRet": default.get("defaultErrnoRet", 1),
        "architectures": [a for arch in sorted(ARCHES) for a in SCMP_ARCH[arch]],
        "syscalls": rules,
    }


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    src = Path(args[0]) if args else HERE / "containers-common-0.50.1-seccomp.json"
    text = json.dumps(flatten(json.loads(src.read_text())), indent=1) + "\n"
    if check:
        return 0 if OUT.read_text() == text else 1
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
