"""exporter.sources.netns offline: discovery over a fixture procfs tree (symlinks as the
kernel's ns/net links read) and pod UIDs from cgroup texts of both cgroup drivers."""
from __future__ import annotations

import os

from exporter.sources import netns

UID = "1b2c3d4e-aaaa-bbbb-cccc-0123456789ab"


def proc_tree(root, links: dict, cgroups: dict):
    for pid, target in links.items():
        d = root / str(pid) / "ns"
        d.mkdir(parents=True)
        os.symlink(target, d / "net")
    for pid, text in cgroups.items():
        (root / str(pid) / "cgroup").write_text(text)
    (root / "self").mkdir()
    (root / "net").mkdir()


def test_discover_is_distinct_by_inode_and_skips_what_is_not_a_namespace(tmp_path):
    proc = tmp_path / "proc"
    proc_tree(proc, {1: "net:[10]", 2: "net:[10]", 3: "net:[20]", 4: "mnt:[30]", 5: "net:[x]"},
              {3: f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-x.scope\n"})
    run = tmp_path / "run"
    run.mkdir()
    (run / "leftover").write_text("")    # a plain file, not an nsfs mount: skipped
    found = netns.discover([str(run), str(tmp_path / "missing")], str(proc))
    assert sorted(n.inode for n in found) == [10, 20]
    by = {n.inode: n for n in found}
    assert by[10].pid in (1, 2) and len(by[10].paths) == 2 and by[20].pid == 3
    assert all(p.endswith("/ns/net") for n in found for p in n.paths)
    netns.fill_pod_uids(found, str(proc))
    assert by[20].pod_uid == UID and by[10].pod_uid == ""
    assert by[20].label == "20"


def test_max_pids_bounds_the_walk(tmp_path):
    proc = tmp_path / "proc"
    proc_tree(proc, {i: f"net:[{100 + i}]" for i in range(1, 11)}, {})
    assert len(netns.discover([], str(proc), max_pids=4)) == 4


def test_pod_uid_from_both_cgroup_drivers():
    systemd = f"0::/kubepods.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/x\n"
    cgroupfs = f"12:memory:/kubepods/besteffort/pod{UID}/0123abcd\n"
    assert netns.pod_uid_from_cgroup(systemd) == UID
    assert netns.pod_uid_from_cgroup(cgroupfs) == UID
    assert netns.pod_uid_from_cgroup("0::/user.slice/session-1.scope\n") == ""


def test_open_namespace_refuses_a_path_that_now_names_another_inode(tmp_path):
    f = tmp_path / "ns"
    f.write_text("")
    wrong = netns.Namespace(os.stat(f).st_ino + 1, paths=[str(f), str(tmp_path / "gone")])
    assert netns.open_namespace(wrong) is None
    right = netns.Namespace(os.stat(f).st_ino, paths=[str(tmp_path / "gone"), str(f)])
    fd = netns.open_namespace(right)
    assert fd is not None
    os.close(fd)
