"""The opt-in kustomize components under deploy/components/ and the test data beside each one.

A component is any directory under deploy/components/ holding a kustomization.yaml (nested ones
too: deploy/components/dropreason/caps is the component "dropreason/caps"). Each one must have
a test.yaml next to it (kustomize ignores the file); `spec()` reads and checks it, and every
test that proves a component reads it from there:

  args:        the args the component appends to the base DaemonSet's, in order.
  grants:      what it adds to the base DaemonSet's privileges. The least-privilege guard
               (tests/unit/test_deploy_manifests.py) strips exactly these and the args from the
               `kubectl kustomize` output and requires the base DaemonSet, field for field.
               capabilities: [CAP names]; hostPaths: [{path, mountPath, readOnly}];
               pod: {hostPID: true, ...}; seccompProfile: {type: ..., localhostProfile: ...}
               (a Localhost profile is a file shipped in the component's directory).
  proof:       (required when the component grants capabilities) a check (below) that holds
               when the exporter runs with exactly the rendered capabilities and fails when any
               one of the granted capabilities is taken away
               (tests/integration/test_least_privilege.py, uid 0 under setpriv). A component
               whose capabilities cannot be shown that way says where they are proved instead:
               proof: {elsewhere: <test file>, why: <text>}.
  collector:   its nodenet_scrape_collector_success must be 1 in both container runs below.
  with:        tests/container/test_image.py runs the image as the component renders it, under
               podman's RuntimeDefault seccomp profile (containers-common's, as CRI-O's);
  without:     ... and with the component's args, env and mounts but the base DaemonSet's
               securityContext and host namespaces (its extra privileges taken away).
    checks:    [a check, ...] (at least one)
    log:       (optional) a regex exactly one log record matches after two scrapes: a reason,
               logged once.
  A check: {metric, labels: {..}, one of equals: / at_least: / absent: true}. Placeholders in
  labels/values (container test only): {pod_netns} (a namespace the test made, the only entry
  of the /run/netns it mounts for hostPath /run/netns), {pod_netns_entries} (its conntrack
  count, read from the kernel around the scrape).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPONENTS = DEPLOY / "components"
BASE_CAPS = ("NET_ADMIN",)
RUNTIME_DEFAULT = {"type": "RuntimeDefault"}

KEYS = {"args", "grants", "proof", "collector", "with", "without"}
REQUIRED = {"args", "grants", "collector", "with", "without"}
GRANTS = {"capabilities", "hostPaths", "pod", "seccompProfile"}
CHECK_KEYS = {"metric", "labels", "equals", "at_least", "absent"}
COMPARISONS = {"equals", "at_least", "absent"}


class ComponentDataError(AssertionError):
    pass


def components(root: Path = COMPONENTS) -> list[str]:
    """Every component under `root`, by its path relative to it ("dropreason/caps")."""
    if not root.is_dir():
        return []
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("kustomization.yaml"))


def path(component: str) -> Path:
    return COMPONENTS / component


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def _check_check(c, where: str) -> None:
    if not isinstance(c, dict) or "metric" not in c:
        raise ComponentDataError(f"{where}: a check is a mapping with a metric: {c!r}")
    if set(c) - CHECK_KEYS:
        raise ComponentDataError(f"{where}: unknown check keys {sorted(set(c) - CHECK_KEYS)}")
    if len(set(c) & COMPARISONS) != 1:
        raise ComponentDataError(
            f"{where}: {c['metric']} needs exactly one of {sorted(COMPARISONS)}")


def _check_proof(s: dict, where: str) -> None:
    proof = s.get("proof")
    caps = s["grants"].get("capabilities")
    if caps and proof is None:
        raise ComponentDataError(
            f"{where}: the component grants {caps}: `proof:` must show that each one is "
            "needed (or say where that is proved: proof: {elsewhere: <test>, why: <text>})")
    if proof is None:
        return
    if isinstance(proof, dict) and "elsewhere" in proof:
        if set(proof) != {"elsewhere", "why"} or not (REPO / proof["elsewhere"]).is_file():
            raise ComponentDataError(f"{where}: proof {proof!r}: elsewhere names no test file")
    else:
        _check_check(proof, f"{where} proof")


def spec(component: str | Path) -> dict:
    """The component's test.yaml, checked against the schema above; a clear error otherwise."""
    comp = component if isinstance(component, Path) else path(component)
    f = comp / "test.yaml"
    where = _rel(f)
    if not f.is_file():
        raise ComponentDataError(
            f"{where} is missing: every component declares beside it its args, grants and how "
            "the tests prove it (schema: tests/helpers/deploy_components.py; example: "
            "deploy/components/conntrack-netns/test.yaml)")
    s = yaml.safe_load(f.read_text()) or {}
    if not isinstance(s, dict):
        raise ComponentDataError(f"{where}: not a mapping")
    if missing := REQUIRED - set(s):
        raise ComponentDataError(f"{where}: missing keys {sorted(missing)}")
    if unknown := set(s) - KEYS:
        raise ComponentDataError(f"{where}: unknown keys {sorted(unknown)}")
    if not (isinstance(s["args"], list) and all(isinstance(a, str) for a in s["args"])):
        raise ComponentDataError(f"{where}: args must be a list of strings")
    g = s["grants"]
    if not isinstance(g, dict) or set(g) - GRANTS:
        raise ComponentDataError(f"{where}: grants must be a mapping of {sorted(GRANTS)}: {g!r}")
    profile = g.get("seccompProfile")
    if profile and profile.get("type") == "Localhost":
        shipped = comp / Path(profile["localhostProfile"]).name
        if not shipped.is_file():
            raise ComponentDataError(f"{where}: the Localhost profile {_rel(shipped)} is missing")
    _check_proof(s, where)
    for mode in ("with", "without"):
        m = s[mode]
        if not isinstance(m, dict) or set(m) - {"checks", "log"} or not m.get("checks"):
            raise ComponentDataError(f"{where} {mode}: checks: [...] (at least one) and log:")
        for c in m["checks"]:
            _check_check(c, f"{where} {mode}")
    return s


def granted_caps(s: dict) -> list[str]:
    return list(s["grants"].get("capabilities", []))


def value(ss, name: str, **labels) -> float | None:
    """The one sample `name{labels...}` of parsed samples [(name, labels, value)], or None."""
    vals = [v for n, lab, v in ss if n == name and all(lab.get(k) == w for k, w in labels.items())]
    assert len(vals) <= 1, f"{name}{labels}: {len(vals)} samples"
    return vals[0] if vals else None


def _fill(v, ctx: dict):
    return v.format(**ctx) if isinstance(v, str) else v


def check(ss, c: dict, ctx: dict | None = None) -> str | None:
    """None when the check holds on the samples, else what is wrong."""
    ctx = ctx or {}
    labels = {k: _fill(v, ctx) for k, v in (c.get("labels") or {}).items()}
    got = value(ss, c["metric"], **labels)
    where = f"{c['metric']}{labels}"
    if c.get("absent"):
        return None if got is None else f"{where} = {got}, expected absent"
    if got is None:
        return f"{where} is absent"
    if "equals" in c and got != float(_fill(c["equals"], ctx)):
        return f"{where} = {got}, expected {_fill(c['equals'], ctx)}"
    if "at_least" in c and got < float(_fill(c["at_least"], ctx)):
        return f"{where} = {got}, expected >= {_fill(c['at_least'], ctx)}"
    return None


# --------------------------------------------------------------------------- rendering


def kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        raise AssertionError("kubectl is not installed (Debian: kubernetes-client)")
    return found


def render(component: str | None) -> list[dict]:
    """`kubectl kustomize` of an overlay = deploy/ + the component (None: deploy/ alone);
    fresh objects on every call (the output is rendered once per process)."""
    return [d for d in yaml.safe_load_all(_kustomize(component)) if d]


@functools.cache
def _kustomize(component: str | None) -> str:
    with tempfile.TemporaryDirectory(prefix="nn-kust-") as tmp:
        rel = lambda p: os.path.relpath(p, tmp)  # noqa: E731 - kustomize wants relative paths
        kust = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [rel(DEPLOY)]}
        if component is not None:
            kust["components"] = [rel(path(component))]
        Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(kust))
        r = subprocess.run([kubectl(), "kustomize", tmp], capture_output=True, text=True,
                           timeout=120, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                             "HOME": tmp})
    if r.returncode != 0:
        raise AssertionError(f"kubectl kustomize with component {component} failed: {r.stderr}")
    return r.stdout


def rendered_daemonset(component: str | None) -> dict:
    found = [d for d in render(component) if d["kind"] == "DaemonSet"]
    assert len(found) == 1, f"{component}: {len(found)} DaemonSets rendered"
    return found[0]
