"""Helpers shared by the watcher tests (test_watcher_*.py); this module holds no tests.

"Exact" means: the root tree id a snapshot recorded equals the one a full walk of the directory
produces right now, computed with a fresh, empty index (no stat cache, no watcher) and a sink
that only hashes, so the workspace under test is not touched.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator

from snapd.fsutil import open_root
from snapd.ignore import INTERNAL_PREFIX
from snapd.index import DirNode
from snapd.scanner import HashOnly, Scanner, encode_dirty
from snapd.store.catalog import SnapshotRecord
from snapd.workspace import Workspace

INOTIFY_SYSCTL = "/proc/sys/fs/inotify"


def full_walk_root(ws: Workspace) -> bytes:
    """The root tree id a full walk of ws.path gives, without using or changing ws's state."""
    sink = HashOnly(ws.store.keys)
    fd = open_root(ws.path)
    try:
        root = DirNode()
        Scanner(fd, root, ws.excludes, sink, fine_timestamps=True).full()
        return encode_dirty(root, sink)
    finally:
        os.close(fd)


def _walk_entries(ws: Workspace) -> dict[str, tuple]:
    """path -> (kind, mode, size, mtime_ns) as a snapshot would record it (excludes applied)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(ws.path):
        rel = os.path.relpath(dirpath, ws.path)
        for n in sorted(dirnames + filenames):
            p = n if rel == "." else f"{rel}/{n}"
            full = os.path.join(dirpath, n)
            st = os.lstat(full)
            kind = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}.get(
                stat.S_IFMT(st.st_mode), "special"
            )
            if n.startswith(".~snapd-") or ws.excludes.excluded(os.fsencode(p), kind == "dir"):
                if kind == "dir":
                    dirnames.remove(n)
                continue
            size = st.st_size if kind == "file" else 0
            out[p] = (kind, stat.S_IMODE(st.st_mode), size, st.st_mtime_ns)
    return out


def describe_tree_diff(ws: Workspace, got: bytes) -> str:
    """Where the snapshot `got` differs from the directory (for failure messages only)."""
    from snapd import browse

    try:
        stored = {
            e.path: (e.kind, e.mode, e.size if e.kind == "file" else 0, e.mtime_ns)
            for e in browse.list_dir(ws.store, got, recursive=True)
        }
    except Exception as e:
        return f"(cannot list the snapshot: {e})"
    walked = _walk_entries(ws)
    lines = []
    for p in sorted(set(stored) | set(walked)):
        if stored.get(p) != walked.get(p):
            lines.append(f"  {p}: snapshot {stored.get(p)} directory {walked.get(p)}")
    if not lines:
        lines.append("  (same names, kinds, modes, sizes and mtimes: content differs)")
    return "\n".join(lines[:30])


def assert_exact(ws: Workspace, rec: SnapshotRecord, what: str = "snapshot") -> None:
    want = full_walk_root(ws)
    if rec.root_tree != want:
        raise AssertionError(
            f"{what} is not exact (stats {rec.stats}); (kind, mode, size, mtime) differ:\n"
            + describe_tree_diff(ws, rec.root_tree)
        )


def snap_exact(ws: Workspace, what: str = "snapshot", **kw) -> SnapshotRecord:
    """Snapshot now (through the watcher when it is on) and check it against a full walk."""
    rec = ws.snapshot(**kw)
    assert_exact(ws, rec, what)
    return rec


def no_internal_files(path: str) -> list[str]:
    """Names of snapd-internal files (cookies, probes) left anywhere below path."""
    left = []
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            if os.fsencode(n).startswith(INTERNAL_PREFIX):
                left.append(os.path.join(dirpath, n))
    return left


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, interval: float = 0.002) -> bool:
    """Poll cond until it is true (a precondition helper, never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def join_threads(prefix: str, timeout: float = 30.0) -> None:
    for t in threads_named(prefix):
        t.join(timeout)


def read_sysctl(name: str) -> int:
    with open(os.path.join(INOTIFY_SYSCTL, name)) as f:
        return int(f.read())


def write_sysctl(name: str, value: int) -> None:
    with open(os.path.join(INOTIFY_SYSCTL, name), "w") as f:
        f.write(str(value))


def sysctl_writable(name: str) -> str | None:
    """None if the test may change this inotify limit, else why not (for pytest.skip)."""
    path = os.path.join(INOTIFY_SYSCTL, name)
    try:
        value = read_sysctl(name)
        write_sysctl(name, value)  # writing the same value back changes nothing
    except OSError as e:
        return f"cannot write {path} ({e.strerror}); needs root in the initial namespaces"
    return None


@contextlib.contextmanager
def sysctl_set(name: str, value: int) -> Iterator[None]:
    """Set an inotify sysctl for the shortest possible window; always put it back."""
    old = read_sysctl(name)
    write_sysctl(name, value)
    try:
        yield
    finally:
        write_sysctl(name, old)


def vm_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")
