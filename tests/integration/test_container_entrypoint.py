"""The image's build and run steps, replayed without a container engine.

No image can be built on this machine (the docker client has no daemon, and the base image's
registry is unreachable), so this test does what the Containerfile does, step for step, on the
host's Python 3.11:
  builder: a build context holding only the files the Containerfile COPYs (filtered like
           .dockerignore), `pip wheel --wheel-dir W .`, then `pip install --no-index
           --find-links W nodenet-exporter` into a fresh virtualenv (no system site-packages);
  final:   pip, setuptools and wheel removed, then the `nodenet-exporter` console script run
           from an unrelated directory with PYTHONDONTWRITEBYTECODE=1.
It needs PyPI for the dependencies' wheels (as the image build does).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from test_container_files import (  # noqa: E402
    copy_sources,
    dockerignore_excludes,
    dockerignore_patterns,
    stages,
)


def build_context(dest: Path) -> None:
    """Copy what the builder stage COPYs, minus what .dockerignore drops."""
    pats = dockerignore_patterns()
    for op, rest in stages()[0].instructions:
        if op != "COPY":
            continue
        sources, from_stage = copy_sources(rest)
        assert from_stage is None
        for src in sources:
            rel = src.rstrip("/")
            path = REPO / rel
            if not path.exists():
                pytest.fail(f"Containerfile COPYs {src}, which is not in the repository (merge main?)")
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for f in files:
                r = f.relative_to(REPO).as_posix()
                if dockerignore_excludes(r, pats):
                    continue
                (dest / r).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest / r)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_wheel_installs_into_a_fresh_venv_and_the_entrypoint_runs(tmp_path):
    if not (REPO / "pyproject.toml").exists():
        pytest.fail("pyproject.toml is missing (it comes with the foundation, issue 2: merge main)")
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("version")
    ctx, wheels, venv, elsewhere = (tmp_path / n for n in ("ctx", "wheels", "venv", "elsewhere"))
    for d in (ctx, wheels, elsewhere):
        d.mkdir()
    build_context(ctx)

    # builder stage
    built = run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--wheel-dir", str(wheels), "."],
                cwd=ctx)
    ours = list(wheels.glob("nodenet_exporter-*.whl"))
    assert len(ours) == 1, [p.name for p in wheels.iterdir()]
    # Anything pip had to build from source must be pure Python: python:3.11-slim has no compiler.
    for name in re.findall(r"Building wheel for (\S+)", built.stdout):
        if name.replace("-", "_").lower() == "nodenet_exporter":
            continue
        whl = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(name.replace("-", "_").lower() + "-")]
        assert whl and all(p.name.endswith("-none-any.whl") for p in whl), (
            f"{name} was compiled from an sdist; the slim builder has no compiler"
        )
    run([sys.executable, "-m", "venv", str(venv)])
    vpy = venv / "bin" / "python"
    run([str(vpy), "-m", "pip", "install", "--disable-pip-version-check", "--no-index", "--find-links", str(wheels),
         "nodenet-exporter"])

    # final stage: no packaging tools left, then the entrypoint, from a directory with no sources
    run([str(vpy), "-m", "pip", "uninstall", "--yes", "pip", "setuptools", "wheel"])
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(elsewhere)}
    out = run([str(venv / "bin" / "nodenet-exporter"), "--version"], cwd=elsewhere, env=env)
    text = out.stdout + out.stderr
    assert "nodenet" in text.lower() or (version and version in text), text
    if version:
        assert version in text, f"--version does not print the package version {version}: {text!r}"

    # every module of the package is in the wheel and imports without the repository
    # (__main__ is left out: importing it would start the exporter)
    probe = (
        "import importlib, pkgutil, exporter\n"
        "mods = sorted(m.name for m in pkgutil.walk_packages(exporter.__path__, 'exporter.')\n"
        "              if not m.name.endswith('.__main__'))\n"
        "[importlib.import_module(m) for m in mods]\n"
        "print(exporter.__file__)\n"
        "print('\\n'.join(mods))\n"
    )
    out = run([str(vpy), "-c", probe], cwd=elsewhere, env=env)
    location, *installed = out.stdout.split()
    assert Path(location).is_relative_to(venv), f"exporter imported from {location}, not the venv"
    expected = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts[:-1] if p.name == "__init__.py"
                 else p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "exporter").rglob("*.py")
        if p.name != "__main__.py" and p != REPO / "exporter" / "__init__.py" and "__pycache__" not in p.parts
    )
    assert installed == expected, f"modules in the wheel differ from the repository: {set(expected) ^ set(installed)}"
