"""The engine's property test, through a real daemon with the file watcher on (the default).

Each example opens a fresh workspace on a random tree through the client, then applies random
bursts of changes: files created, modified, appended to, truncated, rewritten at the same size
with the mtime put back, deleted and renamed; directories renamed (deep ones too, then written
into at once), created with `mkdir -p` and filled in one burst, moved in from outside the
workspace and out of it (then changed outside, and brought back); chmod, old mtimes, symlinks,
file <-> directory <-> symlink replacement; names that are not UTF-8. After each burst a
snapshot is taken through the client at once (no sleep), and the tree is captured right after
(the snapshot must not change it). Each snapshot must:

- match the capture (ListTree and ReadFile against the directory: type, mode, mtime, size,
  symlink target, content);
- on some steps, have the same tree as a full walk taken right after (diff with a full=True
  snapshot is empty; not on every step, so hinted snapshots also follow each other);
- be watcher-driven (stats scan == "hinted") unless the watcher says it lost events.

Then earlier snapshots are restored in random order, each compared exactly (treeutil.capture:
bytes, types, modes, targets, empty directories, mtimes) with the tree captured when it was
taken, and followed by a watcher-driven snapshot that must equal the restored one without
reading any file (the daemon's own writes are in its stat cache); sometimes more changes follow.

Examples: SNAPD_DAEMON_WATCH_EXAMPLES (default 40, about 15 s here), with the hypothesis profile
of conftest.py (SNAPD_HYPOTHESIS_PROFILE=long for random rather than derandomized examples):
    SNAPD_HYPOTHESIS_PROFILE=long SNAPD_DAEMON_WATCH_EXAMPLES=300 \
        .venv/bin/pytest tests/test_daemon_watcher_property.py -s
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_daemon_watcher_support import (
    SnapshotChecker,
    assert_same_as_full_walk,
    running_daemon,
    snapshot_until_hinted,
)
from treeutil import Capture, assert_same, capture

from snapd.ignore import INTERNAL_PREFIX
from snapd.scanner import CHUNK_THRESHOLD, HOT_NS

EXAMPLES = int(os.environ.get("SNAPD_DAEMON_WATCH_EXAMPLES", "40"))

NAMES = [
    b"a",
    b"b",
    b"c.txt",
    b"D",
    b"sub",
    b"x y",
    b".hidden",
    b"caf\xe9",  # latin-1: not valid UTF-8
    b"\xff\xfe",
    b"\xc3\xa9t\xc3\xa9",  # valid UTF-8
]
FILE_MODES = [0o644, 0o644, 0o755, 0o600, 0o444, 0o000, 0o4755, 0o2711, 0o777]
DIR_MODES = [0o755, 0o755, 0o700, 0o555, 0o2775, 0o1777]
LINK_TARGETS = [b"a", b"../escape", b"/etc/passwd", b"/nonexistent/dangling", b"sub", b"\xff\xfe"]
SMALL_CONTENTS = [b"", b"same\n", b"hello world\n", b"\x00\x01\x02" * 50]
OLD_MTIMES = [0, 1_000_000_000_123_456_789, 1_500_000_000_000_000_001]
MAX_DEPTH = 6
MAX_LARGE = 1  # chunked contents per example (they dominate the time)


@dataclass
class World:
    root: bytes  # the workspace
    outside: bytes  # a sibling on the same file system, not watched
    counter: int = 0
    large_left: int = MAX_LARGE
    ops: list[str] = field(default_factory=list)

    def ws(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def out(self, rel: bytes) -> bytes:
        return self.outside + b"/" + rel

    def fresh(self) -> bytes:
        """Content no earlier write used (so a stale read is always visible)."""
        self.counter += 1
        return b"content %d\n" % self.counter * (1 + self.counter % 5)


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def listing(top: bytes) -> dict[bytes, str]:
    """rel path -> 'dir' | 'file' | 'symlink' below top.

    The daemon's own transient files (a sync cookie of the background walk that follows an
    open, for instance) are left out: what an example draws must not depend on timing, or
    hypothesis cannot replay it.
    """
    out: dict[bytes, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        rel = b"" if rel == b"." else rel
        dirnames[:] = [n for n in dirnames if not n.startswith(INTERNAL_PREFIX)]
        for n in dirnames + [n for n in filenames if not n.startswith(INTERNAL_PREFIX)]:
            p = _join(rel, n)
            full = os.path.join(dirpath, n)
            if os.path.islink(full):
                out[p] = "symlink"
            elif os.path.isdir(full):
                out[p] = "dir"
            else:
                out[p] = "file"
    return out


def _remove(full: bytes) -> None:
    if os.path.isdir(full) and not os.path.islink(full):
        shutil.rmtree(full)
    elif os.path.lexists(full):
        os.unlink(full)


def _pick(data, items, label: str):
    return data.draw(st.sampled_from(sorted(items)), label=label)


def _dirs(lst: dict[bytes, str], max_depth: int = MAX_DEPTH) -> list[bytes]:
    return [b""] + [p for p, k in lst.items() if k == "dir" and p.count(b"/") < max_depth - 1]


def _files(lst: dict[bytes, str]) -> list[bytes]:
    return [p for p, k in lst.items() if k == "file"]


def _new_path(data, lst) -> bytes:
    return _join(_pick(data, _dirs(lst), "parent"), data.draw(st.sampled_from(NAMES), label="name"))


def _content(data, world: World) -> bytes:
    kind = data.draw(st.integers(0, 19), label="content kind")
    if kind == 19 and world.large_left > 0:
        world.large_left -= 1
        seed = data.draw(st.integers(0, 1), label="large seed")
        return random.Random(seed).randbytes(CHUNK_THRESHOLD + 70_000) + world.fresh()
    if kind >= 12:
        return world.fresh()
    if kind >= 6:
        return data.draw(st.binary(max_size=200), label="small content")
    return data.draw(st.sampled_from(SMALL_CONTENTS), label="small content")


def _fill(data, world: World, top: bytes) -> None:
    """mkdir -p a random chain below `top` (absolute) and files at every level, in one burst."""
    d = top
    for _ in range(data.draw(st.integers(1, 4), label="depth")):
        d = d + b"/" + data.draw(st.sampled_from(NAMES), label="level")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:
        return  # a file or a symlink is in the way
    per_level = data.draw(st.integers(0, 5), label="files per level")
    level = d
    while len(level) >= len(top):
        if os.path.isdir(level) and not os.path.islink(level):
            for i in range(per_level):
                path = level + b"/f%d" % i
                if not os.path.lexists(path) or os.path.isfile(path):
                    with open(path, "wb") as f:
                        f.write(world.fresh())
        level = os.path.dirname(level)


# --- the changes (each takes the workspace's current listing) ---------------------------------
def op_create_file(data, world: World, lst) -> None:
    path = _new_path(data, lst)
    _remove(world.ws(path))
    with open(world.ws(path), "wb") as f:
        f.write(_content(data, world))
    os.chmod(world.ws(path), data.draw(st.sampled_from(FILE_MODES), label="mode"))


def op_modify(data, world: World, lst) -> None:
    if files := _files(lst):
        fd = os.open(world.ws(_pick(data, files, "file")), os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, _content(data, world))
        finally:
            os.close(fd)


def op_append(data, world: World, lst) -> None:
    if files := _files(lst):
        with open(world.ws(_pick(data, files, "file")), "ab") as f:
            f.write(data.draw(st.binary(min_size=1, max_size=64), label="appended"))


def op_truncate(data, world: World, lst) -> None:
    if files := _files(lst):
        full = world.ws(_pick(data, files, "file"))
        size = os.lstat(full).st_size
        os.truncate(full, data.draw(st.integers(0, max(0, size - 1)), label="new size"))


def op_same_size_rewrite(data, world: World, lst) -> None:
    """New bytes, same length, mtime put back: only ctime and the content tell."""
    files = [p for p in _files(lst) if os.lstat(world.ws(p)).st_size > 0]
    if files:
        full = world.ws(_pick(data, files, "file"))
        before = os.lstat(full)
        with open(full, "r+b") as f:
            old = f.read(32)
            f.seek(0)
            f.write(bytes((b + 1) % 256 for b in old))
        os.utime(full, ns=(before.st_atime_ns, before.st_mtime_ns))


def op_touch_old(data, world: World, lst) -> None:
    if lst:
        t = data.draw(st.sampled_from(OLD_MTIMES), label="mtime")
        os.utime(world.ws(_pick(data, lst, "path")), ns=(t, t), follow_symlinks=False)


def op_delete(data, world: World, lst) -> None:
    if lst:
        _remove(world.ws(_pick(data, lst, "victim")))


def op_rename(data, world: World, lst) -> None:
    """Rename a file, symlink or directory, within or across directories (at any depth)."""
    if not lst:
        return
    src = _pick(data, lst, "source")
    parents = [p for p in _dirs(lst) if p != src and not p.startswith(src + b"/")]
    dst = _join(_pick(data, parents, "dest parent"), data.draw(st.sampled_from(NAMES)))
    if dst == src or src.startswith(dst + b"/"):
        return
    if lst[src] == "dir" or lst.get(dst, "dir") == "dir":
        _remove(world.ws(dst))  # rename() replaces only a non-directory, or an empty directory
    os.rename(world.ws(src), world.ws(dst))
    if lst[src] == "dir" and data.draw(st.booleans(), label="write into it at once"):
        # Events from inside the moved directory now carry its new path.
        with open(world.ws(dst) + b"/after-move", "wb") as f:
            f.write(world.fresh())


def op_deep_rename(data, world: World, lst) -> None:
    """Rename an ancestor of a deep path, then write at the bottom of the renamed chain."""
    deep = [p for p, k in lst.items() if k == "dir" and p.count(b"/") >= 1]
    if not deep:
        return
    bottom = _pick(data, deep, "deep dir")
    parts = bottom.split(b"/")
    cut = data.draw(st.integers(1, len(parts) - 1), label="ancestor level")
    ancestor = b"/".join(parts[:cut])
    new_name = b"renamed%d" % world.counter
    world.counter += 1
    parent = os.path.dirname(ancestor)
    new_ancestor = _join(parent, new_name)
    os.rename(world.ws(ancestor), world.ws(new_ancestor))
    moved_bottom = new_ancestor + bottom[len(ancestor) :]
    with open(world.ws(moved_bottom) + b"/deep-write", "wb") as f:
        f.write(world.fresh())


def op_mkdir_burst(data, world: World, lst) -> None:
    """mkdir -p of a chain and files at every level, faster than watches can be added."""
    parent = _pick(data, _dirs(lst, MAX_DEPTH - 3), "burst parent")
    if os.path.isdir(world.ws(parent)) and not os.path.islink(world.ws(parent)):
        _fill(data, world, world.ws(parent))


def op_move_in(data, world: World, lst) -> None:
    """A tree built outside the workspace is renamed into it (sometimes renamed again)."""
    name = b"in%d" % world.counter
    world.counter += 1
    staging = world.out(name)
    os.mkdir(staging)
    _fill(data, world, staging)
    os.rename(staging, world.ws(name))
    if data.draw(st.booleans(), label="then rename it"):
        dst = _new_path(data, listing(world.root))
        if dst != name and not dst.startswith(name + b"/"):
            _remove(world.ws(dst))
            os.rename(world.ws(name), world.ws(dst))


def op_move_out(data, world: World, lst) -> None:
    """Something leaves the tree; a directory is sometimes changed outside (its old watches
    fire) and its name reused inside."""
    if not lst:
        return
    src = _pick(data, lst, "leaving")
    dst = world.out(b"out%d" % world.counter)
    world.counter += 1
    os.rename(world.ws(src), dst)
    if lst[src] == "dir" and data.draw(st.booleans(), label="change it outside"):
        with open(dst + b"/outside-write", "wb") as f:
            f.write(world.fresh())
        if data.draw(st.booleans(), label="reuse the name inside"):
            os.mkdir(world.ws(src))
            with open(world.ws(src) + b"/fresh", "wb") as f:
                f.write(world.fresh())


def op_move_back(data, world: World, lst) -> None:
    """Something that left the tree earlier (and maybe changed outside) comes back."""
    gone = [n for n in os.listdir(world.outside) if n.startswith(b"out")]
    if gone:
        dst = _new_path(data, lst)
        _remove(world.ws(dst))
        os.rename(world.out(_pick(data, gone, "returning")), world.ws(dst))


def op_chmod(data, world: World, lst) -> None:
    paths = [p for p, k in lst.items() if k != "symlink"]
    if paths:
        path = _pick(data, paths, "chmod target")
        modes = DIR_MODES if lst[path] == "dir" else FILE_MODES
        os.chmod(world.ws(path), data.draw(st.sampled_from(modes), label="mode"))


def op_symlink(data, world: World, lst) -> None:
    path = _new_path(data, lst)
    _remove(world.ws(path))
    os.symlink(data.draw(st.sampled_from(LINK_TARGETS), label="target"), world.ws(path))


def op_replace_kind(data, world: World, lst) -> None:
    """file <-> dir <-> symlink at the same path; a new directory is filled at once."""
    if not lst:
        return
    path = _pick(data, lst, "replaced")
    kind = data.draw(st.sampled_from([k for k in ("file", "dir", "symlink") if k != lst[path]]))
    full = world.ws(path)
    _remove(full)
    if kind == "file":
        with open(full, "wb") as f:
            f.write(world.fresh())
    elif kind == "dir":
        os.mkdir(full)
        if path.count(b"/") < MAX_DEPTH - 3:
            _fill(data, world, full)
    else:
        os.symlink(data.draw(st.sampled_from(LINK_TARGETS), label="target"), full)


OPS = [
    op_create_file,
    op_modify,
    op_append,
    op_truncate,
    op_same_size_rewrite,
    op_touch_old,
    op_delete,
    op_rename,
    op_rename,
    op_deep_rename,
    op_mkdir_burst,
    op_move_in,
    op_move_out,
    op_move_back,
    op_chmod,
    op_symlink,
    op_replace_kind,
]


def mutate(data, world: World, n: int) -> None:
    for _ in range(n):
        op = data.draw(st.sampled_from(OPS), label="op")
        world.ops.append(op.__name__)
        op(data, world, listing(world.root))


# --- the test ---------------------------------------------------------------------------------
@dataclass
class Figures:
    examples: int = 0
    watcher_snapshots: int = 0  # snapshots right after changes or restores
    hinted: int = 0
    full_checks: int = 0
    restores: int = 0
    reopens: int = 0
    overflows: int = 0
    files_read: int = 0


FIGURES = Figures()


@pytest.fixture(scope="module")
def daemon():
    with running_daemon() as d:
        yield d
    f = FIGURES
    print(
        f"\n[daemon watcher property] {f.examples} examples, {f.watcher_snapshots} watcher-driven "
        f"snapshots ({f.hinted} hinted), {f.full_checks} full-walk comparisons, {f.restores} "
        f"restores compared exactly, {f.reopens} reopens, {f.overflows} overflows, "
        f"{f.files_read} contents read back"
    )


@pytest.fixture(scope="module")
def client(daemon):
    with daemon.client() as c:
        yield c


@pytest.fixture(scope="module")
def checker(client) -> SnapshotChecker:
    return SnapshotChecker(client)


class Example:
    """One workspace through the daemon, with the history of (snapshot, capture)."""

    def __init__(self, client, checker: SnapshotChecker, world: World) -> None:
        self.client = client
        self.checker = checker
        self.world = world
        self.ws = client.open_workspace(os.fsdecode(world.root), keep_last=10_000)
        assert self.ws.settings.watch, "the watcher is on by default"
        self.history: list[tuple[object, Capture]] = []
        self.scans: list[str] = []

    def snapshot_now(self, data, what: str):
        """Snapshot at once (no sleep), then check it against the directory."""
        snap = self.ws.snapshot(label=what)
        cap = capture(self.world.root)
        self.scans.append(snap.stats["scan"])
        FIGURES.watcher_snapshots += 1
        FIGURES.hinted += snap.stats["scan"] == "hinted"
        self.checker.assert_matches(snap, cap, f"{what} after {self.world.ops[-6:]}")
        if data.draw(st.integers(0, 2), label="compare with a full walk") == 0:
            assert_same_as_full_walk(self.ws, snap, what)
            FIGURES.full_checks += 1
        self.history.append((snap, cap))
        return snap

    def reopen(self, data, what: str) -> None:
        """Close the workspace in the daemon, change the tree meanwhile (nothing watches it),
        open it again: the daemon loads its persisted index, and the first snapshot (a walk
        that trusts unchanged directory listings) must find every change."""
        self.ws.close()
        mutate(data, self.world, data.draw(st.integers(0, 3), label="ops while closed"))
        self.ws = self.client.open_workspace(os.fsdecode(self.world.root))
        snap = self.ws.snapshot(label=what)
        cap = capture(self.world.root)
        self.checker.assert_matches(snap, cap, f"{what} after {self.world.ops[-6:]}")
        self.history.append((snap, cap))
        snapshot_until_hinted(self.ws)  # the new watcher's watches are in place

    def restore(self, snap, expected: Capture, what: str) -> None:
        # A large file read within HOT_NS of its last change stays racy (it may be mid-write)
        # until a scan reads it again later; the restore leaves a file it need not write as it
        # is, racy or not. Let such files cool, so that the re-read check below is about the
        # restore's own writes and the same example replays the same way.
        time.sleep(2 * HOT_NS / 1e9)
        res = self.ws.restore(snap.id)
        assert res.stats.conflicts == [], f"{what}: conflicts {res.stats.conflicts}"
        assert_same(capture(self.world.root), expected, what)
        FIGURES.restores += 1
        # The daemon's own writes come back as watcher events; the stat cache already knows
        # them: the next snapshot equals the restored one and reads no file.
        after = self.ws.snapshot(label=f"after {what}")
        self.scans.append(after.stats["scan"])
        FIGURES.watcher_snapshots += 1
        FIGURES.hinted += after.stats["scan"] == "hinted"
        changes = self.ws.diff(snap.id, after.id)
        assert changes == [], f"{what}: the snapshot right after differs: {changes[:20]}"
        assert after.stats["read_files"] == 0, f"{what}: re-read after restore {after.stats}"


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_property_watcher_snapshots_through_the_daemon(client, checker, data) -> None:
    base = os.fsencode(tempfile.mkdtemp(prefix="snapd-dwprop-"))
    world = World(base + b"/ws", base + b"/outside")
    os.mkdir(world.root)
    os.mkdir(world.outside)
    ex = None
    try:
        for _ in range(data.draw(st.integers(0, 3), label="initial bursts")):
            _fill(data, world, world.root)
        for _ in range(data.draw(st.integers(0, 4), label="initial files")):
            op_create_file(data, world, listing(world.root))
        ex = Example(client, checker, world)
        first = snapshot_until_hinted(ex.ws)
        checker.assert_matches(first, capture(world.root), "first hinted snapshot")
        ex.history.append((first, capture(world.root)))

        # Phase 1: bursts of changes, a snapshot at once after each.
        for step in range(data.draw(st.integers(1, 8), label="steps")):
            mutate(data, world, data.draw(st.integers(1, 4), label="ops in this burst"))
            ex.snapshot_now(data, f"step {step}")
            if data.draw(st.integers(0, 7), label="close and reopen") == 0:
                ex.reopen(data, f"first snapshot after reopening (step {step})")
                FIGURES.reopens += 1

        # Phase 2: earlier snapshots restored in random order, sometimes followed by changes.
        order = data.draw(st.permutations(range(len(ex.history))), label="restore order")
        for i in order[: data.draw(st.integers(1, 5), label="restores")]:
            snap, cap = ex.history[i]
            ex.restore(snap, cap, f"restore of snapshot #{i} ({snap.id})")
            if data.draw(st.booleans(), label="change after the restore"):
                mutate(data, world, data.draw(st.integers(1, 3), label="ops after restore"))
                ex.snapshot_now(data, f"changes after restoring #{i}")

        stats = ex.ws.stats()
        counters = stats.watcher
        assert counters is not None and counters["no_inotify"] == 0, counters
        assert counters["restarts"] == 0, counters
        FIGURES.overflows += counters["overflows"]
        if counters["overflows"] == 0:
            # Nothing was lost: every watcher-driven snapshot used the dirty set.
            assert set(ex.scans) == {"hinted"}, (ex.scans, counters, world.ops)
        else:
            assert ex.scans.count("hinted") * 2 >= len(ex.scans), (ex.scans, counters)
        FIGURES.examples += 1
        FIGURES.files_read = checker.files_read
    finally:
        if ex is not None:
            ex.ws.close(forget=True)
        shutil.rmtree(base, ignore_errors=True)
