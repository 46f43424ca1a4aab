"""The catalog: one SQLite database (WAL) holding the object index, packs, workspaces, snapshots
and each workspace's persisted stat cache.

One database means one write-ahead log: after a power loss SQLite recovers a prefix of the
committed transactions, so a snapshot record can never survive without the index rows it was
committed after. Layout and meaning of every column: docs/store-format.md.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

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
    # Truncate the WAL back to 1 MiB after checkpoints (a large first snapshot grows it).
    conn.execute("PRAGMA journal_size_limit = 1048576")
    return conn


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
