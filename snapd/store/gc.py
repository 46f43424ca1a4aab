"""Garbage collection: delete unreferenced objects, compact packs, give space back.

Why it is safe with concurrent snapshots (in this process or others): every operation that
reads or reuses objects holds the store's shared flock from its first lookup to its commit, and
GC deletes only while holding the exclusive flock, taken without blocking. So GC never deletes
an object that an in-flight snapshot decided to reuse; a snapshot that starts after a deletion
looks the object up again and stores it anew. Reference counts are exact (kept in the same
transactions as the references), so "refs <= 0" is the whole garbage test: no mark phase.
One exception, settled first: a new object with many children (a wide directory's tree) queues
itself in pending_refs instead of counting them in its snapshot's commit. Each deleting batch
settles whatever is pending in its own transaction, under the exclusive lock, before it looks
for garbage; the bulk of that work is done beforehand without the lock.

Work is bounded: each batch holds the exclusive lock for at most `batch_seconds`, so snapshots
wait at most that long, and `max_seconds` bounds a whole pass. A pass that runs out of time
reports complete=False and the next pass continues where it stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable

from .format import KIND_CHUNKLIST, KIND_TREE
from .packs import pack_filename
from .store import Store, _fsync_dir, settle_batch

log = logging.getLogger("snapd.gc")

DELETE_BATCH = 512
# Compaction keeps dead bytes in packs below this fraction of all pack bytes, rewriting the
# packs with the most dead bytes first (restic's "max unused" rule): the store stays within a
# few percent of its live size, and a pack that is mostly live is rarely copied.
MAX_UNUSED = 0.05
# The background collector tolerates more dead space: compacting a pack rewrites its live part,
# so a low threshold on a small, busy store copies the same bytes over and over.
BACKGROUND_MAX_UNUSED = 0.25
LOCK_RETRY_SECONDS = 0.05


def collect(
    store: Store,
    *,
    max_seconds: float | None = None,
    batch_seconds: float = 0.05,
    max_unused: float = MAX_UNUSED,
    progress: Callable[[dict], None] | None = None,
    truncate_wal: bool = True,
) -> dict:
    """One garbage-collection pass. Returns counters; complete=False if it ran out of time.

    truncate_wal: end a complete pass by emptying the catalog's WAL (an explicit GC gives
    all space back; the background collector leaves it to the store's checkpoints)."""
    t0 = time.monotonic()
    deadline = t0 + max_seconds if max_seconds is not None else None
    stats = {
        "deleted_objects": 0,
        "deleted_bytes": 0,
        "unreadable_garbage": 0,
        "packs_compacted": 0,
        "packs_deleted": 0,
        "bytes_copied": 0,
        "reclaimed_bytes": 0,
        "lock_waits": 0,
        "settled_refs": 0,
        "complete": False,
    }

    def report(phase: str) -> None:
        if progress is not None:
            progress({"phase": phase, **stats})

    before = _pack_bytes(store)
    # Count pending references without blocking snapshots; a batch settles the rest.
    settled = store.settle_refs(
        max_seconds=None if deadline is None else max(0.0, deadline - time.monotonic())
    )
    stats["settled_refs"] = settled["refs"]
    done = _delete_garbage(store, stats, deadline, batch_seconds, report)
    if done:
        done = _compact(store, stats, deadline, max_unused, report)
    if done:
        _remove_orphan_packs(store, stats)
        _vacuum(
            store,
            changed=bool(
                stats["deleted_objects"] or stats["packs_compacted"] or stats["packs_deleted"]
            ),
            truncate_wal=truncate_wal,
        )
    stats["reclaimed_bytes"] = max(0, before - _pack_bytes(store))
    stats["complete"] = done
    stats["duration_s"] = round(time.monotonic() - t0, 3)
    report("done")
    return stats


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


@contextlib.contextmanager
def _exclusive(store: Store, stats: dict, deadline: float | None):
    """The store's exclusive lock, retried without blocking; yields False on timeout."""
    while True:
        with store.exclusive(blocking=False) as got:
            if got:
                yield True
                return
        stats["lock_waits"] += 1
        if _expired(deadline):
            yield False
            return
        time.sleep(LOCK_RETRY_SECONDS)


def _delete_garbage(store: Store, stats: dict, deadline, batch_seconds, report) -> bool:
    while True:
        if _expired(deadline):
            return False
        with _exclusive(store, stats, deadline) as got:
            if not got:
                return False
            more = _delete_batch(store, stats, time.monotonic() + batch_seconds)
        report("delete")
        if not more:
            return True


def _delete_batch(store: Store, stats: dict, batch_deadline: float) -> bool:
    """Delete up to DELETE_BATCH garbage objects in one transaction; True if more remain."""
    with store.transaction() as conn:
        # Pending references first, in this transaction: an object that only a pending object
        # refers to has refs 0 and must not be taken for garbage.
        stats["settled_refs"] += settle_batch(store, conn, None)[1]
        rows = conn.execute(
            "SELECT id, kind, pack, length, base FROM objects WHERE refs <= 0 LIMIT ?",
            (DELETE_BATCH,),
        ).fetchall()
        if not rows:
            return False
        freed: dict[int, int] = {}
        for oid, kind, pack, length, base in rows:
            children: list[bytes] = []
            if kind in (KIND_TREE, KIND_CHUNKLIST):
                try:
                    children = store.children(oid, kind)
                except Exception as e:  # damaged: its children stay referenced (leak, not loss)
                    stats["unreadable_garbage"] += 1
                    log.warning(
                        "garbage object %s is unreadable (%s); its children leak until "
                        "'snapd verify --repair' recounts references",
                        oid.hex(),
                        e,
                    )
            if base is not None:
                children.append(base)
            cur = conn.execute("DELETE FROM objects WHERE id=? AND refs <= 0", (oid,))
            if cur.rowcount != 1:
                continue
            if children:
                conn.executemany(
                    "UPDATE objects SET refs = refs - 1 WHERE id = ?", [(c,) for c in children]
                )
            freed[pack] = freed.get(pack, 0) + length
            stats["deleted_objects"] += 1
            stats["deleted_bytes"] += length
            if time.monotonic() >= batch_deadline:
                break
        for pack, n in freed.items():
            conn.execute("UPDATE packs SET live = live - ? WHERE id = ?", (n, pack))
    return True


def _pack_is_idle(path: str) -> int | None:
    """An fd holding the pack's flock if no writer is appending to it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _compaction_candidates(rows: list[tuple], max_unused: float) -> list[tuple[int, str]]:
    """Packs to rewrite: wholly dead ones, then the deadest until the rest is within budget."""
    header = 16
    dead = {pid: max(0, size - header - live) for pid, _, size, live in rows}
    total = sum(size for _, _, size, _ in rows)
    excess = sum(dead.values()) - max_unused * total
    picked = []
    for pid, name, _size, live in sorted(
        rows, key=lambda r: dead[r[0]] / max(r[2] - header, 1), reverse=True
    ):
        if dead[pid] == 0:
            break
        if live == 0 or excess > 0:
            picked.append((pid, name))
            excess -= dead[pid]
    return picked


def _compact(store: Store, stats: dict, deadline, max_unused: float, report) -> bool:
    rows = store.query("SELECT id, name, size, live FROM packs")
    idle: list[tuple[int, str, str, int]] = []  # pack id, name, path, flock'ed fd
    try:
        for pack_id, name in _compaction_candidates(rows, max_unused):
            path = os.path.join(store.packs_dir, pack_filename(name))
            store._writer.seal(pack_id)  # our own active pack: start a new one instead
            fd = _pack_is_idle(path)
            if fd is not None:  # else a writer is appending to it: next pass
                idle.append((pack_id, name, path, fd))
        if not idle:
            return True
        # The packs are idle now and nothing appends to an idle pack again, so one scan of the
        # index lists all their records (no index on `pack`: it would cost every object 25
        # bytes of catalog for the benefit of this background pass).
        by_pack: dict[int, list[tuple[bytes, int, int]]] = {p[0]: [] for p in idle}
        for oid, pack, offset, length in store.query(
            "SELECT id, pack, offset, length FROM objects"
        ):
            if pack in by_pack:
                by_pack[pack].append((oid, offset, length))
        for pack_id, name, path, _fd in idle:
            if _expired(deadline):
                return False
            with _exclusive(store, stats, deadline) as got:
                if not got:
                    return False
                try:
                    _compact_pack(store, pack_id, name, path, by_pack[pack_id], stats)
                except OSError as e:  # a damaged pack stays for 'snapd verify' to report
                    log.warning("cannot compact pack %s: %s", name, e)
                    stats["packs_skipped"] = stats.get("packs_skipped", 0) + 1
            report("compact")
        return True
    finally:
        for *_, fd in idle:
            os.close(fd)


def _compact_pack(
    store: Store, pack_id: int, name: str, path: str, listed: list, stats: dict
) -> None:
    """Copy a pack's live records into the active pack, then delete the old pack.

    Runs under the exclusive lock. The listing was taken before it, so it may be stale both
    ways: objects deleted since (by this or another process's GC) are skipped, and objects a
    writer appended before the pack was sealed but committed after the listing are missing
    from it. The pack's `live` byte count (kept in the same transactions as the rows) tells
    the second case apart; the pack is then listed again, now that no writer is in flight.
    """
    live = [
        r
        for r in listed
        if store.query("SELECT 1 FROM objects WHERE id=? AND pack=?", (r[0], pack_id))
    ]
    row = store.query("SELECT live FROM packs WHERE id=?", (pack_id,))
    if row and row[0][0] != sum(r[2] for r in live):
        stats["packs_relisted"] = stats.get("packs_relisted", 0) + 1
        live = store.query("SELECT id, offset, length FROM objects WHERE pack=?", (pack_id,))
    live.sort(key=lambda r: r[1])
    moved: list[tuple[bytes, int, int, int]] = []  # id, new pack, new offset, length
    if live:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            records = []
            for _oid, offset, length in live:
                rec = os.pread(fd, length, offset)
                if len(rec) != length:
                    raise OSError(f"pack {name} is truncated; run 'snapd verify'")
                records.append(rec)
        finally:
            os.close(fd)
        new_pack, offsets = store._writer.append(records)
        moved = [
            (oid, new_pack, off, length)
            for (oid, _, length), off in zip(live, offsets, strict=True)
        ]
        stats["bytes_copied"] += sum(len(r) for r in records)
    synced = store.sync_packs()  # the copies must be durable before the originals go
    with store.transaction(durable=True) as conn:
        for oid, new_pack, off, _length in moved:
            conn.execute("UPDATE objects SET pack=?, offset=? WHERE id=?", (new_pack, off, oid))
        if moved:
            new_pack = moved[0][1]
            end = max(off + length for _, _, off, length in moved)
            conn.execute(
                "UPDATE packs SET live = live + ?, size = max(size, ?) WHERE id = ?",
                (sum(m[3] for m in moved), end, new_pack),
            )
        conn.execute("DELETE FROM packs WHERE id=?", (pack_id,))
        store._record_synced(conn, synced)
    store._reader.forget(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _fsync_dir(store.packs_dir)
    stats["packs_compacted" if moved else "packs_deleted"] += 1


def _remove_orphan_packs(store: Store, stats: dict) -> None:
    """Delete pack files the catalog does not know (left by a crash mid-compaction)."""
    known = {name for (name,) in store.query("SELECT name FROM packs")}
    for fname in os.listdir(store.packs_dir):
        if not fname.endswith(".pack") or fname[:-5] in known:
            continue
        path = os.path.join(store.packs_dir, fname)
        fd = _pack_is_idle(path)
        if fd is None:
            continue  # a writer has just created it and is registering it
        try:
            if not store.query("SELECT 1 FROM packs WHERE name=?", (fname[:-5],)):
                os.unlink(path)
                stats["packs_deleted"] += 1
        finally:
            os.close(fd)


def _vacuum(store: Store, *, changed: bool, truncate_wal: bool) -> None:
    """Give freed catalog pages back, and (truncate_wal) empty the WAL when it holds more than
    a little. Truncating waits for writers and readers, so the background collector, which
    runs after every eviction, leaves the WAL to the store's background checkpoints."""
    with store.connection() as conn:
        if changed:
            conn.execute("PRAGMA incremental_vacuum")
        if not truncate_wal:
            return
        try:
            wal = os.path.getsize(store._db_path + "-wal")
        except OSError:
            wal = 0
        if changed or wal > 256 * 1024:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _pack_bytes(store: Store) -> int:
    total = 0
    with os.scandir(store.packs_dir) as it:
        for de in it:
            with contextlib.suppress(FileNotFoundError):
                total += de.stat(follow_symlinks=False).st_size
    return total


class BackgroundCollector:
    """Runs bounded GC passes on a thread while there is garbage, so no cron is needed.

    Each pass is capped at `pass_seconds` and holds the exclusive lock only in short batches,
    so snapshots never wait long. It sleeps `interval` seconds between passes, and is woken
    early by poke() (the daemon pokes it after evictions and deletions).
    """

    def __init__(
        self,
        store: Store,
        *,
        interval: float = 30.0,
        pass_seconds: float = 0.5,
        min_garbage_bytes: int = 1 << 20,
        max_unused: float = BACKGROUND_MAX_UNUSED,
    ) -> None:
        import threading

        self.store = store
        self.interval = interval
        self.pass_seconds = pass_seconds
        self.min_garbage_bytes = min_garbage_bytes
        self.max_unused = max_unused
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapd-gc", daemon=True)
        self.passes = 0
        self.last: dict | None = None

    def start(self) -> BackgroundCollector:
        self._thread.start()
        return self

    def poke(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _garbage(self) -> int:
        rows = self.store.query("SELECT coalesce(sum(length), 0) FROM objects WHERE refs <= 0")
        dead = self.store.query("SELECT coalesce(sum(size - live), 0) FROM packs")
        return rows[0][0] + dead[0][0]

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                # Reference counts that snapshots deferred (wide trees): count them now, off
                # the snapshots' path, in short transactions.
                while not self._stop.is_set():
                    if self.store.settle_refs(max_seconds=self.pass_seconds)["complete"]:
                        break
                while not self._stop.is_set() and self._garbage() >= self.min_garbage_bytes:
                    self.last = collect(
                        self.store,
                        max_seconds=self.pass_seconds,
                        max_unused=self.max_unused,
                        truncate_wal=False,
                    )
                    self.passes += 1
                    progressed = self.last["deleted_objects"] or self.last["packs_compacted"]
                    if self.last["complete"] or not progressed:
                        break
            except Exception:  # keep the daemon alive; the next pass retries
                log.exception("background garbage collection failed")
