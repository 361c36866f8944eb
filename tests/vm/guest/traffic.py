"""Real servers and client traffic for the IPVS test table (runs INSIDE the UML guest only).

    traffic.py READY_FILE STOP_FILE

Starts echo servers on the real-server addresses (guest loopback only), sends a known amount
of traffic through each virtual service with real traffic in build_table.sh, keeps a few
connections open (ActiveConn > 0), writes READY_FILE (JSON of what was sent) and stays
until STOP_FILE appears (at most 900 s).  Every loop is bounded.
"""
import json
import os
import socket
import sys
import threading
import time

READY, STOP = sys.argv[1], sys.argv[2]
TCP_RS = [("127.20.0.1", 8080), ("127.20.0.2", 8080), ("127.20.0.3", 8080), ("127.20.0.4", 8080),
          ("127.20.0.1", 8443), ("127.20.0.2", 8443),
          ("::1", 8081), ("::1", 8082), ("::1", 8083)]
UDP_RS = [("127.20.0.1", 5353), ("127.20.0.2", 5353)]
SCTP_RS = [("127.20.0.1", 3868), ("127.20.0.2", 3868)]
IPPROTO_SCTP = getattr(socket, "IPPROTO_SCTP", 132)
errors = []


def fam(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def echo_conn(c):
    with c:
        c.settimeout(60)
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    return
                c.sendall(b)
        except OSError:
            return


def stream_server(addr, port, proto=0):
    s = socket.socket(fam(addr), socket.SOCK_STREAM, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(128)

    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=echo_conn, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()


def udp_server(addr, port):
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    s.bind((addr, port))

    def loop():
        while True:
            b, peer = s.recvfrom(65536)
            s.sendto(b, peer)
    threading.Thread(target=loop, daemon=True).start()


def client(addr, port, payload, keep=False, mark=0, proto=0):
    c = socket.socket(fam(addr), socket.SOCK_STREAM, proto)
    c.settimeout(20)
    if mark:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    c.connect((addr, port))
    c.sendall(payload)
    got = b""
    while len(got) < len(payload):
        b = c.recv(65536)
        if not b:
            break
        got += b
    if got != payload:
        raise RuntimeError(f"echo mismatch via {addr}:{port}: {len(got)} of {len(payload)}")
    if keep:
        return c
    c.close()
    return None


def main():
    for a, p in TCP_RS:
        stream_server(a, p)
    for a, p in UDP_RS:
        udp_server(a, p)
    sctp_ok = True
    try:
        for a, p in SCTP_RS:
            stream_server(a, p, IPPROTO_SCTP)
    except OSError as e:
        sctp_ok = False
        errors.append(f"sctp server: {e}")
    # (vip, port) -> (connections, payload size, SO_MARK, proto)
    plan = [
        ("127.10.0.1", 80, 30, 100, 0, 0),
        ("127.10.0.2", 443, 20, 1000, 0, 0),
        ("127.10.0.3", 8000, 10, 10, 0, 0),
        ("127.10.0.4", 80, 12, 200, 1, 0),     # fwmark 1
        ("::1", 80, 8, 300, 0, 0),             # IPv6 service
        # fwmark 2 (IPv6, persistent): a persistent fwmark service keeps the client's port
        ("::1", 8083, 6, 400, 2, 0),
    ]
    if sctp_ok:
        plan.append(("127.10.0.5", 3868, 4, 500, 0, IPPROTO_SCTP))
    sent = []
    for a, p, n, size, mark, proto in plan:
        ok = 0
        for _ in range(n):
            try:
                client(a, p, b"x" * size, mark=mark, proto=proto)
                ok += 1
            except OSError as e:
                errors.append(f"{a}:{p} proto={proto}: {e}")
        sent.append({"vip": a, "port": p, "conns": ok, "bytes_each": size, "mark": mark,
                     "proto": proto})
    for i in range(5):   # UDP: 5 sockets x 5 datagrams of 50 bytes
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(10)
        try:
            for _ in range(5):
                u.sendto(b"u" * 50, ("127.10.0.1", 53))
                u.recvfrom(100)
        except OSError as e:
            errors.append(f"udp: {e}")
        finally:
            u.close()
    sent.append({"vip": "127.10.0.1", "port": 53, "udp_sockets": 5, "datagrams_each": 5})
    held = [client("127.10.0.1", 80, b"h" * 10, keep=True) for _ in range(3)]
    held.append(client("::1", 80, b"h" * 10, keep=True))
    time.sleep(0.3)
    with open(READY + ".tmp", "w") as f:
        json.dump({"sent": sent, "held_open": len(held), "errors": errors}, f, indent=1)
    os.rename(READY + ".tmp", READY)
    print(f"traffic: done, {len(errors)} errors, holding {len(held)} connections", flush=True)
    t = time.time()
    while not os.path.exists(STOP) and time.time() - t < 900:
        time.sleep(0.2)
    for c in held:
        c.close()


if __name__ == "__main__":
    main()
