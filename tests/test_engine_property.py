"""Property test of the snapshot/restore round trip on real files.

Each example builds a random tree, applies random sequences of changes with a snapshot after
each (some full walks, some hint-based as the file watcher will take them), interleaves
restores, partial restores and dry runs, then restores every snapshot in a random order (with
a reopen of the store and workspace in between, so the persisted stat cache is used) and
compares the whole tree with the capture taken when that snapshot was taken: type, bytes,
permission bits, symlink target and mtime_ns of every entry, empty directories included.

Run longer with SNAPD_HYPOTHESIS_PROFILE=long (see conftest.py).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st
from indexutil import assert_index_persisted
from treeutil import Capture, assert_same, capture, describe_diff, subset, without

from snapd.ignore import INTERNAL_PREFIX
from snapd.scanner import CHUNK_THRESHOLD, HOT_NS
from snapd.store.store import Store
from snapd.store.verify import recount_refs, verify
from snapd.workspace import Hints, Workspace, WorkspaceSettings, fork

NAMES = [
    b"a",
    b"b",
    b"c.txt",
    b"D",
    b"sub",
    b".git",
    b"x y",
    b"caf\xe9",  # latin-1, not valid UTF-8
    b"\xff\xfe",
    b"\xc3\xa9t\xc3\xa9",  # valid UTF-8
]
FILE_MODES = [0o644, 0o644, 0o755, 0o600, 0o444, 0o000, 0o4755, 0o2711, 0o1644, 0o777]
DIR_MODES = [0o755, 0o755, 0o700, 0o555, 0o000, 0o1777, 0o2775]
LINK_TARGETS = [
    b"a",
    b"../escape",
    b"/etc/passwd",
    b"/nonexistent/dangling",
    b"sub/../a",
    b"\xff\xfe",
    b"t" * 200,
]
SMALL_CONTENTS = [b"", b"same\n", b"hello world\n", b"\x00\x01\x02" * 50]
OLD_MTIMES = [0, 1_000_000_000_123_456_789, 1_500_000_000_000_000_001]
MAX_DEPTH = 3
MAX_LARGE = 2  # large (chunked) contents per example: they dominate the run time


# A write through one name of a hard-linked file is reported (by the watcher, or a hint) for that
# name only; the engine re-checks the inode's other names itself. Hard links are created in
# every kind of example (set False to confine them to full-walk examples while debugging).
HINTS_SEE_HARD_LINKS = True


@dataclass
class World:
    root: bytes
    allow_hints: bool = True
    allow_hardlinks: bool = True
    large_left: int = MAX_LARGE
    touched: set[bytes] = field(default_factory=set)
    subtrees: set[bytes] = field(default_factory=set)
    links: list[tuple[bytes, bytes]] = field(default_factory=list)  # made since the snapshot

    def abs(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def link_broken(self) -> bool:
        """Was a hard link made since the last snapshot gone again (a name replaced, removed
        or moved)? Changes made through it reached the watcher under that name only."""
        for a, b in self.links:
            try:
                sa, sb = os.lstat(self.abs(a)), os.lstat(self.abs(b))
            except OSError:
                return True
            if (sa.st_dev, sa.st_ino) != (sb.st_dev, sb.st_ino):
                return True
        return False


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _listing(world: World) -> dict[bytes, str]:
    """path -> 'dir' | 'file' | 'symlink' for everything below the root, but the engine's own
    transient files (a watcher's sync cookie, say): draws must not depend on timing."""
    out: dict[bytes, str] = {}
    for dirpath, dirnames, filenames in os.walk(world.root):
        rel_dir = os.path.relpath(dirpath, world.root)
        rel_dir = b"" if rel_dir == b"." else rel_dir
        dirnames[:] = [n for n in dirnames if not n.startswith(INTERNAL_PREFIX)]
        for n in dirnames + [n for n in filenames if not n.startswith(INTERNAL_PREFIX)]:
            p = _join(rel_dir, n)
            full = world.abs(p)
            if os.path.islink(full):
                out[p] = "symlink"
            elif os.path.isdir(full):
                out[p] = "dir"
            else:
                out[p] = "file"
    return out


def _remove(world: World, rel: bytes) -> None:
    full = world.abs(rel)
    if os.path.isdir(full) and not os.path.islink(full):
        shutil.rmtree(full)
    elif os.path.lexists(full):
        os.unlink(full)


def _content(data, world: World, *, allow_large: bool = True) -> bytes:
    choice = data.draw(st.integers(0, 9), label="content kind")
    if choice == 9 and allow_large and world.large_left > 0:
        world.large_left -= 1
        seed = data.draw(st.integers(0, 3), label="large seed")  # equal seeds dedup
        extra = data.draw(st.sampled_from([1, 4096, 300_000]), label="large extra")
        return random.Random(seed).randbytes(CHUNK_THRESHOLD + extra)
    if choice >= 6:
        return data.draw(st.binary(max_size=300), label="small content")
    return data.draw(st.sampled_from(SMALL_CONTENTS), label="small content")


def _pick(data, paths, label):
    return data.draw(st.sampled_from(sorted(paths)), label=label)


def _parent_choices(listing: dict[bytes, str]) -> list[bytes]:
    return [b""] + [p for p, k in listing.items() if k == "dir" and p.count(b"/") < MAX_DEPTH - 1]


# --- the changes ----------------------------------------------------------------------------
def op_create_file(data, world: World, listing) -> None:
    path = _join(_pick(data, _parent_choices(listing), "parent"), data.draw(st.sampled_from(NAMES)))
    _remove(world, path)
    with open(world.abs(path), "wb") as f:
        f.write(_content(data, world))
    os.chmod(world.abs(path), data.draw(st.sampled_from(FILE_MODES), label="mode"))
    world.touched.add(path)


def op_create_dir(data, world: World, listing) -> None:
    path = _join(_pick(data, _parent_choices(listing), "parent"), data.draw(st.sampled_from(NAMES)))
    _remove(world, path)
    os.mkdir(world.abs(path))
    os.chmod(world.abs(path), data.draw(st.sampled_from(DIR_MODES), label="mode"))
    world.touched.add(path)
    world.subtrees.add(path)


def op_create_symlink(data, world: World, listing) -> None:
    path = _join(_pick(data, _parent_choices(listing), "parent"), data.draw(st.sampled_from(NAMES)))
    _remove(world, path)
    os.symlink(data.draw(st.sampled_from(LINK_TARGETS), label="target"), world.abs(path))
    world.touched.add(path)


def _files(listing):
    return [p for p, k in listing.items() if k == "file"]


def op_modify(data, world: World, listing) -> None:
    files = _files(listing)
    if not files:
        return
    path = _pick(data, files, "file")
    fd = os.open(world.abs(path), os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, _content(data, world))
    finally:
        os.close(fd)
    world.touched.add(path)


def op_append(data, world: World, listing) -> None:
    files = _files(listing)
    if not files:
        return
    path = _pick(data, files, "file")
    with open(world.abs(path), "ab") as f:
        f.write(data.draw(st.binary(min_size=1, max_size=100), label="appended"))
    world.touched.add(path)


def op_truncate(data, world: World, listing) -> None:
    files = _files(listing)
    if not files:
        return
    path = _pick(data, files, "file")
    size = os.lstat(world.abs(path)).st_size
    os.truncate(world.abs(path), data.draw(st.integers(0, size), label="new size"))
    world.touched.add(path)


def op_delete(data, world: World, listing) -> None:
    if not listing:
        return
    path = _pick(data, listing, "victim")
    _remove(world, path)
    world.touched.add(path)


def op_rename(data, world: World, listing) -> None:
    if not listing:
        return
    src = _pick(data, listing, "source")
    parents = [p for p in _parent_choices(listing) if p != src and not p.startswith(src + b"/")]
    dst = _join(_pick(data, parents, "dest parent"), data.draw(st.sampled_from(NAMES)))
    if dst == src or src.startswith(dst + b"/"):
        return
    both_plain = listing[src] != "dir" and listing.get(dst, "dir") != "dir"
    if not both_plain:
        _remove(world, dst)  # rename() replaces only a non-directory atomically
    os.rename(world.abs(src), world.abs(dst))
    world.touched |= {src, dst}
    if listing[src] == "dir":
        world.subtrees.add(dst)


def op_chmod(data, world: World, listing) -> None:
    paths = [p for p, k in listing.items() if k != "symlink"]
    if not paths:
        return
    path = _pick(data, paths, "target")
    modes = DIR_MODES if listing[path] == "dir" else FILE_MODES
    os.chmod(world.abs(path), data.draw(st.sampled_from(modes), label="mode"))
    world.touched.add(path)


def op_replace_kind(data, world: World, listing) -> None:
    """file <-> dir <-> symlink at the same path."""
    if not listing:
        return
    path = _pick(data, listing, "path")
    new_kind = data.draw(
        st.sampled_from([k for k in ("file", "dir", "symlink") if k != listing[path]])
    )
    _remove(world, path)
    full = world.abs(path)
    if new_kind == "file":
        with open(full, "wb") as f:
            f.write(_content(data, world, allow_large=False))
    elif new_kind == "dir":
        os.mkdir(full)
        if data.draw(st.booleans(), label="dir gets a file"):
            with open(full + b"/a", "wb") as f:
                f.write(b"inside\n")
        world.subtrees.add(path)
    else:
        os.symlink(data.draw(st.sampled_from(LINK_TARGETS), label="target"), full)
    world.touched.add(path)


def op_touch_old(data, world: World, listing) -> None:
    """Set an mtime back to an old value (tools such as tar and rsync do this)."""
    if not listing:
        return
    path = _pick(data, listing, "path")
    t = data.draw(st.sampled_from(OLD_MTIMES), label="mtime")
    os.utime(world.abs(path), ns=(t, t), follow_symlinks=False)
    world.touched.add(path)


def op_same_size_rewrite(data, world: World, listing) -> None:
    """New bytes of the same length, mtime put back: only ctime (and content) differ."""
    files = [p for p in _files(listing) if os.lstat(world.abs(p)).st_size > 0]
    if not files:
        return
    path = _pick(data, files, "file")
    full = world.abs(path)
    before = os.lstat(full)
    with open(full, "r+b") as f:
        old = f.read(64)
        f.seek(0)
        f.write(bytes((b + 1) % 256 for b in old))
    os.utime(full, ns=(before.st_atime_ns, before.st_mtime_ns))
    world.touched.add(path)


def op_hardlink(data, world: World, listing) -> None:
    files = _files(listing)
    if not files:
        return
    src = _pick(data, files, "link source")
    dst = _join(_pick(data, _parent_choices(listing), "parent"), data.draw(st.sampled_from(NAMES)))
    if dst == src or (listing.get(dst) == "dir" and src.startswith(dst + b"/")):
        return
    _remove(world, dst)
    os.link(world.abs(src), world.abs(dst))
    world.touched |= {src, dst}
    world.links.append((src, dst))


OPS = [
    op_create_file,
    op_create_dir,
    op_create_symlink,
    op_modify,
    op_append,
    op_truncate,
    op_delete,
    op_rename,
    op_chmod,
    op_replace_kind,
    op_touch_old,
    op_same_size_rewrite,
    op_hardlink,
]


def mutate(data, world: World, n_ops: int) -> None:
    for _ in range(n_ops):
        op = data.draw(st.sampled_from(OPS), label="op")
        if op is op_hardlink and not world.allow_hardlinks:
            continue
        op(data, world, _listing(world))


def build_initial_tree(data, world: World) -> None:
    for _ in range(data.draw(st.integers(1, 12), label="initial entries")):
        listing = _listing(world)
        op = data.draw(
            st.sampled_from([op_create_file, op_create_file, op_create_dir, op_create_symlink]),
            label="initial op",
        )
        op(data, world, listing)


# --- expectations ---------------------------------------------------------------------------
def expected_partial(cur: Capture, tgt: Capture, path: bytes) -> Capture:
    """The tree after restoring only `path` from `tgt` into `cur` (see restore.Planner._partial):
    the subtree at `path` becomes the target's; existing ancestor directories keep their
    metadata; missing ones (or non-directories in their place) become the target's directories.
    """
    out = without(cur, [path])
    parts = path.split(b"/")
    for i in range(1, len(parts)):
        anc = b"/".join(parts[:i])
        c, t = cur.get(anc), tgt.get(anc)
        if c is not None and c.kind == "dir":
            continue
        if t is None or t.kind != "dir" or path not in tgt:
            # Nothing to create below: the path is simply absent afterwards.
            return out
        out = without(out, [anc])
        out[anc] = t
    out.update(subset(tgt, [path]))
    return out


class Session:
    """The store and workspace under test, reopenable."""

    def __init__(self, base: str, coarse: bool, watch: bool) -> None:
        self.base = base
        self.ws_path = os.path.join(base, "ws")
        os.mkdir(self.ws_path)
        self.coarse = coarse
        self.watch = watch
        self.store: Store | None = None
        self.ws: Workspace | None = None
        self.open()

    def open(self) -> None:
        self.store = Store.open(os.path.join(self.base, "store"))
        self.ws = Workspace.open(
            self.store, self.ws_path, WorkspaceSettings(keep_last=10_000, watch=self.watch)
        )
        if self.ws.watcher is not None:
            assert self.ws.watcher.ready.wait(30)  # else snapshots walk fully until it is
        if self.coarse:
            # Exercise the racy-timestamp rules that coarse file systems need, on this kernel
            # whose multigrain timestamps would otherwise switch them off.
            self.ws.fine_timestamps = False

    def close(self) -> None:
        self.ws.close()
        self.store.close()

    def reopen(self) -> None:
        self.close()
        self.open()


def full_diff(ws: Workspace, snap_id: str) -> list:
    """Changes from a snapshot to the workspace found by a full walk (not the watcher's hints)."""
    if ws.watcher is not None:
        ws.watcher.mark_full()
    return list(ws.diff(snap_id))


def _snapshot(data, s: Session, world: World, step: int):
    use_hints = world.allow_hints and data.draw(st.booleans(), label="hinted snapshot")
    hints = Hints(paths=set(world.touched), subtrees=set(world.subtrees)) if use_hints else None
    # The watcher's documented limit (README, "Hard links"): a change made through a hard link
    # that is gone again by the snapshot (link b to x, chmod x, replace x) raised events for x
    # only, and no name joins b's inode to them any more. Only a full walk sees it, so the
    # snapshot takes one then, as the README tells callers to.
    full = not use_hints and s.watch and world.link_broken()
    rec = s.ws.snapshot(label=f"step {step}", hints=hints, full=full)
    assert_index_persisted(s.ws, f" after snapshot {step}")
    world.touched.clear()
    world.subtrees.clear()
    world.links.clear()
    if use_hints or s.watch:
        # A full walk must find nothing the hinted (or watcher-driven) snapshot missed.
        missed = full_diff(s.ws, rec.id)
        assert missed == [], f"hint-based snapshot differs from a full walk: {missed}"
    return rec


def _cool_down() -> None:
    """Wait until no large file is "hot": one read within HOT_NS of its last change stays racy
    (it may be mid-write) until a later scan reads it again, and the read-nothing checks below
    are about what a restore or a reopen itself leaves behind. Also keeps replays of an example
    independent of the machine's speed."""
    time.sleep(2 * HOT_NS / 1e9)


def _check_restore(s: Session, world: World, rec_id: str, expected: Capture, what: str):
    _cool_down()
    res = s.ws.restore(rec_id)
    assert res.stats.conflicts == [], f"{what}: unexpected conflicts {res.stats.conflicts}"
    assert_same(capture(s.ws_path), expected, what)
    assert_index_persisted(s.ws, f" after {what}")
    # A full walk right after finds exactly the snapshot's tree, and (where the stat cache can
    # vouch for fresh files) reads nothing: the restore left the index in step with the disk.
    if s.ws.watcher is not None:
        s.ws.watcher.mark_full()
    check = s.ws.snapshot(label="check")
    if check.root_tree != s.ws.get_snapshot(rec_id).root_tree:
        raise AssertionError(f"{what}: the index disagrees: {list(s.ws.diff(rec_id, check.id))}")
    if not s.coarse and not world.allow_hardlinks:
        # (Replacing one name of a hard link moves the other's ctime: a legitimate re-read.)
        assert check.stats["read_files"] == 0, f"{what}: re-read after restore {check.stats}"
    return res


@given(st.data())
def test_property_round_trip(data) -> None:
    base = tempfile.mkdtemp(prefix="snapd-prop-")
    try:
        _round_trip(data, base)
    finally:
        _force_rmtree(base)


def _force_rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _round_trip(data, base: str) -> None:
    coarse = data.draw(st.booleans(), label="coarse timestamps")
    watch = data.draw(st.booleans(), label="file watcher")
    allow_hints = data.draw(st.booleans(), label="explicit hints")
    s = Session(base, coarse, watch)
    world = World(
        os.fsencode(s.ws_path),
        allow_hints=allow_hints,
        allow_hardlinks=HINTS_SEE_HARD_LINKS or not (watch or allow_hints),
    )
    taken: list[tuple[str, Capture]] = []  # (snapshot id, the tree when it was taken)
    try:
        build_initial_tree(data, world)
        before = capture(s.ws_path)
        rec = s.ws.snapshot(label="initial")
        assert_same(capture(s.ws_path), before, "a snapshot must not change the workspace")
        world.touched.clear()
        world.subtrees.clear()
        world.links.clear()
        taken.append((rec.id, before))

        # Phase 1: changes with a snapshot after each, interleaved with restores.
        for step in range(data.draw(st.integers(1, 5), label="steps")):
            action = data.draw(
                st.sampled_from(["change", "change", "change", "restore", "partial", "dry-run"]),
                label="action",
            )
            if action == "change":
                mutate(data, world, data.draw(st.integers(1, 4), label="ops"))
                before = capture(s.ws_path)
                rec = _snapshot(data, s, world, step)
                assert_same(capture(s.ws_path), before, "a snapshot must not change the workspace")
                taken.append((rec.id, before))
                continue
            snap_id, expected = data.draw(st.sampled_from(taken), label="restore target")
            current = capture(s.ws_path)
            if action == "dry-run":
                res = s.ws.restore(snap_id, dry_run=True)
                assert_same(capture(s.ws_path), current, "a dry run must change nothing")
                same = describe_diff(current, expected) == ""
                assert (res.changes == []) == same, (
                    f"dry run reported {res.changes} for the differences\n"
                    f"{describe_diff(current, expected)}"
                )
            elif action == "restore":
                res = _check_restore(s, world, snap_id, expected, f"restore of {snap_id}")
                taken.append((res.safety_snapshot_id, current))
            else:
                paths = sorted(set(expected) | set(current) | {b"not-there"})
                path = data.draw(st.sampled_from(paths), label="partial path")
                res = s.ws.restore(snap_id, paths=[os.fsdecode(path)])
                want = expected_partial(current, expected, path)
                assert_same(capture(s.ws_path), want, f"partial restore of {path!r}")
                assert_index_persisted(s.ws, f" after the partial restore of {path!r}")
                taken.append((res.safety_snapshot_id, current))
            # Changes after a restore must be seen by the next snapshot (stat cache in step).
            mutate(data, world, data.draw(st.integers(0, 2), label="ops after restore"))
            before = capture(s.ws_path)
            rec = _snapshot(data, s, world, step)
            taken.append((rec.id, before))

        # Phase 2: every snapshot, in random order, reopening the store once on the way.
        order = data.draw(st.permutations(range(len(taken))), label="restore order")
        reopen_at = data.draw(st.integers(0, len(order)), label="reopen at")
        for i, k in enumerate(order):
            if i == reopen_at:
                _cool_down()
                s.ws.refresh()  # a scan after the cool-down persists cold index entries
                s.reopen()
                if not coarse:
                    again = s.ws.snapshot(label="after reopen")
                    assert again.stats["read_files"] == 0, again.stats
                    taken.append((again.id, capture(s.ws_path)))
            snap_id, expected = taken[k]
            _check_restore(s, world, snap_id, expected, f"restore #{i} of snapshot {k}")

        # A fork starts from nothing (no index) and must give the same tree.
        k = data.draw(st.integers(0, len(taken) - 1), label="fork source")
        fork_ws, _ = fork(s.store, taken[k][0], os.path.join(base, "fork"))
        try:
            assert_same(capture(os.path.join(base, "fork")), taken[k][1], "fork")
        finally:
            fork_ws.close()

        # The store's reference counts are exact (recounting changes nothing) and every object
        # a snapshot refers to is there and intact.
        recount = recount_refs(s.store)
        assert recount["objects_fixed"] == 0, recount
        assert recount["missing_referenced"] == [] and recount["unreadable"] == [], recount
        report = verify(s.store)
        assert report.ok, report.problems[:5]
    finally:
        s.close()
