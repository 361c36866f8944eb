"""INSIDE the UML guest: does the netfilter collector ever make the kernel load a module?

    netfilter_suite.py        (modules: uml.NO_IPVS_MODULES; nf_tables, x_tables, ip_tables
                               and the iptable_* tables are modules of this kernel, not loaded)

Steps (each scrape is `python -m exporter --collector.disable-defaults --collector.netfilter`,
each `lsmod` is /proc/modules' module names), written to $OUT/steps.json:
  1. nothing of netfilter's tables loaded: scrape; lsmod before and after
  2. `modprobe ip_tables`, `iptables-legacy -A INPUT -j ACCEPT` (loads iptable_filter):
     scrape; lsmod before and after (iptable_nat, ip6_tables, nf_tables must stay unloaded)
  3. control, the forbidden probes done on purpose, to show the observation works: an
     IPT_SO_GET_INFO for "nat" (not in ip_tables_names) and an nfnetlink GETGEN request;
     lsmod after each
  4. nf_tables now loaded (/sys/module/nf_tables): `nft add table ip uml`, a chain and a
     rule (this kernel has no inet family); scrape
Every wait is bounded.  The host-side test (tests/vm/test_netfilter_uml.py) judges.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

OUT = os.environ["OUT"]
PY = sys.executable
EXPORTER = "127.0.0.1:9834"


def sh(args, check=True, **kw):
    p = subprocess.run(args, capture_output=True, text=True, timeout=60, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{args!r} failed rc={p.returncode}: {p.stdout}{p.stderr}")
    return p


def lsmod():
    with open("/proc/modules") as f:
        return sorted(line.split()[0] for line in f)


def scrape():
    proc = subprocess.Popen([PY, "-m", "exporter", f"--web.listen-address={EXPORTER}",
                             "--collector.disable-defaults", "--collector.netfilter",
                             "--log.format=json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{EXPORTER}/metrics", timeout=30) as r:
                    text = r.read().decode()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"exporter did not answer: {proc.stderr.read()}") from None
                time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    return text, err


def step(name, fn):
    before = lsmod()
    out = fn() or {}
    out.update(name=name, lsmod_before=before, lsmod_after=lsmod())
    return out


def do_scrape():
    text, log = scrape()
    return {"scrape": text, "log": log}


def forbidden_get_info():
    from exporter.sources import iptables
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            iptables.read_raw(s, iptables.IPV4, "nat")
            return {"result": "read"}
        except OSError as exc:
            return {"result": f"errno {exc.errno}"}


def forbidden_getgen():
    from exporter.sources import nftables
    try:
        return {"result": f"generation {nftables.NftReader().read(5.0).generation}"}
    except OSError as exc:
        return {"result": f"errno {exc.errno}"}


def main():
    steps = [{"name": "boot", "lsmod_before": lsmod(), "lsmod_after": lsmod(),
              "proc_modules": os.path.exists("/proc/modules"),
              "sys_module_nf_tables": os.path.isdir("/sys/module/nf_tables")}]

    def load_legacy():
        sh(["uml-modprobe", "ip_tables"])
        sh(["iptables-legacy", "-A", "INPUT", "-j", "ACCEPT"])
        return {"names": open("/proc/net/ip_tables_names").read().split()}

    def nft_table():
        out = {"sys_module_nf_tables": os.path.isdir("/sys/module/nf_tables")}
        for cmd in (["nft", "add", "table", "ip", "uml"], ["nft", "add", "chain", "ip", "uml", "c"],
                    ["nft", "add", "rule", "ip", "uml", "c", "accept"]):
            r = sh(cmd, check=False)
            out.setdefault("nft", []).append([cmd, r.returncode, r.stderr])
        return out

    plan = [("scrape, nothing loaded", do_scrape),
            ("modprobe ip_tables, iptables-legacy -A INPUT", load_legacy),
            ("scrape, ip_tables + iptable_filter", do_scrape),
            ("control: GET_INFO nat", forbidden_get_info),
            ("control: nfnetlink GETGEN", forbidden_getgen),
            ("nft add table ip uml", nft_table),
            ("scrape, nf_tables loaded", do_scrape)]
    try:
        for name, fn in plan:
            steps.append(step(name, fn))
    finally:
        with open(os.path.join(OUT, "steps.json"), "w") as f:
            json.dump(steps, f, indent=1)

if __name__ == "__main__":
    main()
