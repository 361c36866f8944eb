"""Least privilege, for real: the exporter run the way the DaemonSet runs it.

The container's privileges are read from deploy/daemonset.yaml by the same reading of the pod
spec that the container test's `podman run` comes from (tests/helpers/k8s_podman.py: runAsUser,
capabilities, allowPrivilegeEscalation, readOnlyRootFilesystem, args, env, probes) and
reproduced with kernel tools:
  * a network namespace of the test's own stands in for the node's (hostNetwork), holding a veth
    pair whose address plays the node IP ($(HOST_IP)) and conntrack entries made by real flows;
  * `unshare --mount` + a read-only bind remount of every mount point = readOnlyRootFilesystem
    (stricter: nothing at all is writable);
  * `setpriv --bounding-set=-all,+net_admin --inh-caps=-all --no-new-privs` = capabilities
    drop ALL / add NET_ADMIN with allowPrivilegeEscalation: false, as uid 0 (runAsUser: 0).
Then the same without NET_ADMIN (conntrack must fall back to /proc or report itself unavailable,
the scrape must stay 200 with every collector successful), and as the image's default non-root
user with NET_ADMIN in the bounding set only (what `capabilities.add` gives a non-root container):
the process ends up with no capability at all, which is why the DaemonSet runs as uid 0.
Not reproduced here (tests/container/test_image.py runs them in a real runtime): seccomp,
hostPID (the process always sees the machine's PID namespace) and hostPath mounts (it sees the
machine's filesystem, read-only).
The metric names are the contract from issues 2, 3 and 9.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import deploy_components as dc
from tests.helpers import k8s_podman

REPO = Path(__file__).resolve().parents[2]
NS = f"nn-deploy-lp-{os.getpid()}"
HOST_IP = "192.0.2.1"  # TEST-NET-1, only ever configured inside the test's own namespace
PEER_IP = "192.0.2.2"
FLOWS = 40
FLOW_PORT0 = 20000
CAP_NET_ADMIN = 12
# capability numbers (linux/capability.h), by the names the manifests use
CAP_NUMBERS = {"NET_ADMIN": 12, "SYS_ADMIN": 21, "SYS_PTRACE": 19, "SYS_RESOURCE": 24, "BPF": 39,
               "PERFMON": 38, "NET_RAW": 13, "DAC_READ_SEARCH": 2, "SYS_CHROOT": 18}
IMAGE_USER = 65534  # Containerfile: USER 65534:65534
START_TIMEOUT_S = 20.0


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({r.returncode}): {r.stderr.strip()}")
    return r


# --------------------------------------------------------------------------- the manifest


@dataclass
class ContainerSpec:
    uid: int
    caps: list[str]
    no_new_privs: bool
    read_only_root: bool
    args: list[str]
    env: dict[str, str]
    port: int
    probe_path: str


def container_spec(node_ip: str, node_name: str, ds: dict | None = None) -> ContainerSpec:
    """The container of deploy/daemonset.yaml's DaemonSet (or of `ds`, e.g. a component's), as
    k8s_podman reads it for podman too."""
    ct = k8s_podman.container(ds or k8s_podman.base_daemonset(), node_ip, node_name)
    # what this harness can reproduce (setpriv): drop ALL + add, not privileged
    assert ct.caps_drop == ["ALL"] and not ct.privileged, (ct.caps_drop, ct.privileged)
    probe = ct.probes["readinessProbe"]
    return ContainerSpec(
        uid=ct.user[0] if ct.user else IMAGE_USER,
        caps=[x.lower() for x in ct.caps_add],
        no_new_privs=ct.no_new_privs,
        read_only_root=ct.read_only_root,
        args=ct.command_args,
        env=ct.env,
        port=probe.port,
        probe_path=probe.path,
    )


# --------------------------------------------------------------------------- the node stand-in


@pytest.fixture(scope="module")
def node_netns():
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces, setpriv); run the suite as root")
    if not Path("/mnt").is_dir():
        pytest.fail("/mnt is missing: the non-root case mounts a private scratch tmpfs there")
    for tool in ("ip", "nft", "setpriv", "unshare", "mount"):
        if not any(Path(d, tool).exists() for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]):
            pytest.fail(f"{tool} is not installed")
    sh(f"ip netns add {NS}")
    try:
        sh(f"ip -n {NS} link set lo up")
        sh(f"ip -n {NS} link add nnv0 type veth peer name nnv1")
        sh(f"ip -n {NS} addr add {HOST_IP}/24 dev nnv0")
        sh(f"ip -n {NS} addr add {PEER_IP}/24 dev nnv1")
        sh(f"ip -n {NS} link set nnv0 up")
        sh(f"ip -n {NS} link set nnv1 up")
        # A ct expression makes the kernel track this namespace's connections.
        ruleset = "table inet nn_deploy { chain out { type filter hook output priority 0; ct state new counter; }; }"
        sh(f"ip netns exec {NS} nft {shlex.quote(ruleset)}")
        refresh_flows(NS)
        count = int(sh(f"ip netns exec {NS} cat /proc/sys/net/netfilter/nf_conntrack_count").stdout)
        assert count >= FLOWS, f"the kernel tracks only {count} entries in {NS}"
        yield NS
    finally:
        sh(f"ip netns del {NS}", check=False)


def refresh_flows(ns: str) -> None:
    """FLOWS real UDP flows from fixed, distinct source ports -> FLOWS unreplied conntrack entries
    (30 s timeout); sending again refreshes the same entries."""
    sender = (
        "import socket\n"
        f"for i in range({FLOWS}):\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"    s.bind(('{HOST_IP}', {FLOW_PORT0} + i))\n"
        f"    s.sendto(b'x', ('{PEER_IP}', 9))\n"
        "    s.close()\n"
    )
    sh(f"ip netns exec {ns} {shlex.quote(sys.executable)} -c {shlex.quote(sender)}")


# --------------------------------------------------------------------------- the container stand-in


def _inaccessible_ancestors(paths: list[str]) -> list[Path]:
    """Top-most directories that 'others' cannot traverse on the way to `paths`."""
    out: list[Path] = []
    for p in paths:
        cur = Path("/")
        for part in Path(p).resolve().parts[1:]:
            cur = cur / part
            try:
                mode = cur.stat().st_mode
            except OSError:
                break
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
                if not any(cur.is_relative_to(a) for a in out):
                    out.append(cur)
                break
    return out


def wrapper_script(uid: int, caps: list[str], no_new_privs: bool, read_only: bool, needed: list[str]) -> str:
    """Shell run inside `unshare --mount`: make the view read-only, then drop to the container's
    credentials and exec the exporter ("$@")."""
    lines = ["set -e"]
    if uid != 0:
        # The host's Python may live under a directory others cannot enter (/root/.pyenv): show it
        # to the unprivileged user through a private tmpfs over that directory, in this mount
        # namespace only, with just the needed subpaths bound back in. Scratch space: a tmpfs over
        # /mnt, also private to this mount namespace.
        ancestors = _inaccessible_ancestors(needed)
        if ancestors:
            lines.append("mount -t tmpfs -o mode=0755 nn-scratch /mnt")
        for i, anc in enumerate(ancestors):
            a = shlex.quote(str(anc))
            lines.append(f"mkdir /mnt/o{i} && mount --bind {a} /mnt/o{i}")
            lines.append(f"mount -t tmpfs -o mode=0755 nn-shim {a}")
            tops = sorted({anc / Path(p).resolve().relative_to(anc).parts[0]
                           for p in needed if Path(p).resolve().is_relative_to(anc) and Path(p).resolve() != anc})
            for top in tops:
                t = shlex.quote(str(top))
                lines.append(f"mkdir -p {t} && mount --bind /mnt/o{i}/{shlex.quote(top.name)} {t}")
    if read_only:
        lines.append(
            "awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r m; do "
            "mount -o remount,bind,ro \"$(printf '%b' \"$m\")\" 2>/dev/null || true; done"
        )
    bounding = "-all" + "".join(f",+{c}" for c in caps)
    priv = [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        "--inh-caps=-all", "--ambient-caps=-all", f"--bounding-set={bounding}",
    ]
    if no_new_privs:
        priv.append("--no-new-privs")
    lines.append("exec " + " ".join(priv) + ' -- "$@"')
    return "\n".join(lines)


@dataclass
class Running:
    proc: subprocess.Popen
    pid: int  # the exporter's own pid (same as proc.pid: every wrapper step execs)
    log: Path
    base: str


def start_exporter(ns: str, spec: ContainerSpec, tmp: Path, uid: int, caps: list[str]) -> Running:
    python = sys.executable
    needed = [python, sys.prefix, sys.base_prefix, str(REPO)] + [p for p in sys.path if p and Path(p).exists()]
    script = wrapper_script(uid, caps, spec.no_new_privs, spec.read_only_root, needed)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",  # as the image
        "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in sys.path if p]),
        "HOME": "/nonexistent",
        **spec.env,
    }
    log = tmp / f"exporter-uid{uid}-{'-'.join(caps) or 'nocaps'}.log"
    cmd = ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
           "sh", "-c", script, "nodenet-wrapper", python, "-m", "exporter", *spec.args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    base = f"http://{spec.env['HOST_IP']}:{spec.port}"
    running = Running(proc, proc.pid, log, base)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the exporter exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        status, _ = http_get(ns, base + spec.probe_path)
        if status == 200:
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert b"exporter" in cmdline, f"pid {proc.pid} is not the exporter: {cmdline}"
            return running
        time.sleep(0.2)
    stop(running)
    pytest.fail(f"no 200 on {base}{spec.probe_path} within {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def stop(r: Running) -> None:
    if r.proc.poll() is None:
        r.proc.send_signal(signal.SIGTERM)
        try:
            r.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait(timeout=10)


_GETTER = r"""
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        sys.stdout.write(str(r.status) + "\n" + r.read().decode())
except urllib.error.HTTPError as e:
    sys.stdout.write(str(e.code) + "\n")
except OSError as e:
    sys.stdout.write("0\n" + type(e).__name__ + ": " + str(e))
"""


def http_get(ns: str, url: str) -> tuple[int, str]:
    """GET from inside the namespace (the node network), as Prometheus and the kubelet would."""
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _GETTER, url],
                       capture_output=True, text=True, timeout=30)
    head, _, body = r.stdout.partition("\n")
    return int(head or 0), body


def proc_status(pid: int) -> dict[str, str]:
    return dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line
    )


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(ss, name: str, **labels) -> float | None:
    vals = [v for n, lab, v in ss if n == name and all(lab.get(k) == w for k, w in labels.items())]
    assert len(vals) <= 1, f"{name}{labels}: {len(vals)} samples"
    return vals[0] if vals else None


def collector_success(ss) -> dict[str, float]:
    return {lab["collector"]: v for n, lab, v in ss if n == "nodenet_scrape_collector_success"}


def assert_read_only_view(pid: int) -> None:
    top: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        top[fields[4]] = fields[5]  # a later mount on the same point hides the earlier one
    writable = [mp for mp, opts in top.items() if "rw" in opts.split(",")]
    assert not writable, f"the exporter's filesystem view has writable mounts: {writable}"


def assert_no_files_open_for_writing(pid: int) -> None:
    """Besides stdout/stderr (the container runtime's log pipe), nothing is open for writing."""
    offenders = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        if int(fd.name) in (0, 1, 2):
            continue
        try:
            target = os.readlink(fd)
            flags = int(Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().split("flags:")[1].split()[0], 8)
        except (OSError, IndexError):
            continue
        if target.startswith("/") and flags & os.O_ACCMODE != os.O_RDONLY:
            offenders.append(target)
    assert not offenders, f"the exporter holds files open for writing: {offenders}"


def log_records(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def assert_collectors_present(ss) -> None:
    success = collector_success(ss)
    missing = {"conntrack", "netdev"} - set(success)
    assert not missing, (
        f"collectors {sorted(missing)} are not in this build (conntrack: issue 3, netdev: issue 9); "
        f"collectors reporting: {sorted(success)}"
    )


def assert_all_collectors_succeed(ss) -> None:
    assert_collectors_present(ss)
    success = collector_success(ss)
    failed = {c: v for c, v in success.items() if v != 1}
    assert not failed, f"collectors failing: {failed}"


def assert_interfaces_seen(ss) -> None:
    kinds = {lab.get("interface"): lab.get("kind") for n, lab, v in ss if n == "nodenet_interface_info"}
    assert kinds.get("nnv0") == "veth" and kinds.get("nnv1") == "veth", f"nodenet_interface_info: {kinds}"
    assert "lo" in kinds


# --------------------------------------------------------------------------- the cases


def test_as_the_daemonset_runs_it_netlink_works_with_net_admin_only(node_netns, tmp_path):
    spec = container_spec(HOST_IP, "nn-test-node")
    assert spec.uid == 0 and spec.caps == ["net_admin"], "the test mirrors the documented design"
    refresh_flows(node_netns)
    r = start_exporter(node_netns, spec, tmp_path, spec.uid, spec.caps)
    try:
        st = proc_status(r.pid)
        want = f"{1 << CAP_NET_ADMIN:016x}"
        assert (st["CapEff"], st["CapPrm"], st["CapBnd"]) == (want, want, want), st
        assert (st["CapInh"], st["CapAmb"], st["NoNewPrivs"]) == ("0" * 16, "0" * 16, "1"), st
        assert st["Uid"].split()[0] == "0"
        assert_read_only_view(r.pid)

        # listening on the node IP only: not on loopback (nor, a fortiori, 0.0.0.0)
        status, _ = http_get(node_netns, f"http://127.0.0.1:{spec.port}{spec.probe_path}")
        assert status == 0, "the exporter answers on 127.0.0.1: it is not bound to $(HOST_IP) only"

        before = int(sh(f"ip netns exec {node_netns} cat /proc/sys/net/netfilter/nf_conntrack_count").stdout)
        status, body = http_get(node_netns, r.base + "/metrics")
        after = int(sh(f"ip netns exec {node_netns} cat /proc/sys/net/netfilter/nf_conntrack_count").stdout)
        assert status == 200, body[:500]
        ss = samples(body)
        assert_collectors_present(ss)
        assert value(ss, "nodenet_conntrack_source_info", source="netlink") == 1, (
            f"conntrack not read over netlink with CAP_NET_ADMIN: "
            f"{[(n, lab) for n, lab, v in ss if n.startswith('nodenet_conntrack_source')]}"
        )
        if before == after:  # the kernel's own count did not move during the scrape
            assert value(ss, "nodenet_conntrack_entries") == before, "entries differ from the namespace's count"
        assert_interfaces_seen(ss)
        assert_all_collectors_succeed(ss)
        assert_no_files_open_for_writing(r.pid)
    finally:
        stop(r)
    assert r.proc.returncode == 0, f"exit code {r.proc.returncode} after SIGTERM:\n{r.log.read_text()[-2000:]}"


@pytest.mark.parametrize("uid,caps,why", [
    (0, [], "NET_ADMIN removed from the DaemonSet"),
    (IMAGE_USER, ["net_admin"], "image default user; capabilities.add only reaches the bounding set"),
])
def test_without_net_admin_conntrack_falls_back_and_the_scrape_succeeds(node_netns, tmp_path, uid, caps, why):
    spec = container_spec(HOST_IP, "nn-test-node")
    refresh_flows(node_netns)
    r = start_exporter(node_netns, spec, tmp_path, uid, caps)
    try:
        st = proc_status(r.pid)
        assert st["CapEff"] == "0" * 16 and st["CapPrm"] == "0" * 16, f"{why}: {st['CapEff']}"
        assert st["NoNewPrivs"] == "1"
        assert st["Uid"].split()[0] == str(uid)
        assert_read_only_view(r.pid)
        status, body = http_get(node_netns, r.base + "/metrics")
        assert status == 200, body[:500]
        ss = samples(body)
        assert_collectors_present(ss)
        assert value(ss, "nodenet_conntrack_source_info", source="netlink") in (None, 0), (
            "conntrack claims netlink without CAP_NET_ADMIN"
        )
        has_procfs = subprocess.run(["ip", "netns", "exec", node_netns, "test", "-r", "/proc/net/stat/nf_conntrack"]
                                    ).returncode == 0
        if has_procfs:
            assert value(ss, "nodenet_conntrack_source_info", source="procfs") == 1, (
                "/proc/net/stat/nf_conntrack is readable here, so conntrack must fall back to it"
            )
        else:
            assert value(ss, "nodenet_conntrack_available") == 0
        assert_interfaces_seen(ss)  # rtnetlink dumps need no capability
        assert_all_collectors_succeed(ss)
        assert_no_files_open_for_writing(r.pid)
    finally:
        stop(r)
    records = [rec for rec in log_records(r.log) if rec.get("collector") == "conntrack"]
    said = [rec for rec in records if re.search(r"netlink|NET_ADMIN|permi|procfs|fall", json.dumps(rec), re.I)]
    assert said, f"no conntrack log line says what it cannot see; conntrack records: {records}"
    assert r.proc.returncode == 0, f"exit code {r.proc.returncode} after SIGTERM"


def test_the_read_only_view_really_is_read_only(node_netns, tmp_path):
    """The harness itself: the same wrapper, running `sh -c 'echo > file'` instead of the exporter."""
    target = tmp_path / "must-not-exist"
    script = wrapper_script(0, ["net_admin"], True, True, [])
    r = subprocess.run(["ip", "netns", "exec", node_netns, "unshare", "--mount", "--propagation", "private",
                        "sh", "-c", script, "w", "sh", "-c", f"echo x > {shlex.quote(str(target))}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "Read-only file system" in r.stderr, r.stderr
    assert not target.exists()
    # ...and the remount stayed inside the private mount namespace
    probe = tmp_path / "host-still-writable"
    probe.write_text("ok")
    assert probe.read_text() == "ok"


# --------------------------------------------------------------------------- opt-in components
# Every deploy/components/<mode>/ (tests/helpers/deploy_components.py), rendered with
# `kubectl kustomize`, run the same way: the process holds exactly the capabilities the
# rendered manifest lists (base + the component's grants, nothing more), and every collector
# still succeeds; the `proof:` of its test.yaml holds with exactly those capabilities and fails
# without any one of the capabilities it grants. (Seccomp is the runtime's part and is not
# reproduced by setpriv; tests/container/test_image.py runs each component in the real
# container runtime, with and without its privileges.)


@pytest.mark.parametrize("component", dc.components())
def test_component_runs_with_exactly_its_capabilities(node_netns, tmp_path, component):
    s = dc.spec(component)
    spec = container_spec(HOST_IP, "nn-test-node", dc.rendered_daemonset(component))
    assert sorted(spec.caps) == sorted(c.lower() for c in [*dc.BASE_CAPS, *dc.granted_caps(s)])
    unknown = [c for c in spec.caps if c.upper() not in CAP_NUMBERS]
    assert not unknown, f"add the number of {unknown} to CAP_NUMBERS"
    refresh_flows(node_netns)
    r = start_exporter(node_netns, spec, tmp_path, spec.uid, spec.caps)
    try:
        st = proc_status(r.pid)
        want = f"{sum(1 << CAP_NUMBERS[c.upper()] for c in spec.caps):016x}"
        assert (st["CapEff"], st["CapPrm"], st["CapBnd"]) == (want, want, want), (component, st)
        assert st["NoNewPrivs"] == "1"
        assert_read_only_view(r.pid)
        status, body = http_get(node_netns, r.base + "/metrics")
        assert status == 200, body[:500]
        assert_all_collectors_succeed(samples(body))
        assert_no_files_open_for_writing(r.pid)
    finally:
        stop(r)
    assert r.proc.returncode == 0, f"{component}: exit code {r.proc.returncode} after SIGTERM"


def _proved_here(component: str) -> bool:
    try:
        proof = dc.spec(component).get("proof")
    except dc.ComponentDataError:
        return True                    # the test then fails with the message
    return proof is not None and "elsewhere" not in proof


@pytest.mark.parametrize("component", [c for c in dc.components() if _proved_here(c)])
def test_component_works_with_exactly_its_capabilities(node_netns, tmp_path, component):
    s = dc.spec(component)
    spec = container_spec(HOST_IP, "nn-test-node", dc.rendered_daemonset(component))
    granted = [c.lower() for c in dc.granted_caps(s)]
    for drop in [None, *sorted(granted)]:
        caps = [c for c in spec.caps if c != drop]
        r = start_exporter(node_netns, spec, tmp_path, spec.uid, caps)
        try:
            st = proc_status(r.pid)
            bits = sum(1 << CAP_NUMBERS[c.upper()] for c in caps)
            assert st["CapEff"] == f"{bits:016x}" and st["NoNewPrivs"] == "1", st
            status, body = http_get(node_netns, r.base + "/metrics")
            assert status == 200, body[:500]
            ss = samples(body)
            assert_all_collectors_succeed(ss)
            wrong = dc.check(ss, s["proof"])
            if drop is None:
                assert wrong is None, f"{component} with {caps}: {wrong}\n{r.log.read_text()[-2000:]}"
            else:
                assert wrong is not None, f"{component}: {s['proof']} holds without {drop}"
        finally:
            stop(r)
        assert r.proc.returncode == 0, f"exit code {r.proc.returncode} after SIGTERM"
