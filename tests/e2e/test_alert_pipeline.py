"""End to end, all real: a full conntrack table pages through Prometheus and Alertmanager.

In a network namespace of its own (nn-alerts-e2e-<pid>) the test
  1. runs the exporter (`python -m exporter --web.listen-address=127.0.0.1:9834`),
  2. runs a real Prometheus (Debian's /usr/bin/prometheus; scrape and evaluation every 2 s; job
     `nodenet-exporter`; alerts/nodenet.rules.yaml loaded unchanged) and a real Alertmanager
     (/usr/bin/prometheus-alertmanager; group_wait 1 s) that routes to a webhook receiver run by
     this test (an http.server thread inside the namespace),
  3. fills the namespace's conntrack table with real UDP flows (tests/helpers/ctfill.py): past
     90% of the global nf_conntrack_max, then to the limit with entries the kernel may not evict
     (ASSURED), then keeps opening new flows, which the kernel drops,
and passes when the webhook has received NodenetConntrackTableNearFull,
NodenetConntrackTableFull and NodenetConntrackDropping for the exporter's instance.

The host's nf_conntrack_max is only read, never changed: the limit is global but the count it
is compared with is per namespace. The alerts' `for:` (5m for NearFull) makes this test take
about 6 minutes; it gives up after TOTAL_BUDGET seconds. Everything started is stopped by PID
and the namespace deleted, also on failure.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import pytest

from tests.helpers import alertstack, ctfill

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "nodenet.rules.yaml"
JOB = "nodenet-exporter"
EXPORTER_PORT, PROM_PORT, AM_PORT, HOOK_PORT, FLOW_PORT = 9834, 9090, 9093, 5001, 7000
INSTANCE = f"127.0.0.1:{EXPORTER_PORT}"
WANTED = {  # alert -> severity
    "NodenetConntrackTableNearFull": "warning",
    "NodenetConntrackTableFull": "critical",
    "NodenetConntrackDropping": "critical",
}
TOTAL_BUDGET = 540          # seconds for the whole test, CI-friendly (< 10 min)
TRICKLE_RATE = 20           # new flows per second once the table is full
UDP_TIMEOUT = 1200          # the namespace's UDP conntrack timeouts: entries outlive the test


def exporter_argv() -> list[str]:
    return [sys.executable, "-m", "exporter", f"--web.listen-address={INSTANCE}"]


def preflight() -> None:
    if os.geteuid() != 0:
        pytest.fail("this end-to-end test needs root (network namespaces, nftables)")
    try:
        alertstack.require_binaries(alertstack.PROMETHEUS, alertstack.ALERTMANAGER,
                                    "ip", "nft", "conntrack")
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture
def netns():
    preflight()
    name = f"nn-alerts-e2e-{os.getpid()}"
    ctfill.delete_namespace(name)
    ctfill.create_namespace(name)
    try:
        ctfill.prepare_namespace(name, udp_timeout=UDP_TIMEOUT)
        yield name
    finally:
        ctfill.delete_namespace(name)


def _firing(alerts: list[dict], name: str) -> list[dict]:
    return [a for a in alerts if a.get("status") == "firing"
            and a["labels"].get("alertname") == name
            and a["labels"].get("instance") == INSTANCE]


def run_pipeline(ns: str, workdir: pathlib.Path, argv: list[str], *, log=print) -> dict:
    """Run the whole scenario in ``ns``; return the figures measured. Raises on failure."""
    t0 = time.monotonic()
    deadline = t0 + TOTAL_BUDGET
    figures: dict = {"limit": ctfill.global_limit()}
    limit = figures["limit"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs: list = []
    hook = alertstack.Webhook(ns, HOOK_PORT)
    listener = trickle = None

    def since() -> str:
        return f"[{time.monotonic() - t0:6.1f}s]"

    try:
        exporter = alertstack.NetnsProcess(ns, argv, workdir / "exporter.log", env=env, cwd=ROOT)
        procs.append(exporter.start())
        alertstack.wait_http(ns, f"http://{INSTANCE}/metrics", 30, exporter)
        exposition = alertstack.in_netns(ns, alertstack.http_get,
                                         f"http://{INSTANCE}/metrics").decode()
        needed = ("nodenet_conntrack_entries", "nodenet_conntrack_entries_limit",
                  "nodenet_conntrack_drops_total", "nodenet_conntrack_early_drops_total")
        absent = [m for m in needed
                  if not any(line.startswith(m + " ") or line.startswith(m + "{")
                             for line in exposition.splitlines())]
        if absent:
            raise AssertionError(f"the exporter does not export {absent}: the conntrack "
                                 f"collector (issue 3) is needed for this test")

        hook.start()
        am = alertstack.alertmanager(ns, workdir, webhook_url=hook.url, port=AM_PORT)
        procs.append(am.start())
        prom = alertstack.prometheus(ns, workdir, rule_files=[str(RULES)], job=JOB,
                                     targets=[INSTANCE], alertmanager=f"127.0.0.1:{AM_PORT}",
                                     port=PROM_PORT)
        procs.append(prom.start())
        alertstack.wait_http(ns, f"http://127.0.0.1:{AM_PORT}/-/ready", 30, am)
        alertstack.wait_http(ns, f"http://127.0.0.1:{PROM_PORT}/-/ready", 60, prom)
        prom_url = f"http://127.0.0.1:{PROM_PORT}"
        rules = json.loads(alertstack.in_netns(ns, alertstack.http_get,
                                               f"{prom_url}/api/v1/rules"))
        loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert set(WANTED) <= loaded, f"Prometheus did not load the rules: {sorted(loaded)}"
        while not alertstack.prom_query(ns, prom_url, f'up{{job="{JOB}"}} == 1'):
            if time.monotonic() > t0 + 60:
                raise AssertionError("Prometheus never scraped the exporter successfully")
            time.sleep(0.5)
        log(f"{since()} exporter, Prometheus, Alertmanager and webhook up in {ns}")

        # Fill past 90% of the global limit ...
        near = ctfill.fill(ns, int(limit * 0.92), port=FLOW_PORT, assure=True,
                           max_seconds=120, batch=limit)
        figures["fill_92"] = {"count": near.count, "conntrack_C": ctfill.count_by_tool(ns),
                              "flows": near.flows, "seconds": round(near.elapsed, 2),
                              "flows_per_s": round(near.flows / near.elapsed)}
        log(f"{since()} filled to {near.count}/{limit} in {near.elapsed:.1f}s")
        # ... then to the limit, every entry ASSURED so that none can be evicted early.
        full = ctfill.fill(ns, limit, port=FLOW_PORT, assure=True, start=near.flows,
                           max_seconds=120, batch=limit)
        figures["fill_full"] = {"count": full.count, "conntrack_C": ctfill.count_by_tool(ns),
                                "flows": full.flows, "seconds": round(full.elapsed, 2)}
        log(f"{since()} filled to {full.count}/{limit} in {full.elapsed:.1f}s")
        assert full.count >= limit - 1, f"table not full: {full.count}/{limit}"
        fill_done = time.monotonic()

        # Keep opening new flows to a listener: the kernel drops them (table full).
        listener = ctfill.Listener(ns, FLOW_PORT, max_seconds=TOTAL_BUDGET).start()
        trickle = ctfill.Trickle(ns, FLOW_PORT, start=near.flows + full.flows,
                                 rate=TRICKLE_RATE, max_seconds=TOTAL_BUDGET).start()

        got: dict[str, float] = {}
        next_log = 0.0
        while len(got) < len(WANTED):
            alerts = hook.alerts()
            for name in WANTED:
                if name not in got and _firing(alerts, name):
                    got[name] = time.monotonic() - fill_done
                    log(f"{since()} webhook received {name} "
                        f"({got[name]:.0f}s after the table was full)")
            if len(got) == len(WANTED):
                break
            if time.monotonic() > deadline:
                states = alertstack.in_netns(ns, alertstack.http_get,
                                             f"{prom_url}/api/v1/alerts").decode()
                raise AssertionError(f"webhook got {sorted(got)} of {sorted(WANTED)} within "
                                     f"{TOTAL_BUDGET}s; Prometheus alerts: {states}; "
                                     f"conntrack -S: {ctfill.stats(ns)}")
            if time.monotonic() >= next_log:
                pending = json.loads(alertstack.in_netns(
                    ns, alertstack.http_get, f"{prom_url}/api/v1/alerts"))["data"]["alerts"]
                log(f"{since()} count={ctfill.count(ns)} drop={ctfill.stats(ns).get('drop')} "
                    f"prometheus: " + ", ".join(f"{a['labels']['alertname']}={a['state']}"
                                                 for a in pending))
                next_log = time.monotonic() + 30
            hook.wait_for(lambda a: False, 1.0)
        figures["alert_seconds_after_full"] = {k: round(v) for k, v in got.items()}

        # What the pipeline delivered: labels and annotations as the rules say.
        for name, severity in WANTED.items():
            alert = _firing(hook.alerts(), name)[0]
            assert alert["labels"]["severity"] == severity, alert
            assert alert["labels"]["job"] == JOB, alert
            assert alert["annotations"]["runbook_url"].endswith("#" + name.lower()), alert
            assert INSTANCE in alert["annotations"]["description"], alert

        # The kernel really dropped, and Prometheus saw the table full.
        stats = ctfill.stats(ns)
        figures["conntrack_S"] = {k: v for k, v in stats.items() if v}
        figures["count_end"] = ctfill.count(ns)
        assert stats.get("drop", 0) + stats.get("early_drop", 0) > 0, stats
        ratio = alertstack.prom_query(
            ns, prom_url, f'nodenet_conntrack_entries{{job="{JOB}"}}'
                          f' / nodenet_conntrack_entries_limit{{job="{JOB}"}}')
        figures["prometheus_ratio"] = float(ratio[0]["value"][1])
        assert figures["prometheus_ratio"] > 0.9, ratio
        figures["total_seconds"] = round(time.monotonic() - t0)
        return figures
    except BaseException:
        for p in procs:
            tail = p.log()[-2000:]
            if tail:
                log(f"--- {p.argv[4]} log (tail) ---\n{tail}")
        raise
    finally:
        for bg in (trickle, listener):
            if bg is not None:
                bg.stop()
        if trickle is not None:
            figures["trickle"] = dataclass_dict(trickle.result())
        for p in reversed(procs):
            p.stop()
        hook.stop()


def dataclass_dict(obj):
    return obj.__dict__ if obj is not None else None


def test_full_conntrack_table_pages_through_prometheus_and_alertmanager(netns, tmp_path,
                                                                         record_property):
    figures = run_pipeline(netns, tmp_path, exporter_argv())
    print("figures:", json.dumps(figures, indent=1))
    record_property("figures", json.dumps(figures))
    assert set(figures["alert_seconds_after_full"]) == set(WANTED)


# --------------------------------------------------------------- issue 14: refused traffic
# A sick namespace (a never-accepting listener with backlog 1 and a never-read UDP socket with
# a tiny buffer, tests/helpers/sicknet.py) and a healthy one (the same traffic, served), each
# with its own exporter; Prometheus, Alertmanager and the webhook in a third namespace linked
# to both by veth pairs. NodenetTCPListenOverflows and NodenetUDPReceiveBufferErrors (for: 2m)
# must reach the webhook for the sick exporter and never fire for the healthy one.
LIMITS_WANTED = {"NodenetTCPListenOverflows": "warning",
                 "NodenetUDPReceiveBufferErrors": "warning"}
LIMITS_BUDGET = 330
SICK, HEALTHY = "10.99.1.2:9834", "10.99.2.2:9834"


def test_refused_traffic_pages_for_the_sick_namespace_only(tmp_path):
    preflight()
    from tests.helpers.netns import netns as make_netns
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    sicknet = str(ROOT / "tests" / "helpers" / "sicknet.py")
    procs: list = []
    with make_netns("nn-alerts-mon") as mon, make_netns("nn-alerts-sick") as sick, \
            make_netns("nn-alerts-ok") as ok:
        alertstack.link_namespaces(mon, sick, "10.99.1.1", "10.99.1.2")
        alertstack.link_namespaces(mon, ok, "10.99.2.1", "10.99.2.2")
        hook = alertstack.Webhook(mon, HOOK_PORT)
        t0 = time.monotonic()
        try:
            for ns, addr in ((sick, SICK), (ok, HEALTHY)):
                ex = alertstack.NetnsProcess(ns, [sys.executable, "-m", "exporter",
                                                  f"--web.listen-address={addr}"],
                                             tmp_path / f"exporter-{ns}.log", env=env, cwd=ROOT)
                procs.append(ex.start())
            for ns, mode in ((sick, "sick"), (ok, "healthy")):
                load = alertstack.NetnsProcess(ns, [sys.executable, sicknet, mode,
                                                    str(LIMITS_BUDGET)],
                                               tmp_path / f"load-{mode}.log", env=env, cwd=ROOT)
                procs.append(load.start())
            hook.start()
            am = alertstack.alertmanager(mon, tmp_path, webhook_url=hook.url, port=AM_PORT)
            procs.append(am.start())
            prom = alertstack.prometheus(mon, tmp_path, rule_files=[str(RULES)], job=JOB,
                                         targets=[SICK, HEALTHY],
                                         alertmanager=f"127.0.0.1:{AM_PORT}", port=PROM_PORT)
            procs.append(prom.start())
            alertstack.wait_http(mon, f"http://127.0.0.1:{PROM_PORT}/-/ready", 60, prom)
            prom_url = f"http://127.0.0.1:{PROM_PORT}"
            got: dict[str, float] = {}
            while len(got) < len(LIMITS_WANTED):
                alerts = [a for a in hook.alerts() if a.get("status") == "firing"]
                for name in LIMITS_WANTED:
                    if name not in got and any(a["labels"].get("alertname") == name
                                               and a["labels"].get("instance") == SICK
                                               for a in alerts):
                        got[name] = round(time.monotonic() - t0)
                if time.monotonic() > t0 + LIMITS_BUDGET:
                    states = alertstack.in_netns(mon, alertstack.http_get,
                                                 f"{prom_url}/api/v1/alerts").decode()
                    raise AssertionError(f"webhook got {sorted(got)} of {sorted(LIMITS_WANTED)}"
                                         f" within {LIMITS_BUDGET}s; Prometheus: {states}")
                hook.wait_for(lambda a: False, 1.0)
            print("limits alerts fired after (s):", got)
            # delivered as the rules say
            for name, severity in LIMITS_WANTED.items():
                alert = next(a for a in hook.alerts() if a["labels"].get("alertname") == name
                             and a["labels"].get("instance") == SICK)
                assert alert["labels"]["severity"] == severity
                assert alert["annotations"]["runbook_url"].endswith("#" + name.lower())
                assert SICK in alert["annotations"]["description"]
            # the healthy namespace had the same traffic, served: counters flat, no alert
            sel = f'job="{JOB}",instance="{HEALTHY}"'
            served = alertstack.prom_query(
                mon, prom_url, f'nodenet_udp_received_datagrams_total{{{sel},family="ipv4"}}')
            assert served and float(served[0]["value"][1]) > 100, served
            for metric in ("nodenet_tcp_listen_overflows_total",
                           'nodenet_udp_receive_buffer_errors_total{family="ipv4"}'):
                name, _, extra = metric.partition("{")
                q = f'{name}{{{sel}{"," + extra.rstrip("}") if extra else ""}}}'
                value = alertstack.prom_query(mon, prom_url, q)
                assert value and float(value[0]["value"][1]) == 0, (q, value)
            assert not alertstack.prom_query(mon, prom_url, f'ALERTS{{instance="{HEALTHY}",'
                                             'alertname=~"NodenetTCPListenOverflows|'
                                             'NodenetUDPReceiveBufferErrors"}')
            assert not [a for a in hook.alerts() if a["labels"].get("instance") == HEALTHY
                        and a["labels"].get("alertname") in LIMITS_WANTED]
        except BaseException:
            for p in procs:
                print(f"--- {p.argv[4]} log (tail) ---\n{p.log()[-1500:]}")
            raise
        finally:
            for p in reversed(procs):
                p.stop()
            hook.stop()
