"""Restore: exactness, partial restores, dry runs, undo through the safety snapshot, errors."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
from treeutil import assert_same, capture, read, subset, without, write

from snapd import browse, fsutil, scanner
from snapd import restore as restore_mod
from snapd.errors import SnapdError
from snapd.restore import Change
from snapd.store.store import Store
from snapd.workspace import Hints, Workspace, WorkspaceSettings

OLD = 1_234_567_890_123_456_789


def build(root: str) -> None:
    write(root, "a.txt", "a1\n", mode=0o644)
    write(root, "b.txt", "b1\n", mode=0o600, mtime_ns=OLD)
    write(root, "dir/c.txt", "c1\n")
    write(root, "dir/d.sh", "#!/bin/sh\n", mode=0o755)
    write(root, "dir/sub/e.txt", "e1\n")
    os.mkdir(os.path.join(root, "empty"))
    os.chmod(os.path.join(root, "empty"), 0o700)
    os.symlink("dir/c.txt", os.path.join(root, "link"))
    os.symlink("/nonexistent/target", os.path.join(root, "dangling"))
    os.utime(os.path.join(root, "dir/sub"), ns=(OLD, OLD))


def change_everything(root: str) -> None:
    write(root, "a.txt", "a2 longer\n")
    os.chmod(os.path.join(root, "b.txt"), 0o644)
    os.unlink(os.path.join(root, "dir/c.txt"))
    write(root, "dir/new.txt", "new\n")
    os.rename(os.path.join(root, "dir/sub"), os.path.join(root, "moved"))
    os.rmdir(os.path.join(root, "empty"))
    write(root, "empty", "now a file\n")
    os.unlink(os.path.join(root, "link"))
    os.mkdir(os.path.join(root, "link"))
    os.utime(os.path.join(root, "dangling"), ns=(OLD, OLD), follow_symlinks=False)


def test_restore_is_exact_and_reports_its_changes(ws, ws_dir) -> None:
    build(ws_dir)
    snap = ws.snapshot()
    expected = capture(ws_dir)
    change_everything(ws_dir)

    res = ws.restore(snap.id)

    assert_same(capture(ws_dir), expected, "restored workspace")
    assert res.snapshot_id == snap.id
    assert sorted((c.path, c.change, c.kind, c.old_size, c.new_size) for c in res.changes) == [
        ("a.txt", "modified", "file", 10, 3),
        ("b.txt", "metadata", "file", 3, 3),
        ("dangling", "metadata", "symlink", 19, 19),
        ("dir", "metadata", "dir", 0, 0),  # its mtime
        ("dir/c.txt", "added", "file", 0, 3),
        ("dir/new.txt", "deleted", "file", 4, 0),
        ("dir/sub", "added", "dir", 0, 0),
        ("dir/sub/e.txt", "added", "file", 0, 3),
        ("empty", "type_changed", "dir", 11, 0),
        ("link", "type_changed", "symlink", 0, 9),
        ("moved", "deleted", "dir", 0, 0),
        ("moved/e.txt", "deleted", "file", 3, 0),  # what was inside is listed too
    ]
    assert res.stats.conflicts == []
    # Nothing left to do: the index agrees with the snapshot.
    again = ws.restore(snap.id)
    assert again.changes == [] and again.stats.files_written == 0


def test_every_restore_can_be_undone(ws, ws_dir) -> None:
    build(ws_dir)
    snap = ws.snapshot()
    change_everything(ws_dir)
    before = capture(ws_dir)
    res = ws.restore(snap.id)
    safety = ws.get_snapshot(res.safety_snapshot_id)
    assert safety.origin == "safety"
    assert safety.metadata == {"restore_target": snap.id}
    ws.restore(safety.id)
    assert_same(capture(ws_dir), before, "after undoing the restore")


def test_no_second_safety_snapshot_when_nothing_changed(ws, ws_dir) -> None:
    build(ws_dir)
    first = ws.snapshot()
    write(ws_dir, "a.txt", "a2\n")
    latest = ws.snapshot()
    res = ws.restore(first.id)
    assert res.safety_snapshot_id == latest.id  # the current state is already recorded
    count = len(ws.snapshots())
    res2 = ws.restore(latest.id)
    # The state after the first restore is exactly `first`: it is the safety point (a redo
    # after an undo adds no duplicate snapshot to the window).
    assert res2.safety_snapshot_id == first.id
    assert len(ws.snapshots()) == count
    assert read(ws_dir, "a.txt") == b"a2\n"
    write(ws_dir, "a.txt", "a3\n")  # a state no snapshot has: a new safety snapshot
    res3 = ws.restore(first.id)
    assert res3.safety_snapshot_id not in (first.id, latest.id)
    assert len(ws.snapshots()) == count + 1


def test_dry_run_reports_and_changes_nothing(ws, ws_dir) -> None:
    build(ws_dir)
    snap = ws.snapshot()
    change_everything(ws_dir)
    before = capture(ws_dir)
    n_snaps = len(ws.snapshots())

    dry = ws.restore(snap.id, dry_run=True)

    assert dry.dry_run and dry.safety_snapshot_id is None
    assert_same(capture(ws_dir), before, "after a dry run")
    assert len(ws.snapshots()) == n_snaps
    real = ws.restore(snap.id)
    assert sorted(dry.changes, key=_key) == sorted(real.changes, key=_key)
    assert dry.stats.files_written == 0 and real.stats.files_written > 0


def _key(c: Change) -> tuple:
    return (c.path, c.change, c.kind, c.old_size, c.new_size)


def test_partial_restore_touches_only_the_listed_paths(ws, ws_dir) -> None:
    build(ws_dir)
    snap = ws.snapshot()
    expected = capture(ws_dir)
    change_everything(ws_dir)
    write(ws_dir, "only-now.txt", "new\n")
    current = capture(ws_dir)
    listed = ["a.txt", "dir/sub", "dir/c.txt", "only-now.txt", "link"]

    res = ws.restore(snap.id, paths=listed)

    now = capture(ws_dir)
    keys = [p.encode() for p in listed]
    assert_same(subset(now, keys), subset(expected, keys), "listed paths")
    # Everything else is as it was before the restore (directory mtimes aside: restoring
    # entries inside dir/ and the root changes them, and the restore puts them back).
    assert_same(without(now, keys), without(current, keys), "paths not listed")
    assert {c.path for c in res.changes} >= {"a.txt", "dir/sub", "dir/c.txt", "only-now.txt"}


def test_partial_restore_creates_missing_parents_with_snapshot_metadata(ws, ws_dir) -> None:
    build(ws_dir)
    snap = ws.snapshot()
    expected = capture(ws_dir)
    shutil.rmtree(os.path.join(ws_dir, "dir"))
    ws.restore(snap.id, paths=["dir/sub/e.txt"])
    now = capture(ws_dir)
    assert now[b"dir/sub/e.txt"] == expected[b"dir/sub/e.txt"]
    assert now[b"dir/sub"].mode == expected[b"dir/sub"].mode
    assert now[b"dir/sub"].mtime_ns == expected[b"dir/sub"].mtime_ns
    assert b"dir/c.txt" not in now  # only the listed path


@pytest.mark.parametrize(
    "paths", [["/etc/passwd"], ["../outside"], ["a/../../x"], [""], ["ok", "\x00"]]
)
def test_partial_restore_rejects_paths_outside(ws, ws_dir, paths) -> None:
    write(ws_dir, "a.txt", "a")
    snap = ws.snapshot()
    with pytest.raises(SnapdError) as err:
        ws.restore(snap.id, paths=paths)
    assert err.value.code == "INVALID_ARGUMENT"


def test_restore_errors(ws, ws_dir, open_ws, tmp_path) -> None:
    write(ws_dir, "a.txt", "a")
    ws.snapshot()
    with pytest.raises(SnapdError) as err:
        ws.restore("0123456789ab")
    assert err.value.code == "NOT_FOUND"
    with pytest.raises(SnapdError) as err:
        ws.restore("not hex!")
    assert err.value.code == "INVALID_ARGUMENT"
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = open_ws(str(other_dir), watch=False)
    theirs = other.snapshot()
    with pytest.raises(SnapdError) as err:
        ws.restore(theirs.id)
    assert err.value.code == "FAILED_PRECONDITION"
    assert "fork" in str(err.value)


def test_restore_by_unique_prefix(ws, ws_dir) -> None:
    write(ws_dir, "a.txt", "1")
    snap = ws.snapshot()
    write(ws_dir, "a.txt", "2")
    ws.snapshot()
    ws.restore(snap.id[:8])
    assert read(ws_dir, "a.txt") == b"1"


def test_snapshot_after_a_restore_reads_nothing_again(ws, ws_dir) -> None:
    """The restore records the stat data of what it wrote (after the rename into place, which
    moves ctime), so the next snapshot trusts the restored files instead of reading them."""
    if not ws.fine_timestamps:
        pytest.skip("coarse timestamps: freshly written files are re-read by design")
    build(ws_dir)
    snap = ws.snapshot()
    change_everything(ws_dir)
    ws.snapshot()
    res = ws.restore(snap.id)
    assert res.stats.files_written > 0
    after = ws.snapshot()
    assert after.stats["read_files"] == 0, after.stats
    assert after.root_tree == snap.root_tree


def listing(store, snap) -> list[tuple]:
    return sorted(
        (e.path, e.kind, e.mode, e.mtime_ns, e.size, e.target)
        for e in browse.list_dir(store, snap.root_tree, recursive=True)
    )


def fresh_walk(ws_dir: str, tmp_path) -> list[tuple]:
    """What a workspace with no index (in a new store) finds in ws_dir."""
    with Store.open(str(tmp_path / f"fresh-{len(os.listdir(tmp_path))}")) as other:
        ws = Workspace.open(other, ws_dir, WorkspaceSettings(watch=False))
        try:
            return listing(other, ws.snapshot())
        finally:
            ws.close()


def test_restore_leaves_entries_it_does_not_know_alone(ws, ws_dir, store, tmp_path) -> None:
    """A FIFO (never indexed) or a file created after the restore's scan that occupies a name
    the snapshot needs is not replaced: the restore reports a conflict and leaves it."""
    write(ws_dir, "x", "file x\n")
    write(ws_dir, "y", "file y\n")
    write(ws_dir, "d/z", "in d\n")
    snap = ws.snapshot()
    os.unlink(os.path.join(ws_dir, "x"))
    os.mkfifo(os.path.join(ws_dir, "x"))
    shutil.rmtree(os.path.join(ws_dir, "d"))
    os.mkfifo(os.path.join(ws_dir, "d"))
    os.unlink(os.path.join(ws_dir, "y"))
    ws.snapshot()
    write(ws_dir, "y", "created after the scan\n")  # empty hints below: the scan misses it

    res = ws.restore(snap.id, hints=Hints())

    assert sorted(res.stats.conflicts) == ["d", "x", "y"]
    assert stat.S_ISFIFO(os.lstat(os.path.join(ws_dir, "x")).st_mode)
    assert stat.S_ISFIFO(os.lstat(os.path.join(ws_dir, "d")).st_mode)
    assert read(ws_dir, "y") == b"created after the scan\n"
    # The index describes what is really there: the next snapshot equals a fresh full walk.
    assert listing(store, ws.snapshot()) == fresh_walk(ws_dir, tmp_path)


def test_kept_directory_is_still_in_the_next_snapshot(ws, ws_dir, store, tmp_path) -> None:
    """A directory the snapshot lacks but that holds something unknown is kept (conflict);
    the next snapshot must include it, exactly as a full walk from scratch would."""
    write(ws_dir, "a.txt", "a\n")
    snap = ws.snapshot()
    os.mkdir(os.path.join(ws_dir, "keep"))
    os.mkfifo(os.path.join(ws_dir, "keep/pipe"))
    ws.snapshot()
    res = ws.restore(snap.id)
    assert res.stats.conflicts == ["keep"]
    assert listing(store, ws.snapshot()) == fresh_walk(ws_dir, tmp_path)


@pytest.mark.parametrize("impl", ["renameat2", "link"])
def test_rename_noreplace(tmp_path, monkeypatch, impl) -> None:
    if impl == "link":
        # The code path used where libc lacks renameat2 (or the file system the flag).
        monkeypatch.setattr(fsutil, "_renameat2", None)
    elif fsutil._renameat2 is None:
        pytest.skip("libc without renameat2")
    write(tmp_path, "tmp", "new\n")
    write(tmp_path, "taken", "old\n")
    os.symlink("somewhere", tmp_path / "tmp-link")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            fsutil.rename_noreplace(b"tmp", b"taken", dfd)
        assert read(tmp_path, "taken") == b"old\n" and read(tmp_path, "tmp") == b"new\n"
        fsutil.rename_noreplace(b"tmp", b"free", dfd)
        fsutil.rename_noreplace(b"tmp-link", b"free-link", dfd)
    finally:
        os.close(dfd)
    assert read(tmp_path, "free") == b"new\n" and not os.path.exists(tmp_path / "tmp")
    assert os.readlink(tmp_path / "free-link") == "somewhere"
    assert not os.path.lexists(tmp_path / "tmp-link")
    assert os.stat(tmp_path / "free").st_nlink == 1


def _count_listings(monkeypatch) -> list[bytes]:
    listed: list[bytes] = []
    real = scanner.Scanner._list

    def counting(self, fd, parent, chain, name, path, old):
        listed.append(path)
        return real(self, fd, parent, chain, name, path, old)

    monkeypatch.setattr(scanner.Scanner, "_list", counting)
    return listed


def test_a_directory_a_restore_wrote_into_is_not_listed_again(ws, ws_dir, monkeypatch) -> None:
    """A restore lists each directory it wrote into after its last fstat of it: when the names
    are exactly the index's, the next walk trusts that listing; a name added later moves the
    ctime recorded, so the walk lists it then."""
    if not (ws.fine_timestamps and ws.trust_dir_mtime):
        pytest.skip("directory listings are not trusted on this file system")
    build(ws_dir)
    snap = ws.snapshot()
    change_everything(ws_dir)
    ws.snapshot()
    ws.restore(snap.id)
    listed = _count_listings(monkeypatch)
    after = ws.snapshot()
    assert after.root_tree == snap.root_tree
    assert listed == [], listed  # the root is listed by every walk, not through _list
    write(ws_dir, "dir/sub/late.txt", "added after the restore\n")
    later = ws.snapshot()
    assert listed == [b"dir/sub"], listed
    assert browse.lookup(ws.store, later.root_tree, "dir/sub/late.txt") is not None


@pytest.mark.parametrize("when", ["before the fstat", "before the listing", "after it"])
def test_a_name_added_while_a_restore_finishes_a_directory_is_found(
    ws, ws_dir, monkeypatch, when
) -> None:
    """Another process adds a file to a directory the restore is finishing: before the
    restore's final fstat of it, between that fstat and the restore's listing, or after the
    listing. Every way, the next snapshot has the file."""
    if not ws.fine_timestamps:
        pytest.skip("coarse timestamps: restored directories are always listed again")
    build(ws_dir)
    snap = ws.snapshot()
    change_everything(ws_dir)
    ws.snapshot()
    sneaky = os.path.join(ws_dir, "dir/sub/sneaky.txt")
    real_apply, real_holds = restore_mod.Applier._apply_dir, restore_mod._holds_names

    def apply_dir(self, dfd, rel, node, plan):
        real_apply(self, dfd, rel, node, plan)
        if rel == b"dir/sub" and when == "before the fstat":
            write(ws_dir, "dir/sub/sneaky.txt", "sneaky\n")

    def holds_names(dfd, node):
        if when == "before the listing" and not os.path.exists(sneaky):
            write(ws_dir, "dir/sub/sneaky.txt", "sneaky\n")
        ok = real_holds(dfd, node)
        if when == "after it" and not os.path.exists(sneaky):
            write(ws_dir, "dir/sub/sneaky.txt", "sneaky\n")
        return ok

    monkeypatch.setattr(restore_mod.Applier, "_apply_dir", apply_dir)
    monkeypatch.setattr(restore_mod, "_holds_names", holds_names)
    ws.restore(snap.id)
    monkeypatch.undo()
    assert os.path.exists(sneaky)
    after = ws.snapshot()
    assert browse.lookup(ws.store, after.root_tree, "dir/sub/sneaky.txt") is not None
    assert listing(ws.store, after) == listing(ws.store, ws.snapshot(full=True))
