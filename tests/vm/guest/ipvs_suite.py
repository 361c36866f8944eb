"""INSIDE the UML guest: the real-kernel IPVS scenario; results go to $OUT for pytest.

    ipvs_suite.py main     table + traffic + exporter/node_exporter/ipvsadm snapshots,
                           then ip_vs unloaded while the exporter is being scraped
    ipvs_suite.py absent   the kernel has no ip_vs: the exporter must not load it

Every wait and loop is bounded.  The host-side test (tests/vm/test_ipvs_uml.py) does the
comparisons; this script only acts and records (and exits non-zero if it cannot act).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

OUT = os.environ["OUT"]
CODE = os.environ["CODE"]
PY = sys.executable
G = os.path.join(CODE, "tests", "vm", "guest")
EXPORTER = "127.0.0.1:9834"
NODE_EXPORTER = "127.0.0.1:9100"
procs = []


def sh(cmd, check=True, **kw):
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{cmd!r} failed rc={p.returncode}: {p.stdout}{p.stderr}")
    return p.stdout


def write(name, text):
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text if isinstance(text, str) else json.dumps(text, indent=1))


def get(addr, path="/metrics", timeout=30):
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_http(addr, path, proc, limit=60):
    t = time.monotonic()
    while time.monotonic() - t < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited rc={proc.returncode}")
        try:
            if get(addr, path, 5)[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{addr}{path} not answering after {limit}s")


def start(args, log):
    p = subprocess.Popen(args, stdout=open(os.path.join(OUT, log), "w"), stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    procs.append(p)
    return p


def start_exporter(extra=()):
    p = start([PY, "-m", "exporter", f"--web.listen-address={EXPORTER}", "--log.format=json",
               "--collector.disable-defaults", "--collector.ipvs", *extra], "exporter.log")
    wait_http(EXPORTER, "/healthz", p)
    return p


def witnesses():
    w = {
        "stats": sh("ipvsadm -Ln --stats --exact"),
        "Ln": sh("ipvsadm -Ln"),
        "persistent": sh("ipvsadm -Ln --persistent-conn"),
        "thresholds": sh("ipvsadm -Ln --thresholds"),
        "proc_ip_vs": open("/proc/net/ip_vs").read(),
        # totals only: the rate half (Conns/s, Pkts/s...) decays at every 2 s estimator tick
        # long after the traffic stopped, and no exported series depends on it
        "proc_ip_vs_stats": open("/proc/net/ip_vs_stats").read().split(" Conns/s")[0],
    }
    return w


def modules():
    return sorted(m for m in os.listdir("/sys/module") if m.startswith("ip_vs"))


def main_scenario():
    t0 = time.monotonic()
    sh(f"bash {G}/build_table.sh > {OUT}/build.log 2>&1")
    ready, stop = "/tmp/traffic.ready", "/tmp/traffic.stop"
    tr = start([PY, f"{G}/traffic.py", ready, stop], "traffic.log")
    t = time.monotonic()
    while not os.path.exists(ready) and time.monotonic() - t < 120 and tr.poll() is None:
        time.sleep(0.1)
    if not os.path.exists(ready):
        raise RuntimeError("traffic did not get ready: " + open(os.path.join(OUT, "traffic.log")).read())
    write("traffic.json", open(ready).read())
    ex = start_exporter()
    ne = start([os.path.join(os.environ["UML_CACHE"], "bin", "node_exporter"),
                f"--web.listen-address={NODE_EXPORTER}", "--collector.disable-defaults",
                "--collector.ipvs"], "node_exporter.log")
    wait_http(NODE_EXPORTER, "/metrics", ne)
    time.sleep(2.2)   # the 2 s estimator publishes the counters: let it tick after the traffic
    # snapshot: witnesses before and after the two scrapes must be identical
    for attempt in range(1, 11):
        before = witnesses()
        _, ours = get(EXPORTER)
        _, theirs = get(NODE_EXPORTER)
        after = witnesses()
        if before == after:
            break
        time.sleep(0.7)
    else:
        raise RuntimeError("IPVS counters kept moving during 10 snapshot attempts")
    for k, v in before.items():
        write(f"snap/{k}.txt", v)
    write("snap/exporter.prom", ours)
    write("snap/node_exporter.prom", theirs)
    write("snap/attempts.txt", str(attempt))
    # second scrape right after: the exporter keeps no state that changes the values
    _, again = get(EXPORTER)
    write("snap/exporter_again.prom", again)

    # --- ip_vs unloaded while scraped ----------------------------------------------------
    open(stop, "w").close()
    tr.wait(timeout=30)
    sh("ipvsadm -C")
    results = []
    halt = threading.Event()

    def scraper():
        n = 0
        while not halt.is_set() and n < 2000:
            n += 1
            t = time.monotonic()
            try:
                status, text = get(EXPORTER, timeout=20)
                succ = avail = None
                for line in text.splitlines():
                    if line.startswith('nodenet_scrape_collector_success{collector="ipvs"}'):
                        succ = float(line.split()[-1])
                    elif line.startswith("nodenet_ipvs_available "):
                        avail = float(line.split()[-1])
                results.append({"t": t, "status": status, "success": succ, "available": avail,
                                "modules": modules()})
            except Exception as e:  # noqa: BLE001 - recorded for the host to judge
                results.append({"t": t, "error": f"{type(e).__name__}: {e}"})
            time.sleep(0.02)

    th = threading.Thread(target=scraper)
    th.start()
    time.sleep(1.0)
    t_unload = time.monotonic()
    mods = [m for m in ("ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs_wlc", "ip_vs_lc") if m in modules()]
    rm = subprocess.run(["rmmod", *mods, "ip_vs"], capture_output=True, text=True, timeout=60)
    t_unloaded = time.monotonic()
    time.sleep(2.0)
    halt.set()
    th.join(timeout=60)
    after_unload = {"rmmod_rc": rm.returncode, "rmmod_err": rm.stderr, "modules_after": modules(),
                    "proc_ip_vs_exists": os.path.exists("/proc/net/ip_vs"),
                    "exporter_alive": ex.poll() is None, "t_unload": t_unload,
                    "t_unloaded": t_unloaded, "scrapes": results}
    # back again: the exporter follows without a restart
    sh("uml-modprobe -a ip_vs ip_vs_rr")
    sh("ipvsadm -A -t 127.10.0.1:80 -s rr && ipvsadm -a -t 127.10.0.1:80 -r 127.20.0.1:8080 -m")
    _, back = get(EXPORTER)
    write("snap/exporter_reloaded.prom", back)
    after_unload["exporter_alive_end"] = ex.poll() is None
    ex.send_signal(signal.SIGTERM)
    after_unload["exporter_rc"] = ex.wait(timeout=30)
    write("unload.json", after_unload)
    write("elapsed.txt", "%.1f" % (time.monotonic() - t0))


def absent_scenario():
    res = {"modules_at_start": modules(), "proc_ip_vs_at_start": os.path.exists("/proc/net/ip_vs")}
    ex = start_exporter()
    scrapes = []
    for _ in range(3):
        scrapes.append(get(EXPORTER)[1])
        time.sleep(0.2)
    write("absent/exporter.prom", scrapes[-1])
    res["modules_after_scrapes"] = modules()
    # the reader's family resolution alone (bypassing the presence check) must not load it
    from exporter.sources import netlink as nl
    with nl.NetlinkSocket(nl.NETLINK_GENERIC, timeout=5.0) as s:
        fam = nl.resolve_family(s, "IPVS")
        res["dump_resolution_id"] = fam.id if fam else None
    res["modules_after_dump_resolution"] = modules()
    ex.send_signal(signal.SIGTERM)
    res["exporter_rc"] = ex.wait(timeout=30)
    # control: the by-name request (what pyroute2's IPVS() does) does load it in this guest
    with nl.NetlinkSocket(nl.NETLINK_GENERIC, timeout=5.0) as s:
        try:
            s.request(nl.GENL_ID_CTRL, nl.genl_header(nl.CTRL_CMD_GETFAMILY)
                      + nl.attr_str(nl.CTRL_ATTR_FAMILY_NAME, "IPVS"))
            res["control_request"] = "answered"
        except OSError as e:
            res["control_request"] = f"error {e}"
    res["modules_after_control"] = modules()
    write("absent/result.json", res)


if __name__ == "__main__":
    try:
        {"main": main_scenario, "absent": absent_scenario}[sys.argv[1]]()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
