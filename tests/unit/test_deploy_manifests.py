"""The Kubernetes manifests in deploy/: schema-valid, accepted by kubectl, and least-privilege.

* Core objects (Namespace, ServiceAccount, DaemonSet, Service) are validated offline, in strict
  mode (unknown fields rejected), against the Kubernetes OpenAPI schemas that the PyPI package
  `kubernetes-validate` ships (one JSON-schema tree per Kubernetes release, no network).
* ServiceMonitor and PrometheusRule are validated against the prometheus-operator CRD schemas
  vendored in tests/fixtures/crd/ (source named in each file), made strict the way the API server's
  strict field validation is: unknown fields are errors.
* `kubectl apply --dry-run=client` needs API discovery (it maps each kind to a REST resource and
  GETs the live object to decide between create and patch) even with --validate=false; there is
  no cluster here, so the test serves discovery and "404 Not Found" from a tiny fake API server on
  127.0.0.1. kubectl's own schema check (--validate=true) downloads the server's OpenAPI document,
  which a fake cannot honestly provide; the schema checks above stand in for it.
* The security properties of the DaemonSet are asserted field by field, and each guard is shown
  to fire on a deliberately broken copy, so an edit cannot quietly make the pod privileged.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helpers import deploy_components as dc

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRD_FIXTURES = REPO / "tests" / "fixtures" / "crd"
NAMESPACE = "nodenet-exporter"
NAME = "nodenet-exporter"
PORT = 9834
CAP_NET_ADMIN_ONLY = ["NET_ADMIN"]
# Kubernetes releases validated against: the oldest still commonly run, the kubectl on this
# machine, and the newest the installed kubernetes-validate knows (added in _k8s_versions()).
K8S_VERSIONS = ["1.29.0", "1.32.0"]
CORE_KINDS = {"Namespace", "ServiceAccount", "DaemonSet", "Service"}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.v1.schema.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.v1.schema.yaml",
}


# --------------------------------------------------------------------------- loading


def load_docs(path: Path) -> list[dict]:
    if not path.exists():
        pytest.fail(f"{path.relative_to(REPO)} does not exist")
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def daemonset_file_docs() -> list[dict]:
    return load_docs(DEPLOY / "daemonset.yaml")


def the(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def prometheusrule_docs() -> list[dict]:
    path = DEPLOY / "prometheusrule.yaml"
    if not path.exists():
        pytest.fail(
            "deploy/prometheusrule.yaml is missing: it is generated from alerts/nodenet.rules.yaml "
            "by the alerts work (issue 5) and listed in deploy/kustomization.yaml; this test "
            "passes once that lands"
        )
    return load_docs(path)


def kubernetes_validate():
    try:
        import kubernetes_validate.utils as kv  # noqa: PLC0415
    except ImportError:
        pytest.fail("PyPI package kubernetes-validate is not installed (pip install kubernetes-validate)")
    return kv


def _k8s_versions() -> list[str]:
    try:
        import kubernetes_validate.utils as kv  # noqa: PLC0415
    except ImportError:
        return K8S_VERSIONS  # the test itself then fails with the install hint
    return sorted(set(K8S_VERSIONS + [kv.latest_version()]), key=lambda v: tuple(map(int, v.split("."))))


# --------------------------------------------------------------------------- file layout


def test_daemonset_file_holds_namespace_serviceaccount_daemonset_service():
    docs = daemonset_file_docs()
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "DaemonSet", "Service"], (
        "the Namespace must come first so that `kubectl apply -f` creates it before the objects in it"
    )
    assert the(docs, "Namespace")["metadata"]["name"] == NAMESPACE
    for d in docs[1:]:
        assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]
        assert d["metadata"]["name"] == NAME, d["kind"]
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/name"] == NAME, d["kind"]


def test_kustomization_lists_every_manifest_and_they_exist():
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    assert kust["resources"] == ["daemonset.yaml", "servicemonitor.yaml", "prometheusrule.yaml"]
    missing = [r for r in kust["resources"] if not (DEPLOY / r).exists()]
    assert not missing, (
        f"kustomization resources missing: {missing} (deploy/prometheusrule.yaml comes from the "
        "alerts work, issue 5)"
    )


# --------------------------------------------------------------------------- Kubernetes schemas


def all_k8s_objects() -> list[dict]:
    return daemonset_file_docs() + load_docs(DEPLOY / "servicemonitor.yaml")


def test_every_object_has_a_schema_we_check():
    """kubernetes-validate only *warns* on kinds it has no schema for; make that impossible here."""
    for d in all_k8s_objects():
        key = (d["apiVersion"], d["kind"])
        assert d["kind"] in CORE_KINDS or key in CRD_SCHEMAS, f"no schema checked for {key}"


@pytest.mark.parametrize("k8s_version", _k8s_versions())
def test_core_objects_validate_strictly_against_kubernetes_openapi(k8s_version):
    kv = kubernetes_validate()
    checked = []
    for d in daemonset_file_docs():
        try:
            kv.validate(d, k8s_version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{d['kind']} invalid for Kubernetes {k8s_version}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            pytest.fail(e.message)
        checked.append(d["kind"])
    assert set(checked) == CORE_KINDS


def test_kubernetes_schema_check_is_not_vacuous():
    kv = kubernetes_validate()
    ds = the(daemonset_file_docs(), "DaemonSet")
    typo = copy.deepcopy(ds)
    typo["spec"]["template"]["spec"]["hostNetwrok"] = True
    wrong_type = copy.deepcopy(ds)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = "no"
    for broken in (typo, wrong_type):
        with pytest.raises(kv.ValidationError):
            kv.validate(broken, _k8s_versions()[-1], strict=True)


# --------------------------------------------------------------------------- CRD schemas


def _strict(schema):
    """Reject unknown fields, as the API server's strict field validation does for a CRD."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


def crd_validator(api_version: str, kind: str):
    kv = kubernetes_validate()
    import referencing  # noqa: PLC0415  (dependency of jsonschema)
    from importlib.resources import files  # noqa: PLC0415

    schema = yaml.safe_load((CRD_FIXTURES / CRD_SCHEMAS[(api_version, kind)]).read_text())
    schema = _strict(schema)
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    # metadata is `type: object` in a CRD: the API server checks it as ObjectMeta; so do we.
    defs_dir = f"v{kv.latest_version()}-local-strict"
    defs = json.loads(
        files("kubernetes_validate").joinpath("kubernetes-json-schema", defs_dir, "_definitions.json").read_text()
    )
    schema["properties"]["metadata"] = {"$ref": defs["$id"] + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    registry = referencing.Resource.from_contents(defs) @ referencing.Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def crd_errors(doc: dict) -> list[str]:
    v = crd_validator(doc["apiVersion"], doc["kind"])
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in v.iter_errors(doc)]


def test_servicemonitor_validates_against_prometheus_operator_crd():
    docs = load_docs(DEPLOY / "servicemonitor.yaml")
    assert [d["kind"] for d in docs] == ["ServiceMonitor"]
    assert crd_errors(docs[0]) == []


def test_prometheusrule_validates_against_prometheus_operator_crd():
    docs = prometheusrule_docs()
    assert [d["kind"] for d in docs] == ["PrometheusRule"]
    rule = docs[0]
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert crd_errors(rule) == []
    assert rule["spec"]["groups"], "PrometheusRule has no rule groups"


def test_crd_schema_check_is_not_vacuous():
    sm = load_docs(DEPLOY / "servicemonitor.yaml")[0]
    typo = copy.deepcopy(sm)
    typo["spec"]["jobLable"] = typo["spec"].pop("jobLabel")  # would be pruned silently by the API
    bad_enum = copy.deepcopy(sm)
    bad_enum["spec"]["endpoints"][0]["scheme"] = "gopher"
    bad_meta = copy.deepcopy(sm)
    bad_meta["metadata"]["labels"] = {"a": 1}
    for broken in (typo, bad_enum, bad_meta):
        assert crd_errors(broken), "the CRD validator accepted a broken ServiceMonitor"
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "x", "namespace": NAMESPACE},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "1", "for": "5 minutes"}]}]},
    }
    assert crd_errors(rule), "the CRD validator accepted an invalid `for` duration"


# --------------------------------------------------------------------------- kubectl


def _apiresource(name: str, kind: str, namespaced: bool) -> dict:
    return {
        "name": name,
        "singularName": kind.lower(),
        "namespaced": namespaced,
        "kind": kind,
        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
    }


_DISCOVERY = {
    "/version": {"major": "1", "minor": "32", "gitVersion": "v1.32.0"},
    "/api": {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    },
    "/apis": {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": g,
                "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"},
            }
            for g in ("apps", "monitoring.coreos.com")
        ],
    },
    "/api/v1": {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            _apiresource("namespaces", "Namespace", False),
            _apiresource("serviceaccounts", "ServiceAccount", True),
            _apiresource("services", "Service", True),
        ],
    },
    "/apis/apps/v1": {
        "kind": "APIResourceList",
        "groupVersion": "apps/v1",
        "resources": [_apiresource("daemonsets", "DaemonSet", True)],
    },
    "/apis/monitoring.coreos.com/v1": {
        "kind": "APIResourceList",
        "groupVersion": "monitoring.coreos.com/v1",
        "resources": [
            _apiresource("servicemonitors", "ServiceMonitor", True),
            _apiresource("prometheusrules", "PrometheusRule", True),
        ],
    },
}


class FakeKubeAPI:
    """Discovery documents, and 404 for every object: an empty cluster, on 127.0.0.1 only.

    Any write (POST/PUT/PATCH/DELETE) is recorded and refused: a client dry run must not send one.
    """

    def __init__(self):
        self.gets: list[str] = []
        self.writes: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                path = self.path.split("?", 1)[0]
                api.gets.append(path)
                if path in _DISCOVERY:
                    self._send(200, _DISCOVERY[path])
                else:
                    self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "reason": "NotFound", "code": 404, "message": f"{path} not found"})

            def _refuse(self):
                api.writes.append(f"{self.command} {self.path}")
                self._send(405, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 405})

            do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def kubectl_bin() -> str:
    path = shutil.which("kubectl")
    if not path:
        pytest.fail("kubectl is not installed (Debian: kubernetes-client)")
    return path


def run_kubectl(args: list[str], api_url: str, home: Path) -> subprocess.CompletedProcess:
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": api_url}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "current-context": "fake",
    }))
    # HOME: kubectl keeps its discovery cache under ~/.kube; keep it out of the real home.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "KUBECONFIG": str(kubeconfig)}
    return subprocess.run([kubectl_bin(), *args], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)


def test_kubectl_apply_dry_run_client_accepts_the_daemonset_file(tmp_path):
    with FakeKubeAPI() as api:
        r = run_kubectl(
            ["apply", "--dry-run=client", "--validate=false", "-f", str(DEPLOY / "daemonset.yaml")], api.url, tmp_path
        )
    assert r.returncode == 0, f"kubectl apply --dry-run=client failed:\n{r.stdout}\n{r.stderr}"
    assert r.stdout.splitlines() == [
        "namespace/nodenet-exporter created (dry run)",
        "serviceaccount/nodenet-exporter created (dry run)",
        "daemonset.apps/nodenet-exporter created (dry run)",
        "service/nodenet-exporter created (dry run)",
    ]
    # kubectl really resolved every object against the (empty) cluster, and wrote nothing.
    for path in (
        "/api/v1/namespaces/nodenet-exporter",
        "/api/v1/namespaces/nodenet-exporter/serviceaccounts/nodenet-exporter",
        "/apis/apps/v1/namespaces/nodenet-exporter/daemonsets/nodenet-exporter",
        "/api/v1/namespaces/nodenet-exporter/services/nodenet-exporter",
    ):
        assert path in api.gets
    assert api.writes == []


def test_kubectl_rejects_a_broken_file_through_the_same_fake(tmp_path):
    """The fake cluster does not make kubectl accept anything: a kind it does not serve fails."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: DaemonZet\nmetadata: {name: x, namespace: ns1}\n")
    with FakeKubeAPI() as api:
        r = run_kubectl(["apply", "--dry-run=client", "--validate=false", "-f", str(bad)], api.url, tmp_path)
    assert r.returncode != 0
    assert "DaemonZet" in r.stderr


def test_kubectl_kustomize_and_apply_k_dry_run(tmp_path):
    prometheusrule_docs()  # clear failure if the alerts work has not landed yet
    with FakeKubeAPI() as api:
        built = run_kubectl(["kustomize", str(DEPLOY)], api.url, tmp_path)
        assert built.returncode == 0, built.stderr
        kinds = sorted(d["kind"] for d in yaml.safe_load_all(built.stdout) if d)
        assert kinds == sorted(["Namespace", "ServiceAccount", "DaemonSet", "Service", "ServiceMonitor", "PrometheusRule"])
        r = run_kubectl(["apply", "--dry-run=client", "--validate=false", "-k", str(DEPLOY)], api.url, tmp_path)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "servicemonitor.monitoring.coreos.com/nodenet-exporter created (dry run)" in r.stdout
    assert "prometheusrule.monitoring.coreos.com/" in r.stdout
    assert api.writes == []


# --------------------------------------------------------------------------- security properties


def _all_containers(pod: dict) -> list[dict]:
    return pod.get("containers", []) + pod.get("initContainers", []) + pod.get("ephemeralContainers", [])


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def security_violations(ds: dict) -> list[str]:
    """Every way the DaemonSet's pod could hold more than the base needs; [] when it is
    least-privilege. An opt-in component is checked by component_violations: its declared
    grants stripped, then this."""
    v: list[str] = []
    pod = ds["spec"]["template"]["spec"]
    if pod.get("hostNetwork") is not True:
        v.append("hostNetwork must be true (the node's conntrack/interfaces/IPVS are per netns)")
    for field in ("hostPID", "hostIPC", "shareProcessNamespace"):
        if pod.get(field):
            v.append(f"{field} must not be set")
    if pod.get("automountServiceAccountToken") is not False:
        v.append("automountServiceAccountToken must be false (the exporter never calls the API)")
    for vol in pod.get("volumes", []):
        if "hostPath" in vol:
            v.append(f"hostPath volume {vol['name']!r}: the exporter needs no host path")
    pod_sc = pod.get("securityContext", {})
    if pod_sc.get("sysctls"):
        v.append("pod sysctls must not be set")
    for c in _all_containers(pod):
        name = c["name"]
        sc = c.get("securityContext", {})
        if sc.get("privileged") is not False:
            v.append(f"{name}: privileged must be explicitly false")
        if sc.get("allowPrivilegeEscalation") is not False:
            v.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            v.append(f"{name}: readOnlyRootFilesystem must be true")
        caps = sc.get("capabilities", {})
        if caps.get("drop") != ["ALL"]:
            v.append(f"{name}: capabilities.drop must be [ALL]")
        if sorted(caps.get("add", [])) != sorted(dc.BASE_CAPS):
            v.append(f"{name}: capabilities.add must be exactly {sorted(dc.BASE_CAPS)}, got {caps.get('add')}")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        if seccomp != dc.RUNTIME_DEFAULT:
            v.append(f"{name}: seccompProfile must be {dc.RUNTIME_DEFAULT}, got {seccomp}")
        if sc.get("procMount", "Default") != "Default":
            v.append(f"{name}: procMount must be Default")
        for m in c.get("volumeMounts", []):
            if m.get("readOnly") is not True:
                v.append(f"{name}: volume mount {m['mountPath']} must be readOnly")
        for field in ("appArmorProfile", "seLinuxOptions", "windowsOptions"):
            if field in sc:
                v.append(f"{name}: unexpected {field}")
        # uid 0 is the documented design (see the comment in daemonset.yaml): it must be explicit,
        # and then it is only acceptable together with the capability restrictions above.
        if sc.get("runAsNonRoot") is not True and sc.get("runAsUser", pod_sc.get("runAsUser")) != 0:
            v.append(f"{name}: either runAsNonRoot: true or an explicit runAsUser: 0 (documented design)")
    return v


def exporter_container(ds: dict) -> dict:
    containers = ds["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["nodenet-exporter"]
    return containers[0]


def test_daemonset_pod_is_least_privilege():
    ds = the(daemonset_file_docs(), "DaemonSet")
    assert security_violations(ds) == []


BREAKAGES = {
    "privileged": lambda pod, c: c["securityContext"].update(privileged=True),
    "privileged removed": lambda pod, c: c["securityContext"].pop("privileged"),
    "escalation": lambda pod, c: c["securityContext"].update(allowPrivilegeEscalation=True),
    "writable root": lambda pod, c: c["securityContext"].update(readOnlyRootFilesystem=False),
    "SYS_ADMIN": lambda pod, c: c["securityContext"]["capabilities"]["add"].append("SYS_ADMIN"),
    "drop nothing": lambda pod, c: c["securityContext"]["capabilities"].update(drop=[]),
    "unconfined seccomp": lambda pod, c: c["securityContext"].update(seccompProfile={"type": "Unconfined"}),
    "hostPID": lambda pod, c: pod.update(hostPID=True),
    "hostPath /": lambda pod, c: pod.setdefault("volumes", []).append({"name": "root", "hostPath": {"path": "/"}}),
    "API token": lambda pod, c: pod.update(automountServiceAccountToken=True),
    "sidecar": lambda pod, c: pod["initContainers"].append({"name": "s", "image": "x"}) if "initContainers" in pod
    else pod.update(initContainers=[{"name": "s", "image": "x"}]),
    "unmasked proc": lambda pod, c: c["securityContext"].update(procMount="Unmasked"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_security_guard_catches(breakage):
    ds = copy.deepcopy(the(daemonset_file_docs(), "DaemonSet"))
    pod = ds["spec"]["template"]["spec"]
    BREAKAGES[breakage](pod, pod["containers"][0])
    assert security_violations(ds), f"a DaemonSet with {breakage!r} passed the security guard"


def test_listens_on_the_node_ip_only():
    c = exporter_container(the(daemonset_file_docs(), "DaemonSet"))
    listen = [a for a in c["args"] if a.startswith("--web.listen-address")]
    assert listen == [f"--web.listen-address=$(HOST_IP):{PORT}"]
    assert _env(c)["HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert not any("0.0.0.0" in a or "[::]" in a for a in c.get("args", []) + c.get("command", []))


def test_node_name_from_downward_api():
    c = exporter_container(the(daemonset_file_docs(), "DaemonSet"))
    assert _env(c)["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_scheduling_runs_everywhere_and_survives_pressure():
    ds = the(daemonset_file_docs(), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    strategy = ds["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"]
    # hostNetwork: a surge pod would fight the old one for <node IP>:9834.
    assert strategy["rollingUpdate"].get("maxSurge", 0) in (0, "0", "0%")


def test_probes_resources_and_ports():
    ds = the(daemonset_file_docs(), "DaemonSet")
    c = exporter_container(ds)
    ports = {p["name"]: p for p in c["ports"]}
    assert ports["metrics"]["containerPort"] == PORT
    assert ports["metrics"].get("hostPort", PORT) == PORT
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert get["port"] in ("metrics", PORT)
        assert "host" not in get, "kubelet must probe the pod IP = node IP the exporter listens on"
    res = c["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
    assert "cpu" not in res.get("limits", {}), "no CPU limit: throttling turns into scrape timeouts"


# --------------------------------------------------------------------------- scraping: job name


def test_service_selects_the_pods_and_exposes_metrics_port():
    docs = daemonset_file_docs()
    svc, ds = the(docs, "Service"), the(docs, "DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": PORT, "targetPort": "metrics", "protocol": "TCP"}]


def test_servicemonitor_yields_job_nodenet_exporter():
    svc = the(daemonset_file_docs(), "Service")
    sm = load_docs(DEPLOY / "servicemonitor.yaml")[0]
    spec = sm["spec"]
    assert spec["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # job = value of the Service label named by jobLabel (prometheus-operator semantics).
    assert svc["metadata"]["labels"][spec["jobLabel"]] == "nodenet-exporter"
    (ep,) = spec["endpoints"]
    assert ep["port"] == "metrics" and ep.get("path", "/metrics") == "/metrics"
    assert {"instance", "node"} <= {r["targetLabel"] for r in ep["relabelings"]}


def _promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is not installed (Debian: prometheus)")
    return path


def test_plain_scrape_config_job_and_relabeling(tmp_path):
    """deploy/prometheus-scrape.yaml: job_name, discovery and relabeling.

    Debian's Prometheus/promtool is built without Kubernetes service discovery (it answers
    "field kubernetes_sd_configs not found"), so the real promtool checks the same job with its
    discovery swapped for a static target carrying the meta labels; the rest is checked here.
    """
    cfg = yaml.safe_load((DEPLOY / "prometheus-scrape.yaml").read_text())
    assert list(cfg) == ["scrape_configs"]
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "nodenet-exporter"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["kubernetes_sd_configs"] == [{"role": "endpoints", "namespaces": {"names": [NAMESPACE]}}]
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep"
    assert re.fullmatch(keep["regex"], ";".join([NAME, "metrics"]))
    assert not re.fullmatch(keep["regex"], ";".join(["kube-dns", "metrics"]))
    assert {r.get("target_label") for r in job["relabel_configs"]} >= {"instance", "node"}

    static = copy.deepcopy(job)
    del static["kubernetes_sd_configs"]
    static["static_configs"] = [{"targets": ["127.0.0.1:9834"], "labels": {
        "__meta_kubernetes_service_name": NAME,
        "__meta_kubernetes_endpoint_port_name": "metrics",
        "__meta_kubernetes_pod_node_name": "node-a",
    }}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump({"scrape_configs": [static]}))
    r = subprocess.run([_promtool(), "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- opt-in components
# Every deploy/components/<mode>/ (a kustomize Component, nested ones too) declares in the
# test.yaml beside it (tests/helpers/deploy_components.py) the args it appends and, under
# `grants:`, what it adds to the base DaemonSet's privileges (capabilities, hostPath mounts,
# pod fields such as hostPID, a seccomp profile). The DaemonSet rendered with the component
# (`kubectl kustomize`), with exactly those grants and args taken away, must be the base
# DaemonSet field for field: a grant the component does not use, a privilege or any other
# change it does not declare, fails here.

COMPONENT_IDS = dc.components()


def component_spec(component: str) -> dict:
    try:
        return dc.spec(component)
    except dc.ComponentDataError as e:
        pytest.fail(str(e))


def strip_grants(ds: dict, grants: dict, base: dict) -> tuple[dict, list[str]]:
    """(the DaemonSet without the granted privileges, grants that were not there to strip).
    A stripped pod field takes the base DaemonSet's value."""
    ds = copy.deepcopy(ds)
    pod = ds["spec"]["template"]["spec"]
    base_pod = base["spec"]["template"]["spec"]
    c = exporter_container(ds)
    sc = c.setdefault("securityContext", {})
    unused: list[str] = []
    add = sc.get("capabilities", {}).get("add", [])
    for cap in grants.get("capabilities", []):
        if cap in add:
            add.remove(cap)
        else:
            unused.append(f"capability {cap}")
    vols = pod.get("volumes", [])
    mounts = c.get("volumeMounts", [])
    for hp in grants.get("hostPaths", []):
        vol = [v for v in vols if v.get("hostPath", {}).get("path") == hp["path"]]
        mnt = [m for m in mounts
               if vol and m["name"] == vol[0]["name"] and m["mountPath"] == hp["mountPath"]]
        if not (vol and mnt):
            unused.append(f"hostPath {hp['path']} at {hp['mountPath']}")
            continue
        if mnt[0].get("readOnly") is not hp.get("readOnly", True):
            unused.append(f"hostPath {hp['path']}: readOnly must be {hp.get('readOnly', True)}")
        vols.remove(vol[0])
        mounts.remove(mnt[0])
    for field, want in (grants.get("pod") or {}).items():
        if pod.get(field) != want:
            unused.append(f"pod {field}: {want}")
        pod.pop(field, None)
        if field in base_pod:
            pod[field] = base_pod[field]
    if "seccompProfile" in grants:
        if sc.get("seccompProfile") != grants["seccompProfile"]:
            unused.append(f"seccompProfile {grants['seccompProfile']}")
        sc["seccompProfile"] = dict(dc.RUNTIME_DEFAULT)
    for key, lst in (("volumes", vols), ("volumeMounts", mounts)):
        if not lst:
            (pod if key == "volumes" else c).pop(key, None)
    return ds, unused


def differences(a, b, where: str = "") -> list[str]:
    """Paths at which two parsed manifests differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in (differences(a[k], b[k], f"{where}.{k}") if k in a and k in b
                          else [f"{where}.{k}"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where or "."]


def component_violations(ds: dict, s: dict, base: dict) -> list[str]:
    """Everything in the component's rendered DaemonSet that its test.yaml does not declare,
    and every declaration it does not use; [] when it is the base plus exactly its grants."""
    stripped, unused = strip_grants(ds, s["grants"], base)
    v = [f"declared but not granted as declared: {u}" for u in unused]
    v += security_violations(stripped)
    c, base_args = exporter_container(stripped), exporter_container(base)["args"]
    if c.get("args") != base_args + s["args"]:
        v.append(f"args must be the base's + {s['args']}, got {c.get('args')}")
    c["args"] = list(base_args)
    v += [f"differs from the base DaemonSet at {d}" for d in differences(stripped, base)]
    return v


@pytest.mark.parametrize("component", COMPONENT_IDS)
def test_component_grants_exactly_what_it_declares(component):
    s = component_spec(component)
    base = the(daemonset_file_docs(), "DaemonSet")
    assert component_violations(dc.rendered_daemonset(component), s, base) == []


@pytest.mark.parametrize("component", COMPONENT_IDS)
def test_component_output_validates_strictly_against_kubernetes_openapi(component):
    """Every object the overlay renders: core kinds for each Kubernetes release, CRDs strictly."""
    kv = kubernetes_validate()
    for d in dc.render(component):
        if d["kind"] not in CORE_KINDS:
            assert crd_errors(d) == [], f"{component}: {d['kind']}"
            continue
        for version in _k8s_versions():
            try:
                kv.validate(d, version, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{component}: {d['kind']} invalid for Kubernetes {version}: "
                            f"{'.'.join(str(p) for p in e.path)}: {e.message}")


def test_every_component_has_its_test_data():
    assert COMPONENT_IDS, "deploy/components/ holds no component"
    assert "dropreason/caps" in COMPONENT_IDS, "nested components are found"
    for component in COMPONENT_IDS:
        component_spec(component)


def test_a_component_without_test_data_fails_clearly(tmp_path):
    comp = tmp_path / "components" / "new-mode"
    comp.mkdir(parents=True)
    (comp / "kustomization.yaml").write_text("kind: Component\n")
    assert dc.components(tmp_path / "components") == ["new-mode"]
    with pytest.raises(dc.ComponentDataError, match=r"new-mode/test\.yaml is missing"):
        dc.spec(comp)
    good = yaml.safe_load((dc.path("conntrack-netns") / "test.yaml").read_text())
    for key in sorted(dc.REQUIRED):
        (comp / "test.yaml").write_text(yaml.safe_dump({k: v for k, v in good.items() if k != key}))
        with pytest.raises(dc.ComponentDataError, match=f"missing keys \\['{key}'\\]"):
            dc.spec(comp)
    (comp / "test.yaml").write_text(yaml.safe_dump({k: v for k, v in good.items() if k != "proof"}))
    with pytest.raises(dc.ComponentDataError, match="proof:. must show"):
        dc.spec(comp)
    (comp / "test.yaml").write_text(yaml.safe_dump(good))
    assert dc.spec(comp)["grants"] == good["grants"]


COMPONENT_BREAKAGES = {
    **BREAKAGES,
    "another cap": lambda pod, c: c["securityContext"]["capabilities"]["add"].append("SYS_PTRACE"),
    "other Localhost profile": lambda pod, c: c["securityContext"].update(
        seccompProfile={"type": "Localhost", "localhostProfile": "unconfined.json"}),
    "cap missing": lambda pod, c: c["securityContext"]["capabilities"]["add"].pop(),
    "extra arg": lambda pod, c: c["args"].append("--collector.netns"),
    "resources": lambda pod, c: c["resources"]["limits"].update(memory="4Gi"),
}


def _granted(component: str, breakage: str) -> bool:
    """The breakage is one of the component's declared grants (hostPID for podview)."""
    try:
        grants = dc.spec(component)["grants"]
    except dc.ComponentDataError:
        return False                   # the test then fails with the message
    return breakage == "hostPID" and (grants.get("pod") or {}).get("hostPID") is True


@pytest.mark.parametrize("component,breakage", [
    (c, b) for c in COMPONENT_IDS for b in sorted(COMPONENT_BREAKAGES) if not _granted(c, b)])
def test_component_guard_catches(component, breakage):
    s = component_spec(component)
    base = the(daemonset_file_docs(), "DaemonSet")
    ds = dc.rendered_daemonset(component)
    broken = copy.deepcopy(ds)
    pod = broken["spec"]["template"]["spec"]
    COMPONENT_BREAKAGES[breakage](pod, pod["containers"][0])
    assert broken != ds, f"{breakage!r} changes nothing in {component}"
    assert component_violations(broken, s, base), f"{component} with {breakage!r} passed the guard"


@pytest.mark.parametrize("component", COMPONENT_IDS)
def test_component_guard_catches_an_undeclared_privilege(component):
    """...and a grant the component does not use is reported."""
    s = component_spec(component)
    base = the(daemonset_file_docs(), "DaemonSet")
    ds = dc.rendered_daemonset(component)
    extra = {**s, "grants": {**s["grants"], "capabilities": [*dc.granted_caps(s), "CHOWN"]}}
    assert component_violations(ds, extra, base) == [
        "declared but not granted as declared: capability CHOWN"]
    fewer = {**s, "args": s["args"][:-1]}
    assert component_violations(ds, fewer, base), f"{component}: an undeclared arg passed"


def test_base_guard_refuses_the_dropreason_capabilities():
    assert security_violations(dc.rendered_daemonset("dropreason")), "the base took BPF/PERFMON"


def test_dropreason_seccomp_profile_is_runtime_default_plus_two_calls():
    comp = DEPLOY / "components" / "dropreason"
    r = subprocess.run(["python3", str(comp / "make_seccomp_profile.py"), "--check"], timeout=60)
    assert r.returncode == 0, "seccomp-dropreason.json is stale: run make_seccomp_profile.py"
    profile = json.loads((comp / "seccomp-dropreason.json").read_text())
    source = json.loads((comp / "containers-common-0.50.1-seccomp.json").read_text())
    assert profile["defaultAction"] == source["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    source_allowed = {n for r in source["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert {"bpf", "perf_event_open"} <= allowed
    assert allowed - source_allowed == set()              # nothing the default never allows
    gated = {n for r in source["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"
             and (r.get("includes") or {}).get("caps") for n in r["names"]}
    plain = {n for r in source["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"
             and not (r.get("includes") or {}) for n in r["names"]}
    assert allowed & (gated - plain) == {"bpf", "perf_event_open"}  # no other cap-gated call
    assert not any("includes" in r or "excludes" in r for r in profile["syscalls"])
