"""Inside the UML guest (its own kernel: lowering gc_thresh here touches nothing on the host):
fill arp_cache past a lowered gc_thresh3 with ordinary (non-permanent) entries and record the
neighbour collector's samples and `ip -s ntable` before and after, into $OUT/neighbour.json.

Entries are STALE and fresh (updated < 5 s ago), so the kernel's forced GC cannot evict them
and every add past gc_thresh3 is refused (table_fulls).  Bounded: 200 adds, one batch.
"""
import io
import json
import os
import subprocess
import sys

sys.path.insert(0, os.environ["CODE"])
from exporter import log as logmod  # noqa: E402
from exporter.cli import all_options  # noqa: E402
from exporter.collectors import load_all  # noqa: E402
from exporter.collectors.base import REGISTRY, Context  # noqa: E402
from exporter.config import resolve  # noqa: E402

OUT = os.environ["OUT"]
THRESH = (8, 16, 32)
ADDS = 200


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def scrape():
    load_all()
    settings = resolve(all_options(), [], "guest", "0", set(REGISTRY))
    c = REGISTRY["neighbour"](Context(settings=settings, log=logmod.setup(
        "error", "json", stream=io.StringIO()).bind(collector="neighbour")))
    samples = [[f.spec.name, list(labels), value] for f in c.collect()
               for labels, value in f.samples]
    return {"samples": samples,
            "ntable": sh("ip", "-s", "ntable", "show", "name", "arp_cache").stdout,
            "proc_stat": open("/proc/net/stat/arp_cache").read()}


for level, value in zip((1, 2, 3), THRESH, strict=True):
    sh("sysctl", "-qw", f"net.ipv4.neigh.default.gc_thresh{level}={value}")
sh("ip", "link", "add", "d0", "type", "dummy")
sh("ip", "link", "set", "d0", "arp", "on", "up")
sh("ip", "addr", "add", "10.77.0.1/16", "dev", "d0")
before = scrape()
refused, errors = 0, []
for i in range(ADDS):     # one `ip` per add: `ip -batch` stops at the first refusal
    res = sh("ip", "neigh", "add", f"10.77.{i // 250}.{i % 250 + 2}", "lladdr",
             f"02:00:00:00:{i // 250:02x}:{i % 250:02x}", "dev", "d0", "nud", "stale",
             check=False)
    if res.returncode:
        refused += "No buffer space available" in res.stderr
        errors.append(res.stderr.strip())
after = scrape()
with open(os.path.join(OUT, "neighbour.json"), "w") as fh:
    json.dump({"thresh": THRESH, "adds": ADDS, "refused": refused, "ip_stderr": "\n".join(errors[-5:]),
               "before": before, "after": after}, fh)
