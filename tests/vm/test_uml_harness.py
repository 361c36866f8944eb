"""The User-Mode Linux harness itself: exit status, result dir, a checkout under /tmp
(hidden by the guest's own /tmp), and a guest that cannot boot failing loudly."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import uml  # noqa: E402


def test_exit_status_output_dir_and_host_python():
    res = uml.run_guest('echo "$(uname -r) $(cat /proc/sys/kernel/modprobe)" > $OUT/k.txt\n'
                        '$PY -c "import exporter.sources.ipvs, sys; print(sys.executable)" > $OUT/py.txt\n'
                        'test -e /proc/net/ip_vs || exit 9\n'
                        'grep -q "^nf_conntrack " /proc/modules || exit 8\n'
                        # enable_hooks=1: conntrack tracks flows without any ct rule
                        '$PY -c "import socket; socket.socket(2, 2).sendto(b\'x\', (\'127.0.0.1\', 9))"\n'
                        '[ "$(cat /proc/sys/net/netfilter/nf_conntrack_count)" -ge 1 ] || exit 7\n'
                        "exit 3", timeout=120, tag="harness")
    assert res.rc == 3, res.tail()
    kver, helper = res.read("k.txt").split()
    assert kver != os.uname().release          # really the UML kernel
    assert helper.endswith("/bin/uml-modprobe")
    assert res.read("py.txt").strip() == sys.executable
    assert 0 < res.boot_seconds < res.elapsed


def test_checkout_under_tmp_is_mounted_in_the_guest(tmp_path):
    code = tmp_path / "checkout"          # pytest's tmp_path lives under /tmp
    assert str(code).startswith("/tmp/")
    shutil.copytree(uml.CODE / "exporter", code / "exporter",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (code / "tests" / "vm").mkdir(parents=True)
    for f in ("uml.py", "uml_init.sh", "setup_uml.sh"):
        shutil.copy(HERE / f, code / "tests" / "vm" / f)
    out = tmp_path / "out"
    script = ('[ "$CODE" = "%s" ] || exit 4\n'
              'cd / && $PY -c "import exporter.sources.ipvs as m; print(m.__file__)" > $OUT/where.txt\n'
              % code)
    env = dict(os.environ, UML_CACHE=str(uml.CACHE))
    p = subprocess.run([sys.executable, "-c",
                        "import sys; sys.path.insert(0, sys.argv[1]); import uml; "
                        "r = uml.run_guest(sys.argv[2], 120, outdir=sys.argv[3]); "
                        "sys.exit(125 if r.rc is None else r.rc)",
                        str(code / "tests" / "vm"), script, str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (out / "where.txt").read_text().strip() == str(code / "exporter" / "sources" / "ipvs.py")


def test_a_guest_that_cannot_boot_raises(monkeypatch, tmp_path):
    monkeypatch.setattr(uml, "INIT", tmp_path / "no-such-init")
    with pytest.raises(uml.UMLBootError, match="did not boot"):
        uml.run_guest("exit 0", timeout=60, tag="noboot")
