"""The built image, run by a real container runtime exactly as the manifests run it.

The image is built by `bash deploy/build-image.sh` (cached in .cache/image/; from nothing on a
fresh machine), then run with podman + runc (crun fails on this host: cgroup v1 hybrid mode and
rlimits) in a network namespace the test made as the node: a veth pair (the node IP on one
end), a VXLAN at MTU 1450 over the 1500-byte veth, an nft rule that makes the kernel track
connections, and real UDP flows. The `podman run` options come from the manifests through
tests/helpers/k8s_podman.py (deploy/daemonset.yaml; `kubectl kustomize` output for each
deploy/components/<mode>/, whose test.yaml says what each run must show:
tests/helpers/deploy_components.py), so what is tested is what Kubernetes runs.

Every container and image this module creates is removed by ID at the end; images that existed
before the run (a user's own build) are left alone.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.helpers import deploy_components as dc  # noqa: E402  (after the sys.path line)
from tests.helpers import k8s_podman  # noqa: E402

NODE_IP, PEER_IP = "192.0.2.1", "192.0.2.2"  # TEST-NET-1, only inside the test's namespaces
NODE_NAME = "nn-image-node"
FLOWS = 30
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
MAX_IMAGE_MIB = 150
START_TIMEOUT_S = 30.0
STOP_WITHIN_S = 2.0
# Nothing a running exporter needs, and nothing an attacker in it should find.
FORBIDDEN = re.compile(
    r"^(usr/)?(s?bin)/(sh|bash|dash|busybox|apt|apt-get|dpkg|perl|gcc|cc|pip3?|"
    r"python3?-config)$|/site-packages/pip/|^usr/share/(doc|locale|man)/|^var/lib/(apt|dpkg)/"
)


def sh(
    cmd: list[str] | str, check: bool = True, timeout: float = 120, **kw
) -> subprocess.CompletedProcess:
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        )
    return r


_CONFIG: list = []  # the pytest config, for report()


def report(line: str) -> None:
    """Figures for the person running the suite (build time, size, stop time), past capture."""
    capman = _CONFIG[0].pluginmanager.getplugin("capturemanager") if _CONFIG else None
    if capman is None:
        print(f"[image] {line}")
        return
    with capman.global_and_fixture_disabled():
        sys.stdout.write(f"\n[image] {line}\n")
        sys.stdout.flush()


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return sh(["podman", *args], check=check, timeout=timeout)


def image_ids(*filters: str) -> set[str]:
    """Full image IDs (hex, no "sha256:"), optionally through `podman images --filter`s."""
    out = podman("images", "-a", "--no-trunc", "--format", "{{.ID}}",
                 *(f"--filter={f}" for f in filters)).stdout
    return {i.removeprefix("sha256:") for i in out.split()}


# --------------------------------------------------------------------------- the image


@pytest.fixture(scope="module")
def image(request):
    _CONFIG[:] = [request.config]
    if os.geteuid() != 0:
        pytest.fail("needs root (podman, network namespaces); run the suite via tests/run.sh")
    for tool in ("podman", "runc", "mmdebstrap", "kubectl", "ip", "nft"):
        if sh(["sh", "-c", f"command -v {tool}"], check=False).returncode != 0:
            pytest.fail(f"{tool} is not installed (tests/run.sh installs it)")
    before = image_ids()
    # A tag of this run's own: other worktrees on the machine share the image store.
    tag = f"localhost/nodenet-exporter:{pyproject_version()}-test-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    r = sh(["bash", str(REPO / "deploy" / "build-image.sh")], timeout=1200,
           env={**os.environ, "NODENET_IMAGE_TAG": tag})
    took = time.monotonic() - t0
    assert r.stdout.strip().splitlines()[-1] == tag, r.stdout[-500:]
    summary = [ln for ln in r.stderr.splitlines() if ln.startswith(f"build-image.sh: {tag}:")]
    report(f"build-image.sh in {took:.1f} s: {summary[-1] if summary else r.stderr[-500:]}")
    image_id = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    image_id = image_id.removeprefix("sha256:")
    bases = image_ids("reference=localhost/nodenet-base")
    try:
        yield tag
    finally:
        # Our tag goes; the image and base only when this run made them (by ID, without
        # --force: an image someone else tagged or uses meanwhile stays).
        podman("untag", image_id, tag, check=False)
        for i in [image_id, *sorted(bases)]:
            if i not in before:
                podman("rmi", i, check=False)


@pytest.fixture(scope="module")
def containers():
    """IDs of every container created here; all removed at the end."""
    ids: list[str] = []
    yield ids
    for cid in ids:
        podman("rm", "--force", "--time", "0", cid, check=False)


@pytest.fixture(autouse=True)
def no_container_outlives_its_test(request):
    """A test that fails before its SIGTERM must not leave its exporter bound to the node's
    port for the next test: every container still running at the end of a test goes (by ID)."""
    yield
    if "containers" not in request.fixturenames:
        return
    for cid in request.getfixturevalue("containers"):
        state = podman("inspect", "--format", "{{.State.Status}}", cid, check=False).stdout.strip()
        if state == "running":
            podman("rm", "--force", "--time", "0", cid, check=False)


def pyproject_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_image_is_small_labelled_and_has_no_shell_or_pip(image, containers):
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    size_mib = info["Size"] / (1 << 20)
    report(f"{image}: {size_mib:.1f} MiB uncompressed")
    assert size_mib <= MAX_IMAGE_MIB, f"the image is {size_mib:.1f} MiB (limit {MAX_IMAGE_MIB})"
    cfg = info["Config"]
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == pyproject_version()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels.get("org.opencontainers.image.source"), labels
    assert labels.get("org.opencontainers.image.revision"), labels
    assert cfg["User"] == "65534:65534"
    assert cfg["Entrypoint"] == ["nodenet-exporter"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["PYTHONMALLOC"] == "malloc" and env["PYTHONDONTWRITEBYTECODE"] == "1", env
    # The manifests name the same version.
    ds_image = k8s_podman.base_daemonset()["spec"]["template"]["spec"]["containers"][0]["image"]
    assert ds_image.rsplit(":", 1)[1] == labels["org.opencontainers.image.version"], ds_image

    cid = podman("create", image).stdout.strip()
    containers.append(cid)
    listing = sh(["sh", "-c", f"podman export {cid} | tar -t"]).stdout.split()
    files = [f.lstrip("./").rstrip("/") for f in listing]
    bad = [f for f in files if FORBIDDEN.search(f)]
    assert not bad, f"the image contains tools it must not: {bad[:20]}"
    assert "opt/venv/bin/nodenet-exporter" in files
    assert any(
        re.fullmatch(r"usr/lib/python3\.\d+/lib-dynload/_ssl\..*\.so", f)
        or re.fullmatch(r"usr/local/lib/python3\.\d+/lib-dynload/_ssl\..*\.so", f)
        for f in files
    )


# --------------------------------------------------------------------------- the node


def ip(*args: str, ns: str | None = None) -> str:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    return sh(cmd).stdout


def in_ns(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(["ip", "netns", "exec", ns, *cmd], check=check)


def udp_flows(ns: str, src: str, dst: str, n: int = FLOWS) -> None:
    """n real UDP flows from distinct source ports -> n unreplied conntrack entries (30 s)."""
    code = (
        "import socket\n"
        f"for i in range({n}):\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"    s.bind(('{src}', 21000 + i))\n"
        f"    s.sendto(b'x', ('{dst}', 9))\n"
        "    s.close()\n"
    )
    in_ns(ns, sys.executable, "-c", code)


def ct_count(ns: str) -> int:
    return int(in_ns(ns, "cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout)


def track(ns: str) -> None:
    rules = ("table inet nn_image { chain out { type filter hook output priority 0; "
             "ct state new counter; }; }")
    in_ns(ns, "nft", rules)


@pytest.fixture(scope="module")
def node():
    ns = f"nn-img-{uuid.uuid4().hex[:8]}"
    sh(["ip", "netns", "add", ns])
    try:
        ip("link", "set", "lo", "up", ns=ns)
        ip(
            "link",
            "add",
            "nnv0",
            "mtu",
            "1500",
            "type",
            "veth",
            "peer",
            "name",
            "nnv1",
            "mtu",
            "1500",
            ns=ns,
        )
        ip("addr", "add", f"{NODE_IP}/24", "dev", "nnv0", ns=ns)
        ip("addr", "add", f"{PEER_IP}/24", "dev", "nnv1", ns=ns)
        ip("link", "set", "nnv0", "up", ns=ns)
        ip("link", "set", "nnv1", "up", ns=ns)
        ip(
            "link",
            "add",
            "nnvx0",
            "mtu",
            "1450",
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            NODE_IP,
            "remote",
            PEER_IP,
            "dstport",
            "4789",
            "dev",
            "nnv0",
            ns=ns,
        )
        ip("link", "set", "nnvx0", "up", ns=ns)
        track(ns)
        yield ns
    finally:
        sh(["ip", "netns", "del", ns], check=False)


@pytest.fixture(scope="module")
def pod_netns(tmp_path_factory):
    """A second namespace (a pod's), the only entry of the /run/netns the components mount."""
    ns = f"nn-img-pod-{uuid.uuid4().hex[:8]}"
    netns_dir = tmp_path_factory.mktemp("run-netns")
    sh(["ip", "netns", "add", ns])
    bound = netns_dir / ns
    try:
        ip("link", "set", "lo", "up", ns=ns)
        track(ns)
        bound.touch()
        sh(["mount", "--bind", f"/run/netns/{ns}", str(bound)])
        yield ns, netns_dir
    finally:
        sh(["umount", str(bound)], check=False)
        sh(["ip", "netns", "del", ns], check=False)


# --------------------------------------------------------------------------- the container


def runtime_options() -> tuple[list[str], list[str]]:
    """Runtime settings that are no part of the manifests. rlimits: runc cannot raise a limit
    here (no CAP_SYS_RESOURCE), so pass the current hard limits; conmon, which starts runc,
    runs with RLIMIT_NPROC 32768 under podman, hence the cap."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    return ["--runtime", "runc"], [
        f"--ulimit=nofile={nofile}:{nofile}",
        f"--ulimit=nproc={nproc}:{nproc}",
    ]


class Running:
    def __init__(self, cid: str, tr: k8s_podman.Translation, ns: str):
        self.cid, self.tr, self.ns = cid, tr, ns
        self.port = tr.probes["readinessProbe"].port
        self.base = f"http://{NODE_IP}:{self.port}"

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.ns, self.base + path)

    def pid(self) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.cid).stdout)

    def tail(self, n: int = 30) -> str:
        out = podman("logs", "--tail", str(n), self.cid, check=False)
        return out.stdout + out.stderr

    def logs(self) -> list[dict]:
        r = podman("logs", self.cid)
        out = []
        for line in (r.stdout + r.stderr).splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def start(
    image: str,
    containers: list[str],
    tr: k8s_podman.Translation,
    ns: str,
    drop: tuple[str, ...] = (),
) -> Running:
    """podman run -d with the translation's options (minus those starting with `drop`)."""
    global_opts, run_opts = runtime_options()
    opts = [o for o in tr.args if not o.startswith(drop)] if drop else list(tr.args)
    cid = podman(
        *global_opts, "run", "--detach", *run_opts, *opts, image, *tr.command_args
    ).stdout.strip()
    containers.append(cid)
    r = Running(cid, tr, ns)
    probe = tr.probes["readinessProbe"]
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = podman("inspect", "--format", "{{.State.Status}}", cid).stdout.strip()
        if state != "running":
            logs = podman("logs", cid, check=False)
            pytest.fail(
                f"container {cid[:12]} is {state}:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}"
            )
        status, _ = http_get(ns, f"http://{NODE_IP}:{probe.port}{probe.path}")
        if status == 200:
            return r
        time.sleep(0.2)
    pytest.fail(f"no 200 on {probe.path} within {START_TIMEOUT_S} s")


def stop_with_sigterm(r: Running) -> tuple[float, int]:
    """SIGTERM as the kubelet sends it; (seconds until the process had exited, exit code)."""
    state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", r.cid).stdout
    if not state.startswith("running"):
        pytest.fail(f"container {r.cid[:12]} ended before SIGTERM ({state.strip()}):\n{r.tail()}")
    sent = time.time()
    podman("kill", "--signal", "TERM", r.cid)
    podman("wait", r.cid, timeout=r.tr.stop_timeout + 10)
    finished_ns, code = podman(
        "inspect", "--format", "{{.State.FinishedAt.UnixNano}} {{.State.ExitCode}}", r.cid
    ).stdout.split()
    return int(finished_ns) / 1e9 - sent, int(code)


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
    """From the node's network (outside the container), as Prometheus and the kubelet do."""
    r = sh(["ip", "netns", "exec", ns, sys.executable, "-c", _GETTER, url], check=False, timeout=30)
    head, _, body = r.stdout.partition("\n")
    return int(head or 0), body


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, s.labels, s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def value(ss, name: str, **labels) -> float | None:
    vals = [v for n, lab, v in ss if n == name and all(lab.get(k) == w for k, w in labels.items())]
    assert len(vals) <= 1, f"{name}{labels}: {len(vals)} samples"
    return vals[0] if vals else None


def scrape(r: Running) -> list:
    status, body = r.get("/metrics")
    assert status == 200, body[:500]
    return samples(body)


def collector_success(ss) -> dict[str, float]:
    return {lab["collector"]: v for n, lab, v in ss if n == "nodenet_scrape_collector_success"}


def default_collectors() -> set[str]:
    from exporter.collectors import load_all
    from exporter.collectors.base import REGISTRY

    load_all()

    return {name for name, cls in REGISTRY.items() if cls.default_enabled}


def assert_every_collector_succeeds(ss) -> None:
    success = collector_success(ss)
    expected = default_collectors()
    assert expected and expected <= set(success), (
        f"default collectors missing: {expected - set(success)}"
    )
    failed = {c: v for c, v in success.items() if v != 1}
    assert not failed, f"collectors failing: {failed}"


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def caps_hex(*caps: int) -> str:
    return f"{sum(1 << c for c in caps):016x}"


# --------------------------------------------------------------------------- the cases


def test_as_the_daemonset_runs_it(image, containers, node):
    tr = k8s_podman.translate(k8s_podman.base_daemonset(), node, NODE_IP, NODE_NAME)
    report("podman run " + " ".join(tr.args) + f" {image} " + " ".join(tr.command_args))
    udp_flows(node, NODE_IP, PEER_IP)
    r = start(image, containers, tr, node)

    st = proc_status(r.pid())
    assert st["Uid"].split()[0] == "0"
    assert (st["CapEff"], st["CapPrm"], st["CapBnd"]) == (caps_hex(CAP_NET_ADMIN),) * 3, st
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st

    for probe in tr.probes.values():
        status, body = http_get(node, f"http://{NODE_IP}:{probe.port}{probe.path}")
        assert status == 200, f"{probe.kind} {probe.path}: {status} {body[:200]}"
    status, _ = http_get(node, f"http://127.0.0.1:{r.port}/healthz")
    assert status == 0, "answers on 127.0.0.1: not bound to $(HOST_IP) only"

    # The scrape's own TCP connection is one new entry, tracked before the exporter counts;
    # nothing else moves in the namespace (the UDP flows stay for 30 s).
    for _ in range(3):
        before = ct_count(node)
        ss = scrape(r)
        after = ct_count(node)
        if after == before + 1:
            break
    else:
        pytest.fail(f"the conntrack count moved by more than the scrape: {before} -> {after}")
    assert_every_collector_succeeds(ss)
    assert value(ss, "nodenet_conntrack_source_info", source="netlink") == 1
    assert before >= FLOWS and value(ss, "nodenet_conntrack_entries") == after
    links = {link["ifname"] for link in json.loads(ip("-j", "link", "show", ns=node))}
    seen = {lab["interface"] for n, lab, v in ss if n == "nodenet_interface_info"}
    assert seen == links, f"interfaces: exporter {sorted(seen)}, kernel {sorted(links)}"
    assert value(ss, "nodenet_interface_mtu_bytes", interface="nnvx0") == 1450
    # VXLAN over IPv4: 1500 - 50 - 1450 = 0 bytes of headroom; the veth's 1500 is 50 above it.
    assert (
        value(
            ss,
            "nodenet_overlay_mtu_headroom_bytes",
            interface="nnvx0",
            kind="vxlan",
            underlay="nnv0",
        )
        == 0
    )
    assert value(ss, "nodenet_interface_mtu_above_overlay_bytes", interface="nnv1") == 50

    diff = podman("diff", r.cid).stdout.split("\n")
    assert [d for d in diff if d.strip()] == [], f"files written in the container: {diff}"

    took, code = stop_with_sigterm(r)
    report(f"SIGTERM -> exit {code} after {took:.2f} s")
    assert code == 0 and took <= STOP_WITHIN_S, (code, took)


def test_image_default_user_without_capabilities_falls_back_to_procfs(image, containers, node):
    tr = k8s_podman.translate(k8s_podman.base_daemonset(), node, NODE_IP, NODE_NAME)
    udp_flows(node, NODE_IP, PEER_IP)
    # No --user: the image's USER 65534; no capability added.
    r = start(image, containers, tr, node, drop=("--user=", "--cap-add="))
    st = proc_status(r.pid())
    assert st["Uid"].split()[0] == "65534"
    assert st["CapEff"] == st["CapPrm"] == "0" * 16, st
    for _ in range(2):
        ss = scrape(r)
        assert_every_collector_succeeds(ss)
        ct = [(n, lab, v) for n, lab, v in ss if n.startswith("nodenet_conntrack_")][:8]
        assert value(ss, "nodenet_conntrack_source_info", source="procfs") == 1, (ct, r.tail())
        assert value(ss, "nodenet_conntrack_available") == 1
    said = [
        rec
        for rec in r.logs()
        if rec.get("collector") == "conntrack" and rec.get("source") == "procfs"
    ]
    assert len(said) == 1, f"conntrack should say once that it reads /proc instead: {said}"
    assert re.search(r"CAP_NET_ADMIN", said[0]["event"]), said
    took, code = stop_with_sigterm(r)
    assert code == 0 and took <= STOP_WITHIN_S, (code, took)


# --------------------------------------------------------------------------- the components


def without_privileges(ds: dict) -> dict:
    """The component's DaemonSet with the base DaemonSet's securityContext (pod and container)
    and host namespaces: its args, env and mounts stay, its extra privileges go."""
    base_pod = k8s_podman.base_daemonset()["spec"]["template"]["spec"]
    out = json.loads(json.dumps(ds))
    pod = out["spec"]["template"]["spec"]
    for f in ("hostPID", "hostIPC", "securityContext"):
        pod.pop(f, None)
        if f in base_pod:
            pod[f] = base_pod[f]
    pod["containers"][0]["securityContext"] = base_pod["containers"][0]["securityContext"]
    return out


@pytest.mark.parametrize("component", dc.components())
def test_component_with_and_without_its_privileges(
    image, containers, node, pod_netns, component
):
    try:
        spec = dc.spec(component)
    except dc.ComponentDataError as e:
        pytest.fail(str(e))
    ds = dc.rendered_daemonset(component)
    pod_ns, netns_dir = pod_netns
    host_paths = {"/run/netns": str(netns_dir)}
    collector = spec["collector"]
    results = {}
    for mode, manifest in (("with", ds), ("without", without_privileges(ds))):
        tr = k8s_podman.translate(manifest, node, NODE_IP, NODE_NAME, host_paths=host_paths)
        report(f"{component} {mode}: podman run " + " ".join(tr.args))
        udp_flows(node, NODE_IP, PEER_IP)
        udp_flows(pod_ns, "127.0.0.1", "127.0.0.1", n=7)
        r = start(image, containers, tr, node)
        try:
            errors: list[str] = []
            checked = 0
            for _ in range(2):
                before = ct_count(pod_ns)
                ss = scrape(r)
                ctx = {"pod_netns": pod_ns, "pod_netns_entries": before}
                success = collector_success(ss)
                if success.get(collector) != 1:
                    errors.append(f"collector {collector} success {success.get(collector)}")
                if before == ct_count(pod_ns):  # the kernel's count held still around the scrape
                    errors += [e for c in spec[mode]["checks"] if (e := dc.check(ss, c, ctx))]
                    checked += 1
            if not checked:
                errors.append("the pod namespace's conntrack count moved during every scrape")
            if spec[mode].get("log"):
                said = [rec for rec in r.logs() if re.search(spec[mode]["log"], json.dumps(rec))]
                if len(said) != 1:
                    errors.append(
                        f"log /{spec[mode]['log']}/: {len(said)} records, expected 1: {said}"
                    )
            results[mode] = errors
        finally:
            took, code = stop_with_sigterm(r)
            assert code == 0 and took <= STOP_WITHIN_S, (component, mode, code, took)
    assert results == {"with": [], "without": []}, results
