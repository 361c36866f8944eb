"""The Containerfile and .dockerignore, checked without a container engine.

No image is built on this machine: the docker client is installed but no daemon runs, and the
base image registry is out of reach. What can be checked is checked here (structure, the files
the builder COPYs, the entrypoint name) and in tests/integration/test_container_entrypoint.py
(the builder's wheel steps, replayed in a fresh virtualenv, then the entrypoint run).
"""
from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "Containerfile"
DOCKERIGNORE = REPO / ".dockerignore"
BASE_IMAGE = "python:3.11-slim"
ENTRYPOINT = "nodenet-exporter"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|python3?-dev|libc6-dev|apt-get|apk|dnf|yum)\b")


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
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0])
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
    return [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


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


def test_multi_stage_on_slim_python():
    st = stages()
    assert len(st) >= 2, "builder stage + final stage"
    assert all(s.base == BASE_IMAGE for s in st), [s.base for s in st]
    assert st[0].name, "the builder stage must be named so the final stage copies from it"


def test_final_stage_has_no_build_tools_and_copies_only_from_builder():
    final, builder = stages()[-1], stages()[0]
    for op, rest in final.instructions:
        if op in ("COPY", "ADD"):
            assert op == "COPY", "ADD can fetch URLs and unpack archives; use COPY"
            _, src_stage = copy_sources(rest)
            assert src_stage == builder.name, f"final stage copies from the build context: {rest}"
        if op == "RUN":
            assert not BUILD_TOOLS.search(rest.replace("pip uninstall", "")), f"build tooling in final stage: {rest}"
    runs = " ".join(rest for op, rest in final.instructions if op == "RUN")
    assert re.search(r"pip uninstall .*\bpip\b", runs), "the final stage should remove pip itself"


def test_entrypoint_user_and_port():
    final = stages()[-1]
    ops = {op: rest for op, rest in final.instructions}
    assert json.loads(ops["ENTRYPOINT"]) == [ENTRYPOINT], "exec form, nothing but the console script"
    user = ops["USER"].split(":")
    assert user[0].isdigit() and int(user[0]) != 0, "numeric non-root default user"
    assert "9834" in ops["EXPOSE"].split()
    env = " ".join(rest for op, rest in final.instructions if op == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "readOnlyRootFilesystem: no .pyc writes at run time"
    assert "PYTHONMALLOC=malloc" in env, "the memory policy of exporter/memory.py, without re-exec"


def test_every_copied_source_exists_and_survives_dockerignore():
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
                assert (REPO / rel).exists(), f"COPY {src}: not in the repository"
                assert not dockerignore_excludes(rel, pats), f"COPY {src}: excluded by .dockerignore"
                if (REPO / rel).is_dir():
                    py = [p.relative_to(REPO).as_posix() for p in (REPO / rel).rglob("*.py")]
                    assert py, f"COPY {src}: no Python files in it"
                    dropped = [p for p in py if dockerignore_excludes(p, pats)]
                    assert not dropped, f".dockerignore drops sources: {dropped}"
                copied.append(rel)
    assert {"pyproject.toml", "exporter"} <= set(copied)


def test_builder_copies_every_file_the_wheel_build_reads():
    """readme/license files named in pyproject.toml must be in the builder, or `pip wheel` fails."""
    project = pyproject()["project"]
    copied = {
        src.rstrip("/")
        for stage in stages()
        for op, rest in stage.instructions
        if op == "COPY" and not copy_sources(rest)[1]
        for src in copy_sources(rest)[0]
    }
    needed = []
    readme = project.get("readme")
    if isinstance(readme, str):
        needed.append(readme)
    elif isinstance(readme, dict) and "file" in readme:
        needed.append(readme["file"])
    lic = project.get("license")
    if isinstance(lic, dict) and "file" in lic:
        needed.append(lic["file"])
    needed += project.get("license-files", []) if isinstance(project.get("license-files"), list) else []
    missing = [n for n in needed if n not in copied]
    assert not missing, f"pyproject.toml reads {missing} but the Containerfile does not COPY them"


def test_entrypoint_is_the_projects_console_script():
    scripts = pyproject()["project"].get("scripts", {})
    assert ENTRYPOINT in scripts, f"pyproject.toml [project.scripts] has no {ENTRYPOINT!r}: {scripts}"
