"""Load: 50 concurrent scrapers for 60 s (NODENET_LOAD_SECONDS) against the real exporter on
this machine's real /proc with every collector that is on by default, and a shorter run over
TLS + basic auth.

Pass criteria: no answer other than 200 and the intended 503 of --web.max-requests; no failed
request; every 200 has the same series set (per format); counters never go backwards within a
scraper's sequence; the exporter's RSS after warm-up stays flat (growth < RSS_TOLERANCE_MIB
between the first sample after warm-up and the end) and its thread count returns to its
baseline afterwards.  Figures are printed (run with -s to see them)."""
import gzip
import http.client
import os
import re
import threading
import time
from collections import Counter

from tests.helpers.exporter_proc import ExporterProcess
from tests.helpers.tls import TLSExporterProcess, basic, bcrypt_hash, make_pki

SCRAPERS = 50
MAX_REQUESTS = 40
DURATION = float(os.environ.get("NODENET_LOAD_SECONDS", "60"))
# Seconds before the RSS baseline: with a dozen default collectors the collector pool grows to
# its working size (9 -> 12 threads seen) and the allocator to its working set in the first
# seconds of 50 concurrent scrapers; a leak is what keeps growing after that.
WARMUP = 15.0
RSS_TOLERANCE_MIB = 4.0
# Per-socket series name the machine's listeners and UDP servers, which other processes open and
# close during the run (test servers on ephemeral ports): not the exporter's doing.
PER_SOCKET = ("nodenet_tcp_listen_queue_", "nodenet_udp_socket_")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)", re.M)
LIMIT_BODY = f"too many concurrent scrapes (limit {MAX_REQUESTS})\n".encode()


def rss_kib(pid) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def threads_of(pid) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class Scraper(threading.Thread):
    def __init__(self, n, port, deadline, context=None, headers=None):
        super().__init__(name=f"scraper-{n}")
        self.port, self.deadline, self.context = port, deadline, context
        self.gzip = n % 2 == 0
        self.openmetrics = n % 3 == 0
        self.headers = dict(headers or {})
        if self.gzip:
            self.headers["Accept-Encoding"] = "gzip"
        if self.openmetrics:
            self.headers["Accept"] = "application/openmetrics-text;version=1.0.0"
        self.statuses = Counter()
        self.errors = []
        self.series_sets = set()
        self.backwards = []
        self.last = {}

    def connect(self):
        if self.context is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30,
                                               context=self.context)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def run(self):
        conn = self.connect()
        n = 0
        while time.monotonic() < self.deadline and n < 1_000_000:
            n += 1
            try:
                conn.request("GET", "/metrics", headers=self.headers)
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
                encoding = resp.getheader("Content-Encoding")
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = self.connect()
                continue
            self.statuses[status] += 1
            if status == 503:
                if body != LIMIT_BODY:
                    self.errors.append(f"unexpected 503 body {body[:100]!r}")
                time.sleep(0.005)
                continue
            if status != 200:
                self.errors.append(f"status {status}: {body[:200]!r}")
                continue
            if self.gzip != (encoding == "gzip"):
                self.errors.append(f"Content-Encoding {encoding!r}")
                continue
            text = (gzip.decompress(body) if self.gzip else body).decode()
            samples = dict(SAMPLE.findall(text))
            self.series_sets.add(frozenset(k for k in samples if "duration_seconds" not in k
                                           and not k.startswith(PER_SOCKET)))
            for key, value in samples.items():
                if "_total" in key:
                    v = float(value)
                    if v < self.last.get(key, 0.0):
                        self.backwards.append((key, self.last[key], v))
                    self.last[key] = v
        conn.close()


def run_load(ex, duration, context=None, headers=None, warmup=WARMUP):
    pid = ex.proc.pid
    for _ in range(3):
        ex.get("/metrics", headers)
    base_threads = threads_of(pid)
    t_start = time.monotonic()
    deadline = t_start + duration
    scrapers = [Scraper(i, ex.port, deadline, context, headers) for i in range(SCRAPERS)]
    for s in scrapers:
        s.start()
    rss = []
    while time.monotonic() < deadline:
        time.sleep(1.0)
        rss.append((time.monotonic() - t_start, rss_kib(pid)))
    for s in scrapers:
        s.join(60)
    elapsed = time.monotonic() - t_start
    assert not any(s.is_alive() for s in scrapers), "a scraper hung"
    statuses = sum((s.statuses for s in scrapers), Counter())
    errors = [e for s in scrapers for e in s.errors]
    after_warmup = [kib for t, kib in rss if warmup <= t <= duration - 0.5]  # under load
    start_kib, end_kib = after_warmup[0], after_warmup[-1]
    time.sleep(1.0)  # clients closed: their connection threads end
    end_threads, idle_kib = threads_of(pid), rss_kib(pid)
    return {
        "elapsed": elapsed, "statuses": statuses, "errors": errors, "rss": rss,
        "warmup": warmup, "start_kib": start_kib, "end_kib": end_kib, "max_kib": max(after_warmup),
        "idle_kib": idle_kib,
        "scrapers": scrapers, "base_threads": base_threads, "end_threads": end_threads,
    }


def check_and_report(label, r):
    st = r["statuses"]
    ok, limited = st.get(200, 0), st.get(503, 0)
    print(f"\n[{label}] {SCRAPERS} scrapers x {r['elapsed']:.1f}s: {ok} x 200 "
          f"({ok / r['elapsed']:.0f}/s), {limited} x 503 (max-requests {MAX_REQUESTS}), "
          f"other {dict((k, v) for k, v in st.items() if k not in (200, 503))}, "
          f"errors {len(r['errors'])}")
    print(f"[{label}] RSS after {r['warmup']:.0f}s warm-up {r['start_kib'] / 1024:.1f} MiB, "
          f"end {r['end_kib'] / 1024:.1f} MiB, max {r['max_kib'] / 1024:.1f} MiB, "
          f"{r['idle_kib'] / 1024:.1f} MiB once the clients left; threads "
          f"{r['base_threads']} before, {r['end_threads']} after")
    print(f"[{label}] RSS samples (MiB): "
          + " ".join(f"{kib / 1024:.1f}" for _, kib in r["rss"][::5]))
    assert not r["errors"], r["errors"][:10]
    assert set(st) <= {200, 503}, st
    assert ok > 0 and all(s.statuses[200] > 0 for s in r["scrapers"]), "a scraper starved"
    for s in r["scrapers"]:
        assert not s.backwards, s.backwards[:5]
    for variant in ((False, False), (True, False), (False, True), (True, True)):
        sets = set().union(*(s.series_sets for s in r["scrapers"]
                             if (s.gzip, s.openmetrics) == variant))
        differ = sorted(set.union(*map(set, sets)) - set.intersection(*map(set, sets))) \
            if sets else []
        assert len(sets) <= 1, f"series set changed between scrapes {variant}: " \
            f"{[len(x) for x in sets]}; series not in every set: {differ[:20]}"
    assert r["end_kib"] - r["start_kib"] < RSS_TOLERANCE_MIB * 1024, \
        f"RSS grew {(r['end_kib'] - r['start_kib']) / 1024:.1f} MiB"
    assert r["end_threads"] <= r["base_threads"] + 2, (r["base_threads"], r["end_threads"])


def test_fifty_scrapers_on_real_proc():
    args = [f"--web.max-requests={MAX_REQUESTS}"]
    with ExporterProcess(args) as ex:
        r = run_load(ex, DURATION)
        check_and_report("plain HTTP, real /proc", r)
        assert ex.proc.poll() is None
        assert "Traceback" not in ex.log()


def test_fifty_scrapers_over_tls_and_basic_auth(tmp_path):
    """A shorter run through TLS + bcrypt basic auth (cost 10): successful checks are cached,
    so the scrape rate stays of the same order as without auth."""
    pki = make_pki(tmp_path / "pki")
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                   f"  key_file: {pki.server_key}\n"
                   f"basic_auth_users:\n  prom: '{bcrypt_hash('pw', 10)}'\n")
    args = [f"--web.max-requests={MAX_REQUESTS}", f"--web.config.file={web}"]
    with TLSExporterProcess(args, pki, auth=("prom", "pw")) as ex:
        # a quarter of the run: the baseline after 5 s (the shorter run has no 15 s to spare)
        r = run_load(ex, max(10.0, DURATION / 4), context=ex.ssl_context(),
                     headers=basic("prom", "pw"), warmup=5.0)
        check_and_report("TLS + basic auth, real /proc", r)
        assert ex.proc.poll() is None
