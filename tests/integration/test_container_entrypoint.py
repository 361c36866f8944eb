"""The image's build steps, replayed on the host without a container engine.

tests/container/test_image.py builds and runs the real image; this test checks the same steps
piece by piece, quickly and with clear failures:
  context: `deploy/build-image.sh --context-only` stages the wheels (the exporter's, and its
           dependencies' from `pip download --only-binary --platform manylinux...`) exactly as
           for the image;
  wheels:  every one is pure Python or a manylinux wheel the image's CPython 3.11 and glibc 2.36
           (bookworm) can load;
  builder: a venv without pip, pip run from its wheel with --no-index (as the Containerfile);
  rootfs:  deploy/image/rootfs.py assembles the tree from the host's own interpreter and that
           venv, and the tree runs alone under chroot: `nodenet-exporter --version`, and every
           module of the package imports (the same check the Containerfile's builder makes).
It needs the package index for the dependencies' wheels (as the image build does), and root
(chroot).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE_PY = (3, 11)
IMAGE_GLIBC = (2, 36)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=600, check=False, **kw
    )
    assert r.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    )
    return r


def wheel_loads_in_image(name: str) -> bool:
    """Is this wheel installable by CPython 3.11 on x86_64 glibc 2.36 (by its filename tags)?"""
    m = re.fullmatch(r"[^-]+-[^-]+(?:-\d[^-]*)?-([^-]+)-([^-]+)-([^-]+)\.whl", name)
    assert m, f"not a wheel name: {name}"
    pys, abis, plats = (set(x.split(".")) for x in m.groups())
    ok_py = any(
        p in ("py3", f"cp{IMAGE_PY[0]}{IMAGE_PY[1]}")
        or (p.startswith("cp3") and "abi3" in abis and int(p[3:]) <= IMAGE_PY[1])
        for p in pys
    )
    ok_plat = False
    for plat in plats:
        if plat == "any":
            ok_plat = True
        legacy = {
            "manylinux1_x86_64": (2, 5),
            "manylinux2010_x86_64": (2, 12),
            "manylinux2014_x86_64": (2, 17),
        }
        if plat in legacy and legacy[plat] <= IMAGE_GLIBC:
            ok_plat = True
        mm = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", plat)
        if mm and (int(mm.group(1)), int(mm.group(2))) <= IMAGE_GLIBC:
            ok_plat = True
    return ok_py and ok_plat


def test_wheel_tag_check_is_not_vacuous():
    assert wheel_loads_in_image(
        "pyyaml-6.0.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
    )
    assert wheel_loads_in_image("bcrypt-5.0.0-cp39-abi3-manylinux2014_x86_64.whl")
    assert not wheel_loads_in_image("pyyaml-6.0.4-cp312-cp312-manylinux2014_x86_64.whl")
    assert not wheel_loads_in_image("x-1.0-cp311-cp311-manylinux_2_39_x86_64.whl")
    assert not wheel_loads_in_image("x-1.0-cp311-cp311-linux_x86_64.whl")
    assert not wheel_loads_in_image("x-1.0-cp311-cp311-musllinux_1_1_x86_64.whl")


def test_build_steps_replayed_without_an_engine(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("needs root (chroot into the assembled tree); run the suite via tests/run.sh")
    if sys.version_info[:2] != IMAGE_PY:
        pytest.fail(
            f"the host Python is {sys.version_info[:2]}, the image's {IMAGE_PY}: "
            "the replay needs the same"
        )
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    env = {**os.environ, "NODENET_IMAGE_CACHE": str(tmp_path / "cache"), "PYTHON": sys.executable}
    ctx = Path(
        run(["bash", REPO / "deploy" / "build-image.sh", "--context-only"], env=env).stdout.split()[
            -1
        ]
    )

    wheels = sorted(p.name for p in (ctx / "wheels").glob("*.whl"))
    assert any(w.startswith("nodenet_exporter-") for w in wheels) and any(
        w.startswith("pip-") for w in wheels
    )
    bad = [w for w in wheels if not wheel_loads_in_image(w)]
    assert not bad, (
        f"wheels the image's CPython {IMAGE_PY} / glibc {IMAGE_GLIBC} cannot load: {bad}"
    )
    assert (ctx / "deploy" / "image" / "rootfs.py").is_file()

    # builder stage, as the Containerfile runs it
    venv = tmp_path / "opt" / "venv"
    run([sys.executable, "-I", "-m", "venv", "--without-pip", venv])
    (pip_whl,) = (ctx / "wheels").glob("pip-*.whl")
    run(
        [
            venv / "bin" / "python",
            "-I",
            f"{pip_whl}/pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--find-links",
            ctx / "wheels",
            "nodenet-exporter",
        ]
    )
    assert not list((venv / "lib").glob("python3*/site-packages/pip")), (
        "pip was installed into the venv"
    )

    tree = tmp_path / "rootfs"
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    run([sys.executable, "-I", REPO / "deploy" / "image" / "rootfs.py", venv, tree])
    inside = "/" / venv.relative_to("/")  # the venv sits at the same path inside the tree
    chroot_env = {"PATH": f"{inside}/bin", "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    out = run([chroot, tree, f"{inside}/bin/nodenet-exporter", "--version"], env=chroot_env)
    assert version in out.stdout + out.stderr, out
    assert not (tree / "bin" / "sh").exists() and not (tree / "usr" / "bin" / "sh").exists(), (
        "a shell in the tree"
    )

    # every module of the package is in the wheel and imports inside the tree alone
    probe = (
        "import importlib, pkgutil, exporter\n"
        "mods = sorted(m.name for m in pkgutil.walk_packages(exporter.__path__, 'exporter.')\n"
        "              if not m.name.endswith('.__main__'))\n"
        "[importlib.import_module(m) for m in mods]\n"
        "import ssl, ctypes; ctypes.CDLL('libc.so.6')\n"
        "print(exporter.__file__)\n"
        "print('\\n'.join(mods))\n"
    )
    out = run([chroot, tree, f"{inside}/bin/python", "-I", "-c", probe], env=chroot_env)
    location, *installed = out.stdout.split()
    assert Path(location).is_relative_to(inside), f"exporter imported from {location}, not the venv"
    expected = sorted(
        ".".join(
            p.relative_to(REPO).with_suffix("").parts[:-1]
            if p.name == "__init__.py"
            else p.relative_to(REPO).with_suffix("").parts
        )
        for p in (REPO / "exporter").rglob("*.py")
        if p.name != "__main__.py"
        and p != REPO / "exporter" / "__init__.py"
        and "__pycache__" not in p.parts
    )
    assert installed == expected, (
        f"modules in the wheel differ from the repository: {set(expected) ^ set(installed)}"
    )
