"""Run a script inside a User-Mode Linux guest with a real IPVS kernel.

    from tests.vm.uml import run_guest
    res = run_guest("ipvsadm -Ln > $OUT/ln.txt", timeout=120)
    res.assert_ok()
    text = res.read("ln.txt")

The guest is Debian's `user-mode-linux` kernel (fetched by tests/vm/setup_uml.sh into the
git-ignored tests/vm/.cache/).  It runs as an ordinary host process, with the host's `/` as
its read-only root (hostfs), so the host's Python (this interpreter, with its site-packages),
`ip` and the project's checkout are usable inside.  Writable inside: tmpfs on /tmp, /run,
/var/tmp, and the per-run result dir `outdir` (hostfs, read-write, same path as on the host).
The checkout is mounted from the host when the guest's /tmp hides it.

PID 1 is tests/vm/uml_init.sh: it loads `modules` with the cache's modprobe (which also
serves the kernel's own module autoload, so a test can observe whether something made the
kernel load ip_vs), brings lo up and runs the script with bash.  Environment of the script:
OUT (outdir), CODE (checkout), PY (this Python), PYTHONPATH=CODE, UML_CACHE, and PATH with
`ipvsadm`, `node_exporter`, `busybox`, `uml-modprobe` from the cache first.

A guest that does not boot raises UMLBootError (with the console), never a skip.
Command line: python tests/vm/uml.py [--no-ipvs] [--extra-modules tunnels|M,...] [--timeout S]
SCRIPT_OR_TEXT
"""
from __future__ import annotations

import itertools
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CODE = HERE.parent.parent
CACHE = Path(os.environ.get("UML_CACHE", HERE / ".cache"))
SETUP = HERE / "setup_uml.sh"
INIT = HERE / "uml_init.sh"

#: loaded at boot, in this order (dependencies come with modprobe).  nf_conntrack gets
#: enable_hooks=1 from the cache's modprobe.d, so IPVS-NATed flows are tracked too.
DEFAULT_MODULES = (
    "nf_conntrack", "nf_conntrack_netlink", "ipv6", "sctp", "dummy",
    "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs_wlc", "ip_vs_lc",
)
#: the same kernel, without IPVS (the "absent" case)
NO_IPVS_MODULES = tuple(m for m in DEFAULT_MODULES if not m.startswith("ip_vs"))
#: link kinds for the netdev tests, as `extra_modules` (setup_uml.sh extracts them).  Loading
#: ipip, ip_gre, ip6_gre, sit, ip6_tunnel and bonding creates their fallback devices
#: (tunl0, gre0, gretap0, erspan0, ip6gre0, sit0, ip6tnl0, bond0) as on any node.
TUNNEL_MODULES = ("vxlan", "geneve", "ipip", "ip_gre", "ip6_gre", "sit", "ip6_tunnel",
                  "8021q", "bonding")


class UMLError(RuntimeError):
    """The harness could not be prepared (setup failed, kernel missing...)."""


class UMLBootError(UMLError):
    """The guest did not reach the point of running the script."""


@dataclass
class GuestResult:
    rc: int | None            # the script's exit status; None if it never reported one
    console: str              # the whole console (kernel + init + script output)
    outdir: Path              # host path of the guest's read-write result dir
    timed_out: bool = False
    elapsed: float = 0.0      # host wall seconds, boot to power-off
    boot_seconds: float = 0.0  # host wall seconds until the script started
    marks: dict = field(default_factory=dict)

    def read(self, name: str) -> str:
        return (self.outdir / name).read_text()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.console.splitlines()[-n:])

    def assert_ok(self) -> "GuestResult":
        if self.timed_out:
            raise AssertionError(f"UML guest timed out after {self.elapsed:.0f}s; console tail:\n"
                                 + self.tail())
        if self.rc != 0:
            raise AssertionError(f"UML guest script failed rc={self.rc}; console tail:\n"
                                 + self.tail())
        return self


_setup_done = False


def ensure_setup() -> Path:
    """Run setup_uml.sh (idempotent, cheap when the cache is complete); return the cache."""
    global _setup_done
    if _setup_done:
        return CACHE
    env = dict(os.environ, UML_CACHE=str(CACHE))
    p = subprocess.run(["bash", str(SETUP)], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    if p.returncode != 0:
        raise UMLError(f"tests/vm/setup_uml.sh failed (rc={p.returncode}):\n{p.stdout}")
    if not (CACHE / "uml/usr/bin/linux.uml").exists():
        raise UMLError(f"linux.uml missing in {CACHE} after setup:\n{p.stdout}")
    _setup_done = True
    return CACHE


_counter = itertools.count()


def _new_outdir(tag: str) -> Path:
    runs = CACHE / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    # keep the 30 most recent runs for inspection
    old = sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime)
    for p in old[:-30]:
        shutil.rmtree(p, ignore_errors=True)
    d = runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}-{os.getpid()}-{next(_counter)}"
    d.mkdir()
    return d


def _shell_quote(v: str) -> str:
    return "'" + v.replace("'", "'\\''") + "'"


def run_guest(script: str | os.PathLike, timeout: float = 300, *,
              modules=DEFAULT_MODULES, extra_modules=(), mem_mb: int = 1024,
              env: dict | None = None,
              outdir: str | os.PathLike | None = None, tag: str = "guest",
              echo: bool = False) -> GuestResult:
    """Boot UML, run `script` (bash text, or a path to a bash script) and power off.

    `modules` are loaded at boot, then `extra_modules` (e.g. TUNNEL_MODULES).
    Returns the script's exit status, the console and the result dir.  Raises UMLBootError
    when the guest does not come up (kernel missing, hostfs failed, ...)."""
    ensure_setup()
    out = Path(outdir) if outdir else _new_outdir(tag)
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    for p in (out, CODE):
        if re.search(r"\s", str(p)):
            raise UMLError(f"path with whitespace cannot go on the UML command line: {p}")
    sp = Path(script) if not isinstance(script, str) or ("\n" not in script and
                                                         os.path.isfile(script)) else None
    text = sp.read_text() if sp else str(script)
    (out / "guest.sh").write_text(text if text.endswith("\n") else text + "\n")
    genv = {
        "UML_CACHE": str(CACHE),
        "NN_MODULES": " ".join(tuple(modules) + tuple(extra_modules)),
        "OUT": str(out),
        "CODE": str(CODE),
        "PY": sys.executable,
        "PYTHONPATH": str(CODE),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PATH": f"{CACHE}/bin:{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:"
                "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    genv.update(env or {})
    (out / "guest.env").write_text(
        "".join(f"{k}={_shell_quote(str(v))}\n" for k, v in genv.items()))
    # UML's guest-memory file (sparse, unlinked) is best on a tmpfs
    umltmp = Path("/dev/shm")
    if not (umltmp.is_dir() and os.access(umltmp, os.W_OK | os.X_OK)):
        umltmp = CACHE / "tmp"
        umltmp.mkdir(exist_ok=True)
    cmd = [str(CACHE / "uml/usr/bin/linux.uml"), f"mem={int(mem_mb)}M",
           "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro",
           f"init={INIT}", "con=null", "con0=null,fd:1", "ssl=null", "quiet",
           f"nn.out={out}", f"nn.code={CODE}"]
    penv = dict(os.environ, TMPDIR=str(umltmp))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, env=penv)
    lines: list[str] = []
    marks: dict[str, float] = {}
    rc = None
    timed_out = False
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = t0 + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not sel.select(timeout=min(left, 1.0)):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode("utf-8", "replace").rstrip("\r")
                lines.append(line)
                if echo:
                    print(f"[uml {time.monotonic() - t0:6.2f}s] {line}", flush=True)
                if "NN_INIT ready" in line:
                    marks["ready"] = time.monotonic() - t0
                m = re.search(r"NN_MARK (\S+)", line)
                if m:
                    marks[m.group(1)] = time.monotonic() - t0
                m = re.search(r"NN_EXIT rc=(\d+)", line)
                if m:
                    rc = int(m.group(1))
    finally:
        sel.close()
        if timed_out or proc.poll() is None:
            try:
                proc.wait(timeout=0 if timed_out else 20)
            except subprocess.TimeoutExpired:
                pass
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        proc.stdout.close()
    if buf:
        lines.append(buf.decode("utf-8", "replace"))
    console = "\n".join(lines)
    (out / "console.log").write_text(console + "\n")
    res = GuestResult(rc=rc, console=console, outdir=out, timed_out=timed_out,
                      elapsed=time.monotonic() - t0, boot_seconds=marks.get("ready", 0.0),
                      marks=marks)
    if "ready" not in marks:
        raise UMLBootError(
            f"User-Mode Linux did not boot (exit {proc.returncode}, "
            f"{'timeout' if timed_out else 'no NN_INIT ready line'}); command: {' '.join(cmd)}\n"
            f"console tail:\n{res.tail(80)}")
    return res


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("script", help="bash script path, or bash text")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--no-ipvs", action="store_true", help="boot without the ip_vs modules")
    ap.add_argument("--mem", type=int, default=1024, help="guest memory, MiB")
    ap.add_argument("--extra-modules", default="",
                    help="more modules to load, comma separated ('tunnels': TUNNEL_MODULES)")
    a = ap.parse_args(argv)
    extra = [m for m in a.extra_modules.split(",") if m]
    extra = [x for m in extra for x in (TUNNEL_MODULES if m == "tunnels" else (m,))]
    res = run_guest(a.script, a.timeout, modules=NO_IPVS_MODULES if a.no_ipvs else DEFAULT_MODULES,
                    extra_modules=extra, mem_mb=a.mem, echo=True)
    print(f"[host] rc={res.rc} timed_out={res.timed_out} boot={res.boot_seconds:.2f}s "
          f"total={res.elapsed:.2f}s outdir={res.outdir}", file=sys.stderr)
    return 124 if res.timed_out else (125 if res.rc is None else res.rc)


if __name__ == "__main__":
    sys.exit(main())
