"""Excludes: `.snapdignore` in the workspace root plus configured patterns, gitignore syntax.

Excluded paths are never stored and never touched by a restore: not written, not deleted, not
even when they sit inside a directory that the restored snapshot does not have.
"""

from __future__ import annotations

import os

import pytest
from treeutil import assert_same, capture, read, subset, without, write

from snapd import browse
from snapd.errors import SnapdError
from snapd.workspace import Hints, Workspace, WorkspaceSettings

IGNORE = """\
# comments and blank lines are ignored

*.log
!keep.log
build/
/top-only.txt
**/cache/
secret*
"""

TREE = {
    ".snapdignore": IGNORE,
    "a.log": "excluded by *.log",
    "keep.log": "re-included by !keep.log",
    "sub/b.log": "excluded at any depth",
    "build/out.o": "inside an excluded directory",
    "sub/build": "a FILE named build: build/ matches directories only",
    "top-only.txt": "anchored pattern: excluded at the root",
    "sub/top-only.txt": "...but not below it",
    "sub/deep/cache/c.bin": "excluded by **/cache/",
    "secret.key": "excluded by secret*",
    "node_modules/pkg/index.js": "excluded by the configured pattern",
    "sub/node_modules/x.js": "a pattern without a slash matches at any level",
    "src/main.py": "stored",
}
STORED = [
    ".snapdignore",
    "keep.log",
    "src",
    "src/main.py",
    "sub",
    "sub/build",
    "sub/deep",
    "sub/top-only.txt",
]
EXCLUDED = [p for p in TREE if p not in STORED]


def stored_paths(store, snap) -> list[str]:
    return sorted(e.path for e in browse.list_dir(store, snap.root_tree, recursive=True))


@pytest.fixture
def xws(open_ws, ws_dir) -> Workspace:
    for rel, text in TREE.items():
        write(ws_dir, rel, text + "\n")
    return open_ws(ws_dir, keep_last=100, watch=False, exclude=["node_modules/"])


def test_excluded_paths_are_never_stored(xws, store) -> None:
    snap = xws.snapshot()
    assert stored_paths(store, snap) == STORED
    assert snap.excludes[0] == "node_modules/"  # configured patterns first, then the file's
    assert "!keep.log" in snap.excludes


def test_restore_never_touches_excluded_paths(xws, ws_dir) -> None:
    snap = xws.snapshot()
    for rel in EXCLUDED:
        write(ws_dir, rel, "changed after the snapshot\n", mode=0o600)
    write(ws_dir, "node_modules/new/added.js", "new\n")
    write(ws_dir, "build/new.o", "new\n")
    write(ws_dir, "src/main.py", "changed\n")
    write(ws_dir, "keep.log", "changed\n")
    excluded_before = without(capture(ws_dir), [p.encode() for p in STORED])

    res = xws.restore(snap.id)

    assert read(ws_dir, "src/main.py") == TREE["src/main.py"].encode() + b"\n"
    assert read(ws_dir, "keep.log") == TREE["keep.log"].encode() + b"\n"
    after = without(capture(ws_dir), [p.encode() for p in STORED])
    assert_same(after, excluded_before, "excluded paths after the restore")
    assert {c.path for c in res.changes} == {"src/main.py", "keep.log"}


def test_excluded_file_inside_a_directory_the_snapshot_does_not_have(xws, ws_dir) -> None:
    without_d = xws.snapshot()
    write(ws_dir, "d/x.txt", "tracked\n")
    write(ws_dir, "d/debug.log", "excluded\n")
    write(ws_dir, "d/build/out.o", "excluded dir\n")
    write(ws_dir, "d/e/y.txt", "tracked\n")
    write(ws_dir, "d/e/f/cache/z", "excluded\n")
    with_d = xws.snapshot()
    excluded_d = subset(capture(ws_dir), [b"d/debug.log", b"d/build", b"d/e/f/cache"])

    res = xws.restore(without_d.id)

    now = capture(ws_dir)
    assert b"d/x.txt" not in now and b"d/e/y.txt" not in now
    # The excluded files survive, so do the directories holding them (reported).
    assert_same(subset(now, [b"d/debug.log", b"d/build", b"d/e/f/cache"]), excluded_d, "excluded")
    assert sorted(res.stats.conflicts) == ["d", "d/e", "d/e/f"]

    xws.restore(with_d.id)
    assert read(ws_dir, "d/x.txt") == b"tracked\n"
    assert read(ws_dir, "d/e/y.txt") == b"tracked\n"


def test_changing_snapdignore_between_snapshots(open_ws, ws_dir, store) -> None:
    write(ws_dir, ".snapdignore", "*.log\n")
    write(ws_dir, "a.log", "log 1\n")
    write(ws_dir, "x.tmp", "tmp 1\n")
    ws = open_ws(ws_dir, keep_last=100, watch=False)
    first = ws.snapshot()
    assert stored_paths(store, first) == [".snapdignore", "x.tmp"]

    write(ws_dir, ".snapdignore", "*.tmp\n")
    second = ws.snapshot()
    assert stored_paths(store, second) == [".snapdignore", "a.log"]
    assert second.excludes == ["*.tmp"]

    write(ws_dir, "a.log", "log 2\n")
    write(ws_dir, "x.tmp", "tmp 2\n")
    ws.restore(first.id)
    # .snapdignore itself is ordinary content and comes back; x.tmp is excluded by the rules
    # in force when the restore starts, and a.log was never tracked by the first snapshot:
    # both are left exactly as they are.
    assert read(ws_dir, ".snapdignore") == b"*.log\n"
    assert read(ws_dir, "x.tmp") == b"tmp 2\n"
    assert read(ws_dir, "a.log") == b"log 2\n"

    third = ws.snapshot()  # under "*.log" again
    assert stored_paths(store, third) == [".snapdignore", "x.tmp"]
    _, pieces = browse.read_file(store, third.root_tree, "x.tmp")
    assert b"".join(pieces) == b"tmp 2\n"


@pytest.mark.parametrize("driver", ["hints", "watcher"])
def test_new_rules_apply_to_hinted_snapshots(open_ws, ws_dir, store, driver) -> None:
    """Files that a rule hid were never indexed: dropping the rule must find them even when
    only .snapdignore is reported as changed."""
    write(ws_dir, ".snapdignore", "*.log\nvendor/\n")
    write(ws_dir, "a.log", "log\n")
    write(ws_dir, "vendor/lib/x.c", "x\n")
    write(ws_dir, "main.c", "m\n")
    ws = open_ws(ws_dir, keep_last=100, watch=driver == "watcher")
    if ws.watcher is not None:
        assert ws.watcher.ready.wait(30)  # else snapshots walk fully until it is
    first = ws.snapshot()
    assert stored_paths(store, first) == [".snapdignore", "main.c"]
    write(ws_dir, ".snapdignore", "main.c\n")
    hints = Hints(paths={b".snapdignore"}) if driver == "hints" else None
    second = ws.snapshot(hints=hints)
    assert stored_paths(store, second) == [
        ".snapdignore",
        "a.log",
        "vendor",
        "vendor/lib",
        "vendor/lib/x.c",
    ]


def test_configured_patterns(open_ws, ws_dir, store) -> None:
    for rel in ("x.bin", "important.bin", "deep/y.bin", "tmp/t", "deep/tmp/t", "tmp.txt", "k"):
        write(ws_dir, rel, rel)
    ws = open_ws(ws_dir, watch=False, exclude=["*.bin", "!important.bin", "/tmp/"])
    assert stored_paths(store, ws.snapshot()) == [
        "deep",
        "deep/tmp",
        "deep/tmp/t",
        "important.bin",
        "k",
        "tmp.txt",
    ]


def test_bad_pattern_is_rejected(open_ws, ws_dir) -> None:
    with pytest.raises(SnapdError) as err:
        Workspace.open(None, ws_dir, WorkspaceSettings(exclude=["a/**b/[z-a]"]))  # type: ignore
    assert err.value.code == "INVALID_ARGUMENT"
    with pytest.raises(SnapdError) as err:
        Workspace.open(None, ws_dir, WorkspaceSettings(exclude="*.log"))  # type: ignore
    assert err.value.code == "INVALID_ARGUMENT"


def test_partial_restore_of_an_excluded_path_leaves_it(xws, ws_dir) -> None:
    snap = xws.snapshot()
    write(ws_dir, "a.log", "changed\n")
    xws.restore(snap.id, paths=["a.log", "build"])
    assert read(ws_dir, "a.log") == b"changed\n"
    assert read(ws_dir, "build/out.o") == TREE["build/out.o"].encode() + b"\n"
    assert os.path.isdir(os.path.join(ws_dir, "build"))
