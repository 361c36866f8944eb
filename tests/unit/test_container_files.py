"""The Containerfile, .dockerignore and deploy/build-image.sh, checked without a container engine.

The image itself is built and run by tests/container/test_image.py (podman + runc); this file
checks the structure offline: the builder runs on the BASE_IMAGE argument (python:3.11-slim, or
the debian-local base build-image.sh makes), the final stage is `scratch` plus the builder's
/rootfs only, every COPY source is something build-image.sh stages and .dockerignore keeps,
and the run-time settings (user, entrypoint, memory policy, labels) are there. It also checks
the manifest -> podman translation (tests/helpers/k8s_podman.py) on the real manifests.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import deploy_components, k8s_podman

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "Containerfile"
DOCKERIGNORE = REPO / ".dockerignore"
BUILD_SCRIPT = REPO / "deploy" / "build-image.sh"
DEFAULT_BASE = "python:3.11-slim"
ENTRYPOINT = "nodenet-exporter"
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|build-essential|python3?-dev|libc6-dev|apt-get|apk|dnf|yum)\b"
)
# What deploy/build-image.sh puts in the build context besides repository files.
STAGED = {"wheels"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_containerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages); line continuations joined, comments dropped."""
    logical, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "Containerfile ends inside a line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k] = v
        elif op == "FROM":
            parts = rest.split()
            base = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0]
            )
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            assert stages, f"{op} before the first FROM"
            stages[-1].instructions.append((op, rest))
    return args, stages


def stages() -> list[Stage]:
    assert CONTAINERFILE.exists(), "Containerfile is missing"
    return parse_containerfile(CONTAINERFILE.read_text())[1]


def copy_sources(rest: str) -> tuple[list[str], str | None]:
    """Sources of a COPY (shell or JSON form) and its --from stage, if any."""
    flags = re.findall(r"--(\w+)=(\S+)", rest)
    rest = re.sub(r"--\w+=\S+\s*", "", rest).strip()
    parts = json.loads(rest) if rest.startswith("[") else rest.split()
    return parts[:-1], dict(flags).get("from")


def dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent dirs decides."""
    pieces = rel.split("/")
    candidates = ["/".join(pieces[: i + 1]) for i in range(len(pieces))]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.strip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(Path(c).name, pat[3:]) for c in candidates)
        else:
            hit = any(fnmatch.fnmatchcase(c, pat) for c in candidates)
        if hit:
            excluded = not neg
    return excluded


def dockerignore_patterns() -> list[str]:
    assert DOCKERIGNORE.exists(), ".dockerignore is missing"
    return [
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]


def pyproject() -> dict:
    path = REPO / "pyproject.toml"
    if not path.exists():
        pytest.fail("pyproject.toml is missing (it comes with the foundation, issue 2: merge main)")
    return tomllib.loads(path.read_text())


def test_dockerignore_matcher_follows_docker_semantics():
    pats = ["*", "!pyproject.toml", "!exporter", "**/__pycache__"]
    assert dockerignore_excludes(".git/config", pats)
    assert dockerignore_excludes("tests/unit/x.py", pats)
    assert not dockerignore_excludes("exporter/cli.py", pats)
    assert not dockerignore_excludes("pyproject.toml", pats)
    assert dockerignore_excludes("exporter/__pycache__/cli.cpython-311.pyc", pats)


def containerfile_args() -> dict[str, str]:
    return parse_containerfile(CONTAINERFILE.read_text())[0]


def test_builder_on_the_base_argument_final_on_scratch():
    st = stages()
    assert len(st) == 2, "builder stage + final stage"
    assert containerfile_args()["BASE_IMAGE"] == DEFAULT_BASE
    assert st[0].base == DEFAULT_BASE and st[0].name, (
        "the builder is named and runs on ${BASE_IMAGE}"
    )
    assert st[-1].base == "scratch", "the final stage holds only what the builder assembled"


def test_build_script_reads_the_default_base_from_the_containerfile():
    text = BUILD_SCRIPT.read_text()
    assert "sed -n 's/^ARG BASE_IMAGE=//p'" in text, (
        "build-image.sh must take the public base from here"
    )
    assert re.search(r"--build-arg \"BASE_IMAGE=\$BASE\"", text)
    assert "mmdebstrap" in text and "--include=python3" in text and "--variant=minbase" in text


def test_final_stage_copies_only_the_rootfs_and_runs_nothing():
    final, builder = stages()[-1], stages()[0]
    copies = [rest for op, rest in final.instructions if op in ("COPY", "ADD")]
    assert [op for op, _ in final.instructions if op == "ADD"] == [], "ADD can fetch URLs; use COPY"
    assert len(copies) == 1, copies
    sources, src_stage = copy_sources(copies[0])
    assert src_stage == builder.name and sources == ["/rootfs/"], copies[0]
    assert not [r for op, r in final.instructions if op == "RUN"], (
        "no RUN on scratch (no shell there)"
    )


def test_builder_installs_from_wheels_only_and_checks_the_rootfs():
    runs = " ".join(rest for op, rest in stages()[0].instructions if op == "RUN")
    assert "--no-index" in runs and "--find-links /wheels" in runs, "wheels only: no index, no TLS"
    assert "venv --without-pip" in runs, "a venv the final stage copies; no pip in it"
    assert "rootfs.py /opt/venv /rootfs" in runs
    assert re.search(r"chroot /rootfs \S*nodenet-exporter --version", runs), (
        "the assembled tree must run alone"
    )
    assert not BUILD_TOOLS.search(runs), f"build tooling in the builder: {runs}"


def test_entrypoint_user_env_and_port():
    final = stages()[-1]
    ops = {op: rest for op, rest in final.instructions}
    assert json.loads(ops["ENTRYPOINT"]) == [ENTRYPOINT], (
        "exec form, nothing but the console script"
    )
    user = ops["USER"].split(":")
    assert user == ["65534", "65534"], "numeric non-root default user"
    assert "9834" in ops["EXPOSE"].split()
    env = " ".join(rest for op, rest in final.instructions if op == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "readOnlyRootFilesystem: no .pyc writes at run time"
    assert "PYTHONMALLOC=malloc" in env, "the memory policy of exporter/memory.py, without re-exec"
    assert "PATH=/opt/venv/bin" in env


def test_oci_labels():
    labels = " ".join(rest for op, rest in stages()[-1].instructions if op == "LABEL")
    for key in ("version", "source", "revision", "licenses", "title"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    lic = pyproject()["project"]["license"]
    assert f'org.opencontainers.image.licenses="{lic["text"]}"' in labels


def test_every_copied_source_is_staged_or_in_the_repository_and_survives_dockerignore():
    pats = dockerignore_patterns()
    copied = []
    for stage in stages():
        for op, rest in stage.instructions:
            if op != "COPY":
                continue
            sources, from_stage = copy_sources(rest)
            if from_stage:
                continue
            for src in sources:
                rel = src.rstrip("/")
                assert rel in STAGED or (REPO / rel).exists(), f"COPY {src}: not in the repository"
                assert not dockerignore_excludes(rel, pats), (
                    f"COPY {src}: excluded by .dockerignore"
                )
                assert not dockerignore_excludes(f"{rel}/x.whl", pats) or rel not in STAGED
                copied.append(rel)
    assert set(copied) == {"wheels", "deploy/image/rootfs.py"}, copied
    # build-image.sh stages exactly these
    text = BUILD_SCRIPT.read_text()
    assert 'cp "$REPO/deploy/image/rootfs.py" "$CTX/deploy/image/"' in text
    assert '"$CTX/wheels"' in text
    # and nothing else of the repository reaches a context made at the root
    for rel in (".git/config", "tests/unit/x.py", "exporter/cli.py", ".cache/image/base.tar"):
        assert dockerignore_excludes(rel, pats), rel


def test_wheel_source_copy_has_every_file_the_wheel_build_reads():
    """build-image.sh builds the exporter's wheel from a copy: readme/license files named in
    pyproject.toml must be in it, or `pip wheel` fails."""
    project = pyproject()["project"]
    m = re.search(r'cp -r (.*) "\$CACHE/src/"', BUILD_SCRIPT.read_text())
    assert m, "build-image.sh copies the wheel's sources to $CACHE/src"
    copied = {p.strip('"').removeprefix("$REPO/") for p in m.group(1).split()}
    needed = ["pyproject.toml", "exporter"]
    readme = project.get("readme")
    if isinstance(readme, str):
        needed.append(readme)
    elif isinstance(readme, dict) and "file" in readme:
        needed.append(readme["file"])
    lic = project.get("license")
    if isinstance(lic, dict) and "file" in lic:
        needed.append(lic["file"])
    missing = [n for n in needed if n not in copied]
    assert not missing, f"pyproject.toml reads {missing} but build-image.sh does not copy them"


def test_entrypoint_is_the_projects_console_script():
    scripts = pyproject()["project"].get("scripts", {})
    assert ENTRYPOINT in scripts, (
        f"pyproject.toml [project.scripts] has no {ENTRYPOINT!r}: {scripts}"
    )


# --------------------------------------------------------------------------- manifest -> podman


NODE_IP = "192.0.2.1"


def test_the_daemonset_translates_to_the_documented_podman_run():
    tr = k8s_podman.translate(k8s_podman.base_daemonset(), "nn-x", NODE_IP, "node-a")
    a = tr.args
    assert a[0] == "--network=ns:/run/netns/nn-x"
    assert "--user=0:0" in a
    assert [x for x in a if x.startswith("--cap-")] == ["--cap-drop=ALL", "--cap-add=NET_ADMIN"]
    assert "--read-only" in a and "--read-only-tmpfs=false" in a
    assert "--security-opt=no-new-privileges" in a
    assert f"--security-opt=seccomp={k8s_podman.PODMAN_DEFAULT_SECCOMP}" in a
    assert "--privileged" not in a and not [
        x for x in a if x.startswith(("--mount", "--pid", "--ipc"))
    ]
    assert tr.env == {"HOST_IP": NODE_IP, "NODE_NAME": "node-a"}
    assert tr.command_args[0] == f"--web.listen-address={NODE_IP}:9834"
    assert {p.path for p in tr.probes.values()} == {"/healthz"}
    assert {p.port for p in tr.probes.values()} == {9834}


def _broken(edit) -> dict:
    ds = copy.deepcopy(k8s_podman.base_daemonset())
    pod = ds["spec"]["template"]["spec"]
    edit(pod, pod["containers"][0])
    return ds


@pytest.mark.parametrize(
    "what,edit",
    [
        ("pod field", lambda pod, c: pod.update(hostUsers=False)),
        (
            "container field",
            lambda pod, c: c.update(lifecycle={"preStop": {"exec": {"command": ["x"]}}}),
        ),
        (
            "securityContext field",
            lambda pod, c: c["securityContext"].update(seLinuxOptions={"type": "x"}),
        ),
        (
            "secret env",
            lambda pod, c: c["env"].append(
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}
            ),
        ),
        (
            "emptyDir",
            lambda pod, c: (
                pod.update(volumes=[{"name": "v", "emptyDir": {}}]),
                c.update(volumeMounts=[{"name": "v", "mountPath": "/v"}]),
            ),
        ),
        ("cpu limit", lambda pod, c: c["resources"]["limits"].update(cpu="1")),
        ("own network namespace", lambda pod, c: pod.update(hostNetwork=False)),
    ],
)
def test_translation_refuses_what_it_does_not_know(what, edit):
    with pytest.raises(k8s_podman.Untranslatable):
        k8s_podman.translate(_broken(edit), "nn-x", NODE_IP, "node-a")


def test_translation_expands_args_as_kubernetes_does():
    ds = _broken(
        lambda pod, c: c.update(args=["--a=$(HOST_IP)", "--b=$$(HOST_IP)", "--c=$(UNSET)"])
    )
    tr = k8s_podman.translate(ds, "nn-x", NODE_IP, "node-a")
    assert tr.command_args == [f"--a={NODE_IP}", "--b=$(HOST_IP)", "--c=$(UNSET)"]


def test_every_component_renders_and_translates(tmp_path):
    comps = deploy_components.components()
    assert comps, "deploy/components/ holds no component"
    for comp in comps:
        ds = deploy_components.rendered_daemonset(comp)
        tr = k8s_podman.translate(
            ds, "nn-x", NODE_IP, "node-a", host_paths={"/run/netns": str(tmp_path)}
        )
        assert "--cap-add=NET_ADMIN" in tr.args, comp


def test_conntrack_netns_component_grants_setns_and_run_netns_only(tmp_path):
    ds = deploy_components.rendered_daemonset("conntrack-netns")
    tr = k8s_podman.translate(
        ds, "nn-x", NODE_IP, "node-a", host_paths={"/run/netns": str(tmp_path)}
    )
    base = k8s_podman.translate(k8s_podman.base_daemonset(), "nn-x", NODE_IP, "node-a")
    extra = [a for a in tr.args if a not in base.args]
    assert extra == [
        "--cap-add=SYS_ADMIN",
        f"--mount=type=bind,src={tmp_path},dst=/run/netns,ro=true,bind-propagation=rslave",
    ]
    assert tr.command_args == base.command_args + ["--collector.conntrack.netns"]
