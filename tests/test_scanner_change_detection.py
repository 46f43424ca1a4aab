"""Change detection: the stat cache, ctime, the racy-timestamp rule, hints, renames, hard links."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from indexutil import assert_index_persisted
from treeutil import capture, read, write

from snapd import batchstat, browse, scanner
from snapd.store.format import ENTRY_DIR
from snapd.store.store import Store
from snapd.workspace import Hints, Workspace, WorkspaceSettings

# The scanner's margin for "racy" entries on coarse file systems is 100 ms; waiting a little
# longer than that makes a freshly written file trustworthy by its stat data alone.
PAST_RACY_MARGIN_S = 0.15


def content(store: Store, snap, path: str) -> bytes:
    _, pieces = browse.read_file(store, snap.root_tree, path)
    return b"".join(pieces)


def build(root: str, n: int = 40) -> None:
    for i in range(n):
        write(root, f"d{i % 4}/f{i}.txt", f"file {i}\n" * (i + 1))
    write(root, "big.bin", os.urandom(3 * 1024 * 1024))
    os.symlink("d0/f0.txt", os.path.join(root, "link"))
    os.mkdir(os.path.join(root, "empty"))
    # A large file read within HOT_NS of its last write may be mid-write and is read again
    # next time: let the tree settle (a precondition of the read-nothing checks, not a timing
    # assertion; CI caught big.bin hot once a store opened fast enough).
    time.sleep(scanner.HOT_NS / 1e9 * 2)


def test_unchanged_second_snapshot_reads_no_files(ws, ws_dir, store) -> None:
    build(ws_dir)
    first = ws.snapshot()
    assert first.stats["read_files"] == 41
    second = ws.snapshot()
    assert second.stats["read_files"] == 0
    assert second.stats["read_bytes"] == 0
    assert second.stats["new_objects"] == 0
    assert second.root_tree == first.root_tree


def test_stat_cache_is_persisted_across_reopen(tmp_path, ws_dir) -> None:
    build(ws_dir)
    store = Store.open(str(tmp_path / "store"))
    ws = Workspace.open(store, ws_dir, WorkspaceSettings(watch=False))
    first = ws.snapshot()
    ws.close()
    store.close()

    store = Store.open(str(tmp_path / "store"))
    try:
        ws = Workspace.open(store, ws_dir, WorkspaceSettings(watch=False))
        again = ws.snapshot()
        assert again.stats["read_files"] == 0, again.stats
        assert again.root_tree == first.root_tree
        ws.close()
    finally:
        store.close()


def test_rename_in_a_full_walk_drops_the_old_name(ws, ws_dir, store) -> None:
    # Regression: the walk counted names instead of comparing them, so a file renamed to a
    # name new to the index (same number of entries) left its old name in the index and the
    # snapshot stored both.
    write(ws_dir, "a", "A")
    write(ws_dir, "dir/x", "X")
    ws.snapshot()
    os.rename(os.path.join(ws_dir, "a"), os.path.join(ws_dir, "b"))
    os.rename(os.path.join(ws_dir, "dir/x"), os.path.join(ws_dir, "dir/y"))
    snap = ws.snapshot()
    names = sorted(e.path for e in browse.list_dir(store, snap.root_tree, "", recursive=True))
    assert names == ["b", "dir", "dir/y"]
    assert snap.stats["total_files"] == 2


@pytest.mark.parametrize("timestamps", ["fine", "coarse"])
def test_same_size_rewrite_with_mtime_set_back_is_caught(ws, ws_dir, store, timestamps) -> None:
    if timestamps == "coarse":
        ws.fine_timestamps = False  # the rules for file systems without multigrain timestamps
    path = write(ws_dir, "f.txt", "version 1\n")
    write(ws_dir, "other.txt", "unchanged\n")
    time.sleep(PAST_RACY_MARGIN_S)  # so that only ctime can reveal the change below
    first = ws.snapshot()
    assert content(store, first, "f.txt") == b"version 1\n"
    if timestamps == "coarse":
        # Not racy any more: the cache alone decides, so a change must show in the stat data.
        assert ws.snapshot().stats["read_files"] == 0

    before = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"version 2\n")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    second = ws.snapshot()
    assert second.stats["read_files"] == 1
    assert content(store, second, "f.txt") == b"version 2\n"


def test_racy_entries_are_read_again_on_coarse_timestamps(ws, ws_dir) -> None:
    ws.fine_timestamps = False
    write(ws_dir, "hot.txt", "just written\n")
    ws.snapshot()  # the file's ctime is within the racy margin of this scan's start
    again = ws.snapshot()
    assert again.stats["read_files"] == 1  # its stat data could not vouch for its content


def test_fine_timestamps_trust_fresh_entries(ws, ws_dir) -> None:
    if not ws.fine_timestamps:
        pytest.skip("this file system has coarse timestamps (pre-6.13 kernel)")
    write(ws_dir, "hot.txt", "just written\n")
    ws.snapshot()
    assert ws.snapshot().stats["read_files"] == 0


def test_append_to_a_large_file_stores_only_new_chunks(ws, ws_dir, store) -> None:
    big = os.urandom(20 * 1024 * 1024)
    write(ws_dir, "big.bin", big)
    first = ws.snapshot()
    assert first.stats["new_bytes"] > 19 * 1024 * 1024  # random data does not compress
    tail = os.urandom(200 * 1024)
    with open(os.path.join(ws_dir, "big.bin"), "ab") as f:
        f.write(tail)
    second = ws.snapshot()
    # The new tail plus at most one re-cut chunk (1 MiB max) and the chunk list and trees.
    assert second.stats["new_bytes"] < 1.5 * 1024 * 1024, second.stats
    assert content(store, second, "big.bin") == big + tail
    assert content(store, first, "big.bin") == big


def test_hint_based_snapshot_equals_a_full_walk(tmp_path, store) -> None:
    hinted_dir = tmp_path / "hinted"
    hinted_dir.mkdir()
    build(str(hinted_dir))
    write(hinted_dir, "c/keep.txt", "c\n")
    write(hinted_dir, "gone/x", "x\n")
    ws = Workspace.open(store, str(hinted_dir), WorkspaceSettings(watch=False))
    try:
        ws.snapshot()
        root = str(hinted_dir)
        write(root, "d1/f1.txt", "modified\n")
        write(root, "new/deep/file", "new\n")
        os.rename(os.path.join(root, "c"), os.path.join(root, "c2"))
        write(root, "gone/x", "recreated\n")
        os.chmod(os.path.join(root, "d2/f2.txt"), 0o600)
        os.unlink(os.path.join(root, "link"))
        os.symlink("elsewhere", os.path.join(root, "link"))
        os.rmdir(os.path.join(root, "empty"))
        hints = Hints(
            paths={b"d1/f1.txt", b"new", b"c", b"c2", b"gone/x", b"d2/f2.txt", b"link", b"empty"},
            subtrees={b"new", b"c2"},
        )
        hinted = ws.snapshot(hints=hints)
        # Read: d1/f1.txt, new/deep/file, gone/x (new content), c2/keep.txt (a path new to the
        # index) and d2/f2.txt (its mode changed); none of the 38 other files.
        assert hinted.stats["read_files"] == 5
        full = ws.snapshot()  # a full walk
        assert full.stats["read_files"] == 0, "the hinted snapshot left something unread"
        assert full.root_tree == hinted.root_tree
    finally:
        ws.close()


@pytest.mark.parametrize("driver", ["hints", "watcher"])
def test_write_through_one_hard_link_name(open_ws, ws_dir, store, driver) -> None:
    ws = open_ws(ws_dir, keep_last=100, watch=driver == "watcher")
    if ws.watcher is not None:
        assert ws.watcher.ready.wait(30)  # else snapshots walk fully until it is
    write(ws_dir, "a", "one\n")
    os.link(os.path.join(ws_dir, "a"), os.path.join(ws_dir, "b"))
    ws.snapshot(hints=None if driver == "watcher" else Hints(paths={b"a", b"b"}))
    with open(os.path.join(ws_dir, "b"), "ab") as f:
        f.write(b"two\n")  # inotify reports this for "b" only; "a" changed as well
    snap = ws.snapshot(hints=None if driver == "watcher" else Hints(paths={b"b"}))
    assert content(store, snap, "b") == b"one\ntwo\n"
    assert content(store, snap, "a") == b"one\ntwo\n"


def test_hard_links_are_stored_once(ws, ws_dir, store) -> None:
    data = os.urandom(512 * 1024)
    write(ws_dir, "a/one.bin", data)
    os.makedirs(os.path.join(ws_dir, "b"))
    os.link(os.path.join(ws_dir, "a/one.bin"), os.path.join(ws_dir, "b/two.bin"))
    os.link(os.path.join(ws_dir, "a/one.bin"), os.path.join(ws_dir, "three.bin"))
    snap = ws.snapshot()
    # One data object for the content, one tree for each of root, a and b.
    assert snap.stats["new_objects"] == 4, snap.stats
    assert snap.stats["new_bytes"] < len(data) * 1.1
    for p in ("a/one.bin", "b/two.bin", "three.bin"):
        assert content(store, snap, p) == data
    assert read(ws_dir, "three.bin") == data
    assert capture(ws_dir)[b"three.bin"].size == len(data)


def test_a_walk_that_must_relist_a_directory_keeps_the_new_files_below_it(
    ws, ws_dir, store, monkeypatch
) -> None:
    """A full walk trusts `flood`'s listing (its stat is unchanged) and relists its changed
    subdirectory X, queuing X's new file. Then a sibling is renamed away mid-walk, so `flood`'s
    listing no longer holds and the walk lists `flood` after all. X now carries the fresh stat
    of the listing just made: that relisting must not trust it and lose X's new file (a stress
    test of the daemon once missed five new files this way)."""
    if not ws.trust_dir_mtime:
        pytest.skip("directory listings are not trusted on this file system")
    write(ws_dir, "flood/a/old", "1")
    write(ws_dir, "flood/b/old", "1")
    ws.snapshot()
    write(ws_dir, "flood/a/new", "new in a")
    write(ws_dir, "flood/b/new", "new in b")
    real = scanner.Scanner._list
    listed: list[bytes] = []

    def rename_the_sibling(self, fd, parent, chain, name, path, old):
        node = real(self, fd, parent, chain, name, path, old)
        if not listed and path in (b"flood/a", b"flood/b"):
            listed.append(path)
            other = "b" if path == b"flood/a" else "a"
            os.rename(
                os.path.join(ws_dir, "flood", other), os.path.join(ws_dir, "flood", other + "2")
            )
        return node

    monkeypatch.setattr(scanner.Scanner, "_list", rename_the_sibling)
    snap = ws.snapshot()
    monkeypatch.undo()
    assert listed, "the walk did not relist a or b"
    kept = os.fsdecode(listed[0])
    assert content(store, snap, kept + "/new") == read(ws_dir, kept + "/new")
    # What the abandoned pass had counted is not counted twice: 4 files in flood, a, b2.
    assert (snap.stats["files"], snap.stats["dirs"]) == (4, 3), snap.stats
    assert content(store, ws.snapshot(), kept + "/new") == read(ws_dir, kept + "/new")


def test_a_file_whose_directory_moves_before_it_is_read_leaves_that_listing_untrusted(
    ws, ws_dir, store, monkeypatch
) -> None:
    """A walk lists d/sub through its own descriptor, then reads the changed g.txt by path;
    a directory above is renamed in between, so the path finds nothing. g.txt is still in the
    listed directory, whose stat data has not moved (renaming d changes d, not d/sub): when d
    comes back, the next walk must list d/sub again, not trust a listing that lost g.txt (a
    hostile-process restore test found a restore leaving stray files this way)."""
    if not ws.trust_dir_mtime:
        pytest.skip("directory listings are not trusted on this file system")
    write(ws_dir, "d/sub/g.txt", "v1\n")
    write(ws_dir, "d/other.txt", "other\n")
    ws.snapshot()
    write(ws_dir, "d/sub/g.txt", "v2, longer\n")
    real = scanner.open_beneath
    moved: list[bytes] = []

    def move_d_first(rootfd, path, *args):
        if path == b"d/sub/g.txt" and not moved:
            moved.append(path)
            os.rename(os.path.join(ws_dir, "d"), os.path.join(ws_dir, "moved"))
        return real(rootfd, path, *args)

    monkeypatch.setattr(scanner, "open_beneath", move_d_first)
    ws.snapshot()
    monkeypatch.undo()
    assert moved, "the walk did not read d/sub/g.txt"
    os.rename(os.path.join(ws_dir, "moved"), os.path.join(ws_dir, "d"))
    snap = ws.snapshot()
    assert content(store, snap, "d/sub/g.txt") == b"v2, longer\n"
    assert_index_persisted(ws)


def test_an_entry_removed_and_back_in_one_pass_leaves_no_rows_below_it(
    ws, ws_dir, store, monkeypatch
) -> None:
    """A hinted pass finds d gone (d and its files leave the index), and before it checks
    d/x, d is back as a symlink. The rows of d's old files must go from the persisted stat
    cache with it: they would outlive d under the symlink, and the next load of the cache
    would find rows under a symlink and throw the whole cache away."""
    write(ws_dir, "d/x", "x\n")
    write(ws_dir, "d/y", "y\n")
    ws.snapshot()
    shutil.rmtree(os.path.join(ws_dir, "d"))
    real = scanner.Scanner._scan_entry
    calls: list[bytes] = []

    def symlink_after_first_check(self, pfd, parent_rel, parent, chain, name, rel, recursive):
        real(self, pfd, parent_rel, parent, chain, name, rel, recursive)
        calls.append(rel)
        if rel == b"d" and calls.count(b"d") == 1:
            os.symlink("elsewhere", os.path.join(ws_dir, "d"))

    monkeypatch.setattr(scanner.Scanner, "_scan_entry", symlink_after_first_check)
    ws.snapshot(hints=Hints(paths={b"d", b"d/x"}))
    monkeypatch.undo()
    assert calls.count(b"d") == 2, calls
    assert_index_persisted(ws)
    ws.close()
    again = Workspace.open(store, ws_dir, WorkspaceSettings(watch=False))
    try:
        snap = again.snapshot()
        assert snap.stats["read_files"] == 0, snap.stats  # the cache survived the reload
        assert os.readlink(os.path.join(ws_dir, "d")) == "elsewhere"
    finally:
        again.close()


def test_a_subdirectory_gone_when_relisted_inside_a_trusted_listing(
    ws, ws_dir, store, monkeypatch
) -> None:
    """A walk trusts a's listing and stats its known names; one subdirectory changed, so it is
    relisted, but it is gone by then. Removing it from a's entries while a's names are being
    checked must not break the walk (it raised "dictionary changed size during iteration")."""
    if not ws.trust_dir_mtime:
        pytest.skip("directory listings are not trusted on this file system")
    for i in range(5):
        write(ws_dir, f"a/b{i}/f", f"{i}\n")
        write(ws_dir, f"a/z{i}.txt", f"{i}\n")
    ws.snapshot()
    first_dir = next(n for n, c in ws.root.entries[b"a"].entries.items() if c.kind == ENTRY_DIR)
    victim = b"a/" + first_dir
    write(ws_dir, os.fsdecode(victim) + "/new", "new\n")  # its stat moves: relisted
    real = scanner.Scanner._relist
    relisted: list[bytes] = []

    def remove_it_first(self, path, parent, chain, name, node):
        if path == victim:
            relisted.append(path)
            shutil.rmtree(os.path.join(os.fsencode(ws_dir), path))
        return real(self, path, parent, chain, name, node)

    monkeypatch.setattr(scanner.Scanner, "_relist", remove_it_first)
    snap = ws.snapshot()
    monkeypatch.undo()
    assert relisted == [victim]
    assert (snap.stats["files"], snap.stats["dirs"]) == (9, 5), snap.stats
    assert_index_persisted(ws)


@pytest.mark.parametrize("stat_impl", ["c", "os.lstat"])
def test_a_trusted_walk_finds_changes_that_leave_every_listing_as_it_was(
    ws, ws_dir, store, tmp_path, monkeypatch, stat_impl
) -> None:
    """A full walk checks directories whose names all hold in a fast pass (their names
    lstat'ed in batches, by the C extension or by os.lstat) and hands any other directory to a
    careful pass. In-place rewrites and chmods change no listing, so only the names' own stat
    data shows them: each must be found, and the counts must equal a walk that trusts
    nothing."""
    if not ws.trust_dir_mtime:
        pytest.skip("directory listings are not trusted on this file system")
    if stat_impl == "c" and not batchstat.HAVE_C:
        pytest.skip("the C extension is not built")
    if stat_impl == "os.lstat":
        monkeypatch.setattr(batchstat, "_c_lstat_compare", None)
    for i in range(12):
        write(ws_dir, f"top/mid{i % 2}/leaf{i % 3}/f{i}.txt", f"file {i}\n" * (i + 1))
    write(ws_dir, "top/mid0/z.txt", "zed\n")
    os.link(os.path.join(ws_dir, "top/mid0/z.txt"), os.path.join(ws_dir, "top/mid1/z-link.txt"))
    os.symlink("z.txt", os.path.join(ws_dir, "top/mid0/link"))
    os.mkdir(os.path.join(ws_dir, "top/mid1/empty"))
    time.sleep(PAST_RACY_MARGIN_S)
    ws.snapshot()
    time.sleep(PAST_RACY_MARGIN_S)
    assert ws.snapshot().stats["read_files"] == 0

    rewritten = os.path.join(ws_dir, "top/mid1/leaf1/f7.txt")  # in the middle of its listing
    with open(rewritten, "r+b") as f:
        f.write(b"FILE")
    os.chmod(os.path.join(ws_dir, "top/mid0/leaf2/f8.txt"), 0o600)
    os.chmod(os.path.join(ws_dir, "top/mid0/leaf0"), 0o700)
    careful_dirs = []
    real = scanner.Scanner._check_known

    def careful(self, path, node, chain):
        careful_dirs.append(path)
        return real(self, path, node, chain)

    with monkeypatch.context() as m:
        m.setattr(scanner.Scanner, "_check_known", careful)
        snap = ws.snapshot()
    # Only the directories that hold a changed name go to the careful pass (leaf0's own
    # change is its mode, seen by its parent's pass; an unchanged symlink sends none there).
    assert sorted(careful_dirs) == [b"top/mid0", b"top/mid0/leaf2", b"top/mid1/leaf1"]
    assert snap.stats["read_files"] == 2, snap.stats
    assert content(store, snap, "top/mid1/leaf1/f7.txt") == read(ws_dir, "top/mid1/leaf1/f7.txt")
    assert browse.lookup(store, snap.root_tree, "top/mid0/leaf2/f8.txt").mode == 0o600
    assert browse.lookup(store, snap.root_tree, "top/mid0/leaf0").mode == 0o700
    assert browse.lookup(store, snap.root_tree, "top/mid0/link").ref == b"z.txt"

    other = Store.open(str(tmp_path / "other-store"))
    try:
        fresh = Workspace.open(other, ws_dir, WorkspaceSettings(watch=False))
        try:
            first = fresh.snapshot()
        finally:
            fresh.close()
    finally:
        other.close()
    for key in ("files", "dirs", "bytes", "symlinks"):
        assert snap.stats[key] == first.stats[key], (key, snap.stats, first.stats)
