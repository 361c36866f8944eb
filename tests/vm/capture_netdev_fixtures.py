"""Regenerate tests/fixtures/netlink/links_uml_tunnels.* from a real kernel (User-Mode Linux).

    python tests/vm/capture_netdev_fixtures.py

Boots UML with uml.TUNNEL_MODULES, builds tests/vm/guest/netdev_topology.sh and records
(tests/vm/guest/netdev_suite.py):

- links_uml_tunnels.hex: the raw reply bytes of one RTM_GETLINK dump, taken between two
  identical `ip -d -s -s -j link` runs;
- links_uml_tunnels.ip.json: that `ip -d -s -s -j link` output, the independent witness;
- links_uml_tunnels.routes.json: for each tunnel whose underlay is found by routing, `ip -j
  route get REMOTE` and the kernel's raw reply to the exporter's RTM_GETROUTE, and the same
  for the default-route dumps.

The unit tests (tests/unit/test_links_fixtures.py, tests/unit/test_links_uml_fixtures.py)
decode these and compare with the witnesses; tests/vm/test_netdev_tunnels_uml.py checks that
the checked-in capture is still the topology the script builds.
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import uml  # noqa: E402

DEST = HERE.parent / "fixtures" / "netlink"


def main():
    res = uml.run_guest("$PY $CODE/tests/vm/guest/netdev_suite.py", timeout=180,
                        modules=uml.NO_IPVS_MODULES, extra_modules=uml.TUNNEL_MODULES,
                        tag="netdev-capture")
    res.assert_ok()
    kernel = json.loads(res.read("result.json"))["kernel"]
    deb = sorted((uml.CACHE / "debs").glob("user-mode-linux_*.deb"))[-1].name
    (DEST / "links_uml_tunnels.hex").write_text(
        f"# RTM_GETLINK dump reply, tunnel topology tests/vm/guest/netdev_topology.sh, captured "
        f"on Linux {kernel}, User-Mode Linux ({deb}), by tests/vm/capture_netdev_fixtures.py\n"
        + res.read("links.hex"))
    (DEST / "links_uml_tunnels.ip.json").write_text(res.read("ip.json"))
    (DEST / "links_uml_tunnels.routes.json").write_text(res.read("routes.json"))
    links = json.loads(res.read("ip.json"))
    print(f"wrote links_uml_tunnels.* ({len(links)} links, Linux {kernel}) into {DEST}")


if __name__ == "__main__":
    main()
