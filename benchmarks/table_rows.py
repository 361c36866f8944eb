#!/usr/bin/env python3
"""The IPVS collector's table building and rendering, old code against new, in one process.

    python benchmarks/table_rows.py OLD_COLLECTOR_PY [services] [backends] [rounds]

Builds services x backends IPVS dataclasses in memory (no kernel, no netlink), then times, in
turn (A B A B ...), the collector's ``_collect`` of the file given (e.g. a copy of
exporter/collectors/ipvs.py from the previous commit) and of the current one, plus a render of
the tables; prints medians.  Used for docs/performance.md "Table.add_row".
"""
import importlib.util
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from exporter.collectors import ipvs as new  # noqa: E402
from exporter.metrics import ExpositionWriter  # noqa: E402
from exporter.sources import ipvs  # noqa: E402


def load_old(path):
    spec = importlib.util.spec_from_file_location("exporter.collectors._ipvs_old", path)
    mod = importlib.util.module_from_spec(spec)
    from exporter.collectors import base
    saved = dict(base.REGISTRY)
    base.REGISTRY.pop("ipvs", None)
    spec.loader.exec_module(mod)
    base.REGISTRY.clear()
    base.REGISTRY.update(saved)
    return mod


def table(n_services, n_backends):
    out = []
    for i in range(n_services):
        svc = ipvs.Service(ipvs.AF_INET, 6, f"10.96.{i // 250}.{i % 250}", 80 + i % 7, 0,
                           "rr", 0, 0, "255.255.255.255",
                           ipvs.Stats(i, i * 3, i * 2, i * 1500, i * 900))
        svc.backends = [ipvs.Backend(ipvs.AF_INET, f"10.244.{j}.{i % 250}", 8080, j % 3, 1 + j % 2,
                                     0, 0, j, j * 2, 0,
                                     ipvs.Stats(j, j * 5, j * 4, j * 7000, j * 3000))
                        for j in range(n_backends)]
        out.append(svc)
    return out


def main():
    old_path = sys.argv[1]
    n_s = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    n_b = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 15
    old = load_old(old_path)
    services = table(n_s, n_b)

    class Settings(dict):
        pass

    class Ctx:
        settings = Settings()
        procfs, sysfs, log = "/proc", "/sys", None

    collectors = {"A (old)": old.IPVSCollector(Ctx()), "B (new)": new.IPVSCollector(Ctx())}
    writer = ExpositionWriter()
    build = {k: [] for k in collectors}
    render = {k: [] for k in collectors}
    outputs = {}
    for _ in range(rounds):
        for name, c in collectors.items():
            t0 = time.process_time()
            fams = c._collect(iter(services))
            t1 = time.process_time()
            text = writer.render(fams)
            t2 = time.process_time()
            build[name].append(t1 - t0)
            render[name].append(t2 - t1)
            outputs[name] = text
            del fams, text
    same = len(set(outputs.values())) == 1
    print(f"{n_s} services x {n_b} backends, {rounds} rounds each, A B A B ..., CPU time")
    for name in collectors:
        print(f"  {name}: build p50 {statistics.median(build[name]) * 1000:7.1f} ms, "
              f"render p50 {statistics.median(render[name]) * 1000:7.1f} ms")
    print(f"  identical exposition: {same} ({len(outputs['B (new)']) / 1e6:.1f} MB)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
