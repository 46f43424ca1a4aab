"""Integrity checks: every reachable object against its keyed content address, by snapshot and path.

verify() walks each kept snapshot's trees (trees are always checked: they are needed for the
walk) and checks each file's objects once, however many snapshots share them. `sample` < 1
checks that fraction of the data objects, chosen by their ids, for a quick spot check.
recount_refs() recomputes every reference count from the roots and repairs the catalog: the
safety net after damage or lost data.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import DataLoss
from .format import (
    ENTRY_CHUNKED,
    ENTRY_DIR,
    ENTRY_SYMLINK,
    KIND_CHUNKLIST,
    KIND_DATA,
    KIND_TREE,
    decode_chunklist,
    decode_tree,
    decode_tree_index,
    is_tree_index,
    part_fits,
)
from .packs import pack_filename
from .store import Store


@dataclass
class Problem:
    snapshot_id: str
    path: str
    object_id: str
    error: str


@dataclass
class VerifyReport:
    ok: bool = True
    snapshots_checked: int = 0
    objects_checked: int = 0
    bytes_checked: int = 0
    sample: float = 1.0
    catalog_ok: bool = True
    problems: list[Problem] = field(default_factory=list)
    damaged_snapshots: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["problems"] = [p.__dict__ for p in self.problems]
        return d


def _sampled(oid: bytes, sample: float) -> bool:
    return sample >= 1.0 or int.from_bytes(oid[:8], "little") < sample * 2**64


def verify(
    store: Store,
    *,
    sample: float = 1.0,
    snapshot_ids: list[str] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> VerifyReport:
    t0 = time.monotonic()
    report = VerifyReport(sample=sample)
    rows = store.query("PRAGMA quick_check")
    if [r[0] for r in rows] != ["ok"]:
        report.catalog_ok = False
        report.problems.append(Problem("", "", "", "catalog: " + "; ".join(r[0] for r in rows)))
    for pack_id, name, size in store.query("SELECT id, name, size FROM packs"):
        path = os.path.join(store.packs_dir, pack_filename(name))
        try:
            actual = os.stat(path).st_size
        except FileNotFoundError:
            actual = -1
        if actual < size:
            what = "missing" if actual < 0 else f"truncated ({actual} of {size} bytes)"
            report.problems.append(Problem("", "", "", f"pack {name} (#{pack_id}) is {what}"))
    checked: dict[bytes, str | None] = {}  # object id -> error (None: fine)
    with store.shared():
        snaps = (
            [store.find_snapshot(s) for s in snapshot_ids]
            if snapshot_ids
            else store.list_snapshots()
        )
        for i, snap in enumerate(snaps):
            bad_before = len(report.problems)
            _walk(store, snap.id, snap.root_tree, b"", checked, report, sample)
            if len(report.problems) > bad_before:
                report.damaged_snapshots.append(snap.id)
            report.snapshots_checked += 1
            if progress is not None:
                progress(
                    {
                        "phase": "verify",
                        "snapshots_done": i + 1,
                        "snapshots": len(snaps),
                        "objects_checked": report.objects_checked,
                        "problems": len(report.problems),
                    }
                )
    report.ok = not report.problems
    report.duration_s = round(time.monotonic() - t0, 3)
    return report


def _check(
    store: Store, oid: bytes, kind: int, checked: dict, report: VerifyReport
) -> tuple[str | None, bytes | None]:
    """(error, raw) for an object; raw only for trees and chunk lists."""
    if oid in checked and kind == KIND_DATA:
        return checked[oid], None
    try:
        raw = store.read(oid, kind)
    except DataLoss as e:
        checked[oid] = str(e)
        return str(e), None
    if oid not in checked:
        report.objects_checked += 1
        report.bytes_checked += len(raw)
    checked[oid] = None
    return None, raw


def _tree_entries(store, tree_id, checked, report) -> tuple[list, bytes, str | None]:
    """A directory's entries, checking its tree object and, for a wide one, every part.
    Returns (entries, id of the damaged object, error)."""
    err, raw = _check(store, tree_id, KIND_TREE, checked, report)
    if err is not None:
        return [], tree_id, err
    try:
        if not is_tree_index(raw):
            return decode_tree(raw), tree_id, None
        parts = decode_tree_index(raw)
    except ValueError:
        return [], tree_id, "malformed tree"
    entries: list = []
    for count, part_id in parts:
        err, praw = _check(store, part_id, KIND_TREE, checked, report)
        if err is not None:
            return [], part_id, err
        try:
            part = decode_tree(praw)
        except ValueError:
            return [], part_id, "malformed tree part"
        if not part_fits(entries, part, count):
            return [], part_id, "tree part does not fit its index"
        entries += part
    return entries, tree_id, None


def _walk(store, snap_id, tree_id, path, checked, report, sample) -> None:
    entries, bad_id, err = _tree_entries(store, tree_id, checked, report)
    if err is not None:
        report.problems.append(Problem(snap_id, os.fsdecode(path) or "/", bad_id.hex(), err))
        return
    for e in entries:
        p = path + b"/" + e.name if path else e.name
        if e.kind == ENTRY_DIR:
            _walk(store, snap_id, e.ref, p, checked, report, sample)
        elif e.kind == ENTRY_SYMLINK:
            continue
        elif e.kind == ENTRY_CHUNKED:
            err, raw = _check(store, e.ref, KIND_CHUNKLIST, checked, report)
            if err is None:
                chunks = decode_chunklist(raw)
                for cid, _ in chunks:
                    if _sampled(cid, sample):
                        err, _ = _check(store, cid, KIND_DATA, checked, report)
                        if err is not None:
                            report.problems.append(Problem(snap_id, os.fsdecode(p), cid.hex(), err))
                            break
            else:
                report.problems.append(Problem(snap_id, os.fsdecode(p), e.ref.hex(), err))
        elif _sampled(e.ref, sample):
            err, _ = _check(store, e.ref, KIND_DATA, checked, report)
            if err is not None:
                report.problems.append(Problem(snap_id, os.fsdecode(p), e.ref.hex(), err))


def recount_refs(store: Store, *, take_lock: bool = True) -> dict:
    """Recompute every object's reference count and fix the catalog.

    The invariant GC relies on: an object's count is the number of references it receives from
    snapshots, workspace heads and every *existing* object (garbage included: an object gives
    up its references only when GC deletes it), except the children an object queued in
    pending_refs has not counted yet. Unreadable objects count none (GC cannot
    release what it cannot read either). Runs under the exclusive lock.
    """
    counts: dict[bytes, int] = {}
    unreadable: list[str] = []
    lock = store.exclusive(blocking=True) if take_lock else contextlib.nullcontext(True)
    # Count inside the write transaction, so no snapshot, delete or eviction lands in between.
    with lock, store.transaction() as conn:
        for (root,) in conn.execute("SELECT root_tree FROM snapshots").fetchall():
            counts[root] = counts.get(root, 0) + 1
        for (hexid,) in conn.execute("SELECT value FROM meta WHERE key='dictionary'").fetchall():
            d = bytes.fromhex(hexid)
            counts[d] = counts.get(d, 0) + 1
        for (head,) in conn.execute(
            "SELECT head_tree FROM workspaces WHERE head_tree IS NOT NULL"
        ).fetchall():
            counts[head] = counts.get(head, 0) + 1
        # An object queued in pending_refs has counted only its first `done` children; the
        # rest are counted when it is settled.
        pending = dict(conn.execute("SELECT id, done FROM pending_refs").fetchall())
        rows = conn.execute("SELECT id, kind, base FROM objects").fetchall()
        for oid, kind, base in rows:
            children: list[bytes] = [base] if base is not None else []
            if kind in (KIND_TREE, KIND_CHUNKLIST):
                try:
                    kids = store.children(oid, kind)
                    children += kids[: pending[oid]] if oid in pending else kids
                except (DataLoss, ValueError):
                    unreadable.append(oid.hex())
            for c in children:
                counts[c] = counts.get(c, 0) + 1
        fixed = 0
        existing = set()
        for oid, refs in conn.execute("SELECT id, refs FROM objects").fetchall():
            existing.add(oid)
            want = counts.get(oid, 0)
            if refs != want:
                conn.execute("UPDATE objects SET refs=? WHERE id=?", (want, oid))
                fixed += 1
    missing = [o.hex() for o in counts if o not in existing]
    return {
        "objects_fixed": fixed,
        "unreadable": unreadable[:100],
        "missing_referenced": missing[:100],
        "objects": len(rows),
    }
