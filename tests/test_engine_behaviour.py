"""Engine behaviours: nested git repositories, diff, fork, browse, snapshot records."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest
from treeutil import assert_same, capture, read, write

from snapd import browse
from snapd.errors import SnapdError
from snapd.scanner import CHUNK_THRESHOLD
from snapd.store import gc
from snapd.store.verify import recount_refs, verify
from snapd.workspace import fork

GIT = shutil.which("git")


def git(cwd: str, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_nested_git_repository_is_ordinary_content(ws, ws_dir, store) -> None:
    proj = os.path.join(ws_dir, "proj")
    os.makedirs(proj)
    git(proj, "init", "-q", "-b", "main")
    write(proj, "app.py", "print(1)\n")
    git(proj, "add", "app.py")
    git(proj, "commit", "-q", "-m", "one")
    os.makedirs(os.path.join(ws_dir, "vendor/lib/.git"))  # a bare-looking .git dir, deeper
    write(ws_dir, "vendor/lib/.git/HEAD", "ref: refs/heads/main\n")
    snap = ws.snapshot()
    expected = capture(ws_dir)
    stored = {e.path for e in browse.list_dir(store, snap.root_tree, recursive=True)}
    assert {"proj/.git", "proj/.git/HEAD", "proj/.git/objects", "vendor/lib/.git/HEAD"} <= stored

    write(proj, "app.py", "print(2)\n")
    git(proj, "commit", "-q", "-am", "two")
    git(proj, "gc", "-q")  # repacks: objects move, loose ones are deleted
    assert len(git(proj, "log", "--oneline").splitlines()) == 2

    ws.restore(snap.id)
    assert_same(capture(ws_dir), expected, "workspace with nested .git")
    assert git(proj, "log", "--format=%s").split() == ["one"]
    assert git(proj, "status", "--porcelain") == ""
    git(proj, "fsck", "--strict")
    assert sorted(os.listdir(ws_dir)) == ["proj", "vendor"]  # nothing renamed or left over


def test_diff_between_snapshots_and_against_the_live_workspace(ws, ws_dir) -> None:
    write(ws_dir, "a.txt", "a\n")
    write(ws_dir, "gone/x.txt", "x\n")
    write(ws_dir, "same.txt", "same\n")
    first = ws.snapshot()
    write(ws_dir, "a.txt", "a changed\n")
    shutil.rmtree(os.path.join(ws_dir, "gone"))
    write(ws_dir, "new/y.txt", "y\n")
    os.chmod(os.path.join(ws_dir, "same.txt"), 0o600)
    second = ws.snapshot()

    def summary(changes) -> list[tuple]:
        return sorted((c.path, c.change, c.kind, c.old_size, c.new_size) for c in changes)

    want = [
        ("a.txt", "modified", "file", 2, 10),
        ("gone", "deleted", "dir", 0, 0),
        ("gone/x.txt", "deleted", "file", 2, 0),
        ("new", "added", "dir", 0, 0),
        ("new/y.txt", "added", "file", 0, 2),
        ("same.txt", "metadata", "file", 5, 5),
    ]
    assert summary(ws.diff(first.id, second.id)) == want
    assert summary(ws.diff(first.id)) == want  # the live workspace equals `second`
    assert list(ws.diff(second.id)) == []
    write(ws_dir, "live.txt", "not snapshotted\n")
    assert summary(ws.diff(second.id)) == [("live.txt", "added", "file", 0, 16)]
    reverse = summary(ws.diff(second.id, first.id))
    assert ("a.txt", "modified", "file", 10, 2) in reverse
    assert ("gone/x.txt", "added", "file", 0, 2) in reverse


def test_fork_into_a_new_directory(ws, ws_dir, store, tmp_path) -> None:
    write(ws_dir, "a.txt", "a\n", mode=0o640)
    write(ws_dir, "d/b.bin", os.urandom(2 * 1024 * 1024))
    os.symlink("a.txt", os.path.join(ws_dir, "ln"))
    os.mkdir(os.path.join(ws_dir, "empty"))
    snap = ws.snapshot()
    expected = capture(ws_dir)
    write(ws_dir, "a.txt", "changed later\n")

    target = str(tmp_path / "forked")
    new_ws, rec = fork(store, snap.id, target)
    try:
        assert_same(capture(target), expected, "fork")
        assert rec.origin == "fork" and rec.metadata == {"forked_from": snap.id}
        assert new_ws.id != ws.id
        # The fork is an independent workspace with a warm index.
        assert new_ws.snapshot().stats["read_files"] == 0
        write(target, "a.txt", "fork edit\n")
        new_ws.snapshot()
        assert read(ws_dir, "a.txt") == b"changed later\n"
    finally:
        new_ws.close()

    os.mkdir(tmp_path / "busy")
    write(tmp_path / "busy", "x", "x")
    with pytest.raises(SnapdError) as err:
        fork(store, snap.id, str(tmp_path / "busy"))
    assert err.value.code == "FAILED_PRECONDITION"
    with pytest.raises(SnapdError) as err:
        fork(store, snap.id, os.path.join(ws_dir, "inside"))  # nested in a workspace
    assert err.value.code == "FAILED_PRECONDITION"
    assert not os.path.exists(os.path.join(ws_dir, "inside")) or not os.listdir(
        os.path.join(ws_dir, "inside")
    )


def test_snapshot_records(ws, ws_dir, store) -> None:
    write(ws_dir, "a.txt", "a\n")
    first = ws.snapshot(label="first", metadata={"step": "1"}, durable=True, pinned=True)
    second = ws.snapshot()
    assert (first.label, first.metadata, first.durable, first.pinned) == (
        "first",
        {"step": "1"},
        True,
        True,
    )
    assert first.origin == "user" and len(first.id) == 12
    assert second.parent == first.id
    assert second.root_tree == first.root_tree  # nothing changed: the same tree
    assert [s.id for s in ws.snapshots()] == [second.id, first.id]
    assert store.find_snapshot(first.id[:6]).id == first.id
    with pytest.raises(SnapdError) as err:
        ws.snapshot(metadata={"k": 1})  # type: ignore[dict-item]
    assert err.value.code == "INVALID_ARGUMENT"


def test_browse_reads_back_every_kind(ws, ws_dir, store) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    write(ws_dir, "big.bin", big)
    write(ws_dir, "caf\xe9.txt".encode("latin-1"), b"latin-1 name\n")
    os.symlink("big.bin", os.path.join(ws_dir, "ln"))
    snap = ws.snapshot()
    entry, pieces = browse.read_file(store, snap.root_tree, "big.bin")
    assert entry.size == len(big) and b"".join(pieces) == big
    names = {e.path: e for e in browse.list_dir(store, snap.root_tree)}
    assert names["ln"].kind == "symlink" and names["ln"].target == "big.bin"
    assert os.fsdecode(b"caf\xe9.txt") in names
    with pytest.raises(SnapdError) as err:
        browse.read_file(store, snap.root_tree, "ln")
    assert err.value.code == "INVALID_ARGUMENT"
    with pytest.raises(SnapdError) as err:
        browse.list_dir(store, snap.root_tree, "missing").__next__()
    assert err.value.code == "NOT_FOUND"


def test_snapshot_of_a_workspace_that_is_not_a_directory(store, tmp_path) -> None:
    from snapd.workspace import Workspace, WorkspaceSettings

    write(tmp_path, "file", "x")
    for path, code in [
        (str(tmp_path / "file"), "INVALID_ARGUMENT"),
        (str(tmp_path / "missing"), "NOT_FOUND"),
        ("relative/path", "INVALID_ARGUMENT"),
        ("/", "INVALID_ARGUMENT"),
        (store.root, "FAILED_PRECONDITION"),
    ]:
        with pytest.raises(SnapdError) as err:
            Workspace.open(store, path, WorkspaceSettings(watch=False))
        assert err.value.code == code, path


def test_eviction_then_gc_keeps_every_remaining_snapshot_exact(open_ws, ws_dir, store) -> None:
    """Snapshots the retention window drops are collected; the others still restore exactly,
    the reference counts stay exact, and content that only dropped snapshots held is stored
    anew when it comes back."""
    ws = open_ws(ws_dir, keep_last=3, keep_durable=1, watch=False)
    rng = random.Random(7)
    taken: dict[str, dict] = {}
    for i in range(10):
        write(ws_dir, f"f{i % 4}.txt", f"version {i}\n" * (i + 1))
        write(ws_dir, f"d{i % 3}/big.bin", rng.randbytes(CHUNK_THRESHOLD + 1000 * i))
        if i == 6:
            shutil.rmtree(os.path.join(ws_dir, "d0"))
        before = capture(ws_dir)
        rec = ws.snapshot(durable=i == 2)
        taken[rec.id] = before
        if i == 7:
            res = ws.restore(list(taken)[5])
            taken[res.safety_snapshot_id] = before
    alive = [s.id for s in ws.snapshots()]
    assert len(alive) == 4  # the newest 3 plus the newest durable one

    stats = gc.collect(store)
    assert stats["complete"] and stats["deleted_objects"] > 0, stats
    assert verify(store).ok
    assert recount_refs(store)["objects_fixed"] == 0
    for snap_id in alive:
        ws.restore(snap_id)
        assert_same(capture(ws_dir), taken[snap_id], f"snapshot {snap_id} after gc")

    write(ws_dir, "f0.txt", "version 0\n")  # only the evicted first snapshot had this
    rec = ws.snapshot()
    _, pieces = browse.read_file(store, rec.root_tree, "f0.txt")
    assert b"".join(pieces) == b"version 0\n"
    assert verify(store).ok
