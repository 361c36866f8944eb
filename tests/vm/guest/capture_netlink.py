"""INSIDE the UML guest: record the kernel's raw IPVS generic-netlink dump replies.

    capture_netlink.py OUTDIR

Writes OUTDIR/ipvs_services.hex (the IPVS_CMD_GET_SERVICE dump: one received chunk per line,
hex) and OUTDIR/ipvs_dests_<n>.hex per service (IPVS_CMD_GET_DEST), plus
OUTDIR/ipvs_ctrl_getfamily.hex, and OUTDIR/index.json naming each file's service.
Uses only the socket layer of exporter.sources.ipvs (no decoding is trusted here beyond
what is needed to send the per-service requests).
"""
import json
import os
import sys

from exporter.sources import ipvs

out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def write(name, chunks):
    with open(os.path.join(out, name), "w") as f:
        for c in chunks:
            f.write(c.hex() + "\n")


with ipvs._GenlSocket(10.0, 1 << 16) as sock:
    seq = sock._send(ipvs.GENL_ID_CTRL, ipvs.NLM_F_REQUEST, ipvs.CTRL_CMD_GETFAMILY, 1,
                     ipvs._nla(ipvs.CTRL_ATTR_FAMILY_NAME, b"IPVS\0"))
    write("ipvs_ctrl_getfamily.hex", list(sock._replies(seq)))
    fam = sock.family_id("IPVS")
    chunks = [c for c, _ in sock.dump(fam, ipvs.IPVS_CMD_GET_SERVICE)]
    write("ipvs_services.hex", chunks)
    services = []
    for c in chunks:
        services.extend(ipvs.decode_services(c))
    index = []
    for i, svc in enumerate(services):
        name = "ipvs_dests_%02d.hex" % i
        write(name, [c for c, _ in sock.dump(fam, ipvs.IPVS_CMD_GET_DEST, ipvs.service_key(svc))])
        index.append({"file": name, "family": svc.family, "protocol": svc.protocol_name,
                      "address": svc.address, "port": svc.port, "fwmark": svc.fwmark})
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump(index, f, indent=1)
print("captured %d services" % len(index))
