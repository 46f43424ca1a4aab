"""Deferred reference counts: a new object with many children (a wide directory's tree) queues
itself in pending_refs instead of counting its children in the snapshot's commit.

What must hold: the documented count invariant at every instant (crashloop_child.refcount_errors
checks it independently of the store's own code), GC never deletes an object that only a
pending object refers to, a wide tree settled over several transactions counts each child
exactly once, and a daemon settles what snapshots deferred soon after, on its own.
"""

from __future__ import annotations

import os
import sqlite3
import time

import crashloop_child
import treeutil

from snapd.store import gc
from snapd.store.store import DEFER_REFS_MIN_CHILDREN, settle_batch
from snapd.store.verify import recount_refs, verify

WIDE = DEFER_REFS_MIN_CHILDREN * 3


def _fill_wide(root: str, tag: str = "v1") -> None:
    for i in range(WIDE):
        treeutil.write(root, f"wide/f{i:03}.txt", f"{tag} file {i}\n" * 20)
    treeutil.write(root, "small/a.txt", "a")


def _pending(store) -> dict[bytes, int]:
    return dict(store.query("SELECT id, done FROM pending_refs"))


def test_wide_tree_is_deferred_and_the_invariant_holds_before_and_after_settling(ws, store):
    _fill_wide(ws.path)
    snap = ws.snapshot()
    assert len(_pending(store)) >= 1, "the wide directory's tree should have been deferred"
    assert crashloop_child.refcount_errors(store) == []
    out = store.settle_refs()
    assert out["complete"] and out["refs"] >= WIDE
    assert _pending(store) == {}
    assert crashloop_child.refcount_errors(store) == []
    assert recount_refs(store)["objects_fixed"] == 0
    assert verify(store, snapshot_ids=[snap.id]).ok


def test_settling_in_small_transactions_counts_each_child_once(ws, store):
    _fill_wide(ws.path)
    ws.snapshot()
    rounds = 0
    while _pending(store):
        with store.transaction() as conn:
            settle_batch(store, conn, 7)  # a wide tree over many transactions (as after a crash)
        rounds += 1
        # Partly settled objects ("done" children counted) keep the invariant too.
        assert crashloop_child.refcount_errors(store) == []
    assert rounds > WIDE // 7
    assert recount_refs(store)["objects_fixed"] == 0


def test_gc_keeps_objects_that_only_a_pending_tree_refers_to(ws, store, monkeypatch):
    """The dangerous order: the old snapshot (whose tree counted the files) is deleted, a new
    snapshot reuses the files through a pending tree, then GC runs. Without settling first, GC
    would delete the old tree, drop the files to zero and delete them under the new snapshot.
    The pre-pass that settles outside the lock is disabled, so the batch's own settling is what
    is tested (a snapshot can commit between the two). The directory is renamed so that its
    new tree has no delta base (a delta would keep the old tree alive as its base)."""
    _fill_wide(ws.path)
    first = ws.snapshot()
    store.settle_refs()
    os.rename(os.path.join(ws.path, "wide"), os.path.join(ws.path, "moved"))
    treeutil.write(ws.path, "moved/f000.txt", "changed\n")
    second = ws.snapshot()
    expected = treeutil.capture(ws.path)
    assert _pending(store), "the second snapshot's wide tree should be pending"
    ws.delete_snapshot(first.id, force=True)
    monkeypatch.setattr(
        type(store), "settle_refs", lambda self, **kw: {"objects": 0, "refs": 0, "complete": True}
    )
    stats = gc.collect(store, max_unused=0.0)
    assert stats["complete"] and stats["settled_refs"] >= WIDE
    assert stats["deleted_objects"] > 0  # the first tree and the old f000 really went
    assert crashloop_child.refcount_errors(store) == []
    assert verify(store, snapshot_ids=[second.id]).ok
    treeutil.write(ws.path, "wide/f001.txt", "scribble\n")
    ws.restore(second.id)
    treeutil.assert_same(treeutil.capture(ws.path), expected, "restored after GC")


def test_restored_and_forked_wide_trees_keep_exact_counts(ws, store):
    _fill_wide(ws.path, "v1")
    a = ws.snapshot()
    _fill_wide(ws.path, "v2")
    ws.snapshot()
    ws.restore(a.id)
    _fill_wide(ws.path, "v3")
    ws.snapshot()
    assert crashloop_child.refcount_errors(store) == []
    gc.collect(store, max_unused=0.0)
    assert _pending(store) == {}
    assert crashloop_child.refcount_errors(store) == []
    assert verify(store).ok


def test_daemon_settles_deferred_counts_in_the_background(daemon, client, tmp_path):
    root = str(tmp_path / "ws")
    os.mkdir(root)
    _fill_wide(root)
    ws = client.open_workspace(root)
    ws.snapshot()
    store_db = os.path.join(daemon.store, "catalog.db")
    deadline = time.monotonic() + 20
    while True:
        conn = sqlite3.connect(f"file:{store_db}?mode=ro", uri=True)
        try:
            left = conn.execute("SELECT count(*) FROM pending_refs").fetchone()[0]
            # This module's daemon holds only this workspace: once its counts are settled,
            # every object is referenced (the wide directory's files were at 0 until then).
            unreferenced = conn.execute("SELECT count(*) FROM objects WHERE refs <= 0")
            unreferenced = unreferenced.fetchone()[0]
        finally:
            conn.close()
        if left == 0 and unreferenced == 0:
            break
        assert time.monotonic() < deadline, (
            f"after 20 s: {left} object(s) pending, {unreferenced} unreferenced"
        )
        time.sleep(0.05)
    client.close_workspace(ws.id, forget=True)
