"""A TCP listen queue overflowing, for tests: run inside a namespace of the test's own
(``ip netns exec NS python listen_overflow.py CONNECTS SECONDS``).

A listener on 127.0.0.1 with backlog 1 that never accepts gets CONNECTS non-blocking
connects, spread evenly over the first half of SECONDS: once its accept queue holds what the
backlog allows, every new SYN (and every SYN the clients retransmit) is dropped and counted
as TcpExt ListenOverflows.  Prints ``listening <port>`` once the listener is up, ``done
<connects>`` at the end.  Loopback only; bounded in connects and time; stops on SIGTERM.
"""
from __future__ import annotations

import contextlib
import signal
import socket
import sys
import time


def main(connects: int, seconds: float) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    print(f"listening {port}", flush=True)
    start = time.monotonic()
    step = seconds / 2 / max(connects, 1)
    clients = []
    for i in range(connects):
        time.sleep(max(0.0, start + i * step - time.monotonic()))
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        clients.append(c)
    time.sleep(max(0.0, start + seconds - time.monotonic()))
    for c in clients:
        c.close()
    print(f"done {len(clients)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), float(sys.argv[2])))
