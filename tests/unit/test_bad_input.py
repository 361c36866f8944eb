"""One bad value costs only that value: the sysctl, cpu and softnet collectors given kernel files
this project did not write (the real /proc of this machine) and odd fixtures.

Each case is run through the real flag parser and the real gatherer, scraped twice: the good
values are exported, success is what the issue says, and the problem is logged exactly once."""
import os
import shutil

from exporter import cli
from exporter.config import resolve
from tests.helpers.exporter_proc import parse_samples, sample

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures")
ODD = os.path.join(FIX, "proc", "odd")


class RecordingLog:
    """A structlog-like logger that keeps (level, event, fields) for the test to read."""

    def __init__(self, records=None, bound=None):
        self.records = [] if records is None else records
        self.bound = bound or {}

    def bind(self, **kw):
        return RecordingLog(self.records, {**self.bound, **kw})

    def _log(self, level, event, **kw):
        self.records.append((level, event, {**self.bound, **kw}))

    def debug(self, event, **kw):
        self._log("debug", event, **kw)

    def info(self, event, **kw):
        self._log("info", event, **kw)

    def warning(self, event, **kw):
        self._log("warning", event, **kw)

    def error(self, event, **kw):
        self._log("error", event, **kw)

    def exception(self, event, **kw):
        self._log("error", event, **kw)

    def at(self, level, collector):
        return [r for r in self.records if r[0] == level and r[2].get("collector") == collector]


def scrape_twice(argv):
    log = RecordingLog()
    settings = resolve(cli.all_options(), argv, cli.PROG, "test", set(cli.REGISTRY))
    gatherer = cli.build(settings, log)
    try:
        gatherer.scrape()
        return parse_samples(gatherer.scrape().decode()), log
    finally:
        gatherer.close()


def tree(tmp_path, files):
    """A procfs/sysfs root in tmp_path holding {relative path: source file}."""
    for rel, src in files.items():
        dst = tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return str(tmp_path)


def real_sysctl(name):
    path = os.path.join("/proc/sys", *name.split("."))
    assert os.path.exists(path), f"this kernel has no {path}: the test needs a real one"
    with open(path) as fh:
        return fh.read()


# ------------------------------------------------------------------------------ sysctl
def test_sysctl_non_numeric_name_skips_only_that_name_on_the_real_proc():
    text = real_sysctl("kernel.seccomp.actions_avail")
    assert not text.split()[0].isdigit(), text
    somaxconn = int(real_sysctl("net.core.somaxconn"))
    lo, hi = (int(v) for v in real_sysctl("net.ipv4.ip_local_port_range").split())
    s, log = scrape_twice(["--collector.disable-defaults", "--collector.sysctl",
                           "--collector.sysctl.names=net.core.somaxconn,"
                           "kernel.seccomp.actions_avail,net.ipv4.ip_local_port_range"])
    assert sample(s, "nodenet_scrape_collector_success", collector="sysctl") == 1
    assert sample(s, "nodenet_sysctl_value", name="net.core.somaxconn", bound="") == somaxconn
    assert sample(s, "nodenet_sysctl_value", name="net.ipv4.ip_local_port_range",
                  bound="min") == lo
    assert sample(s, "nodenet_sysctl_value", name="net.ipv4.ip_local_port_range",
                  bound="max") == hi
    assert not [k for k in s if k[0] == "nodenet_sysctl_value"
                and ("name", "kernel.seccomp.actions_avail") in k[1]]
    warns = log.at("warning", "sysctl")
    assert len(warns) == 1, warns  # two scrapes, one line
    assert warns[0][2]["name"] == "kernel.seccomp.actions_avail"
    assert "not numeric" in warns[0][2]["reason"]


def test_sysctl_non_numeric_fixture_next_to_the_fixture_tunables(tmp_path):
    root = tree(tmp_path, {"sys/kernel/seccomp/actions_avail":
                           os.path.join(ODD, "sysctl_seccomp_actions_avail"),
                           "sys/fs/file-max": os.path.join(FIX, "root", "proc", "sys", "fs",
                                                           "file-max")})
    s, log = scrape_twice(["--collector.disable-defaults", "--collector.sysctl",
                           f"--path.procfs={root}",
                           "--collector.sysctl.names=kernel.seccomp.actions_avail,fs.file-max"])
    assert sample(s, "nodenet_scrape_collector_success", collector="sysctl") == 1
    with open(os.path.join(FIX, "root", "proc", "sys", "fs", "file-max")) as fh:
        assert sample(s, "nodenet_sysctl_value", name="fs.file-max", bound="") == int(fh.read())
    assert len(log.at("warning", "sysctl")) == 1


# ------------------------------------------------------------------------------ cpu
def test_cpu_unparseable_online_list_falls_back_to_the_cpus_of_the_real_proc_stat(tmp_path):
    with open("/proc/stat") as fh:
        stat_cpus = [ln.split()[0] for ln in fh if ln.startswith("cpu") and ln[3] != " "]
    sysfs = tree(tmp_path, {"devices/system/cpu/online": os.path.join(ODD, "cpu_online_garbled")})
    s, log = scrape_twice(["--collector.disable-defaults", "--collector.cpu",
                           f"--path.sysfs={sysfs}"])
    assert sample(s, "nodenet_scrape_collector_success", collector="cpu") == 1
    assert sample(s, "nodenet_cpus") == len(stat_cpus) == os.cpu_count()
    for name in stat_cpus:
        assert sample(s, "nodenet_cpu_steal_seconds_total", cpu=name[3:]) is not None
    warns = log.at("warning", "cpu")
    assert len(warns) == 1, warns
    assert warns[0][2]["path"].endswith("devices/system/cpu/online")


def test_cpu_online_list_still_wins_when_it_parses():
    s, log = scrape_twice(["--collector.disable-defaults", "--collector.cpu",
                           f"--path.procfs={FIX}/root/proc", f"--path.sysfs={FIX}/root/sys"])
    with open(os.path.join(FIX, "root", "sys", "devices", "system", "cpu", "online")) as fh:
        assert fh.read().strip() == "0-3"
    assert sample(s, "nodenet_cpus") == 4
    assert not log.at("warning", "cpu")


# ------------------------------------------------------------------------------ softnet
def test_softnet_short_row_is_skipped_and_the_valid_cpus_exported(tmp_path):
    root = tree(tmp_path, {"net/softnet_stat": os.path.join(ODD, "softnet_stat_short_row")})
    s, log = scrape_twice(["--collector.disable-defaults", "--collector.softnet",
                           f"--path.procfs={root}"])
    assert sample(s, "nodenet_scrape_collector_success", collector="softnet") == 1
    squeezed = {dict(k[1])["cpu"]: v for k, v in s.items()
                if k[0] == "nodenet_softnet_times_squeezed_total"}
    assert squeezed == {"0": 1, "2": 5}  # the 4-column row's f00007e9 is not a number we show
    assert sample(s, "nodenet_softnet_processed_total", cpu="0") == 0x23f1a2
    warns = log.at("warning", "softnet")
    assert len(warns) == 1, warns
    assert warns[0][2]["rows"] == 1 and "4 columns" in warns[0][2]["first"]


def test_softnet_without_a_valid_row_fails_the_collector(tmp_path):
    root = tree(tmp_path, {"net/softnet_stat": os.path.join(ODD, "softnet_stat_only_short")})
    s, _ = scrape_twice(["--collector.disable-defaults", "--collector.softnet",
                         f"--path.procfs={root}"])
    assert sample(s, "nodenet_scrape_collector_success", collector="softnet") == 0
    assert not [k for k in s if k[0].startswith("nodenet_softnet_")]


def test_softnet_on_the_real_kernel_skips_nothing():
    with open("/proc/net/softnet_stat") as fh:
        rows = [ln.split() for ln in fh if ln.strip()]
    s, log = scrape_twice(["--collector.disable-defaults", "--collector.softnet"])
    assert sample(s, "nodenet_scrape_collector_success", collector="softnet") == 1
    exported = [k for k in s if k[0] == "nodenet_softnet_processed_total"]
    assert len(exported) == len(rows) and all(len(r) >= 9 for r in rows)
    assert not log.at("warning", "softnet")
