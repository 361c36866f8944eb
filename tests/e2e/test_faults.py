"""Faults while scraping, against the real exporter on a fixture tree we break underneath it:
a collector that hangs (a fifo as /proc/net/softnet_stat) and files that become unreadable,
vanish, turn into directories or garbage mid-run.  Each scrape stays 200, and only the affected
collector reports success 0 or loses its series."""
import os
import shutil
import threading
import time

from tests.helpers.exporter_proc import ROOT, ExporterProcess, parse_samples, sample

FIX = os.path.join(ROOT, "tests", "fixtures")
COLLECTORS = ("cpu", "softnet", "sysctl")
# which metric names belong to which collector (for "no series of a failed collector")
PREFIX = {"cpu": ("nodenet_cpu_", "nodenet_cpus"), "softnet": ("nodenet_softnet_",),
          "sysctl": ("nodenet_sysctl_",)}


def tree_args(tree, *extra):
    return [f"--path.procfs={tree}/proc", f"--path.sysfs={tree}/sys",
            "--collector.disable-defaults", *[f"--collector.{c}" for c in COLLECTORS], *extra]


def copy_tree(tmp_path):
    tree = tmp_path / "root"
    shutil.copytree(os.path.join(FIX, "root"), tree)
    return tree


def unblock_fifo(path) -> bool:
    """Lets a reader blocked in open() on the fifo go on (it then reads EOF)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: nobody is reading
        return False
    os.close(fd)
    return True


def collector_series(samples, collector):
    return {k: v for k, v in samples.items() if k[0].startswith(PREFIX[collector])}


def test_hung_collector_is_abandoned_within_the_budget(tmp_path):
    tree = copy_tree(tmp_path)
    fifo = tree / "proc" / "net" / "softnet_stat"
    os.unlink(fifo)
    os.mkfifo(fifo)  # open() blocks until a writer comes: the collector hangs
    budget = 1.0
    with ExporterProcess(tree_args(tree, f"--collector.timeout={budget}s")) as ex:
        threads = []
        for i in range(10):
            t0 = time.monotonic()
            status, body, _ = ex.get("/metrics", timeout=budget + 10)
            elapsed = time.monotonic() - t0
            assert status == 200
            s = parse_samples(body.decode())
            print(f"scrape {i} with softnet hung: {elapsed:.2f}s")
            assert elapsed < budget + 1.0, elapsed
            assert sample(s, "nodenet_scrape_collector_success", collector="softnet") == 0
            assert sample(s, "nodenet_scrape_collector_success", collector="cpu") == 1
            assert sample(s, "nodenet_scrape_collector_success", collector="sysctl") == 1
            assert not collector_series(s, "softnet")
            assert sample(s, "nodenet_cpus") == 4
            threads.append(len(os.listdir(f"/proc/{ex.proc.pid}/task")))
        # the stuck read is not started again on every scrape: no thread per scrape
        # (the count moves by a thread or two: connection threads, the pool starting workers)
        assert max(threads[3:]) <= threads[2] + 2, threads
        assert "previous collection still running" in ex.get("/")[1].decode()
        # the read completes (the fifo gets a writer): the next scrapes recover
        assert unblock_fifo(fifo), "the collector was not blocked on the fifo"
        os.unlink(fifo)
        shutil.copy(os.path.join(FIX, "root", "proc", "net", "softnet_stat"), fifo)
        deadline = time.monotonic() + 10
        while True:
            s = parse_samples(ex.scrape())
            if sample(s, "nodenet_scrape_collector_success", collector="softnet") == 1:
                break
            assert time.monotonic() < deadline, "softnet never recovered"
            time.sleep(0.2)
        assert sample(s, "nodenet_softnet_dropped_total", cpu="3") == 0x1f4
        log = ex.log()
    assert "timed out after 1s" in log and '"collector": "softnet"' in log
    assert "collector recovered" in log


FAULTS = ("unreadable", "missing", "directory", "garbage", "fifo")


def break_file(path, fault):
    if fault == "unreadable":
        os.chmod(path, 0)
    elif fault == "missing":
        os.unlink(path)
    elif fault == "directory":
        os.unlink(path)
        os.mkdir(path)
    elif fault == "garbage":
        with open(path, "wb") as fh:
            fh.write(b"\xff\xfe garbage \x00\n cpu0 x y\n")
    elif fault == "fifo":
        os.unlink(path)
        os.mkfifo(path)


def restore_file(path, original, fault):
    if fault == "fifo":
        unblock_fifo(path)
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    elif os.path.lexists(path):
        os.unlink(path)
    shutil.copy(original, path)
    os.chmod(path, 0o644)


def test_files_broken_while_scraping(tmp_path):
    """A breaker thread cycles each collector's file through five faults while a scraper
    scrapes as fast as it can.  The exporter runs without CAP_DAC_OVERRIDE/DAC_READ_SEARCH
    (setpriv), so a mode-000 file really is unreadable for it although it runs as root."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv missing (Debian util-linux)"
    tree = copy_tree(tmp_path)
    targets = {"cpu": "proc/stat", "softnet": "proc/net/softnet_stat",
               "sysctl": "proc/sys/net/core/netdev_max_backlog"}
    drop = "-dac_override,-dac_read_search"
    budget = 0.5
    with ExporterProcess(tree_args(tree, f"--collector.timeout={budget}s"),
                         prefix=[setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}"]) as ex:
        baseline = parse_samples(ex.scrape())
        base = {c: collector_series(baseline, c) for c in COLLECTORS}
        for c in COLLECTORS:
            assert base[c], c
            assert sample(baseline, "nodenet_scrape_collector_success", collector=c) == 1
        stop = threading.Event()
        seen = {c: set() for c in COLLECTORS}
        problems, scrapes, slowest = [], [0], [0.0]
        give_up = time.monotonic() + 90

        def scraper():
            while not stop.is_set() and scrapes[0] < 10000 and time.monotonic() < give_up:
                t0 = time.monotonic()
                try:
                    status, body, _ = ex.get("/metrics", timeout=budget + 10)
                except OSError as exc:
                    problems.append(f"request failed: {exc}")
                    continue
                slowest[0] = max(slowest[0], time.monotonic() - t0)
                scrapes[0] += 1
                if status != 200:
                    problems.append(f"status {status}: {body[:200]!r}")
                    continue
                s = parse_samples(body.decode())
                for c in COLLECTORS:
                    ok = sample(s, "nodenet_scrape_collector_success", collector=c)
                    series = collector_series(s, c)
                    seen[c].add(ok)
                    if ok == 0 and series:
                        problems.append(f"{c} failed but exported {sorted(series)[:3]}")
                    # whatever it exports is the fixture's truth: absent or exact, never junk
                    bad = {k: v for k, v in series.items() if base[c].get(k) != v}
                    if bad:
                        problems.append(f"{c} exported {bad}")

        t = threading.Thread(target=scraper)
        t.start()
        try:
            for _round in range(2):
                for c, rel in targets.items():
                    path = tree / rel
                    original = os.path.join(FIX, "root", rel)
                    for fault in FAULTS:
                        break_file(path, fault)
                        time.sleep(budget + 0.3 if fault == "fifo" else 0.25)
                        restore_file(path, original, fault)
                        time.sleep(0.1)
        finally:
            stop.set()
            t.join(30)
        print(f"{scrapes[0]} scrapes while breaking files; slowest {slowest[0]:.2f}s")
        assert not problems, problems[:10]
        assert scrapes[0] >= 50, scrapes[0]
        assert slowest[0] < budget + 1.5, slowest[0]
        assert seen["cpu"] == {0, 1} and seen["softnet"] == {0, 1}, seen
        assert 1 in seen["sysctl"] and 0 in seen["sysctl"], seen  # EACCES is a failure
        # everything restored: a clean scrape equals the baseline again
        deadline = time.monotonic() + 10
        while True:
            s = parse_samples(ex.scrape())
            if all(sample(s, "nodenet_scrape_collector_success", collector=c) == 1
                   for c in COLLECTORS):
                break
            assert time.monotonic() < deadline, "collectors did not recover"
            time.sleep(0.2)
        for c in COLLECTORS:
            assert collector_series(s, c) == base[c], c
        assert ex.proc.poll() is None
        assert "Traceback" not in ex.log()
