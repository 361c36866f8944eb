"""A long-lived "pod" process for the pod-view tests, run inside a namespace the test made.

    python podview_pod.py listen|udp|idle [uid]

listen: a TCP listener on 127.0.0.1:8080 with backlog 1 that never accepts, 20 connections.
udp: a UDP socket on 127.0.0.1:53 with the smallest SO_RCVBUF, never read, 500 datagrams.
Then (uid given) it drops to that uid (staying dumpable, as a pause process exec'd as 65535
is), prints "ready" and sleeps until its stdin closes (at most 300 s).
"""
from __future__ import annotations

import ctypes
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.helpers.sick_sockets import drowning_udp, full_listener  # noqa: E402

PR_SET_DUMPABLE = 4


def main() -> None:
    scenario = sys.argv[1]
    keep = []
    if scenario == "listen":
        keep += full_listener("127.0.0.1", 8080, backlog=1, connections=20)
        time.sleep(1.5)   # SYN retransmits reach the full queue too: let them settle a bit
    elif scenario == "udp":
        keep += drowning_udp("127.0.0.1", 53, datagrams=500, size=200)
    if len(sys.argv) > 2:
        uid = int(sys.argv[2])
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    print("ready", flush=True)
    select.select([sys.stdin], [], [], 300)


if __name__ == "__main__":
    main()
