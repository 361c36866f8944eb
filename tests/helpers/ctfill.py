"""Fill a network namespace's conntrack table with real UDP flows (test helper).

Everything here acts on network namespaces that the *caller* created (by convention
``nn-<owner>-...``); it never touches the host's namespace or its global sysctls.
``nf_conntrack_max`` is global and read-only inside a namespace, but the count it is compared
with is per namespace, so one namespace can be filled up to the global limit (and beyond, so
that the kernel drops) without affecting the host's own table.

How the flows are made: a sender process inside the namespace sends one UDP datagram from
``127.0.0.1:<sport>`` to ``127.a.b.c:<port>`` for each flow index, one distinct destination
address per index (``127.0.0.0/8`` is all local on ``lo``), to a listener bound to
``0.0.0.0:<port>``. With the namespace's nft ``ct state`` rule loaded (``prepare_namespace``) the
kernel creates one conntrack entry per flow. Two kinds of entries:

* unanswered (default; the ``Listener`` process drains and never replies): UNREPLIED, not
  assured. At the limit each new flow makes the kernel *evict* one (``early_drop`` in
  ``conntrack -S``); nothing is refused.
* assured (``assure=True``; the sender itself answers each flow from its destination address
  and sends again 2.2 s later): the kernel never evicts these early, so at the limit each new
  flow's packet is *dropped* (``drop`` in ``conntrack -S``, ``sendto`` fails with EPERM): the
  "nf_conntrack: table full, dropping packet" outage.

Entries expire after the namespace's UDP timeouts (``nf_conntrack_udp_timeout`` 30 s and
``_stream`` 120 s by default; per-namespace sysctls that ``prepare_namespace(udp_timeout=...)``
raises *inside the namespace only*).

Measured on the 2-core development machine (kernel 6.18, nf_conntrack_max = buckets = 262,144):
unanswered flows ~95,000/s (231,172 flows in 2.45 s); assured flows 262,144 in 6.6 s including
the 2.2 s wait (``conntrack -L``: all 262,144 ASSURED); ``count``, ``conntrack -C`` and the
flows sent agree exactly; a full table costs ~350 bytes of kernel slab per entry (~90 MB).

API (all functions take the namespace name ``ns``; the caller owns the namespace):

``create_namespace(ns)`` / ``delete_namespace(ns)``
    ``ip netns add`` / ``ip netns del`` (delete ignores a missing namespace).
``prepare_namespace(ns, udp_timeout=None, track_tcp=False)``
    lo up; nft table ``inet ctfill`` with a ``ct state`` rule on output and input so the kernel
    tracks the namespace's traffic; TCP is exempted (``notrack``) unless ``track_tcp``, so that
    scrapes and API calls inside the namespace neither change the count nor fail when the table
    is full; optionally sets the namespace's UDP conntrack timeouts.
``global_limit()``
    the host's ``net.netfilter.nf_conntrack_max`` (read only).
``count(ns)``
    ``/proc/sys/net/netfilter/nf_conntrack_count`` read inside the namespace.
``count_by_tool(ns)``
    ``conntrack -C`` inside the namespace (an independent witness).
``stats(ns)``
    ``conntrack -S`` inside the namespace, summed over CPUs: ``{"found": .., "drop": ..,
    "early_drop": .., "insert_failed": .., ...}``.
``Listener(ns, port)``
    context manager: the UDP listener process (``start()``/``stop()``; ``pid``).
``send_flows(ns, count, *, port, start=0, rate=None, max_seconds=60, assure=False, sport=0)``
    runs a sender inside the namespace, blocks, returns ``SendResult(sent, errors, elapsed,
    first_error)``. A flow is 127.0.0.1:``sport`` -> 127.1.0.0+index:``port``; ``start`` is
    the first index. ``sport=0`` (default) takes a fresh ephemeral port, so every call makes
    new flows; pass the same ``sport`` to refresh flows sent before. ``rate`` (flows/s) paces
    the sender; ``None`` sends as fast as it can. ``assure=True`` answers every flow from its
    destination and sends to it again 2.2 s later, so the kernel marks the entries ASSURED
    (never evicted early); the sender then owns ``port`` (do not run a ``Listener`` on it).
``Trickle(ns, port, *, start, rate, max_seconds)``
    context manager: a background sender that keeps creating *new* flows at ``rate`` per
    second (bounded by ``max_seconds``), e.g. to keep a full table dropping.
``fill(ns, target, *, port, max_seconds=120, batch=20000, start=0, assure=False)``
    sends new flows in batches until ``count(ns) >= target``, for at most ``max_seconds`` and
    ``2 * target`` flows; returns ``FillResult`` (count reached, flows sent, sendto errors,
    seconds, ``conntrack -S`` totals). Unanswered flows need a ``Listener`` on ``port``; assured
    ones must not have one.

Every loop is bounded in count and time. Processes are stopped by their own PID.
Command line (used by the functions above, runs *inside* a namespace):
``python ctfill.py listen --port P --max-seconds S`` and
``python ctfill.py send --port P --count N [--start I] [--sport S] [--rate R] [--assure]
[--max-seconds S]``
(prints one JSON line).
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import signal
import socket
import subprocess
import struct
import sys
import time

THIS_FILE = os.path.abspath(__file__)
# First destination address: flow index i goes to FIRST_ADDR + i (127.1.0.0 ... 127.254.255.255).
FIRST_ADDR = int(ipaddress.IPv4Address("127.1.0.0"))
MAX_FLOWS = int(ipaddress.IPv4Address("127.254.255.255")) - FIRST_ADDR
NFT_RULESET = """
table inet ctfill {
    chain raw_prerouting {
        type filter hook prerouting priority raw; policy accept;
        %(notrack)s
    }
    chain raw_output {
        type filter hook output priority raw; policy accept;
        %(notrack)s
    }
    chain output {
        type filter hook output priority 0; policy accept;
        ct state new,established,related,untracked accept
    }
    chain input {
        type filter hook input priority 0; policy accept;
        ct state new,established,related,untracked accept
    }
}
"""
UDP_TIMEOUT_SYSCTLS = ("net.netfilter.nf_conntrack_udp_timeout",
                       "net.netfilter.nf_conntrack_udp_timeout_stream")


def _run(argv, *, check=True, timeout=60, input=None):
    return subprocess.run(argv, check=check, timeout=timeout, input=input,
                          capture_output=True, text=True)


def ns_argv(ns: str, argv: list[str]) -> list[str]:
    """argv that runs ``argv`` inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


def create_namespace(ns: str) -> None:
    _run(["ip", "netns", "add", ns])


def delete_namespace(ns: str) -> None:
    """Delete ``ns`` if it exists (its conntrack entries go with it)."""
    if os.path.exists(f"/run/netns/{ns}"):
        _run(["ip", "netns", "del", ns], check=False)


def prepare_namespace(ns: str, udp_timeout: int | None = None, track_tcp: bool = False) -> None:
    """Bring lo up, load the ``ct state`` ruleset, optionally set the namespace's UDP timeouts.

    By default TCP is *not* tracked in the namespace (nft ``notrack`` at raw priority), so
    that HTTP between test processes (scrapes, API calls) neither adds entries to the count
    nor fails when the table is full; ``track_tcp=True`` tracks it like UDP.
    """
    _run(ns_argv(ns, ["ip", "link", "set", "lo", "up"]))
    notrack = "" if track_tcp else "meta l4proto tcp notrack"
    _run(ns_argv(ns, ["nft", "-f", "-"]), input=NFT_RULESET % {"notrack": notrack})
    if udp_timeout is not None:
        for name in UDP_TIMEOUT_SYSCTLS:
            # Per-namespace sysctl: written inside ``ns`` only, never the host's.
            _run(ns_argv(ns, ["sysctl", "-q", "-w", f"{name}={int(udp_timeout)}"]))


def global_limit() -> int:
    with open("/proc/sys/net/netfilter/nf_conntrack_max") as f:
        return int(f.read())


def count(ns: str) -> int:
    out = _run(ns_argv(ns, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])).stdout
    return int(out)


def count_by_tool(ns: str) -> int:
    return int(_run(ns_argv(ns, ["conntrack", "-C"])).stdout.split()[0])


def parse_conntrack_S(text: str) -> dict[str, int]:
    """Sum ``conntrack -S`` lines (``cpu=0 found=0 invalid=3 ...``) over CPUs."""
    totals: dict[str, int] = {}
    for line in text.splitlines():
        for field in line.split():
            key, sep, value = field.partition("=")
            if not sep or key == "cpu":
                continue
            try:
                totals[key] = totals.get(key, 0) + int(value)
            except ValueError:
                continue
    return totals


def stats(ns: str) -> dict[str, int]:
    return parse_conntrack_S(_run(ns_argv(ns, ["conntrack", "-S"])).stdout)


def _stop(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(grace)


class _Background:
    argv: list[str]

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.output: str | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self):
        # ``ip netns exec`` execs the command, so proc.pid is the Python process itself.
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        return self

    def stop(self) -> None:
        """Stop the process (by PID) and keep what it printed in ``self.output``."""
        if self.proc is not None and self.output is None:
            _stop(self.proc)
            self.output = self.proc.stdout.read() if self.proc.stdout else ""
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Listener(_Background):
    """UDP listener on ``0.0.0.0:port`` inside ``ns``; drains what it receives."""

    def __init__(self, ns: str, port: int, max_seconds: float = 900) -> None:
        super().__init__()
        self.argv = ns_argv(ns, [sys.executable, THIS_FILE, "listen", "--port", str(port),
                                 "--max-seconds", str(max_seconds)])

    def start(self):
        super().start()
        # The listener prints "ready" once bound, so that no flow meets a closed port.
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"ctfill listener did not start: {line!r} {err}")
        return self


class Trickle(_Background):
    """Background sender of new flows at ``rate``/s, for at most ``max_seconds``."""

    def __init__(self, ns: str, port: int, *, start: int, rate: float,
                 max_seconds: float) -> None:
        super().__init__()
        n = int(rate * max_seconds) + 1
        self.argv = ns_argv(ns, [sys.executable, THIS_FILE, "send", "--port", str(port),
                                 "--count", str(n), "--start", str(start),
                                 "--rate", str(rate), "--max-seconds", str(max_seconds)])

    def result(self) -> SendResult | None:
        """After stop(): what the sender reported (None if it printed nothing)."""
        lines = (self.output or "").strip().splitlines()
        return SendResult(**json.loads(lines[-1])) if lines else None


@dataclasses.dataclass
class SendResult:
    sent: int
    errors: int
    elapsed: float
    first_error: str = ""


def send_flows(ns: str, count: int, *, port: int, start: int = 0, rate: float | None = None,
               max_seconds: float = 60, assure: bool = False, sport: int = 0) -> SendResult:
    argv = ns_argv(ns, [sys.executable, THIS_FILE, "send", "--port", str(port),
                        "--count", str(count), "--start", str(start), "--sport", str(sport),
                        "--max-seconds", str(max_seconds)])
    if rate:
        argv += ["--rate", str(rate)]
    if assure:
        argv.append("--assure")
    out = _run(argv, timeout=max_seconds + 30).stdout
    return SendResult(**json.loads(out.strip().splitlines()[-1]))


@dataclasses.dataclass
class FillResult:
    count: int           # nf_conntrack_count in the namespace when done
    flows: int           # flows sent (new flow indices used: 0 .. flows-1)
    errors: int          # sendto errors (EPERM: the kernel dropped the packet)
    elapsed: float       # seconds
    stats: dict[str, int]  # conntrack -S summed over CPUs when done


def fill(ns: str, target: int, *, port: int, max_seconds: float = 120,
         batch: int = 20000, start: int = 0, assure: bool = False) -> FillResult:
    """Send new flows in batches until the namespace's count reaches ``target``.

    Stops when the count is reached, when ``max_seconds`` have passed, or after
    ``target * 2`` flows (so a kernel that does not track stops the loop). When ``target`` is
    above what the table can hold (the global limit) the loop ends by the flow bound: that is
    the way to drive a table *beyond* full so that the kernel evicts or drops.
    """
    t0 = time.monotonic()
    sent = errors = 0
    limit_flows = target * 2
    current = count(ns)
    while current < target and sent < limit_flows:
        left = max_seconds - (time.monotonic() - t0)
        if left <= 0:
            break
        n = min(batch, max(target - current, 1000), limit_flows - sent)
        r = send_flows(ns, n, port=port, start=start + sent, max_seconds=left, assure=assure)
        sent += r.sent
        errors += r.errors
        current = count(ns)
    return FillResult(count=current, flows=sent, errors=errors,
                      elapsed=time.monotonic() - t0, stats=stats(ns))


# ---------------------------------------------------------------- runs inside the namespace
def _main_listen(args) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", args.port))
    s.settimeout(0.5)
    print("ready", flush=True)
    deadline = time.monotonic() + args.max_seconds
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    buf = bytearray(64)
    while not stop and time.monotonic() < deadline:
        try:
            s.recv_into(buf)
        except socket.timeout:
            continue
        except InterruptedError:
            continue
    return 0


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # linux/in.h; not exported by Python 3.11


def _main_send(args) -> int:
    if args.start < 0 or args.start + args.count > MAX_FLOWS:
        raise SystemExit(f"flow indices {args.start}..{args.start + args.count} out of range")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # replies are not read
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", args.sport))
    sport = s.getsockname()[1]
    replier = None
    if args.assure:
        # The far end of each flow: bound to the flow port on every address, it answers
        # each datagram from the address it was sent to (IP_PKTINFO), which makes the
        # kernel see the reply direction (SEEN_REPLY). A second datagram > 2 s later then
        # makes the entry ASSURED, which the kernel never evicts early.
        replier = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        replier.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # nor are these
        replier.bind(("0.0.0.0", args.port))
    payload = b"x"
    port = args.port
    sent = errors = 0
    first_error = ""
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    to_bytes = int.to_bytes
    ntoa = socket.inet_ntoa
    period = 1.0 / args.rate if args.rate else 0.0
    base = FIRST_ADDR + args.start
    reply_to = ("127.0.0.1", sport)
    no_addr = bytes(4)

    def one_round(first: bool, replies: bool) -> None:
        nonlocal sent, errors, first_error
        for i in range(args.count):
            if (i & 1023) == 0 and (stop or time.monotonic() >= deadline):
                return
            if period:
                delay = t0 + i * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if stop or time.monotonic() >= deadline:
                    return
            packed = to_bytes(base + i, 4, "big")
            try:
                s.sendto(payload, (ntoa(packed), port))
            except OSError as e:  # EPERM: the kernel dropped it (table full, none evictable)
                errors += 1
                if not first_error:
                    first_error = f"{type(e).__name__}: {e}"
            else:
                if replies:
                    pktinfo = struct.pack("=I4s4s", 0, packed, no_addr)
                    try:
                        replier.sendmsg([payload], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)],
                                        0, reply_to)
                    except OSError:
                        pass
            if first:
                sent += 1

    one_round(first=True, replies=replier is not None)
    if replier is not None:
        # The kernel marks a UDP entry assured on a packet seen more than 2 s after it
        # was created (and after a reply); wait that long after the last new entry.
        wait_until = time.monotonic() + 2.2
        while not stop and time.monotonic() < min(wait_until, deadline):
            time.sleep(0.05)
        period = 0.0
        one_round(first=False, replies=False)
    print(json.dumps({"sent": sent,
                      "errors": errors,
                      "elapsed": round(time.monotonic() - t0, 3),
                      "first_error": first_error}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("listen")
    pl.add_argument("--port", type=int, required=True)
    pl.add_argument("--max-seconds", type=float, default=900)
    ps = sub.add_parser("send")
    ps.add_argument("--port", type=int, required=True)
    ps.add_argument("--count", type=int, required=True)
    ps.add_argument("--start", type=int, default=0)
    ps.add_argument("--sport", type=int, default=0, help="source port (0: ephemeral)")
    ps.add_argument("--rate", type=float, default=None)
    ps.add_argument("--max-seconds", type=float, default=60)
    ps.add_argument("--assure", action="store_true",
                    help="answer each flow and resend after 2 s so entries become ASSURED")
    args = p.parse_args(argv)
    return _main_listen(args) if args.cmd == "listen" else _main_send(args)


if __name__ == "__main__":
    sys.exit(main())
