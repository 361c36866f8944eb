"""INSIDE the UML guest: record the kernel's raw IPVS generic-netlink dump replies.

    capture_netlink.py OUTDIR

Writes OUTDIR/ipvs_services.hex (the IPVS_CMD_GET_SERVICE dump: one received chunk per line,
hex) and OUTDIR/ipvs_dests_<n>.hex per service (IPVS_CMD_GET_DEST), plus
OUTDIR/ipvs_ctrl_getfamily.hex, and OUTDIR/index.json naming each file's service.
Uses only exporter.sources.netlink and ipvs.dump (no decoding is trusted here beyond
what is needed to send the per-service requests).
"""
import json
import os
import sys

from exporter.sources import ipvs
from exporter.sources import netlink as nl

out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def write(name, chunks):
    with open(os.path.join(out, name), "w") as f:
        for c in chunks:
            f.write(c.hex() + "\n")


with nl.NetlinkSocket(nl.NETLINK_GENERIC, timeout=10.0) as sock:
    # the by-name request, for the fixture only (the reader resolves by dump)
    reply = sock.send(nl.GENL_ID_CTRL, 0, nl.genl_header(nl.CTRL_CMD_GETFAMILY)
                      + nl.attr_str(nl.CTRL_ATTR_FAMILY_NAME, "IPVS"))
    got = []
    for d in sock.datagrams(reply):
        reply.scan(d)
        got.append(d)
    write("ipvs_ctrl_getfamily.hex", got)
    fam = nl.resolve_family(sock, "IPVS").id
    chunks = [c for c, _ in ipvs.dump(sock, fam, ipvs.IPVS_CMD_GET_SERVICE)]
    write("ipvs_services.hex", chunks)
    services = []
    for c in chunks:
        services.extend(ipvs.decode_services(c))
    index = []
    for i, svc in enumerate(services):
        name = "ipvs_dests_%02d.hex" % i
        write(name, [c for c, _ in ipvs.dump(sock, fam, ipvs.IPVS_CMD_GET_DEST,
                                             ipvs.service_key(svc))])
        index.append({"file": name, "family": svc.family, "protocol": svc.protocol_name,
                      "address": svc.address, "port": svc.port, "fwmark": svc.fwmark})
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump(index, f, indent=1)
print("captured %d services" % len(index))
