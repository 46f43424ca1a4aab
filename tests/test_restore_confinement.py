"""A restore never creates, writes, chmods or deletes anything outside the workspace root.

The outside world is a directory next to the workspace holding sentinel files with the same
names as the workspace's files, so a write that escaped would overwrite them and a create would
add to them; it is captured (contents, modes, mtimes, its own directory entry included) before
and compared after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from indexutil import assert_index_persisted
from treeutil import assert_same, capture, read, write

from snapd.errors import SnapdError
from snapd.workspace import Hints

OLD = 1_600_000_000_000_000_000


@pytest.fixture
def outside(tmp_path) -> str:
    """tmp/outside-parent/outside: decoys named like the workspace's entries."""
    path = tmp_path / "outside-parent" / "outside"
    for rel in ("f1.txt", "f2.txt", "sub/g.txt", "secret.txt"):
        write(path, rel, f"outside {rel}\n", mode=0o640, mtime_ns=OLD)
    os.utime(path / "sub", ns=(OLD, OLD))
    return str(path)


def outside_state(outside: str):
    return capture(os.path.dirname(outside))


def populate(ws_dir: str, version: str) -> None:
    for rel in ("d/f1.txt", "d/f2.txt", "d/sub/g.txt", "e/sub/h.txt", "top.txt"):
        write(ws_dir, rel, f"{version} {rel}\n", mode=0o644)


def swap_for_symlink(ws_dir: str, rel: str, target: str) -> None:
    path = os.path.join(ws_dir, rel)
    shutil.rmtree(path)
    os.symlink(target, path)


@pytest.mark.parametrize("swapped", ["d", "d/sub", "e/sub"])
@pytest.mark.parametrize("scope", [None, ["d/f1.txt", "d/sub/g.txt", "e/sub/h.txt"], ["d"]])
def test_directories_replaced_by_symlinks_before_a_restore(
    ws, ws_dir, outside, swapped, scope
) -> None:
    populate(ws_dir, "v1")
    snap = ws.snapshot()
    expected = capture(ws_dir)
    populate(ws_dir, "v2")
    swap_for_symlink(ws_dir, swapped, outside)
    before = outside_state(outside)

    ws.restore(snap.id, paths=scope)

    assert_same(outside_state(outside), before, "outside the workspace")
    now = capture(ws_dir)
    in_scope = scope is None or any(swapped == r or r.startswith(swapped + "/") for r in scope)
    in_scope = in_scope or any(swapped.startswith(r + "/") for r in scope or [])
    assert os.path.islink(os.path.join(ws_dir, swapped)) == (not in_scope)
    for rel in scope or ["d", "e", "top.txt"]:
        key = rel.encode()
        want = {p: i for p, i in expected.items() if p == key or p.startswith(key + b"/")}
        got = {p: i for p, i in now.items() if p == key or p.startswith(key + b"/")}
        assert_same(got, want, f"restored {rel}")


def test_files_replaced_by_symlinks_to_outside_files(ws, ws_dir, outside) -> None:
    populate(ws_dir, "v1")
    snap = ws.snapshot()
    expected = capture(ws_dir)
    for rel in ("d/f1.txt", "top.txt"):
        os.unlink(os.path.join(ws_dir, rel))
        os.symlink(os.path.join(outside, "secret.txt"), os.path.join(ws_dir, rel))
    os.chmod(os.path.join(ws_dir, "d/f2.txt"), 0o600)  # a metadata-only change
    before = outside_state(outside)
    ws.restore(snap.id)
    assert_same(outside_state(outside), before, "outside the workspace")
    assert_same(capture(ws_dir), expected, "workspace")


@pytest.mark.parametrize("scope", [None, ["d/f1.txt"]])
def test_swap_after_the_scan_aborts_without_escaping(ws, ws_dir, outside, scope) -> None:
    """The restore's index still believes d is a directory (empty hints skip the rescan), as
    if a hostile process swapped it between the scan and the writes."""
    populate(ws_dir, "v1")
    snap = ws.snapshot()
    populate(ws_dir, "v2")
    ws.snapshot()
    swap_for_symlink(ws_dir, "d", outside)
    before = outside_state(outside)
    with pytest.raises(SnapdError) as err:
        ws.restore(snap.id, paths=scope, hints=Hints())
    assert err.value.code == "ABORTED", err.value
    assert_same(outside_state(outside), before, "outside the workspace")
    # Retrying (with a fresh scan) succeeds.
    ws.restore(snap.id)
    assert read(ws_dir, "d/f1.txt") == b"v1 d/f1.txt\n"
    assert_same(outside_state(outside), before, "outside the workspace")


RESTORES_UNDER_ATTACK = 100
HOSTILE = textwrap.dedent(
    """
    import os, sys, time
    ws, outside, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    victims = [os.path.join(ws, v) for v in ("d", "d/sub", "e")]
    away = os.path.join(ws, "swapped-away")
    swaps = 0
    i = 0
    while not os.path.exists(stop):
        v = victims[i % len(victims)]
        i += 1
        try:
            os.rename(v, away)
        except OSError:
            pass
        try:
            os.symlink(outside, v)
            swaps += 1
        except OSError:
            pass
        time.sleep(0.0005 * (i % 3))
        try:
            if os.path.islink(v):
                os.unlink(v)
            os.rename(away, v)
        except OSError:
            pass
    print(swaps)
    """
)


def test_hostile_process_swapping_directories_during_restores(
    ws, ws_dir, outside, tmp_path
) -> None:
    for i in range(10):
        write(ws_dir, f"d/f{i}.txt", f"a {i}\n" * 50)
        write(ws_dir, f"d/sub/g{i}.txt", f"a sub {i}\n")
        write(ws_dir, f"e/h{i}.txt", f"a e {i}\n")
    snap_a = ws.snapshot()
    for i in range(10):
        write(ws_dir, f"d/f{i}.txt", f"b {i}\n" * 40)
        write(ws_dir, f"d/sub/g{i}.txt", f"b sub {i}\n")
        os.chmod(os.path.join(ws_dir, f"e/h{i}.txt"), 0o600)
    write(ws_dir, "d/only-in-b.txt", "b\n")
    snap_b = ws.snapshot()
    for snap in (snap_a, snap_b):  # every restore adds a safety snapshot to the window
        ws.pin(snap.id)
    ws.restore(snap_a.id)
    expected_a = capture(ws_dir)
    before = outside_state(outside)

    stop = str(tmp_path / "stop")
    hostile = subprocess.Popen(
        [sys.executable, "-c", HOSTILE, ws_dir, outside, stop], stdout=subprocess.PIPE, text=True
    )
    outcomes: dict[str, int] = {}
    messages: set[str] = set()
    try:
        for i in range(RESTORES_UNDER_ATTACK):
            target = snap_b if i % 2 else snap_a
            paths = ["d/sub"] if i % 5 == 4 else None
            try:
                ws.restore(target.id, paths=paths)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except SnapdError as e:
                # Expected when the tree changes under the restore: it stops and says so.
                outcomes[e.code] = outcomes.get(e.code, 0) + 1
                messages.add(f"{e.code}: {e}")
            # Whatever the race, the stat cache persisted is the one in memory (a reload
            # after a failed restore, or a daemon start, trusts it).
            assert_index_persisted(ws, f" after restore #{i}")
    finally:
        open(stop, "w").close()
        out, _ = hostile.communicate(timeout=30)
    swaps = int(out.strip() or 0)
    assert swaps > 50, f"the hostile process barely ran ({swaps} swaps)"
    assert set(outcomes) <= {"ok", "ABORTED"}, (outcomes, sorted(messages)[:10])
    assert outcomes.get("ok", 0) >= 10, outcomes
    assert_same(outside_state(outside), before, "outside the workspace")

    # Quiet again: a restore puts the workspace back exactly.
    ws.restore(snap_a.id)
    assert_same(capture(ws_dir), expected_a, "workspace after the attack")
    assert_same(outside_state(outside), before, "outside the workspace")


def test_restore_never_writes_through_hard_links(ws, ws_dir, outside) -> None:
    write(ws_dir, "content.txt", "inside\n", mode=0o644)
    write(ws_dir, "meta.txt", "same\n", mode=0o600, mtime_ns=OLD)
    write(ws_dir, "deleted-later.txt", "x\n")
    snap = ws.snapshot()
    expected = capture(ws_dir)

    # content.txt becomes a hard link to an outside file with other content.
    os.unlink(os.path.join(ws_dir, "content.txt"))
    os.link(os.path.join(outside, "secret.txt"), os.path.join(ws_dir, "content.txt"))
    # meta.txt gets an outside name, then its mode and mtime change (through either name).
    os.link(os.path.join(ws_dir, "meta.txt"), os.path.join(outside, "meta-link.txt"))
    os.chmod(os.path.join(ws_dir, "meta.txt"), 0o644)
    os.utime(os.path.join(ws_dir, "meta.txt"), ns=(OLD + 5, OLD + 5))
    # new.txt is a hard link to an outside file and is absent from the snapshot.
    os.link(os.path.join(outside, "f1.txt"), os.path.join(ws_dir, "new.txt"))
    before = outside_state(outside)

    res = ws.restore(snap.id)

    assert {c.path: c.change for c in res.changes} == {
        "content.txt": "modified",
        "meta.txt": "metadata",
        "new.txt": "deleted",
    }
    assert_same(capture(ws_dir), expected, "workspace")
    assert_same(outside_state(outside), before, "outside (hard-linked files)")
    assert os.stat(os.path.join(outside, "secret.txt")).st_nlink == 1
    assert os.stat(os.path.join(outside, "f1.txt")).st_nlink == 1


def test_symlinks_in_the_snapshot_are_restored_not_followed(ws, ws_dir, outside) -> None:
    os.symlink(outside, os.path.join(ws_dir, "to-outside"))
    os.symlink(os.path.join(outside, "secret.txt"), os.path.join(ws_dir, "secret-link"))
    snap = ws.snapshot()
    expected = capture(ws_dir)
    os.unlink(os.path.join(ws_dir, "to-outside"))
    os.mkdir(os.path.join(ws_dir, "to-outside"))
    write(ws_dir, "to-outside/f1.txt", "inside\n")
    os.unlink(os.path.join(ws_dir, "secret-link"))
    write(ws_dir, "secret-link", "a file now\n")
    before = outside_state(outside)
    ws.restore(snap.id)
    assert_same(capture(ws_dir), expected, "workspace")
    assert_same(outside_state(outside), before, "outside")
    assert os.readlink(os.path.join(ws_dir, "to-outside")) == outside
