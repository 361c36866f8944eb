"""A DaemonSet's pod, read one field at a time into what it means for one container on one node
(`container()`), and that translated one to one into `podman run` arguments (`translate()`).

Both runs of the exporter "as the manifests say" read the manifests here, so neither can drift
from what Kubernetes runs: tests/container/test_image.py runs the built image with the podman
options, tests/integration/test_least_privilege.py runs the exporter under setpriv/unshare with
the same `Container` (uid, capabilities, no_new_privs, read-only root, args, env, probes).
Every field of the pod and of the container is either read, or listed as meaningless for one
container on one node (scheduling, rollout, Service discovery), or refused: a new field in a
manifest makes `container` fail until someone decides what it means here. Rendering deploy/
with a component (`kubectl kustomize`) is tests/helpers/deploy_components.py's.

The node is a network namespace of the test's (hostNetwork -> `--network ns:/run/netns/<ns>`),
the downward API's status.hostIP / spec.nodeName are the test's node IP and name, and hostPath
volumes may be redirected to a test directory (`host_paths`), so that e.g. /run/netns shows only
the namespaces the test made.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PODMAN_DEFAULT_SECCOMP = Path("/usr/share/containers/seccomp.json")

# Fields with no meaning for one container on one node (scheduling, rollout, identity), or
# already asserted by tests/unit/test_deploy_manifests.py.
POD_IGNORED = {
    "dnsPolicy",
    "serviceAccountName",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "tolerations",
    "priorityClassName",
    "nodeSelector",
    "affinity",
}
CONTAINER_IGNORED = {
    "name",
    "image",
    "imagePullPolicy",
    "ports",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
}
# The probes and ports are not run by podman: the test makes the kubelet's requests itself.
PROPAGATION = {"None": "rprivate", "HostToContainer": "rslave", "Bidirectional": "rshared"}


class Untranslatable(AssertionError):
    pass


@dataclass
class Probe:
    kind: str
    path: str
    port: int
    initial_delay: float
    period: float
    timeout: float


@dataclass
class Mount:
    src: str  # on the host (after host_paths)
    dst: str
    read_only: bool
    propagation: str  # the manifest's mountPropagation


@dataclass
class Container:
    """What the pod spec asks of the runtime for its one container."""

    user: tuple[int, int] | None  # runAsUser/runAsGroup; None: the image's USER
    privileged: bool
    no_new_privs: bool  # allowPrivilegeEscalation: false
    read_only_root: bool
    caps_drop: list[str]
    caps_add: list[str]
    seccomp: dict  # the effective seccompProfile, as in the manifest
    seccomp_file: Path | None  # a Localhost profile's file, found in deploy/
    host_pid: bool
    host_ipc: bool
    env: dict[str, str]  # downward API resolved
    entrypoint: list[str] | None  # command, expanded
    command_args: list[str]  # args, expanded
    mounts: list[Mount]
    memory: int | None  # limits.memory in bytes
    probes: dict[str, Probe]
    stop_timeout: int  # terminationGracePeriodSeconds
    image: str


@dataclass
class Translation:
    args: list[str]  # podman run options, before the image
    command_args: list[str]  # after the image: the container's args, expanded
    env: dict[str, str]
    probes: dict[str, Probe]
    stop_timeout: int  # terminationGracePeriodSeconds
    image: str  # the manifest's image reference
    container: Container
    notes: list[str] = field(default_factory=list)


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def daemonset(docs: list[dict]) -> dict:
    found = [d for d in docs if d.get("kind") == "DaemonSet"]
    if len(found) != 1:
        raise Untranslatable(f"expected one DaemonSet, found {len(found)}")
    return found[0]


def base_daemonset() -> dict:
    return daemonset(load(DEPLOY / "daemonset.yaml"))


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables only, $$ escapes."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return re.sub(r"\$\$|\$\((\w+)\)", sub, text)


def _seccomp_file(profile: dict, where: str) -> Path | None:
    kind = profile.get("type", "RuntimeDefault")
    if kind in ("RuntimeDefault", "Unconfined"):
        return None
    if kind == "Localhost":
        # Relative to the kubelet's seccomp root on a node; here: shipped somewhere in deploy/
        # (e.g. next to the component that uses it), found by its file name: the directory part
        # is where the docs tell users to install it under the kubelet's seccomp root.
        rel = profile["localhostProfile"]
        found = sorted(DEPLOY.rglob(Path(rel).name))
        if len(found) != 1:
            raise Untranslatable(f"{where}: seccomp profile {rel}: {len(found)} in deploy/")
        return found[0]
    raise Untranslatable(f"{where}: seccompProfile type {kind!r}")


def _security(pod_sc: dict, sc: dict) -> dict:
    """The merged securityContext's fields for Container."""
    unknown = set(pod_sc) - {"seccompProfile", "runAsUser", "runAsGroup", "runAsNonRoot"}
    if unknown:
        raise Untranslatable(f"pod securityContext fields not translated: {sorted(unknown)}")
    unknown = set(sc) - {
        "privileged",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
        "capabilities",
        "seccompProfile",
        "procMount",
    }
    if unknown:
        raise Untranslatable(f"container securityContext fields not translated: {sorted(unknown)}")
    merged = {**pod_sc, **sc}
    uid = merged.get("runAsUser")
    if merged.get("runAsNonRoot") and uid == 0:
        raise Untranslatable("runAsNonRoot with runAsUser 0: Kubernetes would refuse to start it")
    if merged.get("procMount", "Default") != "Default":
        raise Untranslatable(f"procMount {merged['procMount']}")
    caps = merged.get("capabilities", {})
    profile = merged.get("seccompProfile") or {"type": "RuntimeDefault"}
    return {
        "user": None if uid is None else (uid, merged.get("runAsGroup", uid)),
        "privileged": bool(merged.get("privileged")),
        "no_new_privs": merged.get("allowPrivilegeEscalation") is False,
        "read_only_root": bool(merged.get("readOnlyRootFilesystem")),
        "caps_drop": list(caps.get("drop", [])),
        "caps_add": list(caps.get("add", [])),
        "seccomp": profile,
        "seccomp_file": _seccomp_file(profile, "container"),
    }


def _env(c: dict, node_ip: str, node_name: str) -> dict[str, str]:
    downward = {"status.hostIP": node_ip, "status.podIP": node_ip, "spec.nodeName": node_name}
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = _expand(str(e["value"]), env)
        elif "fieldRef" in e.get("valueFrom", {}):
            fp = e["valueFrom"]["fieldRef"]["fieldPath"]
            if fp not in downward:
                raise Untranslatable(f"env {e['name']}: fieldPath {fp} not translated")
            env[e["name"]] = downward[fp]
        else:
            raise Untranslatable(f"env {e['name']}: {e.get('valueFrom')} not translated")
    if c.get("envFrom"):
        raise Untranslatable("envFrom not translated")
    return env


def _volumes(pod: dict, c: dict, host_paths: dict[str, str]) -> list[Mount]:
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    out: list[Mount] = []
    for m in c.get("volumeMounts", []):
        v = vols.get(m["name"])
        if v is None:
            raise Untranslatable(f"volumeMount {m['name']} has no volume")
        if set(v) != {"name", "hostPath"}:
            raise Untranslatable(f"volume {m['name']}: only hostPath volumes are translated")
        unknown = set(m) - {"name", "mountPath", "readOnly", "mountPropagation"}
        if unknown:
            raise Untranslatable(f"volumeMount {m['name']}: {sorted(unknown)} not translated")
        src = host_paths.get(v["hostPath"]["path"], v["hostPath"]["path"])
        kind = v["hostPath"].get("type", "")
        if kind == "Directory" and not Path(src).is_dir():
            raise Untranslatable(f"hostPath {src} (type Directory) does not exist")
        prop = m.get("mountPropagation", "None")
        if prop not in PROPAGATION:
            raise Untranslatable(f"volumeMount {m['name']}: mountPropagation {prop}")
        out.append(Mount(src, m["mountPath"], bool(m.get("readOnly")), prop))
    unused = set(vols) - {m["name"] for m in c.get("volumeMounts", [])}
    if unused:
        raise Untranslatable(f"volumes not mounted by the container: {sorted(unused)}")
    return out


def _probe(kind: str, p: dict, ports: dict[str, int]) -> Probe:
    get = p.get("httpGet")
    if not get or set(p) - {
        "httpGet",
        "initialDelaySeconds",
        "periodSeconds",
        "timeoutSeconds",
        "failureThreshold",
        "successThreshold",
    }:
        raise Untranslatable(f"{kind}: only httpGet probes are translated: {p}")
    port = ports[get["port"]] if isinstance(get["port"], str) else int(get["port"])
    return Probe(
        kind,
        get["path"],
        port,
        p.get("initialDelaySeconds", 0),
        p.get("periodSeconds", 10),
        p.get("timeoutSeconds", 1),
    )


def container(
    ds: dict, node_ip: str, node_name: str, host_paths: dict[str, str] | None = None
) -> Container:
    """The DaemonSet's one container as the pod spec asks the runtime to run it."""
    tmpl = ds["spec"]["template"]
    pod = tmpl["spec"]
    known = POD_IGNORED | {
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "containers",
        "securityContext",
        "volumes",
        "terminationGracePeriodSeconds",
    }
    unknown = set(pod) - known
    if unknown:
        raise Untranslatable(f"pod fields not translated: {sorted(unknown)}")
    if len(pod["containers"]) != 1 or pod.get("initContainers"):
        raise Untranslatable("exactly one container, no init containers")
    (c,) = pod["containers"]
    unknown = (
        set(c)
        - CONTAINER_IGNORED
        - {"args", "command", "env", "envFrom", "resources", "securityContext", "volumeMounts"}
    )
    if unknown:
        raise Untranslatable(f"container fields not translated: {sorted(unknown)}")
    if not pod.get("hostNetwork"):
        raise Untranslatable("only hostNetwork pods are translated (the node is a test namespace)")
    env = _env(c, node_ip, node_name)
    limits = c.get("resources", {}).get("limits", {})
    if set(limits) - {"memory"}:
        raise Untranslatable(f"resource limits not translated: {sorted(set(limits) - {'memory'})}")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
    return Container(
        **_security(pod.get("securityContext", {}), c.get("securityContext", {})),
        host_pid=bool(pod.get("hostPID")),
        host_ipc=bool(pod.get("hostIPC")),
        env=env,
        entrypoint=[_expand(a, env) for a in c["command"]] if "command" in c else None,
        command_args=[_expand(a, env) for a in c.get("args", [])],
        mounts=_volumes(pod, c, host_paths or {}),
        memory=_bytes(limits["memory"]) if "memory" in limits else None,
        probes={
            k: _probe(k, c[k], ports)
            for k in ("livenessProbe", "readinessProbe", "startupProbe")
            if k in c
        },
        stop_timeout=int(pod.get("terminationGracePeriodSeconds", 30)),
        image=c["image"],
    )


def podman_args(ct: Container, netns: str) -> list[str]:
    """`podman run` options (before the image) for the container, in the node namespace."""
    args = [f"--network=ns:/run/netns/{netns}"]
    if ct.host_pid:
        args.append("--pid=host")
    if ct.host_ipc:
        args.append("--ipc=host")
    if ct.privileged:
        args.append("--privileged")
    if ct.user is not None:
        args.append(f"--user={ct.user[0]}:{ct.user[1]}")
    if ct.no_new_privs:
        args.append("--security-opt=no-new-privileges")
    if ct.read_only_root:
        # Kubernetes' read-only root has no writable /tmp (podman's --read-only would add one).
        args += ["--read-only", "--read-only-tmpfs=false"]
    args += [f"--cap-drop={c}" for c in ct.caps_drop]
    args += [f"--cap-add={c}" for c in ct.caps_add]
    kind = ct.seccomp.get("type", "RuntimeDefault")
    if kind == "RuntimeDefault":
        # podman's default profile is what RuntimeDefault means under CRI-O/podman; like older
        # containerd/docker profiles it allows setns, bpf, perf_event_open only with CAP_SYS_ADMIN.
        if not PODMAN_DEFAULT_SECCOMP.exists():
            raise Untranslatable(f"RuntimeDefault needs podman's {PODMAN_DEFAULT_SECCOMP}")
        args.append(f"--security-opt=seccomp={PODMAN_DEFAULT_SECCOMP}")
    elif kind == "Unconfined":
        args.append("--security-opt=seccomp=unconfined")
    else:
        args.append(f"--security-opt=seccomp={ct.seccomp_file}")
    args += [f"--env={k}={v}" for k, v in ct.env.items()]
    for m in ct.mounts:
        opts = [f"type=bind,src={m.src},dst={m.dst}"]
        if m.read_only:
            opts.append("ro=true")
        opts.append(f"bind-propagation={PROPAGATION[m.propagation]}")
        args.append("--mount=" + ",".join(opts))
    if ct.memory is not None:
        args.append(f"--memory={ct.memory}")
    if ct.entrypoint is not None:
        args.append("--entrypoint=" + json.dumps(ct.entrypoint))
    return args


def translate(
    ds: dict, netns: str, node_ip: str, node_name: str, host_paths: dict[str, str] | None = None
) -> Translation:
    ct = container(ds, node_ip, node_name, host_paths)
    return Translation(
        args=podman_args(ct, netns),
        command_args=ct.command_args,
        env=ct.env,
        probes=ct.probes,
        stop_timeout=ct.stop_timeout,
        image=ct.image,
        container=ct,
    )


_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}


def _bytes(quantity: str | int) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G|)", str(quantity))
    if not m:
        raise Untranslatable(f"memory quantity {quantity!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]
