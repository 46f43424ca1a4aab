"""The catalog's WAL is checkpointed off the commit path and stays bounded.

Thresholds are shrunk (module constants, read when a connection is made) so that a few hundred
small commits cross them.
"""

from __future__ import annotations

import os
import time

from snapd.store import catalog
from snapd.store.store import Store
from snapd.store.verify import verify

ROW = "x" * 20_000  # about five pages per commit


def _commit_many(store: Store, n: int) -> int:
    """n commits; returns the largest WAL file size seen after any of them."""
    largest = 0
    for i in range(n):
        with store.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"test-{i % 40}", ROW))
        largest = max(largest, os.path.getsize(store._db_path + "-wal"))
    return largest


def test_background_checkpoints_keep_the_wal_short(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(catalog, "WAL_CHECKPOINT_BYTES", 256 * 1024)
    monkeypatch.setattr(catalog, "WAL_INLINE_CHECKPOINT_BYTES", 64 * 1024 * 1024)
    store = Store.open(str(tmp_path / "store"))
    try:
        _commit_many(store, 400)  # ~8 MB of WAL frames in all
        for _ in range(1000):  # the thread was woken; wait (bounded by count) for a pass
            if store._checkpointer.checkpoints:
                break
            time.sleep(0.01)
        assert store._checkpointer.checkpoints > 0
        # Back-to-back commits can outrun the thread; once nothing is left to copy back (a
        # pass of our own makes sure), the next writer starts the log over and truncates the
        # file to the limit.
        for _ in range(1000):  # bounded by count: until a pass of ours is not busy
            with store.connection() as conn:
                busy, frames, copied = catalog.checkpoint(conn, "PASSIVE")
            if not busy and frames == copied:
                break
            time.sleep(0.01)
        _commit_many(store, 1)
        assert os.path.getsize(store._db_path + "-wal") <= 256 * 1024 + 64 * 1024
        assert verify(store).ok
    finally:
        store.close()
    reopened = Store.open(str(tmp_path / "store"))
    try:
        rows = reopened.query("SELECT count(*) FROM meta WHERE key LIKE 'test-%'")
        assert rows[0][0] == 40
    finally:
        reopened.close()


def test_a_writer_truncates_the_wal_itself_when_the_thread_cannot(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(catalog, "WAL_CHECKPOINT_BYTES", 256 * 1024)
    monkeypatch.setattr(catalog, "WAL_INLINE_CHECKPOINT_BYTES", 1024 * 1024)
    monkeypatch.setattr(catalog.WalCheckpointer, "_start", lambda self: None)  # no thread
    store = Store.open(str(tmp_path / "store"))
    try:
        largest = _commit_many(store, 400)
        assert store._checkpointer.checkpoints > 0
        # At most the bound plus one commit's frames.
        assert largest < 1024 * 1024 + 256 * 1024, largest
        assert verify(store).ok
    finally:
        store.close()
