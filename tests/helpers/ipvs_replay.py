"""The IPVS kernel, replayed through exporter.sources.netlink.ReplayTransport (the one test
seam): the generic-netlink family dump, the GET_SERVICE dump and one GET_DEST dump per
service, each answered with the datagrams captured from a real IPVS kernel."""
from __future__ import annotations

import struct

from exporter.sources import ipvs
from exporter.sources import netlink as nl

FAMILY_ID = 0x20


def family_dump(families: dict[str, int]) -> list[bytes]:
    """A CTRL_CMD_GETFAMILY dump reply naming ``families`` (name -> id), then NLMSG_DONE."""
    out = [nl.message(nl.GENL_ID_CTRL, nl.NLM_F_MULTI, 0,
                      nl.genl_header(1, 2) + nl.attr_u16(nl.CTRL_ATTR_FAMILY_ID, fid)
                      + nl.attr_str(nl.CTRL_ATTR_FAMILY_NAME, name))
           for name, fid in families.items()]
    return [b"".join(out), nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 0, b"\0" * 4)]


class IPVSKernel:
    """answers(request) for a ReplayTransport. ``services``: the GET_SERVICE datagrams;
    ``dests``: service_key(service) -> that service's GET_DEST datagrams.  ``record``: keep
    (type, cmd) of every request in ``requests`` (tests; off for benchmarks, it grows)."""

    def __init__(self, services: list[bytes], dests: dict[bytes, list[bytes]],
                 family_id: int = FAMILY_ID, record: bool = True):
        self.services, self.dests, self.family_id = services, dests, family_id
        self.ctrl = family_dump({"nlctrl": nl.GENL_ID_CTRL, "IPVS": family_id})
        self.requests: list[tuple[int, int]] = []
        self.record = record

    def __call__(self, request: bytes) -> list[bytes]:
        mtype = struct.unpack_from("=H", request, 4)[0]
        cmd = request[16]
        if self.record:
            self.requests.append((mtype, cmd))
        if mtype == nl.GENL_ID_CTRL:
            assert cmd == nl.CTRL_CMD_GETFAMILY and len(request) == nl.GENL_HDR_LEN, \
                "the family must be resolved by dump, never by name"
            return self.ctrl
        assert mtype == self.family_id, f"request to family {mtype:#x}"
        if cmd == ipvs.IPVS_CMD_GET_SERVICE:
            assert len(request) == nl.GENL_HDR_LEN
            return self.services
        assert cmd == ipvs.IPVS_CMD_GET_DEST
        return self.dests[bytes(request[nl.GENL_HDR_LEN:])]   # the service, as captured

    def transport(self) -> nl.ReplayTransport:
        return nl.ReplayTransport(self)


def from_fixtures(chunks) -> IPVSKernel:
    """From tests/fixtures/netlink/ipvs_services.hex and ipvs_dests_NN.hex (``chunks(name)``
    -> the datagrams of that file)."""
    services = chunks("ipvs_services.hex")
    decoded = [s for c in services for s in ipvs.decode_services(c)]
    return IPVSKernel(services, {ipvs.service_key(s): chunks(f"ipvs_dests_{i:02d}.hex")
                                 for i, s in enumerate(decoded)})
