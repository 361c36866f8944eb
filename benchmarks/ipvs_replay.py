#!/usr/bin/env python3
"""Run nodenet-exporter with its IPVS netlink socket replaced by a replay of captured dumps.

    python benchmarks/ipvs_replay.py REPLAY_FILE [exporter flags...]

REPLAY_FILE (written by `ipvs_uml.py --guest`, from a real IPVS kernel): records of
u32 length + bytes: the GET_SERVICE dump reply, then one GET_DEST dump reply per service in
the order of the services.  Used to measure the exporter's user-space cost natively on a
machine whose kernel has no IPVS (here: the host), next to node_exporter reading the same
table from a procfs copy.  Benchmark-only; the exporter never imports this.
"""
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from exporter.sources import ipvs  # noqa: E402


def load(path):
    recs = []
    with open(path, "rb") as f:
        data = f.read()
    off = 0
    while off < len(data):
        (n,) = struct.unpack_from("=I", data, off)
        recs.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return recs


def install(path):
    """Every IPVSReader made from now on answers from the replay (netlink.ReplayTransport,
    the one seam): one datagram per recorded dump reply."""
    from tests.helpers.ipvs_replay import IPVSKernel

    recs = load(path)
    services = ipvs.decode_services(recs[0])
    kernel = IPVSKernel([recs[0]], {ipvs.service_key(s): [recs[1 + i]]
                                    for i, s in enumerate(services)}, record=False)
    real_init = ipvs.IPVSReader.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.transport_factory = kernel.transport

    ipvs.IPVSReader.__init__ = init


def capture(path):
    """Inside a kernel with IPVS: write the replay file."""
    from exporter.sources import netlink as nl

    with nl.NetlinkSocket(nl.NETLINK_GENERIC, timeout=30.0) as sock, open(path, "wb") as f:
        fam = nl.resolve_family(sock, "IPVS").id
        chunks = [c for c, _ in ipvs.dump(sock, fam, ipvs.IPVS_CMD_GET_SERVICE)]
        blob = b"".join(chunks)
        f.write(struct.pack("=I", len(blob)) + blob)
        for svc in ipvs.decode_services(blob):
            blob = b"".join(c for c, _ in ipvs.dump(sock, fam, ipvs.IPVS_CMD_GET_DEST,
                                                    ipvs.service_key(svc)))
            f.write(struct.pack("=I", len(blob)) + blob)


if __name__ == "__main__":
    # the allocator of the real exporter: its entry point re-executes itself with
    # PYTHONMALLOC=malloc (exporter/memory.py), but cli.main(argv), called with argv as here,
    # does not; so do it here, before the replay is loaded (same PID, same command line)
    from exporter import memory
    memory.reexec_with_malloc()
    install(sys.argv[1])
    from exporter.cli import main
    sys.exit(main(sys.argv[2:]))
