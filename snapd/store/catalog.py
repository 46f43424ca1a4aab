"""The catalog: one SQLite database (WAL) holding the object index, packs, workspaces, snapshots
and each workspace's persisted stat cache.

One database means one write-ahead log: after a power loss SQLite recovers a prefix of the
committed transactions, so a snapshot record can never survive without the index rows it was
committed after. Layout and meaning of every column: docs/store-format.md.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass, field

log = logging.getLogger("snapd.store")

# Checkpoints leave the commit path: SQLite's automatic checkpoint runs inside the COMMIT that
# crosses 1000 pages and writes them back to the database with an fsync, which on a busy VM
# made every third snapshot of a 100k-file workspace 40-50 ms slower. A background thread
# checkpoints (PASSIVE: it never blocks readers or writers) once the WAL passes this size...
WAL_CHECKPOINT_BYTES = 8 << 20
# ...and a committing thread checkpoints itself past this one (the background thread is not
# keeping up, or a reader pins the WAL), so the WAL stays bounded.
WAL_INLINE_CHECKPOINT_BYTES = 64 << 20
CATCH_UP_PASSES = 20

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS packs (
    id     INTEGER PRIMARY KEY,
    name   TEXT NOT NULL UNIQUE,
    size   INTEGER NOT NULL,
    live   INTEGER NOT NULL DEFAULT 0,
    synced INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS objects (
    id       BLOB PRIMARY KEY,
    kind     INTEGER NOT NULL,
    codec    INTEGER NOT NULL,
    pack     INTEGER NOT NULL,
    offset   INTEGER NOT NULL,
    length   INTEGER NOT NULL,
    raw_size INTEGER NOT NULL,
    base     BLOB,
    refs     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_unreferenced ON objects(refs) WHERE refs <= 0;
CREATE TABLE IF NOT EXISTS workspaces (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    path       TEXT NOT NULL UNIQUE,
    settings   TEXT NOT NULL DEFAULT '{}',
    head_tree  BLOB,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    workspace  INTEGER NOT NULL,
    parent     TEXT,
    created_at REAL NOT NULL,
    label      TEXT NOT NULL DEFAULT '',
    metadata   TEXT NOT NULL DEFAULT '{}',
    origin     TEXT NOT NULL DEFAULT 'user',
    durable    INTEGER NOT NULL DEFAULT 0,
    pinned     INTEGER NOT NULL DEFAULT 0,
    root_tree  BLOB NOT NULL,
    stats      TEXT NOT NULL DEFAULT '{}',
    excludes   TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS snapshots_by_workspace ON snapshots(workspace, seq);
-- Objects whose references to their children are not counted yet (see Store.settle_refs).
CREATE TABLE IF NOT EXISTS pending_refs (
    id   BLOB PRIMARY KEY,
    done INTEGER NOT NULL DEFAULT 0  -- how many of its children (in stored order) are counted
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ws_index (
    workspace INTEGER NOT NULL,
    path      BLOB NOT NULL,
    rec       BLOB NOT NULL,
    PRIMARY KEY (workspace, path)
) WITHOUT ROWID;
"""


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60.0)
    conn.execute("PRAGMA busy_timeout = 60000")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL: commits are atomic and survive a process crash; a power loss may roll back the
    # latest ones (never partially). persist() commits with FULL to make a snapshot durable.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA cache_size = -16384")
    # A multi-row statement inside a transaction keeps a statement journal (the pages it
    # changes, so that it alone can be rolled back). A snapshot's INSERT of ~40 object rows
    # touches ~50 pages, past SQLite's 64 KiB in-memory limit: with temp files on disk every
    # commit created, wrote ~200 KB to and deleted a file in /var/tmp. Kept in memory instead
    # (no query here sorts much: the large reads follow primary keys).
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # WalCheckpointer does it
    # When a writer starts the log over, it truncates a WAL grown past this back to it.
    conn.execute(f"PRAGMA journal_size_limit = {WAL_CHECKPOINT_BYTES}")
    return conn


class WalCheckpointer:
    """Checkpoints the catalog's WAL on a background thread, off the commit path.

    Call after_commit() after each write transaction: one stat() of the WAL file (never an
    open(): closing any descriptor of a SQLite file drops this process's POSIX locks on it,
    which corrupts the database). Once the WAL has grown past WAL_CHECKPOINT_BYTES the thread
    runs PASSIVE checkpoints, which block no reader or writer, until a pass finds nothing new
    to copy back; the next writer then starts the log over and truncates the file back to
    journal_size_limit (= WAL_CHECKPOINT_BYTES), so the WAL stays short. If the thread cannot
    keep up (back-to-back commits) the WAL grows on, and past WAL_INLINE_CHECKPOINT_BYTES a
    committing thread truncates it itself: that commit waits, the WAL stays bounded.
    """

    def __init__(self, db_path: str) -> None:
        self._db_path = db_path
        self._wal_path = db_path + "-wal"
        self._wake = threading.Event()
        self._stop = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0

    def after_commit(self, conn: sqlite3.Connection) -> None:
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        if size >= WAL_INLINE_CHECKPOINT_BYTES:
            checkpoint(conn, "TRUNCATE")
            self.checkpoints += 1
        elif size > WAL_CHECKPOINT_BYTES:
            self._start()
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(
                    target=self._run, name="snapd-wal-checkpoint", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        conn = connect(self._db_path)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stop:
                    return
                try:
                    # Catch up with the commits made during each pass: only a writer that
                    # starts while nothing is left to copy back starts the log over.
                    last = None
                    for _ in range(CATCH_UP_PASSES):
                        _busy, frames, copied = checkpoint(conn, "PASSIVE")
                        self.checkpoints += 1
                        if frames == copied and frames == last:
                            break
                        last = frames
                except Exception as e:  # e.g. disk full: a later commit retries
                    log.warning("WAL checkpoint failed: %s", e)
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._stop = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()


def checkpoint(conn: sqlite3.Connection, mode: str = "PASSIVE") -> tuple[int, int, int]:
    """(busy, frames in the WAL, frames copied back)."""
    return tuple(conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone())


def init_schema(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.executescript(SCHEMA)


@dataclass
class WorkspaceRecord:
    id: int
    path: str
    settings: dict
    head_tree: bytes | None
    created_at: float

    @classmethod
    def from_row(cls, row: tuple) -> WorkspaceRecord:
        return cls(row[0], row[1], json.loads(row[2]), row[3], row[4])


WORKSPACE_COLUMNS = "id, path, settings, head_tree, created_at"


@dataclass
class SnapshotRecord:
    seq: int
    id: str
    workspace_id: int
    parent: str | None
    created_at: float
    label: str
    metadata: dict
    origin: str  # "user", "safety" (taken by a restore), "fork"
    durable: bool
    pinned: bool
    root_tree: bytes
    stats: dict = field(default_factory=dict)
    excludes: list[str] = field(default_factory=list)  # effective exclude patterns when taken

    @classmethod
    def from_row(cls, row: tuple) -> SnapshotRecord:
        return cls(
            seq=row[0],
            id=row[1],
            workspace_id=row[2],
            parent=row[3],
            created_at=row[4],
            label=row[5],
            metadata=json.loads(row[6]),
            origin=row[7],
            durable=bool(row[8]),
            pinned=bool(row[9]),
            root_tree=row[10],
            stats=json.loads(row[11]),
            excludes=json.loads(row[12]),
        )


SNAPSHOT_COLUMNS = (
    "seq, id, workspace, parent, created_at, label, metadata, origin, durable, pinned, "
    "root_tree, stats, excludes"
)
