"""A network namespace built like a Kubernetes node (for the series budget test and benchmark).

``with pod_node(pods=110) as node:`` gives a namespace ``node.ns`` holding

- ``eth0``: the underlay, a veth (MTU 1500, 10.99.0.2/24) whose peer lives in a "world"
  namespace, given a ``device`` link in ``node.sysfs`` (a fixture sysfs tree) so the ethtool
  collector treats it as the node's NIC;
- ``cni0``: a bridge (MTU 1450, 10.244.0.1/24) and ``flannel.1``: a VXLAN at 1450 over eth0;
- ``pods`` pod veths ``veth<hex>`` on cni0, each with its peer ``eth0`` in a namespace of its
  own (10.244.0.x), as a CNI plugin makes them;
- a few conntrack entries (each of the first pods pings the bridge address once).

Everything is removed at exit (the pod namespaces take their veths with them).  Only this
namespace and its pods see traffic; nothing leaves the machine.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import uuid
from dataclasses import dataclass


def _ip(*args: str, input: str | None = None) -> None:
    subprocess.run(["ip", *args], check=True, input=input, text=True, capture_output=True)


@dataclass
class PodNode:
    ns: str
    world: str
    pod_namespaces: list
    sysfs: str
    pods: int


@contextlib.contextmanager
def pod_node(pods: int = 110, pings: int = 8):
    if os.geteuid() != 0:
        raise RuntimeError("building the node namespace needs root")
    tag = uuid.uuid4().hex[:6]
    ns, world = f"nn-node-{tag}", f"nn-world-{tag}"
    pod_ns = [f"nn-pod-{tag}-{i}" for i in range(pods)]
    made: list = []
    sysfs = tempfile.mkdtemp(prefix="nodenet-podnode-sys-")
    try:
        for name in (ns, world, *pod_ns):
            _ip("netns", "add", name)
            made.append(name)
        _ip("-n", ns, "-batch", "-", input="\n".join([
            "link set lo up",
            f"link add eth0 type veth peer name up0 netns {world}",
            "addr add 10.99.0.2/24 dev eth0", "link set eth0 up",
            "link add cni0 type bridge", "link set cni0 mtu 1450",
            "addr add 10.244.0.1/24 dev cni0", "link set cni0 up",
            "link add flannel.1 type vxlan id 1 dev eth0 dstport 8472 local 10.99.0.2",
            "link set flannel.1 mtu 1450", "link set flannel.1 up",
            *[f"link add veth{i:08x} mtu 1450 type veth peer name eth0 netns {p}"
              for i, p in enumerate(pod_ns)],
            *[f"link set veth{i:08x} master cni0" for i in range(pods)],
            *[f"link set veth{i:08x} up" for i in range(pods)],
        ]) + "\n")
        _ip("-n", world, "-batch", "-", input="link set lo up\nlink set up0 up\n"
            "addr add 10.99.0.1/24 dev up0\n")
        for i, p in enumerate(pod_ns):
            _ip("-n", p, "-batch", "-", input=f"link set lo up\nlink set eth0 up\n"
                f"addr add 10.244.{(i + 2) // 250}.{(i + 2) % 250 + 2}/16 dev eth0\n")
        for p in pod_ns[:pings]:
            subprocess.run(["ip", "netns", "exec", p, "ping", "-c1", "-W1", "10.244.0.1"],
                           capture_output=True, timeout=10, check=False)
        net = os.path.join(sysfs, "class", "net", "eth0")
        os.makedirs(net)
        os.makedirs(os.path.join(sysfs, "devices", "virtual", "eth0"))
        os.symlink(os.path.join(sysfs, "devices", "virtual", "eth0"),
                   os.path.join(net, "device"))
        yield PodNode(ns, world, pod_ns, sysfs, pods)
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", sysfs], capture_output=True, check=False)


def count_series(exposition: str) -> tuple[int, int, dict]:
    """(samples, samples of per-CPU families (a `cpu` label), samples per metric family)."""
    total, per_cpu = 0, 0
    by_family: dict = {}
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        total += 1
        name = line.split("{", 1)[0].split(" ", 1)[0]
        by_family[name] = by_family.get(name, 0) + 1
        if 'cpu="' in line.split("}", 1)[0]:
            per_cpu += 1
    return total, per_cpu, by_family
