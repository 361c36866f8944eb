"""deploy/components/podview and podview-sockets: rendered by `kubectl kustomize` over the base,
schema-valid, and holding exactly the base's privileges plus the `grants:` of their test.yaml
(the same declaration the image branch's generic component guard reads)."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_deploy_manifests import (
    DEPLOY,
    exporter_container,
    kubernetes_validate,
    security_violations,
)

COMPONENTS = {"podview": ["podview"], "podview-sockets": ["podview-sockets"]}


def render(tmp: Path, comps: list[str]) -> dict:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the kustomize components"
    work = tmp / "overlay"
    work.mkdir()
    rel = os.path.relpath(DEPLOY, work)   # kustomize takes relative paths only
    (work / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [rel], "components": [f"{rel}/components/{c}" for c in comps]}))
    out = subprocess.run([kubectl, "kustomize", "--load-restrictor=LoadRestrictionsNone",
                          str(work)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return next(d for d in docs if d["kind"] == "DaemonSet")


def grants(comp: str) -> dict:
    return yaml.safe_load((DEPLOY / "components" / comp / "test.yaml").read_text())["grants"]


def strip(ds: dict, g: dict) -> tuple[dict, list[str]]:
    ds = copy.deepcopy(ds)
    pod = ds["spec"]["template"]["spec"]
    add = exporter_container(ds)["securityContext"]["capabilities"]["add"]
    unused = []
    for cap in g.get("capabilities", []):
        if cap in add:
            add.remove(cap)
        else:
            unused.append(cap)
    for field, want in (g.get("pod") or {}).items():
        if pod.get(field) == want:
            pod[field] = False
        else:
            unused.append(field)
    return ds, unused


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_component_grants_exactly_what_it_declares_and_is_schema_valid(name, tmp_path):
    ds = render(tmp_path, COMPONENTS[name])
    kv = kubernetes_validate()
    kv.validate(ds, kv.latest_version(), strict=True)
    stripped = ds
    for comp in COMPONENTS[name]:
        stripped, unused = strip(stripped, grants(comp))
        assert unused == [], f"{comp}: declared but not granted: {unused}"
    assert security_violations(stripped) == [], f"{name} grants more than its test.yaml says"
    args = exporter_container(ds)["args"]
    assert "--collector.netns" in args
    assert ("--collector.netns.sockets" in args) == (name == "podview-sockets")


def test_the_guard_sees_an_undeclared_privilege(tmp_path):
    ds = render(tmp_path, ["podview"])
    exporter_container(ds)["securityContext"]["capabilities"]["add"].append("SYS_PTRACE")
    stripped, _ = strip(ds, grants("podview"))
    assert security_violations(stripped), "an extra SYS_PTRACE went unnoticed"
