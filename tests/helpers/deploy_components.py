"""The opt-in kustomize components under deploy/components/ and what each may add to the base.

The least-privilege guards (tests/unit/test_deploy_manifests.py, and for real
tests/integration/test_least_privilege.py) check every component against its row here:
exactly these capabilities, exactly this seccomp profile, exactly these extra flags, and
otherwise the base DaemonSet's properties.  A new component adds one row (and the reason for
each privilege goes in the component's own kustomization.yaml and its docs).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BASE_CAPS = ("NET_ADMIN",)
RUNTIME_DEFAULT = {"type": "RuntimeDefault"}


@dataclass(frozen=True)
class Allowance:
    caps: tuple[str, ...] = BASE_CAPS                       # capabilities.add, exactly
    seccomp: dict = field(default_factory=lambda: dict(RUNTIME_DEFAULT))
    extra_args: tuple[str, ...] = ()                        # args appended to the base's
    files: tuple[str, ...] = ()                             # files the component ships
    # (metric, value) that shows the component's privileges at work when the exporter runs with
    # exactly its capabilities (tests/integration/test_least_privilege.py), and falls to 0 when
    # any one of the added capabilities is missing
    proof: tuple[str, float] | None = None


BASE = Allowance()
COMPONENTS: dict[str, Allowance] = {
    # docs/dropreason.md: the Localhost profile is RuntimeDefault + bpf + perf_event_open.
    "dropreason": Allowance(
        caps=("NET_ADMIN", "BPF", "PERFMON"),
        seccomp={"type": "Localhost", "localhostProfile": "nodenet-exporter/seccomp-dropreason.json"},
        extra_args=("--collector.dropreason",),
        files=("seccomp-dropreason.json",),
        proof=("nodenet_dropreason_available", 1)),
    # the same without the profile, for runtimes whose RuntimeDefault already gates the two
    # calls on CAP_BPF/CAP_PERFMON (containerd >= 1.6.9, Docker >= 23.0)
    "dropreason/caps": Allowance(caps=("NET_ADMIN", "BPF", "PERFMON"),
                                 extra_args=("--collector.dropreason",),
                                 proof=("nodenet_dropreason_available", 1)),
}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if not path:
        raise AssertionError("kubectl is not installed (Debian: kubernetes-client)")
    return path


def render(component: str) -> list[dict]:
    """`kubectl kustomize` of an overlay = deploy/ + the component; the rendered objects."""
    with tempfile.TemporaryDirectory(prefix="nn-kust-") as tmp:
        rel = lambda p: os.path.relpath(p, tmp)  # noqa: E731 - kustomize wants relative paths
        Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [rel(DEPLOY)],
            "components": [rel(DEPLOY / "components" / component)]}))
        r = subprocess.run([kubectl(), "kustomize", tmp], capture_output=True, text=True,
                           timeout=120, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                             "HOME": tmp})
    if r.returncode != 0:
        raise AssertionError(f"kubectl kustomize with component {component} failed: {r.stderr}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def rendered_daemonset(component: str) -> dict:
    (ds,) = [d for d in render(component) if d["kind"] == "DaemonSet"]
    return ds
