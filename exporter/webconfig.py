"""``--web.config.file``: TLS, basic auth and response headers, in the Prometheus
exporter-toolkit format that node_exporter reads::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default)
                                     # | VerifyClientCertIfGiven
      client_ca_file: ca.crt
      min_version: TLS12             # default TLS12; TLS10 | TLS11 | TLS12 | TLS13
      max_version: TLS13
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2b$12$...         # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

:func:`load` validates everything (files readable, certificate and key matching, hashes well
formed) and raises :class:`WebConfigError` with a one-line reason.  :class:`WebConfigHolder`
keeps the config in force: it is replaced on SIGHUP and when one of its files changes on disk
(a rotated certificate), and a bad new version leaves the old one in force.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .config import read_yaml


class WebConfigError(Exception):
    """A bad web config file; str() is the one-line reason."""


CLIENT_AUTH_TYPES = ("NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
# Go's modes that ask for a client certificate without verifying it: Python's ssl module has no
# way to do that (docs/security.md "Client certificates"), so they are refused at start-up.
CLIENT_AUTH_REFUSED = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# The response headers exporter-toolkit lets a config set, with the values it accepts.
SETTABLE_HEADERS = {
    "strict-transport-security": ("Strict-Transport-Security", None),
    "x-content-type-options": ("X-Content-Type-Options", ("nosniff",)),
    "x-frame-options": ("X-Frame-Options", ("deny", "sameorigin")),
    "x-xss-protection": ("X-XSS-Protection", None),
    "content-security-policy": ("Content-Security-Policy", None),
}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version", "prefer_server_cipher_suites"}
TLS_UNSUPPORTED = {"cert", "key", "client_ca", "cipher_suites", "curve_preferences",
                   "client_allowed_sans"}
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
BCRYPT_MAX_PASSWORD = 72  # bcrypt reads no further (Go's CompareHashAndPassword truncates too)


@dataclass(frozen=True)
class WebConfig:
    path: str | None = None
    tls: ssl.SSLContext | None = None
    auth: BasicAuth | None = None
    headers: tuple[tuple[str, str], ...] = ()
    files: tuple[str, ...] = ()  # every file it was built from (change detection)
    summary: dict[str, Any] = field(default_factory=dict)


def load(path: str) -> WebConfig:
    """Reads and validates a web config file; raises WebConfigError (one line)."""
    data = read_yaml(path, "web config", WebConfigError)
    try:
        return _build(path, {} if data is None else data)
    except WebConfigError as exc:
        raise WebConfigError(f"web config {path}: {exc}") from None


def _build(path: str, data: Any) -> WebConfig:
    if not isinstance(data, dict):
        raise WebConfigError("expected a mapping at top level")
    unknown = set(data) - {"tls_server_config", "http_server_config", "basic_auth_users"}
    if unknown:
        raise WebConfigError(f"unknown key {sorted(map(str, unknown))[0]!r} (known: "
                             "tls_server_config, http_server_config, basic_auth_users)")
    base = os.path.dirname(os.path.abspath(path))
    files = [os.path.abspath(path)]
    tls = None
    summary: dict[str, Any] = {"tls": False, "client_auth_type": None, "users": 0}
    tls_section = data.get("tls_server_config")
    if tls_section is not None:
        tls, client_auth, tls_files = _tls_context(tls_section, base)
        files.extend(tls_files)
        summary.update(tls=True, client_auth_type=client_auth)
    auth = None
    users = data.get("basic_auth_users")
    if users is not None:
        auth = BasicAuth(_users(users))
        summary["users"] = len(auth.users)
        summary["bcrypt_cost"] = auth.cost
    headers = _headers(data.get("http_server_config"))
    return WebConfig(path=path, tls=tls, auth=auth, headers=headers, files=tuple(files),
                     summary=summary)


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{where}: expected a mapping")
    return value


def _tls_context(section: Any, base: str) -> tuple[ssl.SSLContext, str, list[str]]:
    """(context, client_auth_type, files read) from ``tls_server_config``."""
    section = _mapping(section, "tls_server_config")
    for key in section:
        if key in TLS_UNSUPPORTED:
            raise WebConfigError(f"tls_server_config.{key}: not supported by nodenet-exporter")
        if key not in TLS_KEYS:
            raise WebConfigError(f"tls_server_config: unknown key {key!r}")
    cert = _tls_file(section, base, "cert_file")
    key = _tls_file(section, base, "key_file")
    ca = _tls_file(section, base, "client_ca_file", required=False)
    assert cert is not None and key is not None
    client_auth = _client_auth(section, ca)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _set_versions(ctx, section)
    if section.get("prefer_server_cipher_suites", True):
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise WebConfigError(f"tls_server_config.key_file: {key}: encrypted keys are not "
                             "supported") from None
    except ssl.SSLError as exc:
        raise WebConfigError(f"tls_server_config: cannot load cert_file/key_file: "
                             f"{_ssl_reason(exc)}") from None
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise WebConfigError(f"tls_server_config.client_ca_file: {ca}: "
                                 f"{_ssl_reason(exc)}") from None
    if client_auth == "VerifyClientCertIfGiven":
        ctx.verify_mode = ssl.CERT_OPTIONAL
    elif client_auth == "RequireAndVerifyClientCert":
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx, client_auth, [f for f in (cert, key, ca) if f]


def _tls_file(section: dict, base: str, key: str, required: bool = True) -> str | None:
    """The full path of a file the section names, checked readable; None if absent."""
    value = section.get(key)
    if value in (None, ""):
        if required:
            raise WebConfigError(f"tls_server_config.{key} is missing")
        return None
    if not isinstance(value, str):
        raise WebConfigError(f"tls_server_config.{key}: expected a file name")
    full = os.path.join(base, value)
    try:
        with open(full, "rb"):
            pass
    except OSError as exc:
        raise WebConfigError(f"tls_server_config.{key}: {full}: "
                             f"{exc.strerror or exc}") from None
    return full


def _client_auth(section: dict, ca: str | None) -> str:
    client_auth = section.get("client_auth_type") or "NoClientCert"
    if client_auth in CLIENT_AUTH_REFUSED:
        raise WebConfigError(f"tls_server_config.client_auth_type: {client_auth} is not "
                             "supported (it accepts unverified client certificates); use "
                             "RequireAndVerifyClientCert or VerifyClientCertIfGiven with "
                             "client_ca_file, or NoClientCert")
    if client_auth not in CLIENT_AUTH_TYPES:
        raise WebConfigError(f"tls_server_config.client_auth_type: {client_auth!r} is not one "
                             f"of {'|'.join(CLIENT_AUTH_TYPES)}")
    if ca and client_auth == "NoClientCert":
        raise WebConfigError("tls_server_config: client_ca_file is set but client_auth_type is "
                             "NoClientCert (client certificates would never be checked)")
    if not ca and client_auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        raise WebConfigError(f"tls_server_config: client_auth_type {client_auth} needs "
                             "client_ca_file")
    return str(client_auth)


def _set_versions(ctx: ssl.SSLContext, section: dict) -> None:
    versions = {}
    for bound, default in (("min_version", "TLS12"), ("max_version", None)):
        name = section.get(bound) or default
        if name is None:
            continue
        if name not in TLS_VERSIONS:
            raise WebConfigError(f"tls_server_config.{bound}: {name!r} is not one of "
                                 f"{'|'.join(TLS_VERSIONS)}")
        versions[bound] = TLS_VERSIONS[name]
    if "max_version" in versions and versions["max_version"] < versions["min_version"]:
        raise WebConfigError("tls_server_config: max_version is lower than min_version")
    try:
        ctx.minimum_version = versions["min_version"]
        if "max_version" in versions:
            ctx.maximum_version = versions["max_version"]
    except (ValueError, ssl.SSLError) as exc:
        raise WebConfigError(f"tls_server_config: this OpenSSL refuses the TLS versions: "
                             f"{exc}") from None


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey()  # instead of OpenSSL prompting on the terminal


def _ssl_reason(exc: ssl.SSLError) -> str:
    text = exc.reason or exc.strerror or str(exc)
    return str(text).replace("_", " ").lower() if text.isupper() else str(text)


def _users(section: Any) -> dict[str, bytes]:
    section = _mapping(section, "basic_auth_users")
    users = {}
    for name, hashed in section.items():
        if not isinstance(name, str) or not name or ":" in name:
            raise WebConfigError(f"basic_auth_users: bad user name {name!r}")
        if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
            raise WebConfigError(f"basic_auth_users.{name}: not a bcrypt hash "
                                 "($2a$/$2b$/$2y$, cost 04-31, 53 characters after the cost)")
        users[name] = hashed.encode()
    return users


def _headers(section: Any) -> tuple[tuple[str, str], ...]:
    section = _mapping(section, "http_server_config")
    unknown = set(section) - {"headers", "http2"}
    if unknown:
        raise WebConfigError(f"http_server_config: unknown key {sorted(map(str, unknown))[0]!r}")
    if not isinstance(section.get("http2", True), bool):
        raise WebConfigError("http_server_config.http2: expected true or false")
    out = []
    for name, value in _mapping(section.get("headers"), "http_server_config.headers").items():
        spec = SETTABLE_HEADERS.get(str(name).lower())
        if spec is None:
            raise WebConfigError(f"http_server_config.headers: {name!r} cannot be set (allowed: "
                                 f"{', '.join(s[0] for s in SETTABLE_HEADERS.values())})")
        if not isinstance(value, str) or not value or "\n" in value or "\r" in value:
            raise WebConfigError(f"http_server_config.headers.{name}: bad value")
        if spec[1] is not None and value.lower() not in spec[1]:
            raise WebConfigError(f"http_server_config.headers.{name}: must be one of "
                                 f"{'|'.join(spec[1])}")
        out.append((spec[0], value))
    return tuple(out)


def _cost(hashed: bytes) -> int:
    return int(hashed[4:6])


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    - No timing shortcut for unknown users: they are checked against a dummy hash of the
      highest cost in use, so a wrong user costs as much as a wrong password.
    - Successful checks are cached (keyed by an HMAC, under a per-process random key, of user,
      stored hash and password; bounded LRU) so frequent scrapes do not burn a bcrypt each.
    - At most ``parallel`` bcrypt computations run at once: a flood of bad passwords costs
      those CPUs, not all of them.
    """

    CACHE_SIZE = 256

    def __init__(self, users: dict[str, bytes], parallel: int = 2):
        import bcrypt  # imported only when basic auth is configured

        self._bcrypt = bcrypt
        self.users = dict(users)
        self.cost = max((_cost(h) for h in self.users.values()), default=10)
        self._dummy = bcrypt.hashpw(secrets.token_hex(16).encode(), bcrypt.gensalt(self.cost))
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self._gate = threading.BoundedSemaphore(parallel)

    def check(self, authorization: str | None) -> str | None:
        """The authenticated user name, or None (missing, malformed or wrong credentials)."""
        creds = parse_basic(authorization)
        if creds is None:
            return None
        user, password = creds
        name = user.decode("utf-8", "replace")
        stored = self.users.get(name)
        hashed = stored if stored is not None else self._dummy
        key = hmac.new(self._key, b"%d:%s%d:%s" % (len(user), user, len(hashed), hashed)
                       + password, hashlib.sha256).digest()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return name
        with self._gate:
            try:
                ok = self._bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], hashed)
            except ValueError:
                ok = False
        if not ok or stored is None:
            return None
        with self._lock:
            self._cache[key] = None
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return name


def parse_basic(authorization: str | None) -> tuple[bytes, bytes] | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(value.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    return user, password


def _fingerprint(files: list[str]) -> tuple:
    out: list[tuple] = []
    for path in files:
        try:
            st = os.stat(path)
            out.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError as exc:
            out.append((path, exc.errno))
    return tuple(out)


class WebConfigHolder:
    """The web config in force.  ``current()`` is called for each new connection."""

    CHECK_INTERVAL = 1.0  # seconds between looks at the files' change times

    def __init__(self, path: str | None, log: Any):
        self.path = path
        self.log = log
        self._config = load(path) if path else WebConfig()
        self._seen = _fingerprint(self._watched())
        self._next_check = time.monotonic() + self.CHECK_INTERVAL
        self._lock = threading.Lock()

    def current(self) -> WebConfig:
        if self.path and time.monotonic() >= self._next_check:
            self._check_files()
        return self._config

    def _check_files(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another connection is looking already
        try:
            self._next_check = time.monotonic() + self.CHECK_INTERVAL
            seen = _fingerprint(self._watched())
            if seen != self._seen:
                self._seen = seen  # a bad new version is reported once, not per connection
                self._reload("file changed")
        finally:
            self._lock.release()

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Loads the file again; on error keeps the config in force and logs why."""
        if not self.path:
            self.log.info("web config reload requested, but no --web.config.file is set",
                          reason=reason)
            return False
        with self._lock:
            self._seen = _fingerprint(self._watched())
            return self._reload(reason)

    def _watched(self) -> list[str]:
        files = set(self._config.files)
        if self.path:
            files.add(os.path.abspath(self.path))
        return sorted(files)

    def _reload(self, reason: str) -> bool:
        assert self.path is not None  # only called with a --web.config.file
        try:
            config = load(self.path)
        except WebConfigError as exc:
            self.log.error("web config reload failed; keeping the previous one", reason=reason,
                           error=str(exc))
            return False
        self._config = config
        self._seen = _fingerprint(self._watched())
        self.log.info("web config reloaded", reason=reason, **config.summary)
        return True
