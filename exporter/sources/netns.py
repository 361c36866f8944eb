"""Network namespaces of the node: discovery, entering one (setns), pod UID of its processes.

Shared by every per-namespace view (conntrack entries per namespace today, a per-pod view
next).  Namespaces are only ever *opened* (an existing nsfs file under /run/netns or
/proc/<pid>/ns/net), never created; one that disappears before it could be opened is skipped.

Public API
    :class:`Namespace` (inode, name, candidate paths, a member pid, pod UID);
    :func:`discover` ``(run_dirs, procfs, max_pids) -> [Namespace]`` - distinct by inode,
    only stat() and readlink(); :func:`fill_pod_uids` and the pure
    :func:`pod_uid_from_cgroup`; :func:`open_namespace` ``(ns) -> fd | None`` (checked to be
    the same inode); :func:`setns` ``(fd)`` for the calling thread; :func:`entered`
    ``(path)`` - a context manager running its block in that namespace and coming back;
    :func:`run_in_namespaces` ``(namespaces, fn, deadline) -> ([(ns, value)], skipped)`` -
    one short-lived thread enters each namespace in turn and calls ``fn(ns)`` there (sockets
    it makes live in that namespace); the caller's threads never change namespace.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
_libc: Any = None
T = TypeVar("T")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) for the calling thread; OSError with the kernel's errno on failure."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Runs the block, in the calling thread, inside the namespace at ``path`` (an nsfs file
    such as /run/netns/<name> or /proc/<pid>/ns/net), then puts the thread back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(own)


@dataclass
class Namespace:
    """A network namespace seen on the node, identified by its nsfs inode."""

    inode: int
    name: str = ""                                   # file name under /run/netns, if any
    paths: list[str] = field(default_factory=list)   # candidates to open, best first
    pid: int | None = None                           # a process living in it (hostPID)
    pod_uid: str = ""                                # from that process' cgroup path

    @property
    def label(self) -> str:
        return self.name or str(self.inode)


_POD_RE = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}"
                     r"[-_][0-9a-f]{12})")


def pod_uid_from_cgroup(text: str) -> str:
    """The Kubernetes pod UID in a /proc/<pid>/cgroup text (cgroupfs or systemd driver)."""
    m = _POD_RE.search(text)
    return m.group(1).replace("_", "-") if m else ""


N = TypeVar("N", bound="Namespace")


def _scan_run_dirs(run_dirs: list[str], by_inode: dict[int, N], kind: type[N],
                   nsfs_dev: int | None) -> None:
    for run_dir in run_dirs:
        try:
            names = sorted(os.listdir(run_dir))
        except OSError:
            continue
        for name in names:
            path = os.path.join(run_dir, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if nsfs_dev is not None and st.st_dev != nsfs_dev:
                continue  # a leftover plain file (unmounted namespace), not an nsfs mount
            ns = by_inode.get(st.st_ino)
            if ns is None:
                by_inode[st.st_ino] = kind(st.st_ino, name=name, paths=[path])
            elif not ns.name:
                ns.name = name
                ns.paths.insert(0, path)


class ProcNetCache:
    """What each process's /proc/<pid>/ns/net said, kept between walks: a node has thousands
    of processes and one readlink costs ~6 us (12 ms per walk at 2,000), while the listing of
    /proc is needed anyway and gives each /proc/<pid> directory's inode number for free.

    A process is known by (pid, inode of its /proc/<pid> directory): the kernel flushes a
    process's /proc dentries when it exits, so a reused pid comes back with a new directory
    inode.  An answer is trusted only after two walks agree (a process that joins a namespace
    right after it starts, as ``runc init`` does, is seen again in its final one) and is asked
    again after ``max_age`` seconds (a later setns() is seen within that)."""

    def __init__(self, max_age: float = 60.0):
        self.max_age = max_age
        self._known: dict[tuple[str, int], tuple[tuple | None, float, bool]] = {}
        self._next: dict[tuple[str, int], tuple[tuple | None, float, bool]] = {}
        self.asked = 0     # readlinks in the last walk (tests and benchmarks read it)

    def begin(self) -> tuple[dict, dict]:
        """Starts a walk: (what is known, what this walk remembers), for the walk's inlined
        lookup (it runs per process): a trusted answer younger than ``max_age`` is copied from
        the first to the second, anything else goes through :meth:`ask`."""
        self._next = {}
        self.asked = 0
        return self._known, self._next

    def end(self) -> None:
        self._known = self._next   # processes not listed this walk are forgotten
        self._next = {}

    def ask(self, procfs: str, key: tuple[str, int], hit, now: float) -> tuple | None:
        """Reads the link of process ``key`` (not known, or not trusted yet, or too old)."""
        self.asked += 1
        answer = _look(procfs, key[0])
        self._next[key] = (answer, now, hit is not None and hit[0] == answer)
        return answer


def _look(procfs: str, name: str) -> tuple | None:
    """("net", nsfs inode) | ("refused", inode of /proc/<pid>/net/dev or None) | None
    (exited, or not a network namespace link)."""
    try:
        link = os.readlink(f"{procfs}/{name}/ns/net")  # "net:[4026531840]"
    except PermissionError:
        return ("refused", proc_net_inode(procfs, name))
    except OSError:
        return None   # exited, or a kernel thread we may not inspect
    if not link.startswith("net:["):
        return None
    try:
        return ("net", int(link[5:-1]))
    except ValueError:
        return None


def _scan_procfs(procfs: str, by_inode: dict[int, N], kind: type[N], max_pids: int,
                 refused: dict[int, int] | None, cache: ProcNetCache | None = None,
                 skip: int | None = None) -> None:
    """The one walk of /proc/<pid>/ns/net.  With ``refused`` (a dict), a process whose ns
    link is refused (EACCES) is recorded there as {/proc/<pid>/net/dev inode: first pid};
    without it such a process is skipped like one that exited.  With ``cache``, only
    processes not seen before (or not lately) are asked.  ``skip``: a namespace inode (the
    caller's own) whose processes are not collected; most of a node's live there."""
    try:
        entries = os.scandir(procfs)
    except OSError:
        return
    now = time.monotonic()
    if cache is not None:
        known, remembered = cache.begin()
        max_age = cache.max_age
    with entries:
        seen = 0
        for entry in entries:
            name = entry.name
            if not name.isdigit():
                continue
            seen += 1
            if seen > max_pids:
                break
            if cache is not None:   # the cache's lookup, inlined: this runs per process
                try:
                    key = (name, entry.inode())
                except OSError:
                    continue
                hit = known.get(key)
                if hit is not None and hit[2] and now - hit[1] < max_age:
                    remembered[key] = hit
                    answer = hit[0]
                else:
                    answer = cache.ask(procfs, key, hit, now)
            else:
                answer = _look(procfs, name)
            if answer is not None and answer[1] != skip:
                _add(answer, name, procfs, by_inode, kind, refused)
    if cache is not None:
        cache.end()


def _add(answer: tuple, name: str, procfs: str, by_inode: dict[int, N], kind: type[N],
         refused: dict[int, int] | None) -> None:
    """Files process ``name`` under its namespace (or, refused, under its net/dev inode)."""
    what, inode = answer
    if what == "refused":
        if refused is not None and inode is not None:
            refused.setdefault(inode, int(name))
        return
    ns = by_inode.get(inode)
    if ns is None:
        ns = by_inode[inode] = kind(inode)
    if len(ns.paths) < 3 + (1 if ns.name else 0):
        ns.paths.append(f"{procfs}/{name}/ns/net")
    if ns.pid is None:
        ns.pid = int(name)


def _discover(run_dirs: list[str], procfs: str | None, max_pids: int, kind: type[N],
              refused: dict[int, int] | None = None,
              cache: ProcNetCache | None = None, skip: int | None = None) -> list[N]:
    """Shared by :func:`discover` and :func:`discover_pods`: run_dirs, then /proc/<pid>."""
    by_inode: dict[int, N] = {}
    try:
        nsfs_dev: int | None = os.stat("/proc/self/ns/net").st_dev
    except OSError:
        nsfs_dev = None
    _scan_run_dirs(run_dirs, by_inode, kind, nsfs_dev)
    if procfs:
        _scan_procfs(procfs, by_inode, kind, max_pids, refused, cache, skip)
    return sorted(by_inode.values(), key=lambda n: (n.name == "", n.name, n.inode))


def discover(run_dirs: list[str], procfs: str | None, max_pids: int = 100_000,
             cache: ProcNetCache | None = None) -> list[Namespace]:
    """Every distinct network namespace visible in run_dirs and (if procfs) /proc/<pid>.

    Only stat() and readlink(): nothing is opened or created here.  Named ones come first
    (sorted by name), then the rest by inode.  Files that vanish while listing are skipped,
    and so are processes whose ns link is refused (see :func:`discover_pods` for those).
    """
    return _discover(run_dirs, procfs, max_pids, Namespace, cache=cache)


def fill_pod_uids(namespaces: list[Namespace], procfs: str) -> None:
    """Sets pod_uid from one member process' cgroup file (cheap: one small read each)."""
    for ns in namespaces:
        if ns.pid is None:
            continue
        try:
            with open(os.path.join(procfs, str(ns.pid), "cgroup"), "rb") as fh:
                ns.pod_uid = pod_uid_from_cgroup(fh.read(8192).decode("utf-8", "replace"))
        except OSError:
            pass


def open_namespace(ns: Namespace) -> int | None:
    """An fd on the namespace (its first path that still names the same inode), or None."""
    for path in ns.paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # deleted / process exited: try the next path
        try:
            if os.fstat(fd).st_ino == ns.inode:
                return fd
        except OSError:
            pass
        os.close(fd)  # the name now points at another namespace (or a plain file)
    return None


def run_in_namespaces(namespaces: list[Namespace], fn: Callable[[Namespace], T],
                      deadline: float | None = None) -> tuple[list[tuple[Namespace, T]], list[str]]:
    """``fn(ns)`` inside each namespace, from one dedicated thread that ``setns()``-es into
    each in turn (only that thread changes namespace; it ends afterwards).

    A namespace that can no longer be opened (deleted, process exited) is skipped; one that
    is opened stays alive until its fd is closed.  An OSError from ``fn`` skips that
    namespace; anything else is re-raised in the caller.  ``deadline`` (time.monotonic)
    stops early, the rest reported as skipped.  Returns ([(ns, value)], skipped descriptions).
    """
    results: list[tuple[Namespace, T]] = []
    skipped: list[str] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            failure.append(exc)
            return
        try:
            for ns in namespaces:
                if deadline is not None and time.monotonic() > deadline:
                    skipped.append(f"{ns.label}: time budget")
                    continue
                fd = open_namespace(ns)
                if fd is None:
                    skipped.append(f"{ns.label}: gone")
                    continue
                try:
                    setns(fd)
                    results.append((ns, fn(ns)))
                except OSError as exc:
                    skipped.append(f"{ns.label}: {exc.strerror or exc}")
                finally:
                    os.close(fd)
            with contextlib.suppress(OSError):
                setns(home)  # this thread ends now anyway
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)
        finally:
            os.close(home)

    t = threading.Thread(target=work, name="netns-walk", daemon=True)
    t.start()
    t.join()
    if failure:
        raise failure[0]
    return results, skipped


# ------------------------------------------------------------------------------------------
# Pod view (issue 15): discovery that also sees processes whose ns link is refused.
#
# Measured on this kernel (tests/integration/test_podview_netns.py proves it): as uid 0 with
# only CAP_NET_ADMIN, readlink()/stat() of /proc/<pid>/ns/net of a process of another uid fails
# with EACCES (ptrace-read check), while stat() and read() of its /proc/<pid>/net/* files
# succeed; the inode of /proc/<pid>/net/dev is the same for every member of a namespace and
# differs between namespaces (one procfs entry per namespace).  So such a namespace is found
# and read without CAP_SYS_PTRACE - only its nsfs inode stays unknown (``Namespace.inode`` 0).

@dataclass
class PodDiscovery:
    """What :func:`discover_pods` found: ``namespaces`` other than the exporter's own (nsfs
    inode known, or 0 when only seen through a process whose ns link was refused) and
    ``refused``: how many of them were seen only through processes whose /proc/<pid>/ns/net
    was refused (their inode is 0)."""

    namespaces: list[PodNamespace]
    refused: int = 0


@dataclass
class PodNamespace(Namespace):
    """A Namespace plus the inode of a member's /proc/<pid>/net/dev (None: not known yet)."""

    proc_inode: int | None = None


def proc_net_inode(procfs: str, pid: int | str) -> int | None:
    """The inode of /proc/<pid>/net/dev: one per network namespace; None if gone."""
    try:
        return os.stat(f"{procfs}/{pid}/net/dev").st_ino
    except OSError:
        return None


def discover_pods(run_dirs: list[str], procfs: str | None, own_inode: int | None,
                  own_proc_inode: int | None, max_pids: int = 100_000,
                  cache: ProcNetCache | None = None) -> PodDiscovery:
    """Every network namespace but the exporter's own, distinct, one member pid each.

    As :func:`discover`, plus: a process whose ns link is refused (EACCES) is grouped by its
    /proc/<pid>/net/dev inode; a group that matches no namespace already known (compared by the
    same inode of a readable member) becomes a Namespace with inode 0.  Only stat(), readlink().
    """
    refused: dict[int, int] = {}     # /proc/<pid>/net/dev inode -> first pid
    found = _discover(run_dirs, procfs, max_pids, PodNamespace, refused, cache,
                      own_inode or None)
    found = [pns for pns in found if pns.inode != (own_inode or -1)]
    if own_proc_inode is not None:
        refused.pop(own_proc_inode, None)  # the exporter's own namespace
    if refused and procfs:
        for pns in found:
            if pns.pid is not None:
                pns.proc_inode = proc_net_inode(procfs, pns.pid)
        known = {pns.proc_inode for pns in found}
        for ino, pid in sorted(refused.items()):
            if ino not in known:
                found.append(PodNamespace(0, pid=pid, proc_inode=ino))
    return PodDiscovery(found, sum(1 for pns in found if pns.inode == 0))
