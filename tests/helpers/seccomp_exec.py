"""Run a command under a seccomp profile in the Docker/OCI JSON format (flat rules only),
applied with libseccomp through ctypes: what a container runtime does with a Localhost profile.

    python tests/helpers/seccomp_exec.py PROFILE.json -- CMD [ARGS...]

Supports defaultAction/defaultErrnoRet and rules {names, action, errnoRet, args} with the
SCMP_ACT_ALLOW / SCMP_ACT_ERRNO actions and SCMP_CMP_* argument comparisons; a rule naming a
syscall this architecture does not have is skipped (as runc does); anything else is an error.
The filter applies to the native architecture; no_new_privs is set (libseccomp's default).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import sys

ACT_ALLOW = 0x7FFF0000
OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
       "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ALLOW":
        return ACT_ALLOW
    if name == "SCMP_ACT_ERRNO":
        return 0x00050000 | ((errno_ret if errno_ret is not None else errno.EPERM) & 0xFFFF)
    raise ValueError(f"action {name} not supported here")


def apply(profile: dict) -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(action(profile["defaultAction"], profile.get("defaultErrnoRet")))
    if not ctx:
        raise OSError("seccomp_init failed")
    for rule in profile["syscalls"]:
        act = action(rule["action"], rule.get("errnoRet"))
        args = rule.get("args") or []
        arr = (ArgCmp * max(1, len(args)))(*[ArgCmp(a["index"], OPS[a["op"]], a["value"],
                                                    a.get("valueTwo", 0)) for a in args])
        for name in rule["names"]:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue                                  # not a syscall on this architecture
            rc = lib.seccomp_rule_add_array(ctx, act, nr, len(args), arr)
            if rc < 0 and -rc != errno.EEXIST:
                raise OSError(-rc, f"seccomp_rule_add {name}")
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        raise OSError(-rc, "seccomp_load")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        apply(json.load(fh))
    os.execvp(argv[2], argv[2:])
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
