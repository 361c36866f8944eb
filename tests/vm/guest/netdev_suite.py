"""INSIDE the UML guest: the tunnel topology, its witnesses, a raw link dump and the exporter.

    netdev_suite.py        (modules: uml.NO_IPVS_MODULES + uml.TUNNEL_MODULES)

Writes to $OUT:
  build.log            the topology script's commands (guest/netdev_topology.sh)
  links.hex            one RTM_GETLINK dump, raw reply bytes (exporter.sources.links socket layer)
  ip.json              `ip -d -s -s -j link` right before and after that dump (identical)
  routes.json          for route-found underlays: `ip -j route get REMOTE` of every tunnel with
                       a remote and no lower device, and the default routes (`ip -j route show
                       default`), each beside the kernel's raw reply to the exporter's request
  exporter.prom        /metrics of `python -m exporter --collector.disable-defaults
  exporter_again.prom  --collector.netdev`, scraped twice
  ip_after.json        `ip -d -j link` after the scrapes
  wireguard.json       what `ip link add wg0 type wireguard` and modprobe answered
  result.json          exporter exit status and timings
Every wait is bounded.  The host-side test (tests/vm/test_netdev_tunnels_uml.py) compares.
"""
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

OUT = os.environ["OUT"]
CODE = os.environ["CODE"]
PY = sys.executable
G = os.path.join(CODE, "tests", "vm", "guest")
EXPORTER = "127.0.0.1:9834"


def sh(args, check=True):
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"{args!r} failed rc={p.returncode}: {p.stdout}{p.stderr}")
    return p


def write(name, data):
    with open(os.path.join(OUT, name), "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data, indent=1, sort_keys=True) + "\n")


def get(path, timeout=30):
    with urllib.request.urlopen(f"http://{EXPORTER}{path}", timeout=timeout) as r:
        return r.status, r.read().decode()


def capture():
    """Raw dump between two identical iproute2 witnesses (nothing moved in between)."""
    from exporter.sources.links import RtNetlink
    for _ in range(5):
        before = sh(["ip", "-d", "-s", "-s", "-j", "link"]).stdout
        with RtNetlink() as nl:
            raw = nl.dump_links_raw()
        after = sh(["ip", "-d", "-s", "-s", "-j", "link"]).stdout
        if before == after:
            return raw, json.loads(after)
        time.sleep(0.2)
    raise RuntimeError("counters kept moving during the capture")


def raw_route_replies(address=None, family=None):
    """The kernel's reply bytes to the exporter's own route requests (hex): RTM_GETROUTE for
    ``address``, or the route dump of ``family``."""
    from exporter.sources import links as L
    from exporter.sources import netlink as N
    chunks = []
    with L.RtNetlink() as rt:
        if address is not None:
            payload = L.route_get_payload(ipaddress.ip_address(address).packed)
            reply = rt.sock.send(L.RTM_GETROUTE, 0, payload, "route reply")
        else:
            reply = rt.sock.send(L.RTM_GETROUTE, N.NLM_F_DUMP, L.route_dump_payload(family),
                                 "route dump")
        for data in rt.sock.datagrams(reply):   # the same walk as RtNetlink.dump_links_raw
            reply.scan(data)
            chunks.append(bytes(data))
    return b"".join(chunks).hex()


def route_witnesses(links):
    """For every tunnel with a remote and no lower device, and for the default routes: what
    `ip -j route` says (the witness) and the kernel's raw reply to the exporter's request."""
    out = {"route_get": {}, "default": {}}
    for w in links:
        data = w.get("linkinfo", {}).get("info_data", {})
        remote = data.get("remote") or data.get("remote6") or data.get("group") or data.get("group6")
        if remote and remote != "any" and "link" not in data:
            out["route_get"][remote] = {
                "ip": json.loads(sh(["ip", "-j", "route", "get", remote]).stdout),
                "hex": raw_route_replies(address=remote)}
    for fam, af in (("-4", socket.AF_INET), ("-6", socket.AF_INET6)):
        out["default"][fam] = {
            "ip": json.loads(sh(["ip", fam, "-j", "route", "show", "default"]).stdout),
            "hex": raw_route_replies(family=af)}
    return out


def main():
    p = subprocess.run(["bash", os.path.join(G, "netdev_topology.sh")], capture_output=True,
                       text=True, timeout=120)
    write("build.log", p.stdout + p.stderr)
    if p.returncode != 0:
        print(p.stdout + p.stderr)
        raise SystemExit(f"topology failed rc={p.returncode}")
    raw, links = capture()
    hexed = raw.hex()
    write("links.hex", "".join(hexed[i:i + 64] + "\n" for i in range(0, len(hexed), 64)))
    write("ip.json", links)
    write("routes.json", route_witnesses(links))

    wg = sh(["ip", "link", "add", "wg0", "type", "wireguard"], check=False)
    mp = sh([os.path.join(os.environ["UML_CACHE"], "bin", "uml-modprobe"), "wireguard"], check=False)
    write("wireguard.json", {"ip_rc": wg.returncode, "ip_stderr": wg.stderr.strip(),
                             "modprobe_rc": mp.returncode, "modprobe_stderr": mp.stderr.strip()})

    res = {"kernel": os.uname().release}
    t0 = time.monotonic()
    ex = subprocess.Popen([PY, "-m", "exporter", f"--web.listen-address={EXPORTER}",
                           "--log.format=json", "--collector.disable-defaults",
                           "--collector.netdev"],
                          stdout=open(os.path.join(OUT, "exporter.log"), "w"),
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if ex.poll() is not None:
                raise RuntimeError(f"exporter exited rc={ex.returncode}")
            try:
                if get("/healthz", 5)[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("exporter not answering after 60 s")
                time.sleep(0.1)
        res["startup_seconds"] = time.monotonic() - t0
        t1 = time.monotonic()
        write("exporter.prom", get("/metrics")[1])
        res["scrape_seconds"] = time.monotonic() - t1
        write("exporter_again.prom", get("/metrics")[1])
    finally:
        ex.send_signal(signal.SIGTERM)
        try:
            res["exporter_rc"] = ex.wait(timeout=20)
        except subprocess.TimeoutExpired:
            ex.kill()
            res["exporter_rc"] = ex.wait(timeout=20)
    write("ip_after.json", json.loads(sh(["ip", "-d", "-j", "link"]).stdout))
    write("result.json", res)
    print("netdev suite done", json.dumps(res))


if __name__ == "__main__":
    main()
