"""Run inside a namespace the test made: sick sockets, then one collection, then witnesses.

A TCP listener on 127.0.0.1:7070 with backlog 4 and 10 connections (never accepted); a UDP
server on 127.0.0.1:5353 with the smallest SO_RCVBUF (300 datagrams, never read); with
ephemeral ports on, ip_local_port_range narrowed to 40000-40999 (this namespace only) and 800
connections to 127.0.0.2:9090.  Prints JSON: the collected samples, `ss -ltn` and
/proc/net/udp read right after.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.helpers.podview import Scraper  # noqa: E402
from tests.helpers.sick_sockets import drowning_udp, full_listener  # noqa: E402


def main() -> None:
    keep = full_listener("127.0.0.1", 7070, backlog=4, connections=10)
    keep += drowning_udp("127.0.0.1", 5353, datagrams=300, size=300)
    argv = []
    if sys.argv[1:] == ["ephemeral"]:
        with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as fh:
            fh.write("40000 40999")
        big = socket.socket()
        big.bind(("127.0.0.2", 9090))
        big.listen(1000)
        keep.append(big)
        for _ in range(800):
            c = socket.socket()
            c.connect(("127.0.0.2", 9090))
            keep.append(c)
        argv = ["--collector.sockets.ephemeral-ports"]
    if sys.argv[1:] == ["cap"]:
        argv = ["--collector.sockets.max-series=1"]
    scraper = Scraper("sockets", *argv)
    out = scraper.scrape()
    if sys.argv[1:] == ["cap"]:
        out = scraper.scrape()   # a second scrape: the cap is logged once
    ss = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    with open("/proc/net/udp") as fh:
        udp = fh.read()
    print(json.dumps({"samples": [[k[0], dict(k[1]), v] for k, v in out.items()],
                      "ss": ss, "udp": udp, "logs": scraper.logs()}))


if __name__ == "__main__":
    main()
