"""Web config pieces without a server: Authorization parsing, the bcrypt checker (dummy hash for
unknown users, cache of successes, truncation like bcrypt), headers, the holder's reload rules;
and the HTTP request-head parser fuzzed with hypothesis."""
import base64

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import server, webconfig
from exporter.webconfig import BasicAuth, WebConfigError, parse_basic


def header(user: bytes, password: bytes) -> str:
    return "Basic " + base64.b64encode(user + b":" + password).decode()


class CountingBcrypt:
    """The real bcrypt module, with a count of checkpw calls."""

    def __init__(self):
        self.calls = []

    def checkpw(self, password, hashed):
        self.calls.append(hashed)
        return bcrypt.checkpw(password, hashed)


def make_auth(users, cost=4):
    auth = BasicAuth({u: bcrypt.hashpw(p, bcrypt.gensalt(cost)) for u, p in users.items()})
    counting = CountingBcrypt()
    auth._bcrypt = counting
    return auth, counting


def test_parse_basic():
    assert parse_basic(header(b"prom", b"a:b c")) == (b"prom", b"a:b c")
    assert parse_basic("basic " + base64.b64encode(b"u:").decode()) == (b"u", b"")
    assert parse_basic(None) is None
    assert parse_basic("") is None
    assert parse_basic("Bearer abc") is None
    assert parse_basic("Basic !!!notbase64") is None
    assert parse_basic("Basic " + base64.b64encode(b"no colon").decode()) is None
    assert parse_basic("Basic ü") is None


def test_right_wrong_and_unknown():
    auth, counting = make_auth({"prom": b"s3cret"})
    assert auth.check(header(b"prom", b"s3cret")) == "prom"
    assert auth.check(header(b"prom", b"s3creT")) is None
    assert auth.check(header(b"prom", b"")) is None
    assert auth.check(None) is None
    n = len(counting.calls)
    assert auth.check(header(b"mallory", b"s3cret")) is None
    # an unknown user still costs one bcrypt, against the dummy hash
    assert counting.calls[n:] == [auth._dummy]


def test_dummy_hash_has_the_highest_cost_in_use():
    auth = BasicAuth({"a": bcrypt.hashpw(b"x", bcrypt.gensalt(4)),
                      "b": bcrypt.hashpw(b"x", bcrypt.gensalt(6))})
    assert auth.cost == 6 and auth._dummy.startswith(b"$2b$06$")


def test_successes_are_cached_failures_are_not():
    auth, counting = make_auth({"prom": b"s3cret"})
    for _ in range(20):
        assert auth.check(header(b"prom", b"s3cret")) == "prom"
    assert len(counting.calls) == 1
    for _ in range(3):
        assert auth.check(header(b"prom", b"wrong")) is None
    assert len(counting.calls) == 4
    # the cache is keyed by the credentials, not the user: another password is checked again
    assert auth.check(header(b"prom", b"s3cret2")) is None
    assert len(counting.calls) == 5


def test_cache_is_bounded():
    users = {f"u{i}": b"pw" for i in range(5)}
    auth, counting = make_auth(users)
    auth.CACHE_SIZE = 3
    for i in range(5):
        assert auth.check(header(f"u{i}".encode(), b"pw")) == f"u{i}"
    assert len(auth._cache) == 3
    auth.check(header(b"u0", b"pw"))  # evicted: checked again
    assert len(counting.calls) == 6


def test_long_passwords_compare_like_bcrypt():
    pw = bytes(range(33, 33 + 80))
    auth = BasicAuth({"prom": bcrypt.hashpw(pw[:72], bcrypt.gensalt(4))})
    assert auth.check(header(b"prom", pw[:72])) == "prom"
    assert auth.check(header(b"prom", pw)) == "prom"  # bcrypt reads 72 bytes, as Go's does
    assert auth.check(header(b"prom", pw[:71])) is None


def test_2y_hashes_from_htpasswd_work():
    h = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    cfg = webconfig._users({"prom": "$2y$" + h[4:]})
    assert BasicAuth(cfg).check(header(b"prom", b"pw")) == "prom"


@pytest.mark.parametrize("users,needle", [
    ({"prom": "plain"}, "not a bcrypt hash"),
    ({"prom": "$2b$03$" + "a" * 53}, "not a bcrypt hash"),  # cost below 4
    ({"pr:om": "$2b$04$" + "a" * 53}, "bad user name"),
    ({"prom": 12}, "not a bcrypt hash"),
    (["prom"], "expected a mapping"),
])
def test_bad_users(users, needle):
    with pytest.raises(WebConfigError, match=needle):
        webconfig._users(users)


def test_headers():
    assert webconfig._headers({"headers": {"x-frame-options": "SAMEORIGIN"}}) == \
        (("X-Frame-Options", "SAMEORIGIN"),)
    for bad, needle in (({"headers": {"Set-Cookie": "a"}}, "cannot be set"),
                        ({"headers": {"X-Frame-Options": "allow"}}, "must be one of"),
                        ({"headers": {"Content-Security-Policy": "a\r\nX: y"}}, "bad value"),
                        ({"http2": "yes"}, "true or false"),
                        ({"tls": 1}, "unknown key")):
        with pytest.raises(WebConfigError, match=needle):
            webconfig._headers(bad)


class Log:
    def __init__(self):
        self.lines = []

    def info(self, event, **kw):
        self.lines.append(("info", event, kw))

    error = warning = lambda self, event, **kw: self.lines.append(("error", event, kw))


def test_holder_keeps_the_old_config_on_a_bad_reload(tmp_path):
    path = tmp_path / "web.yml"
    h = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    path.write_text(f"basic_auth_users:\n  prom: '{h}'\n")
    log = Log()
    holder = webconfig.WebConfigHolder(str(path), log)
    first = holder.current()
    assert first.auth.check(header(b"prom", b"pw")) == "prom"
    path.write_text("basic_auth_users: [\n")
    assert holder.reload() is False
    assert holder.current() is first
    assert log.lines[-1][0] == "error" and "malformed YAML" in log.lines[-1][2]["error"]
    path.write_text("{}\n")
    assert holder.reload() is True
    assert holder.current().auth is None and holder.current().tls is None


def test_holder_without_a_file():
    log = Log()
    holder = webconfig.WebConfigHolder(None, log)
    assert holder.current().auth is None and holder.reload() is False


@pytest.mark.parametrize("mode", ["RequestClientCert", "RequireAnyClientCert",
                                  "RequireClientCert"])
def test_unverified_client_cert_modes_are_refused_naming_the_alternatives(tmp_path, mode):
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / name).write_text("")  # refused before the files are parsed
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
                    f"  client_auth_type: {mode}\n  client_ca_file: ca.crt\n")
    with pytest.raises(WebConfigError) as err:
        webconfig.load(str(path))
    msg = str(err.value)
    assert "\n" not in msg and f"{mode} is not supported" in msg
    for alternative in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven", "NoClientCert"):
        assert alternative in msg


# -- the HTTP request-head parser ------------------------------------------------------------

HEAD_PARTS = st.sampled_from([b"GET", b"HEAD", b"POST", b" ", b"/metrics", b"HTTP/1.1",
                              b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.", b"\r\n", b"\n", b":",
                              b"Host", b"Connection: close", b"\x00", b"\xff", b"\t", b"a" * 9000,
                              b"X: " + b"y" * 100])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.lists(HEAD_PARTS, max_size=30).map(b"".join)))
def test_request_head_parser_answers_or_rejects(head):
    try:
        req = server._parse_head(head)
    except server._Reject as rej:
        assert rej.code in (400, 414, 431, 505)
        return
    assert req.method and req.path is not None and req.version[0] == 1
    assert all(k == k.lower() for k in req.headers)
