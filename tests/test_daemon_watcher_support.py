"""Helpers for the daemon-level watcher tests (test_daemon_watcher_*.py); no tests here.

Everything goes through a real daemon subprocess and the client library. "Exact" is checked two
independent ways:

- against the directory: `SnapshotChecker.assert_matches` lists the snapshot (ListTree) and
  compares every entry with a `treeutil.capture` of the directory taken at the same moment:
  type, permission bits, mtime, size, symlink target, and the content of every file (ReadFile,
  read once per content address);
- against the engine's own full walk: a `full=True` snapshot taken right after must have the
  same root, i.e. the diff of the two snapshot ids is empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import time
from collections.abc import Iterator

from snapd_client import Client
from snapd_client.types import Snapshot
from treeutil import Capture, show_path

from snapd.server.testing import DaemonProcess, short_tempdir


@contextlib.contextmanager
def running_daemon() -> Iterator[DaemonProcess]:
    """A daemon on a fresh store and socket; it must exit cleanly (status 0) on SIGTERM."""
    root = short_tempdir("snapd-dw-")
    d = DaemonProcess(os.path.join(root, "store"), os.path.join(root, "snapd.sock"))
    d.start()
    status = None
    try:
        yield d
    finally:
        try:
            status = d.terminate()
        finally:
            log = d.log()
            d.close()
            shutil.rmtree(root, ignore_errors=True)
    assert status == 0, f"daemon exited with {status}:\n{log[-4000:]}"


def snapshot_until_hinted(ws, limit: int = 200, pause: float = 0.0) -> Snapshot:
    """Snapshots until one is taken from the watcher's dirty set: the watches are in place and
    the engine knows the tree. Bounded by count; `pause` (a precondition wait, never asserted on)
    lets a background re-watch finish."""
    snap = None
    for _ in range(limit):
        snap = ws.snapshot(label="warm-up")
        if snap.stats.get("scan") == "hinted":
            return snap
        if pause:
            time.sleep(pause)
    raise AssertionError(f"no hinted snapshot in {limit}; last stats: {snap and snap.stats}")


def assert_same_as_full_walk(ws, snap: Snapshot, what: str) -> Snapshot:
    """A full walk right now (full=True) must give the same tree as `snap`."""
    full = ws.snapshot(label="full check", full=True)
    assert full.stats["scan"] == "full", full.stats
    changes = ws.diff(snap.id, full.id)
    assert changes == [], (
        f"{what}: snapshot {snap.id} (scan={snap.stats.get('scan')}) differs from a full walk "
        f"{full.id}: {changes[:20]}\nstats: {snap.stats}"
    )
    return full


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _api_target(raw: bytes) -> str:
    """A symlink target as the API spells it (SymlinkTarget is a string: lossy if not UTF-8)."""
    return raw.decode("utf-8", "replace")


class SnapshotChecker:
    """Compares stored snapshots with captures of the directory, through the client only.

    File contents are fetched once per content address (object_id) and remembered, so checking
    many snapshots of a slowly changing tree costs a ReadFile per new content only. ReadFile
    takes a UTF-8 path (ReadFileRequest has no path_bytes): the content of a file whose name is
    not UTF-8 is checked by the restore tests instead; its metadata is checked here.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.digests: dict[str, str] = {}  # object_id -> sha256 of the content
        self.files_read = 0
        self.unreadable_names = 0

    def differences(self, snap_id: str, cap: Capture) -> list[str]:
        entries = {os.fsencode(e.path): e for e in self.client.list_tree(snap_id, recursive=True)}
        lines: list[str] = []
        for path in sorted(set(entries) | set(cap)):
            e, item = entries.get(path), cap.get(path)
            shown = show_path(path)
            if e is None:
                lines.append(f"{shown}: missing from the snapshot (on disk: {item})")
                continue
            if item is None:
                lines.append(f"{shown}: in the snapshot but not on disk ({e})")
                continue
            got = (e.kind, e.mode, e.mtime_ns)
            want = (item.kind, item.mode, item.mtime_ns)
            if got != want:
                lines.append(f"{shown}: (kind, mode, mtime) {got} in the snapshot, {want} on disk")
                continue
            if item.kind == "symlink" and e.target != _api_target(item.target):
                lines.append(f"{shown}: target {e.target!r} stored, {item.target!r} on disk")
            elif item.kind == "file":
                if e.size != item.size:
                    lines.append(f"{shown}: size {e.size} stored, {item.size} on disk")
                    continue
                digest = self._digest(snap_id, path, e.object_id)
                if digest is not None and digest != item.digest:
                    lines.append(
                        f"{shown}: content differs (stored {digest[:12]}, disk {item.digest[:12]},"
                        f" disk starts {item.head!r})"
                    )
        return lines

    def _digest(self, snap_id: str, path: bytes, object_id: str) -> str | None:
        known = self.digests.get(object_id)
        if known is not None:
            return known
        name = _utf8(path)
        if name is None:
            self.unreadable_names += 1
            return None
        data = self.client.read_file(snap_id, name)
        self.files_read += 1
        digest = hashlib.sha256(data).hexdigest()
        self.digests[object_id] = digest
        return digest

    def assert_matches(self, snap: Snapshot, cap: Capture, what: str) -> None:
        lines = self.differences(snap.id, cap)
        if lines:
            shown = "\n  ".join(lines[:30])
            raise AssertionError(
                f"{what}: snapshot {snap.id} (scan={snap.stats.get('scan')}) is not the directory"
                f" as it was: {len(lines)} difference(s)\n  {shown}\nstats: {snap.stats}"
            )


# --- controlling the daemon process ------------------------------------------------------------
def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        # The state follows the command name, which is in parentheses and may contain spaces.
        return f.read().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def daemon_stopped(d: DaemonProcess) -> Iterator[None]:
    """SIGSTOP the daemon (all of its threads) for the block, SIGCONT after.

    While it is stopped its inotify thread cannot drain the kernel queue: events made meanwhile
    pile up, and past fs.inotify.max_queued_events the kernel drops them and queues an overflow.
    """
    os.kill(d.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while _state(d.pid) not in ("T", "t"):
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon {d.pid} did not stop (state {_state(d.pid)})")
            time.sleep(0.001)
        yield
    finally:
        os.kill(d.pid, signal.SIGCONT)


def inotify_instances(pid: int) -> int:
    """inotify instances the process holds open."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                n += 1
    return n


def write(path: bytes | str, data: bytes = b"x") -> None:
    with open(path, "wb") as f:
        f.write(data)
