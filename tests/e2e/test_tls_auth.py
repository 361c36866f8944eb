"""--web.config.file end to end: the real exporter behind TLS and basic auth, spoken to by real
clients (curl, Python's ssl, and a real Prometheus scraping with its own tls_config/basic_auth)."""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import pytest

from tests.helpers.exporter_proc import ROOT, ExporterProcess, free_port
from tests.helpers.tls import TLSExporterProcess, basic, bcrypt_hash, make_pki

FIX = os.path.join(ROOT, "tests", "fixtures")
FIXTURE_ARGS = [f"--path.procfs={FIX}/root/proc", f"--path.sysfs={FIX}/root/sys",
                "--collector.disable-defaults", "--collector.cpu", "--collector.softnet",
                "--collector.sysctl"]
USER, PASSWORD = "prom", "s3cret: with spaces and ü"
COST = 10


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def password_hash():
    return bcrypt_hash(PASSWORD, COST)


def write_web_config(directory, pki, users=None, client_auth=None, extra_tls="", extra=""):
    lines = ["tls_server_config:", f"  cert_file: {os.path.relpath(pki.server_cert, directory)}",
             f"  key_file: {pki.server_key}"]
    if client_auth:
        lines.append(f"  client_auth_type: {client_auth}")
        if client_auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
            lines.append(f"  client_ca_file: {pki.ca}")
    lines += [f"  {line}" for line in extra_tls.splitlines()]
    if users:
        lines.append("basic_auth_users:")
        lines += [f"  {u}: '{h}'" for u, h in users.items()]
    lines += extra.splitlines()
    path = os.path.join(str(directory), "web.yml")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def curl(url, pki=None, auth=None, cert=None, extra=()):
    """(curl exit code, HTTP status, headers text, body) with the real curl."""
    exe = shutil.which("curl")
    assert exe, "curl missing: tests/run.sh installs Debian's curl"
    with tempfile.TemporaryDirectory() as d:
        cmd = [exe, "-sS", "-o", f"{d}/body", "-D", f"{d}/headers", "-w", "%{http_code}",
               "--max-time", "20", *extra]
        if pki:
            cmd += ["--cacert", pki.ca]
        if auth:
            cmd += ["-u", f"{auth[0]}:{auth[1]}"]
        if cert:
            cmd += ["--cert", cert[0], "--key", cert[1]]
        res = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=30)
        body = open(f"{d}/body", "rb").read() if os.path.exists(f"{d}/body") else b""
        headers = open(f"{d}/headers").read() if os.path.exists(f"{d}/headers") else ""
    return res.returncode, int(res.stdout or 0), headers, body


def test_tls_and_basic_auth_with_curl(tmp_path, pki, password_hash):
    web = write_web_config(tmp_path, pki, users={USER: password_hash, "other": password_hash},
                           extra="http_server_config:\n  headers:\n"
                                 "    X-Frame-Options: deny\n"
                                 "    Strict-Transport-Security: max-age=31536000\n")
    with TLSExporterProcess([*FIXTURE_ARGS, f"--web.config.file={web}"], pki) as ex:
        url = ex.url + "/metrics"
        rc, code, headers, _ = curl(url, pki)
        assert (rc, code) == (0, 401)
        assert 'www-authenticate: basic realm="nodenet-exporter"' in headers.lower()
        assert curl(url, pki, auth=(USER, "wrong"))[:2] == (0, 401)
        assert curl(url, pki, auth=("nobody", PASSWORD))[:2] == (0, 401)
        assert curl(url, pki, auth=(USER, PASSWORD[:-1]))[:2] == (0, 401)
        rc, code, headers, body = curl(url, pki, auth=(USER, PASSWORD))
        assert (rc, code) == (0, 200), headers
        assert b'nodenet_scrape_collector_success{collector="cpu"} 1' in body
        assert "x-frame-options: deny" in headers.lower()
        assert "strict-transport-security: max-age=31536000" in headers.lower()
        assert curl(url, pki, auth=("other", PASSWORD))[:2] == (0, 200)
        # the landing page names collectors and errors: protected; /healthz says only "ok"
        assert curl(ex.url + "/", pki)[:2] == (0, 401)
        assert curl(ex.url + "/nope", pki)[:2] == (0, 401)
        rc, code, _, body = curl(ex.url + "/healthz", pki)
        assert (rc, code, body) == (0, 200, b"ok\n")
        # the certificate is really checked by the client: without the CA curl refuses it
        rc, code, _, _ = curl(url, auth=(USER, PASSWORD))
        assert rc == 60 and code == 0, rc
        # plain HTTP on the TLS port gets no metrics
        rc, code, _, body = curl(f"http://{ex.address}/metrics", auth=(USER, PASSWORD))
        assert code != 200 and b"nodenet_" not in body
        # TLS 1.2 and 1.3 both work by default (min_version TLS12)
        assert curl(url, pki, auth=(USER, PASSWORD), extra=["--tls-max", "1.2"])[:2] == (0, 200)
        assert curl(url, pki, auth=(USER, PASSWORD), extra=["--tlsv1.3"])[:2] == (0, 200)
        assert curl(url, pki, auth=(USER, PASSWORD), extra=["--tlsv1.0", "--tls-max", "1.1"]
                    )[1] == 0
        log = ex.log()
    assert "Traceback" not in log


def test_min_version_tls13(tmp_path, pki):
    web = write_web_config(tmp_path, pki, extra_tls="min_version: TLS13")
    with TLSExporterProcess([*FIXTURE_ARGS, f"--web.config.file={web}"], pki) as ex:
        url = ex.url + "/metrics"
        assert curl(url, pki, extra=["--tlsv1.3"])[:2] == (0, 200)
        rc, code, _, _ = curl(url, pki, extra=["--tls-max", "1.2"])
        assert rc != 0 and code == 0


# (no client certificate, certificate signed by the CA, self-signed certificate) -> served?
CLIENT_AUTH_CASES = {
    "NoClientCert": (True, True, True),
    "VerifyClientCertIfGiven": (True, True, False),
    "RequireAndVerifyClientCert": (False, True, False),
}


@pytest.mark.parametrize("client_auth", list(CLIENT_AUTH_CASES))
def test_client_auth_types_with_curl(tmp_path, pki, client_auth):
    web = write_web_config(tmp_path, pki, client_auth=client_auth)
    expected = CLIENT_AUTH_CASES[client_auth]
    good = (pki.client_cert, pki.client_key)
    rogue = (pki.rogue_cert, pki.rogue_key)
    # the helper's own start-up probe presents the good certificate
    with TLSExporterProcess([*FIXTURE_ARGS, f"--web.config.file={web}"], pki,
                            client_cert=good) as ex:
        url = ex.url + "/metrics"
        got = []
        for cert in (None, good, rogue):
            rc, code, _, body = curl(url, pki, cert=cert)
            assert (rc == 0) == (code == 200), (client_auth, cert, rc, code)
            if code == 200:
                assert b"nodenet_build_info" in body
            got.append(code == 200)
        assert tuple(got) == expected, (client_auth, got)
        assert ex.proc.poll() is None


def test_unknown_user_costs_a_bcrypt_too(tmp_path, pki):
    """No timing shortcut: a wrong user name takes as long as a wrong password (a bcrypt
    against a dummy hash of the same cost), not the microseconds of a dict miss."""
    cost = 12
    web = write_web_config(tmp_path, pki, users={USER: bcrypt_hash(PASSWORD, cost)})
    with TLSExporterProcess([*FIXTURE_ARGS, f"--web.config.file={web}"], pki) as ex:
        import http.client

        def timed(user, password):
            conn = http.client.HTTPSConnection("127.0.0.1", ex.port, timeout=20,
                                               context=ex.ssl_context())
            conn.connect()  # the TLS handshake is not part of the measurement
            t0 = time.perf_counter()
            conn.request("GET", "/metrics", headers=basic(user, password))
            status = conn.getresponse().status
            elapsed = time.perf_counter() - t0
            conn.close()
            assert status == 401
            return elapsed

        wrong_pw, wrong_user, no_creds = [], [], []
        for _ in range(5):
            wrong_pw.append(timed(USER, "wrong"))
            wrong_user.append(timed("mallory", "wrong"))
        pw, usr = statistics.median(wrong_pw), statistics.median(wrong_user)
        print(f"bcrypt cost {cost}: median 401 time wrong password {pw * 1000:.0f} ms, "
              f"unknown user {usr * 1000:.0f} ms")
        assert pw > 0.05, "a wrong password should cost a bcrypt at cost 12"
        assert 0.5 < usr / pw < 2.0, (wrong_pw, wrong_user)


BAD_CONFIGS = {
    "unknown_top_key": ("tls_config: {{}}\n", "unknown key 'tls_config'"),
    "malformed_yaml": ("basic_auth_users: [\n", "malformed YAML"),
    "missing_key_file": ("tls_server_config:\n  cert_file: {cert}\n", "key_file is missing"),
    "absent_cert_file": ("tls_server_config:\n  cert_file: nope.crt\n  key_file: {key}\n",
                         "No such file or directory"),
    "cert_key_mismatch": ("tls_server_config:\n  cert_file: {cert}\n  key_file: {ckey}\n",
                          "cannot load cert_file/key_file"),
    "bad_client_auth": ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                        "  client_auth_type: Always\n", "'Always' is not one of"),
    "ca_without_auth": ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                        "  client_ca_file: {ca}\n", "client_ca_file is set but"),
    "verify_without_ca": ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                          "  client_auth_type: RequireAndVerifyClientCert\n",
                          "needs client_ca_file"),
    "ca_not_a_cert": ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                      "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {key}\n",
                      "client_ca_file"),
    "bad_version": ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                    "  min_version: TLS14\n", "'TLS14' is not one of"),
    "max_below_min": ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                      "  min_version: TLS13\n  max_version: TLS12\n", "max_version is lower"),
    # Go-only modes (an unverified client certificate): refused, alternatives named
    "request_client_cert": ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                            "  client_auth_type: RequestClientCert\n  client_ca_file: {ca}\n",
                            "RequestClientCert is not supported"),
    "require_any_client_cert": ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                                "  client_auth_type: RequireAnyClientCert\n",
                                "use RequireAndVerifyClientCert or VerifyClientCertIfGiven"),
    "plain_password": ("basic_auth_users:\n  prom: s3cret\n", "not a bcrypt hash"),
    "bad_header": ("http_server_config:\n  headers:\n    Server: evil\n", "cannot be set"),
    "unsupported_tls_key": ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                            "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "not supported"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_web_config_is_one_line_and_nonzero(tmp_path, pki, case):
    text, needle = BAD_CONFIGS[case]
    path = tmp_path / "web.yml"
    path.write_text(text.format(cert=pki.server_cert, key=pki.server_key, ca=pki.ca,
                                ckey=pki.client_key))
    res = subprocess.run([sys.executable, "-m", "exporter", f"--web.config.file={path}",
                          "--web.listen-address=127.0.0.1:0", *FIXTURE_ARGS],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"nodenet-exporter: error: web config {path}") and \
        needle in lines[0], lines[0]


def test_basic_auth_without_tls_and_no_config_stays_plain(tmp_path, password_hash):
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  {USER}: '{password_hash}'\n")
    with ExporterProcess([*FIXTURE_ARGS, f"--web.config.file={web}"]) as ex:
        assert ex.get("/metrics")[0] == 401
        assert ex.get("/metrics", basic(USER, PASSWORD))[0] == 200
    with ExporterProcess(FIXTURE_ARGS) as ex:  # no web config: plain HTTP, no auth, as before
        assert ex.get("/metrics")[0] == 200


# -- a real Prometheus ----------------------------------------------------------------------

def _prometheus_targets(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as r:
        data = json.load(r)
    return {t["labels"]["job"]: t for t in data["data"]["activeTargets"]}


def test_real_prometheus_scrapes_through_tls_client_cert_and_basic_auth(tmp_path, pki,
                                                                         password_hash):
    prom = shutil.which("prometheus")
    assert prom, "prometheus missing: tests/run.sh installs Debian's prometheus package"
    web = write_web_config(tmp_path, pki, users={USER: password_hash},
                           client_auth="RequireAndVerifyClientCert")
    with TLSExporterProcess([*FIXTURE_ARGS, f"--web.config.file={web}"], pki,
                            client_cert=(pki.client_cert, pki.client_key)) as ex:
        pport = free_port()
        pw_file = tmp_path / "password"
        pw_file.write_text(PASSWORD)
        tls = (f"{{ca_file: {pki.ca}, cert_file: {pki.client_cert}, "
               f"key_file: {pki.client_key}}}")
        target = f"static_configs: [{{targets: ['127.0.0.1:{ex.port}']}}]"
        (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
- job_name: nodenet
  scheme: https
  tls_config: {tls}
  basic_auth: {{username: {USER}, password_file: {pw_file}}}
  {target}
- job_name: wrong-password
  scheme: https
  tls_config: {tls}
  basic_auth: {{username: {USER}, password: not-it}}
  {target}
- job_name: no-client-cert
  scheme: https
  tls_config: {{ca_file: {pki.ca}}}
  basic_auth: {{username: {USER}, password_file: {pw_file}}}
  {target}
""")
        proc = subprocess.Popen(
            [prom, f"--config.file={tmp_path}/prometheus.yml",
             f"--storage.tsdb.path={tmp_path}/data", f"--web.listen-address=127.0.0.1:{pport}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
        try:
            deadline = time.monotonic() + 60
            targets = {}
            while time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                try:
                    targets = _prometheus_targets(pport)
                except OSError:
                    targets = {}
                if targets and all(t["health"] != "unknown" for t in targets.values()) and \
                        targets["nodenet"]["health"] == "up":
                    break
                time.sleep(0.5)
            assert targets, "Prometheus never answered /api/v1/targets"
            ok, bad, nocert = (targets["nodenet"], targets["wrong-password"],
                               targets["no-client-cert"])
            assert ok["health"] == "up", ok
            assert ok["scrapeUrl"].startswith("https://")
            assert bad["health"] == "down" and "401" in bad["lastError"], bad
            assert nocert["health"] == "down" and nocert["lastError"], nocert
            q = urllib.parse.quote('nodenet_scrape_collector_success{job="nodenet"}')
            with urllib.request.urlopen(f"http://127.0.0.1:{pport}/api/v1/query?query={q}",
                                        timeout=5) as r:
                result = json.load(r)["data"]["result"]
            assert {s["metric"]["collector"]: s["value"][1] for s in result} == \
                {"cpu": "1", "softnet": "1", "sysctl": "1"}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
