"""Disk full: a store on a small real file system (an 8 MiB tmpfs mounted by the test).

With the file system filled so that only `free` bytes remain, a snapshot of new data must fail
with ResourceExhausted and a "no space" message (not a raw OSError, not DataLoss), leave the store
consistent (verify ok, the snapshot list unchanged), keep every earlier snapshot readable and
restorable, and work again once space is freed. Different `free` values make the space run out
at different points: creating a pack, appending to it, or growing the catalog.

Needs root (mount); skipped with the reason when mounting is not permitted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess

import pytest
import treeutil
from crashloop_child import refcount_errors

from snapd import browse
from snapd.errors import ResourceExhausted
from snapd.store.store import Store
from snapd.store.verify import verify
from snapd.workspace import Workspace, WorkspaceSettings

FS_SIZE = "8m"


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs mounted at tmp_path/mnt, unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (FileNotFoundError, PermissionError) as e:
        pytest.skip(f"cannot mount a small file system here: {e}")
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here (needs root/CAP_SYS_ADMIN): {proc.stderr.strip()}"
        )
    try:
        yield str(mnt)
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: str, leave: int) -> str:
    """Write a filler file until only about `leave` bytes remain free. Returns its path."""
    filler = os.path.join(path, "filler")
    block = b"\xa5" * 65536
    with open(filler, "wb") as f:
        while True:
            room = free_bytes(path) - leave
            if room <= 0:
                break
            try:
                f.write(block[: min(len(block), room)])
                f.flush()
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    return filler


def snapshot_contents(store: Store, snap_id: str) -> dict[str, bytes]:
    root = store.get_snapshot(snap_id).root_tree
    out = {}
    for e in browse.list_dir(store, root, "", recursive=True):
        if e.kind == "file":
            _, pieces = browse.read_file(store, root, e.path)
            out[e.path] = b"".join(pieces)
    return out


@pytest.mark.parametrize("free", [0, 64 * 1024, 600 * 1024, 1536 * 1024])
def test_snapshot_on_a_full_file_system(small_fs, tmp_path, free):
    store_dir = os.path.join(small_fs, "store")
    ws_dir = str(tmp_path / "ws")  # the workspace is on the normal file system
    os.mkdir(ws_dir)
    treeutil.write(ws_dir, "src/main.py", "print('hello')\n" * 100)
    treeutil.write(ws_dir, "data/a.bin", os.urandom(300_000))
    store = Store.open(store_dir)
    ws = Workspace.open(store, ws_dir, WorkspaceSettings(watch=False, keep_last=10))
    try:
        first = ws.snapshot(label="first", durable=True)
        first_tree = treeutil.capture(ws_dir)
        treeutil.write(ws_dir, "data/b.bin", os.urandom(200_000))
        second = ws.snapshot(label="second")
        second_tree = treeutil.capture(ws_dir)
        contents = {s: snapshot_contents(store, s) for s in (first.id, second.id)}

        filler = fill(small_fs, free)
        treeutil.write(ws_dir, "data/big.bin", os.urandom(3_000_000))  # more than is left
        with pytest.raises(ResourceExhausted) as exc:
            ws.snapshot(label="too big")
        assert "no space" in str(exc.value)

        # Consistent, nothing lost, earlier snapshots readable while the disk is still full.
        assert [s.id for s in ws.snapshots()] == [second.id, first.id]
        report = verify(store)
        assert report.ok, report.problems
        assert not refcount_errors(store)
        for sid, files in contents.items():
            assert snapshot_contents(store, sid) == files

        # Space comes back: everything works again.
        os.unlink(filler)
        third = ws.snapshot(label="third")
        third_tree = treeutil.capture(ws_dir)
        assert verify(store).ok
        for sid, tree in ((first.id, first_tree), (second.id, second_tree), (third.id, third_tree)):
            ws.restore(sid)
            treeutil.assert_same(treeutil.capture(ws_dir), tree, f"restore of {sid}")
    finally:
        ws.close()
        store.close()


def test_store_reopens_after_a_failed_snapshot_on_a_full_disk(small_fs, tmp_path):
    """The failed snapshot leaves nothing the next process trips over."""
    store_dir = os.path.join(small_fs, "store")
    ws_dir = str(tmp_path / "ws")
    os.mkdir(ws_dir)
    treeutil.write(ws_dir, "a.bin", os.urandom(100_000))
    with Store.open(store_dir) as store:
        ws = Workspace.open(store, ws_dir, WorkspaceSettings(watch=False))
        first = ws.snapshot()
        expected = treeutil.capture(ws_dir)
        filler = fill(small_fs, 0)
        treeutil.write(ws_dir, "b.bin", os.urandom(1_000_000))
        with pytest.raises(ResourceExhausted):
            ws.snapshot()
        ws.close()
    os.unlink(filler)
    with Store.open(store_dir) as store:
        assert verify(store).ok
        assert [s.id for s in store.list_snapshots()] == [first.id]
        ws = Workspace.open(store, ws_dir, WorkspaceSettings(watch=False))
        second = ws.snapshot()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(ws_dir, "b.bin"))
        ws.restore(first.id)
        treeutil.assert_same(treeutil.capture(ws_dir), expected, "restore after reopen")
        ws.restore(second.id)
        assert os.path.getsize(os.path.join(ws_dir, "b.bin")) == 1_000_000
        ws.close()
        assert verify(store).ok


def test_retry_on_a_full_disk_still_says_no_space(small_fs, tmp_path):
    store_dir = os.path.join(small_fs, "store")
    ws_dir = str(tmp_path / "ws")
    os.mkdir(ws_dir)
    treeutil.write(ws_dir, "a.bin", os.urandom(100_000))
    with Store.open(store_dir) as store:
        ws = Workspace.open(store, ws_dir, WorkspaceSettings(watch=False))
        try:
            first = ws.snapshot()
            fill(small_fs, 0)
            treeutil.write(ws_dir, "b.bin", os.urandom(1_000_000))
            with pytest.raises(ResourceExhausted):
                ws.snapshot()
            with pytest.raises(ResourceExhausted):
                ws.snapshot()  # the retry
            # A restore needs a safety snapshot of b.bin: it must refuse the same way.
            before = treeutil.capture(ws_dir)
            with pytest.raises(ResourceExhausted):
                ws.restore(first.id)
            treeutil.assert_same(treeutil.capture(ws_dir), before, "workspace after refusal")
        finally:
            ws.close()
