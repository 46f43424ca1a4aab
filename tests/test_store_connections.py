"""Catalog connections are pooled, not tied to threads.

A connection per thread outlived its thread: each workspace open (its background walk runs
on a thread of its own) left one behind with up to 16 MiB of page cache, and a long-running
daemon's memory grew with every thread that ever touched the store.
"""

from __future__ import annotations

import threading

import pytest
import treeutil

from snapd.store.store import IDLE_CONNECTIONS


def test_short_lived_threads_leave_no_connections_behind(store) -> None:
    def work() -> None:
        assert store.query("SELECT value FROM meta WHERE key='format_version'")

    for _ in range(5):
        threads = [threading.Thread(target=work) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(store._conns) <= IDLE_CONNECTIONS


def test_reopening_workspaces_does_not_grow_the_connections(open_ws, ws_dir, store) -> None:
    treeutil.write(ws_dir, "a/b.txt", "x")
    for _ in range(IDLE_CONNECTIONS + 4):
        ws = open_ws(ws_dir, watch=True)  # each starts a background walk on its own thread
        ws.snapshot()
        assert ws.settled.wait(30)
        ws.close()
    assert len(store._conns) <= IDLE_CONNECTIONS


def test_a_query_inside_a_transaction_sees_its_uncommitted_changes(store) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES ('probe', 'inside')")
        assert store.query("SELECT value FROM meta WHERE key='probe'") == [("inside",)]
        seen: list = []
        other = threading.Thread(
            target=lambda: seen.append(store.query("SELECT value FROM meta WHERE key='probe'"))
        )
        other.start()
        other.join()
        assert seen == [[]]  # another thread reads the last committed state
        with pytest.raises(RuntimeError, match="nested"), store.transaction():
            pass
        conn.execute("DELETE FROM meta WHERE key='probe'")


def test_a_failed_transaction_returns_a_clean_connection(store) -> None:
    with pytest.raises(ZeroDivisionError), store.transaction() as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES ('probe', 'rolled back')")
        1 / 0  # noqa: B018
    assert store.query("SELECT value FROM meta WHERE key='probe'") == []
    assert all(not c.in_transaction for c in store._idle)
