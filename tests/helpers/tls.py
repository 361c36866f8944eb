"""Test PKI made with the real `openssl` CLI, and the exporter served over HTTPS."""
from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass

from .exporter_proc import ExporterProcess


@dataclass
class Pki:
    dir: str
    ca: str            # CA certificate (signs server and client)
    server_cert: str   # CN=localhost, SAN DNS:localhost, IP:127.0.0.1
    server_key: str
    client_cert: str   # CN=prometheus, signed by ca
    client_key: str
    rogue_cert: str    # CN=prometheus, self-signed: not from ca
    rogue_key: str


def _openssl(*args, cwd):
    exe = shutil.which("openssl")
    if not exe:
        raise RuntimeError("the openssl command is missing (Debian package openssl)")
    res = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {res.stderr.strip()}")


def make_pki(directory) -> Pki:
    d = str(directory)
    os.makedirs(d, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=nodenet test CA", cwd=d)
    for name, cn, ext in (
            ("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                    "extendedKeyUsage=serverAuth\n"),
            ("client", "prometheus", "extendedKeyUsage=clientAuth\n")):
        _openssl("req", "-new", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)
        with open(os.path.join(d, f"{name}.ext"), "w") as fh:
            fh.write(ext)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile",
                 f"{name}.ext", cwd=d)
    _openssl("req", "-x509", *key, "-keyout", "rogue.key", "-out", "rogue.crt", "-days", "2",
             "-subj", "/CN=prometheus", cwd=d)
    j = lambda n: os.path.join(d, n)  # noqa: E731
    return Pki(d, j("ca.crt"), j("server.crt"), j("server.key"), j("client.crt"),
               j("client.key"), j("rogue.crt"), j("rogue.key"))


def bcrypt_hash(password: str, cost: int = 10) -> str:
    import bcrypt
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class TLSExporterProcess(ExporterProcess):
    """The exporter behind TLS; requests verify its certificate against the test CA."""

    def __init__(self, args, pki: Pki, client_cert: tuple[str, str] | None = None,
                 auth: tuple[str, str] | None = None, **kw):
        super().__init__(args, **kw)
        self.pki = pki
        self.client_cert = client_cert
        self.auth = auth

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    def ssl_context(self, client_cert=None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.pki.ca)
        cert = client_cert or self.client_cert
        if cert:
            ctx.load_cert_chain(*cert)
        return ctx

    def _get(self, path, headers, timeout):
        hdrs = dict(basic(*self.auth) if self.auth else {}, **(headers or {}))
        req = urllib.request.Request(self.url + path, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)
