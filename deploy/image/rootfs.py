"""Assemble the final image's root filesystem: the interpreter, its standard library, the venv
and the shared libraries they load; nothing else (no shell, no package manager, no pip).

Run inside the Containerfile's builder stage, by the base image's own Python, as
    python3 rootfs.py /opt/venv /rootfs
It works the same on both bases the Containerfile accepts (python:3.11-slim keeps Python under
/usr/local, Debian's python3 under /usr), because every path is asked of the interpreter
(sys.base_prefix, sysconfig) and of the dynamic loader (ldd), never assumed.

Copies keep the path layout and every symlink on the way (merged /usr: /lib64 -> usr/lib64 is
how the kernel finds the loader named in the ELF header).  Only the standard library's parts an
exporter never imports are left out (tests, IDLE, Tk, ensurepip, the static libpython in
config-3.11-*, the base's own site-packages).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

STDLIB_SKIP = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "pydoc_data",
    "distutils",
    "__phello__",
    "venv",
}
STDLIB_SKIP_PREFIX = ("config-",)
# Extension modules the exporter never imports, with the libraries only they pull in
# (readline/ncurses, Berkeley DB, NIS -> libtirpc -> Kerberos). sqlite3 stays: the exporter
# does not use it, but importing a dependency (pyroute2) does.
DYNLOAD_SKIP = re.compile(
    r"^(readline|_curses|_curses_panel|_dbm|_gdbm|nis|_tkinter|"
    r"_test\w*|_ctypes_test|_xxtestfuzz|xxlimited\w*|xxsubtype)\."
)
PACKAGE_SKIP = {"curses", "dbm"}
# The loader's own configuration: /usr/local/lib (python:3.11-slim's libpython) is found
# through ld.so.cache.
ETC_FILES = ["/etc/ld.so.cache", "/etc/ld.so.conf"]
ETC_DIRS = ["/etc/ld.so.conf.d"]
# uid/gid 65534 by name for tools that look it up; the image never needs more accounts.
PASSWD = (
    "root:x:0:0:root:/nonexistent:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"
LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def copy_path(src: str, root: Path) -> None:
    """Copy src into root at the same path, recreating each symlink on the way (and copying
    what it points at).  Directories are created, not copied: callers copy files."""
    cur = Path("/")
    parts = Path(src).parts[1:]
    for i, part in enumerate(parts):
        cur = cur / part
        dest = root / cur.relative_to("/")
        if cur.is_symlink():
            target = os.readlink(cur)
            if not dest.is_symlink():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, dest)
            resolved = (cur.parent / target) if not target.startswith("/") else Path(target)
            rest = Path(*parts[i + 1 :]) if i + 1 < len(parts) else None
            copy_path(os.path.normpath(resolved / rest if rest else resolved), root)
            return
        if i == len(parts) - 1:
            if cur.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            elif not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(cur, dest)
        elif not dest.exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copystat(cur, dest)


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def needed_libraries(elf: Path) -> set[str]:
    """The shared objects the loader maps for elf (ldd resolves $ORIGIN, RUNPATH, ld.so.cache)."""
    out = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, check=False)
    if "not a dynamic executable" in out.stdout + out.stderr or "statically linked" in out.stdout:
        return set()
    if out.returncode != 0 or "not found" in out.stdout:
        raise SystemExit(f"rootfs.py: ldd {elf} failed:\n{out.stdout}{out.stderr}")
    return {m.group(1) for m in LDD_LINE.finditer(out.stdout)}


def tree_files(
    top: Path, skip_top: frozenset[str] | set[str] = frozenset(), skip_prefix: tuple = ()
) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        if here == top:
            dirnames[:] = [
                d for d in dirnames if d not in skip_top and not d.startswith(skip_prefix)
            ]
        files += [here / f for f in filenames]
        files += [here / d for d in dirnames if (here / d).is_symlink()]
    return files


def python_files(venv: str) -> list[Path]:
    """The interpreter, its standard library (minus the skipped parts) and the venv."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    platstdlib = Path(sysconfig.get_paths()["platstdlib"])
    files: list[Path] = [Path(sys.executable), Path(os.path.realpath(sys.executable))]
    for top in dict.fromkeys([stdlib, platstdlib]):
        files += tree_files(top, STDLIB_SKIP | PACKAGE_SKIP, STDLIB_SKIP_PREFIX)
    # lib-dynload may sit outside the stdlib tree (Debian keeps it inside; others may not).
    dynload = Path(sysconfig.get_config_var("DESTSHARED") or stdlib / "lib-dynload")
    if dynload.is_dir() and not dynload.is_relative_to(stdlib):
        files += tree_files(dynload)
    files = [
        f for f in files if not (f.parent.name == "lib-dynload" and DYNLOAD_SKIP.match(f.name))
    ]
    return files + tree_files(Path(venv)) + [Path(venv)]


def skeleton(root: Path) -> None:
    """The loader's configuration, two accounts, the files and mount points a runtime uses."""
    for f in ETC_FILES:
        if os.path.exists(f):
            copy_path(f, root)
    for d in ETC_DIRS:
        if os.path.isdir(d):
            for p in tree_files(Path(d)):
                copy_path(str(p), root)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    # The runtime bind-mounts these; present in the image, nothing is created in the container
    # (podman diff stays empty).
    for f in ("hosts", "hostname", "resolv.conf"):
        (root / "etc" / f).write_text("")
    # podman creates it in every container that lacks it (as Debian ships it).
    (root / "etc" / "mtab").symlink_to("/proc/mounts")
    # Mount points the runtime fills; /tmp stays an empty directory (readOnlyRootFilesystem
    # gives no writable /tmp, and the exporter needs none).
    for d in ("proc", "sys", "dev", "run", "tmp"):
        (root / d).mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)


def main(venv: str, rootfs: str) -> None:
    root = Path(rootfs)
    root.mkdir(parents=True, exist_ok=False)
    files = python_files(venv)
    libs: set[str] = set()
    for f in files:
        if not f.is_symlink() and f.is_file() and is_elf(f):
            libs |= needed_libraries(f)
    for f in files + [Path(p) for p in sorted(libs)]:
        copy_path(str(f), root)
    skeleton(root)
    print(
        f"rootfs.py: {len(files)} files from {os.path.realpath(sys.executable)} and {venv}; "
        f"{len(libs)} shared libraries: {' '.join(sorted(libs))}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: rootfs.py VENV ROOTFS")
    main(sys.argv[1], sys.argv[2])
