"""Recovery after a power loss or kernel crash.

Normal snapshots do not fsync (only persist() and durable snapshots do), so after a power loss
the tail of a pack may be missing while the catalog, whose WAL reached the disk first, still
points at it. Each pack records how much of it is known to be on stable storage (`synced`).
When a store is opened in a new boot (the kernel's boot id differs from the last writer's),
every object beyond its pack's synced length is re-read and checked. Snapshots that refer to a
lost object are dropped (they were not durable: durable ones are synced before they are marked),
damaged workspace heads are reset (the next snapshot rescans), and reference counts are
recounted. A process crash (SIGKILL) loses nothing written, so it needs none of this.
"""

from __future__ import annotations

import logging
import os

from ..errors import DataLoss
from .format import (
    ENTRY_CHUNKED,
    ENTRY_DIR,
    ENTRY_SYMLINK,
    KIND_CHUNKLIST,
    KIND_TREE,
    decode_chunklist,
    is_tree_index,
    tree_refs,
)
from .packs import pack_filename

log = logging.getLogger("snapd.recovery")


def boot_id() -> str:
    override = os.environ.get("SNAPD_BOOT_ID")  # lets tests simulate a reboot
    if override:
        return override
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def recover_if_rebooted(store) -> dict | None:
    """Run the unsynced-tail check if the store was last written in another boot."""
    boot = boot_id()
    if _meta(store, "boot_id") == boot:
        return None
    with store.exclusive(blocking=True):
        if _meta(store, "boot_id") == boot:
            return None  # another process recovered it while we waited
        result = _recover(store)
        synced = store.sync_packs()
        with store.transaction(durable=True) as conn:
            store._record_synced(conn, synced)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('boot_id', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (boot,),
            )
    if result["lost_objects"]:
        log.warning("recovered store %s after an unclean shutdown: %s", store.root, result)
    return result


def _meta(store, key: str) -> str | None:
    rows = store.query("SELECT value FROM meta WHERE key=?", (key,))
    return rows[0][0] if rows else None


def _recover(store) -> dict:
    lost: set[bytes] = set()
    for pack_id, name, synced in store.query("SELECT id, name, synced FROM packs"):
        path = os.path.join(store.packs_dir, pack_filename(name))
        rows = store.query(
            "SELECT id, kind FROM objects WHERE pack=? AND offset + length > ?", (pack_id, synced)
        )
        if not rows:
            continue
        if not os.path.exists(path):
            lost.update(oid for oid, _ in rows)
            continue
        for oid, kind in rows:
            try:
                store.read(oid, kind)
            except DataLoss:
                lost.add(oid)
    result = {"lost_objects": len(lost), "dropped_snapshots": [], "reset_workspaces": []}
    if not lost:
        return result
    damaged_trees: dict[bytes, bool] = {}
    snapshots = store.query("SELECT id, root_tree, durable FROM snapshots")
    with store.transaction() as conn:
        for snap_id, root, durable in snapshots:
            if _damaged(store, root, lost, damaged_trees):
                if durable:
                    log.error(
                        "durable snapshot %s refers to lost data; keeping its record so "
                        "'snapd verify' reports it",
                        snap_id,
                    )
                    continue
                conn.execute("DELETE FROM snapshots WHERE id=?", (snap_id,))
                result["dropped_snapshots"].append(snap_id)
        for ws_id, head in conn.execute(
            "SELECT id, head_tree FROM workspaces WHERE head_tree IS NOT NULL"
        ).fetchall():
            if _damaged(store, head, lost, damaged_trees):
                conn.execute("UPDATE workspaces SET head_tree=NULL WHERE id=?", (ws_id,))
                conn.execute("DELETE FROM ws_index WHERE workspace=?", (ws_id,))
                result["reset_workspaces"].append(ws_id)
        conn.executemany("DELETE FROM objects WHERE id=?", [(o,) for o in lost])
        row = conn.execute("SELECT value FROM meta WHERE key='dictionary'").fetchone()
        if row and bytes.fromhex(row[0]) in lost:
            conn.execute("DELETE FROM meta WHERE key='dictionary'")  # a new one is trained
        # Packs now end where their file does; live bytes are what the index still references.
        for pack_id, name in conn.execute("SELECT id, name FROM packs").fetchall():
            path = os.path.join(store.packs_dir, pack_filename(name))
            actual = os.path.getsize(path) if os.path.exists(path) else 0
            end, live = conn.execute(
                "SELECT coalesce(max(offset + length), 16), coalesce(sum(length), 0) "
                "FROM objects WHERE pack=?",
                (pack_id,),
            ).fetchone()
            if actual == 0 and live == 0:
                conn.execute("DELETE FROM packs WHERE id=?", (pack_id,))
            else:
                conn.execute(
                    "UPDATE packs SET size=?, live=?, synced=min(synced, ?) WHERE id=?",
                    (end, live, actual, pack_id),
                )
    from .verify import recount_refs  # circular at import time

    # This thread already holds the exclusive lock.
    result["recount"] = recount_refs(store, take_lock=False)
    return result


def _damaged(store, tree_id: bytes, lost: set[bytes], memo: dict[bytes, bool]) -> bool:
    if tree_id in memo:
        return memo[tree_id]
    bad = False
    if tree_id in lost:
        bad = True
    else:
        try:
            raw = store.read(tree_id, KIND_TREE)
            if is_tree_index(raw) and any(pid in lost for pid in tree_refs(raw)):
                raise DataLoss("a part of the wide directory's tree is lost")
            entries = store.read_tree(tree_id)  # a wide directory's: its parts' entries
        except (DataLoss, ValueError):
            entries, bad = [], True
        for e in entries:
            if bad:
                break
            if e.kind == ENTRY_DIR:
                bad = _damaged(store, e.ref, lost, memo)
            elif e.kind == ENTRY_CHUNKED:
                if e.ref in lost:
                    bad = True
                else:
                    try:
                        chunks = decode_chunklist(store.read(e.ref, KIND_CHUNKLIST))
                        bad = any(c in lost for c, _ in chunks)
                    except (DataLoss, ValueError):
                        bad = True
            elif e.kind != ENTRY_SYMLINK:
                bad = e.ref in lost or _delta_base_lost(store, e.ref, lost)
    memo[tree_id] = bad
    return bad


def _delta_base_lost(store, oid: bytes, lost: set[bytes]) -> bool:
    info = store.object_info(oid)
    return info is not None and info.base is not None and info.base in lost
