"""The store: content-addressed objects in pack files, indexed and cataloged in SQLite.

Write path (ObjectWriter): hash -> dedup check (byte-compared, never trusting the hash alone) ->
compress (delta against a base when the caller names one) -> append to the active pack ->
insert index rows and take references on children -> commit the snapshot record. The snapshot
record is the single commit point; a crash before it leaves only unreferenced objects, which
garbage collection removes.

Reference counts: every object counts the references it receives from trees, chunk lists, deltas
(their base), snapshots (their root tree) and workspace heads (the tree the workspace's stat
cache describes). Counts change only inside the transaction that inserts or deletes the
referrer, so they are exact after any crash. Objects at zero are garbage.

Locking: writers and readers of snapshots hold a shared flock on `lock` for the whole operation;
garbage collection deletes only while holding it exclusively. So an object that a running
snapshot has decided to reuse cannot disappear under it, across processes too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field

from ..errors import (
    Aborted,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SnapdError,
)
from . import codec as codecs
from .catalog import (
    SNAPSHOT_COLUMNS,
    WORKSPACE_COLUMNS,
    SnapshotRecord,
    WalCheckpointer,
    WorkspaceRecord,
    connect,
    init_schema,
)
from .format import (
    CODEC_ZSTD_DELTA,
    CODEC_ZSTD_DICT,
    FORMAT_VERSION,
    KIND_CHUNKLIST,
    KIND_DATA,
    KIND_NAMES,
    KIND_TREE,
    Keys,
    TreeEntry,
    decode_chunklist,
    decode_record_header,
    decode_tree,
    decode_tree_index,
    encode_record,
    is_tree_index,
    part_fits,
    record_header_size,
    tree_refs,
)
from .idfilter import IdFilter
from .packs import PackReader, PackWriter, pack_filename

log = logging.getLogger("snapd.store")

SECRET_FILE = "secret"
CATALOG_FILE = "catalog.db"
PACKS_DIR = "packs"
LOCK_FILE = "lock"
GATE_FILE = "gate"

# Flush pending objects to a pack once this much raw content is buffered.
FLUSH_RAW_BYTES = 16 * 1024 * 1024
FLUSH_OBJECTS = 4096
# Background compression (ObjectWriter.compress_behind): new data objects are handed to a
# helper thread in batches of this many raw bytes or objects. zstd releases the GIL, so on 2
# cores the walk's Python work and the compression overlap.
BEHIND_BATCH_BYTES = 1024 * 1024
BEHIND_BATCH_OBJECTS = 64
# Catalog connections kept open between uses (more are opened while more threads need one
# at the same instant, and closed when they come back): each may hold 16 MiB of page cache.
IDLE_CONNECTIONS = 8
INSERT_ROWS = 100  # rows per INSERT statement (8 values each, SQLite allows 32766)
# Data objects up to this size are compressed with the store's trained dictionary.
DICT_MAX_SIZE = 16 * 1024
# A delta this small relative to the raw content is taken without trying plain compression.
GOOD_DELTA_RATIO = 8
# zstd level of tree and chunk-list deltas. Loading a base into a fresh context is most of a
# delta's cost, and level 1 loads it 2-3x faster than level 3 (56 vs 137 us for 7 KB trees
# with 1-3 changed entries) for deltas 2% larger; a snapshot after a step stores ~30 trees,
# mostly against bases no cached context holds. File contents keep the default level: their
# deltas were 2.7x larger at level 1 (Django 5.0 -> 5.0.8, 536 changed files).
TREE_DELTA_LEVEL = 1
# A new object with at least this many children (a wide directory's tree, a long chunk list)
# does not count its references to them in its snapshot's commit: it is queued in pending_refs
# and counted later, off the snapshot's path (settle_refs). Counting is one B-tree update per
# child (~5-8 us each): a 43k-entry directory added 300 ms to every snapshot that touched it.
DEFER_REFS_MIN_CHILDREN = 32
# meta refs_rule: "2" = a delta-compressed tree or chunk list counts only the children its base
# lacks (delta_edges). Stores without it counted every child and are recounted once on open.
REFS_RULE = "2"
SETTLE_BATCH_REFS = 4096  # references counted per transaction (~20-30 ms: a writer's wait)
BASE_CACHE_BYTES = 8 * 1024 * 1024  # full trees and chunk lists kept as delta bases


@dataclass(frozen=True)
class ObjectInfo:
    id: bytes
    kind: int
    codec: int
    pack: int
    pack_name: str
    offset: int
    length: int
    raw_size: int
    base: bytes | None
    refs: int


@dataclass
class Retention:
    """Which snapshots of a workspace survive eviction."""

    keep_last: int = 5  # the sliding window: newest N snapshots of any origin
    keep_durable: int = 20  # newest N durable snapshots, beyond the window
    durable_max_age: float | None = None  # seconds; durable ones younger than this are kept too

    def validate(self) -> None:
        if self.keep_last < 1:
            raise InvalidArgument("keep_last must be at least 1 (the newest snapshot is kept)")
        if self.keep_durable < 0:
            raise InvalidArgument("keep_durable must not be negative")
        if self.durable_max_age is not None and self.durable_max_age < 0:
            raise InvalidArgument("durable_max_age must not be negative")


@dataclass
class NewSnapshot:
    root_tree: bytes
    label: str = ""
    metadata: dict = field(default_factory=dict)
    origin: str = "user"
    parent: str | None = None
    stats: dict = field(default_factory=dict)
    pinned: bool = False
    excludes: list[str] = field(default_factory=list)


@dataclass
class IndexDelta:
    """Changes to a workspace's persisted stat cache, applied with the commit."""

    upserts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)
    delete_subtrees: list[bytes] = field(default_factory=list)  # paths whose descendants go
    replace_all: bool = False


@dataclass
class _Pending:
    oid: bytes
    kind: int
    codec: int | None  # None while a helper thread compresses it (compress_behind)
    raw: bytes
    payload: bytes
    base: bytes | None
    edges: list[bytes]  # the children it takes references on (delta_edges)
    repair: bool = False


class Store:
    """A store directory. Safe to share between threads and between processes."""

    def __init__(self, root: str, keys: Keys) -> None:
        self.root = root
        self.keys = keys
        self.packs_dir = os.path.join(root, PACKS_DIR)
        self._db_path = os.path.join(root, CATALOG_FILE)
        # Catalog connections: a pool shared by all threads rather than one per thread. A
        # per-thread connection outlived its thread (every background walk after an open
        # left one behind, with up to 16 MiB of page cache) and the daemon's RSS grew with
        # the number of threads that ever touched the store.
        self._local = threading.local()  # .txn: the connection of this thread's transaction
        self._conns: list[sqlite3.Connection] = []  # every open one, for close()
        self._idle: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._checkpointer = WalCheckpointer(self._db_path)
        self._write_lock = threading.Lock()
        self._reader = PackReader(self.packs_dir)
        self._writer = PackWriter(self.packs_dir, self._register_pack)
        self._pack_names: dict[int, str] = {}
        self._tree_cache: OrderedDict[bytes, list[TreeEntry]] = OrderedDict()
        self._tree_cache_entries = 0
        self._tree_cache_lock = threading.Lock()
        # Full trees and chunk lists kept as delta bases: [raw, the ids it names or None].
        self._bases: OrderedDict[bytes, list] = OrderedDict()
        self._bases_bytes = 0
        self._bases_lock = threading.Lock()
        self.tree_cache_limit = 400_000  # decoded entries kept in memory
        self._ids: IdFilter | None = None  # built on the first write
        self._dictionary: tuple[bytes, bytes] | None = None
        self._ids_lock = threading.Lock()
        self.closed = False
        self.last_recovery: dict | None = None
        # Called (outside any transaction) after a commit queued objects in pending_refs: the
        # daemon wakes its background collector, which counts them (settle_refs).
        self.on_deferred_refs: Callable[[], None] | None = None
        self._deferred_refs = False

    # --- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str, *, create: bool = True) -> Store:
        root = os.path.abspath(root)
        db = os.path.join(root, CATALOG_FILE)
        if not os.path.exists(db):
            if not create:
                raise NotFound(f"no snapd store at {root}")
            _create_store(root)
        try:
            with open(os.path.join(root, SECRET_FILE), "rb") as f:
                secret = f.read()
        except FileNotFoundError as e:
            raise DataLoss(
                f"the store at {root} has lost its secret file; its content addresses "
                "cannot be computed without it"
            ) from e
        store = cls(root, Keys(secret))
        try:
            store._check_format()
            from .recovery import recover_if_rebooted  # circular at import time

            store.last_recovery = recover_if_rebooted(store)
            store._migrate_refs()
        except BaseException:
            store.close()
            raise
        return store

    def _check_format(self) -> None:
        rows = self.query("SELECT value FROM meta WHERE key='format_version'")
        version = int(rows[0][0]) if rows else 0
        if version != FORMAT_VERSION:
            raise FailedPrecondition(
                f"the store at {self.root} has format version {version}; this snapd reads "
                f"version {FORMAT_VERSION}"
            )

    def _migrate_refs(self) -> None:
        """Recount the references of a store written before the current counting rule
        (REFS_RULE), once, under the exclusive lock; a crash before the mark repeats it."""
        rows = self.query("SELECT value FROM meta WHERE key='refs_rule'")
        if rows and rows[0][0] == REFS_RULE:
            return
        from .verify import recount_refs  # circular at import time

        log.info("recounting the references of %s for the current counting rule", self.root)
        with self.exclusive(blocking=True):
            recount_refs(self, take_lock=False)
            with self.transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('refs_rule', ?)", (REFS_RULE,)
                )

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._checkpointer.close()
        self._writer.close()
        self._reader.close()
        with self._conns_lock:
            for c in self._conns:
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            self._conns.clear()
            self._idle.clear()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- SQLite -------------------------------------------------------------------------------
    def _checkout(self) -> sqlite3.Connection:
        with self._conns_lock:
            if self.closed:
                raise FailedPrecondition("the store is closed")
            if self._idle:
                return self._idle.pop()
        conn = connect(self._db_path)
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _checkin(self, conn: sqlite3.Connection) -> None:
        with self._conns_lock:
            reusable = not self.closed and not conn.in_transaction
            if reusable and len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
            if conn in self._conns:
                self._conns.remove(conn)
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A catalog connection for a few statements outside a transaction (inside one: that
        transaction's connection, which sees its uncommitted changes)."""
        txn = getattr(self._local, "txn", None)
        if txn is not None:
            yield txn
            return
        conn = self._checkout()
        try:
            yield conn
        finally:
            self._checkin(conn)

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction. durable=True commits with synchronous=FULL (fsync of the WAL)."""
        if getattr(self._local, "txn", None) is not None:
            raise RuntimeError("nested store transaction")
        # Writers of this process queue on a lock rather than in SQLite's busy handler, which
        # sleeps with backoff (up to 100 ms a try) and is unfair: with 20 workspaces
        # committing at once some snapshots waited seconds. Always the innermost lock taken.
        self._write_lock.acquire()
        conn = None
        try:
            conn = self._checkout()
            if durable:
                conn.execute("PRAGMA synchronous = FULL")  # cannot change inside a transaction
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise _sqlite_error(e) from e
            self._local.txn = conn
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as e:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise _sqlite_error(e) from e
                raise
            finally:
                self._local.txn = None
            try:
                self._checkpointer.after_commit(conn)
            except sqlite3.Error as e:  # committed all the same; a later commit retries
                log.warning("WAL checkpoint failed: %s", e)
        finally:
            self._write_lock.release()
            if conn is not None:
                if durable:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA synchronous = NORMAL")
                self._checkin(conn)

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            with self.connection() as conn:
                return conn.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise _sqlite_error(e) from e

    # --- locks --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold off garbage collection while objects are being read or reused.

        A reader passes through the gate (a moment's shared flock on `gate`) before taking
        `lock` shared; a collector that holds the gate exclusively therefore stops new readers
        while the ones in flight finish, so it gets its turn under a steady stream of snapshots
        (a plain reader-writer flock starves it).
        """
        gate = os.open(
            os.path.join(self.root, GATE_FILE), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        fd = os.open(os.path.join(self.root, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(gate, fcntl.LOCK_SH)
                fcntl.flock(fd, fcntl.LOCK_SH)
            finally:
                os.close(gate)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def exclusive(self, *, blocking: bool = False, wait: float = 0.1) -> Iterator[bool]:
        """Exclusive lock for deleting objects. Yields False if not blocking and it is busy.

        Holds the gate while it waits up to `wait` seconds for readers in flight, then lets new
        readers in again and retries (blocking) or gives up (not blocking): a long snapshot in
        flight delays others by at most `wait`, and a reader that nests a second shared()
        cannot deadlock with it.
        """
        gate = os.open(
            os.path.join(self.root, GATE_FILE), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        fd = os.open(os.path.join(self.root, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
        try:
            while True:
                got = False
                try:
                    fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    got_gate = True
                except BlockingIOError:
                    got_gate = False  # another collector is at the gate
                if got_gate:
                    deadline = time.monotonic() + wait
                    while True:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            got = True
                            break
                        except BlockingIOError:
                            if time.monotonic() >= deadline:
                                break
                            time.sleep(0.001)
                if got:
                    break
                if got_gate:
                    fcntl.flock(gate, fcntl.LOCK_UN)
                if not blocking:
                    yield False
                    return
                time.sleep(0.01)
            yield True
        finally:
            os.close(fd)
            os.close(gate)

    # --- packs --------------------------------------------------------------------------------
    def _register_pack(self, name: str, size: int) -> int:
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO packs(name, size, live, synced) VALUES (?, ?, 0, 0)", (name, size)
            )
            pack_id = cur.lastrowid
        self._pack_names[pack_id] = name
        return pack_id

    def pack_name(self, pack_id: int) -> str:
        name = self._pack_names.get(pack_id)
        if name is None:
            rows = self.query("SELECT name FROM packs WHERE id=?", (pack_id,))
            if not rows:
                raise DataLoss(f"pack {pack_id} is missing from the catalog")
            name = self._pack_names[pack_id] = rows[0][0]
        return name

    def sync_packs(self) -> list[tuple[int, int]]:
        """fsync every pack holding data not yet known to be on stable storage.

        Returns (pack id, synced length) to record once the caller's transaction commits.
        """
        done = []
        rows = self.query("SELECT id, name, synced FROM packs")
        for pack_id, name, synced in rows:
            path = os.path.join(self.packs_dir, pack_filename(name))
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                size = os.fstat(fd).st_size
                if size > synced:
                    os.fsync(fd)
                    done.append((pack_id, size))
            finally:
                os.close(fd)
        if done:
            _fsync_dir(self.packs_dir)
        return done

    @staticmethod
    def _record_synced(conn: sqlite3.Connection, synced: list[tuple[int, int]]) -> None:
        conn.executemany(
            "UPDATE packs SET synced = max(synced, ?) WHERE id = ?",
            [(size, pack_id) for pack_id, size in synced],
        )

    # --- reading objects ----------------------------------------------------------------------
    def object_info(self, oid: bytes) -> ObjectInfo | None:
        rows = self.query(
            "SELECT kind, codec, pack, offset, length, raw_size, base, refs FROM objects "
            "WHERE id=?",
            (oid,),
        )
        if not rows:
            return None
        kind, codec, pack, offset, length, raw_size, base, refs = rows[0]
        return ObjectInfo(
            oid, kind, codec, pack, self.pack_name(pack), offset, length, raw_size, base, refs
        )

    def object_infos(self, oids: Iterable[bytes]) -> dict[bytes, ObjectInfo]:
        """object_info of many ids in few queries (absent ids are left out): each statement
        outside a transaction costs a read transaction of its own, ~30 us on this VM."""
        out: dict[bytes, ObjectInfo] = {}
        ids = list(dict.fromkeys(oids))
        for i in range(0, len(ids), 500):
            batch = ids[i : i + 500]
            rows = self.query(
                "SELECT id, kind, codec, pack, offset, length, raw_size, base, refs FROM objects "
                f"WHERE id IN ({','.join('?' * len(batch))})",
                tuple(batch),
            )
            for oid, kind, codec, pack, offset, length, raw_size, base, refs in rows:
                out[oid] = ObjectInfo(
                    oid,
                    kind,
                    codec,
                    pack,
                    self.pack_name(pack),
                    offset,
                    length,
                    raw_size,
                    base,
                    refs,
                )
        return out

    def has(self, oid: bytes) -> bool:
        return bool(self.query("SELECT 1 FROM objects WHERE id=?", (oid,)))

    def read(self, oid: bytes, kind: int | None = None) -> bytes:
        """Raw content of an object, verified against its keyed hash."""
        info = self.object_info(oid)
        if info is None:
            raise DataLoss(f"object {oid.hex()} is missing from the store")
        if kind is not None and info.kind != kind:
            raise DataLoss(
                f"object {oid.hex()} is a {KIND_NAMES.get(info.kind)}, expected "
                f"{KIND_NAMES.get(kind)}"
            )
        return self._read_info(info)

    def _read_info(self, info: ObjectInfo, _depth: int = 0) -> bytes:
        oid = info.id
        try:
            rec = self._reader.read(info.pack_name, info.offset, info.length)
        except (OSError, EOFError) as e:
            raise DataLoss(f"object {oid.hex()} cannot be read from its pack: {e}") from e
        try:
            head = decode_record_header(rec)
        except (ValueError, Exception) as e:
            raise DataLoss(f"object {oid.hex()}: damaged pack record header") from e
        if head.object_id != oid or head.codec != info.codec or head.kind != info.kind:
            raise DataLoss(f"object {oid.hex()}: pack record does not match the index")
        payload = rec[record_header_size(head.codec) :]
        base_raw = None
        if head.base is not None:
            # A delta's base is a full object (itself maybe dictionary-compressed); a
            # dictionary is stored plain: at most two levels below any object.
            if _depth > 1 or head.base is None:
                raise DataLoss(f"object {oid.hex()}: base chain deeper than allowed")
            cur = self._dictionary
            if head.codec == CODEC_ZSTD_DICT and cur is not None and cur[0] == head.base:
                # The store's dictionary, loaded and verified once: no catalog query (reading
                # a small file's previous version as a delta base did one per file).
                base_info = None
            else:
                base_info = self.object_info(head.base)
                if base_info is None:
                    raise DataLoss(f"object {oid.hex()}: its base {head.base.hex()} is missing")
                if base_info.codec == CODEC_ZSTD_DELTA or (
                    head.codec == CODEC_ZSTD_DICT and base_info.codec == CODEC_ZSTD_DICT
                ):
                    raise DataLoss(
                        f"object {oid.hex()}: its base {head.base.hex()} is not a full object"
                    )
            if base_info is None:
                assert cur is not None
                base_raw = cur[1]
            elif head.codec == CODEC_ZSTD_DICT:
                base_raw = self._dictionary_raw(base_info)
            else:
                base_raw = self._read_info(base_info, _depth + 1)
        try:
            raw = codecs.decompress(head.codec, payload, head.raw_size, base_raw, head.base)
        except Exception as e:
            raise DataLoss(f"object {oid.hex()} does not decompress: {e}") from e
        if len(raw) != head.raw_size or self.keys.object_id(info.kind, raw) != oid:
            raise DataLoss(f"object {oid.hex()} does not match its content address (corrupt)")
        return raw

    # --- delta bases in memory ----------------------------------------------------------------
    # The next version of a directory is a delta against the same full tree (its keyframe) as
    # the last one, so keeping recent keyframes spares each snapshot reading, decompressing and
    # parsing them again (~0.2 ms per directory). Entries are keyed by content address, so
    # they never go stale; a caller uses one only for an object it has seen in the catalog.
    def _cached_base(self, oid: bytes) -> bytes | None:
        with self._bases_lock:
            hit = self._bases.get(oid)
            if hit is None:
                return None
            self._bases.move_to_end(oid)
            return hit[0]

    def _remember_base(self, oid: bytes, raw: bytes) -> None:
        if len(raw) > BASE_CACHE_BYTES // 16:
            return
        with self._bases_lock:
            if oid in self._bases:
                return
            self._bases[oid] = [raw, None]
            self._bases_bytes += len(raw)
            while self._bases_bytes > BASE_CACHE_BYTES:
                _, (old, _kids) = self._bases.popitem(last=False)
                self._bases_bytes -= len(old)

    def _base_refs(self, kind: int, oid: bytes, raw: bytes) -> list[bytes]:
        """object_refs of a delta base, parsed once while it stays cached."""
        with self._bases_lock:
            hit = self._bases.get(oid)
            if hit is not None and hit[1] is not None:
                return hit[1]
        kids = object_refs(kind, raw)
        with self._bases_lock:
            hit = self._bases.get(oid)
            if hit is not None:
                hit[1] = kids
        return kids

    # --- the trained dictionary ---------------------------------------------------------------
    def _dictionary_raw(self, info: ObjectInfo) -> bytes:
        cur = self._dictionary
        if cur is not None and cur[0] == info.id:
            return cur[1]
        return self._read_info(info, 2)

    def dictionary(self) -> tuple[bytes, bytes] | None:
        """(id, raw) of the store's dictionary for small files, if one was trained."""
        if self._dictionary is None:
            rows = self.query("SELECT value FROM meta WHERE key='dictionary'")
            if rows:
                oid = bytes.fromhex(rows[0][0])
                info = self.object_info(oid)
                if info is not None:
                    try:
                        self._dictionary = (oid, self._read_info(info))
                    except DataLoss:
                        return None  # damaged: new small objects are compressed without it
        return self._dictionary

    def install_dictionary(self, samples: list[bytes]) -> bool:
        """Train and store the dictionary (once per store); False if one exists already.

        The caller holds the shared lock (an ObjectWriter). The dictionary is committed on its
        own, with a reference from the catalog's meta table that keeps it alive, before any
        object compressed with it can be committed.
        """
        if self.dictionary() is not None or len(samples) < 16:
            return False
        try:
            raw = codecs.train_dictionary(samples)
        except Exception as e:  # zstd refuses unsuitable samples: compress without
            log.info("no dictionary trained: %s", e)
            return False
        oid = self.keys.object_id(KIND_DATA, raw)
        codec, payload = codecs.compress(raw)
        item = _Pending(oid, KIND_DATA, codec, raw, payload, None, [])
        placed = self._append([item])
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM meta WHERE key='dictionary'").fetchone():
                return False  # another process installed one meanwhile
            self._insert_objects(conn, [item], placed)
            _incref(conn, [oid])  # the meta reference
            conn.execute("INSERT INTO meta(key, value) VALUES ('dictionary', ?)", (oid.hex(),))
        self._dictionary = (oid, raw)
        return True

    def read_tree(self, oid: bytes) -> list[TreeEntry]:
        with self._tree_cache_lock:
            entries = self._tree_cache.get(oid)
            if entries is not None:
                self._tree_cache.move_to_end(oid)
                return entries
        entries = self._decode_tree_object(oid)
        with self._tree_cache_lock:
            if oid not in self._tree_cache:
                self._tree_cache[oid] = entries
                self._tree_cache_entries += len(entries) + 1
                while self._tree_cache_entries > self.tree_cache_limit and self._tree_cache:
                    _, old = self._tree_cache.popitem(last=False)
                    self._tree_cache_entries -= len(old) + 1
        return entries

    def _decode_tree_object(self, oid: bytes) -> list[TreeEntry]:
        """A directory's entries: of one tree object, or of the parts a tree index lists."""
        raw = self.read(oid, KIND_TREE)
        try:
            if not is_tree_index(raw):
                return decode_tree(raw)
            entries: list[TreeEntry] = []
            for count, part_id in decode_tree_index(raw):
                part = decode_tree(self.read(part_id, KIND_TREE))
                if not part_fits(entries, part, count):
                    raise ValueError(f"part {part_id.hex()} does not fit the index")
                entries += part
            return entries
        except ValueError as e:
            raise DataLoss(f"tree {oid.hex()} is malformed: {e}") from e

    def read_chunklist(self, oid: bytes) -> list[tuple[bytes, int]]:
        try:
            return decode_chunklist(self.read(oid, KIND_CHUNKLIST))
        except ValueError as e:
            raise DataLoss(f"chunk list {oid.hex()} is malformed") from e

    def iter_content(self, chunked: bool, ref: bytes) -> Iterator[bytes]:
        """The bytes of a file entry, in pieces (one per chunk for large files)."""
        if not chunked:
            yield self.read(ref, KIND_DATA)
            return
        for cid, size in self.read_chunklist(ref):
            data = self.read(cid, KIND_DATA)
            if len(data) != size:
                raise DataLoss(f"chunk {cid.hex()} has the wrong size")
            yield data

    # --- writing objects ----------------------------------------------------------------------
    def writer(self) -> ObjectWriter:
        return ObjectWriter(self)

    def might_have(self, oid: bytes) -> bool:
        """False: certainly not stored (the caller may skip the index lookup)."""
        ids = self._ids
        if ids is None or ids.full:
            with self._ids_lock:
                ids = self._ids
                if ids is None or ids.full:
                    ids = self._ids = self._build_filter()
        return ids.might_contain(oid)

    def _build_filter(self) -> IdFilter:
        rows = self.query("SELECT id FROM objects")
        ids = IdFilter(2 * len(rows))
        for (oid,) in rows:
            ids.add(oid)
        return ids

    # --- statistics ---------------------------------------------------------------------------
    def stats(self) -> dict:
        """Store-wide figures. logical: what plain copies of every kept snapshot would take."""
        self.settle_refs()  # else objects only pending trees refer to would count as garbage
        q = self.query
        objects, raw_total, stored_total = q(
            "SELECT count(*), coalesce(sum(raw_size), 0), coalesce(sum(length), 0) FROM objects"
        )[0]
        data_raw, data_stored = q(
            "SELECT coalesce(sum(raw_size), 0), coalesce(sum(length), 0) FROM objects "
            "WHERE kind = ? AND refs > 0",
            (KIND_DATA,),
        )[0]
        garbage_objects, garbage_bytes = q(
            "SELECT count(*), coalesce(sum(length), 0) FROM objects WHERE refs <= 0"
        )[0]
        packs, pack_bytes, live = q(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(live), 0) FROM packs"
        )[0]
        snapshots, logical, durable, pinned = q(
            "SELECT count(*), coalesce(sum(json_extract(stats, '$.logical_bytes')), 0), "
            "coalesce(sum(durable), 0), coalesce(sum(pinned), 0) FROM snapshots"
        )[0]
        workspaces = q("SELECT count(*) FROM workspaces")[0][0]
        disk = 0
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                with contextlib.suppress(FileNotFoundError):
                    disk += os.lstat(os.path.join(dirpath, f)).st_size
        return {
            "logical_bytes": logical,
            "unique_bytes": data_raw,
            "stored_bytes": disk,
            "pack_bytes": pack_bytes,
            "dedup_ratio": round(logical / data_raw, 3) if data_raw else 1.0,
            "compression_ratio": round(data_raw / data_stored, 3) if data_stored else 1.0,
            "objects": objects,
            "objects_raw_bytes": raw_total,
            "objects_stored_bytes": stored_total,
            "packs": packs,
            "garbage_objects": garbage_objects,
            "garbage_bytes": garbage_bytes + max(0, pack_bytes - live - 16 * packs),
            "snapshots": snapshots,
            "durable_snapshots": durable,
            "pinned_snapshots": pinned,
            "workspaces": workspaces,
        }

    # --- workspaces ---------------------------------------------------------------------------
    def get_workspace(self, path: str) -> WorkspaceRecord | None:
        rows = self.query(f"SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE path=?", (path,))
        return WorkspaceRecord.from_row(rows[0]) if rows else None

    def get_workspace_by_id(self, ws_id: int) -> WorkspaceRecord | None:
        rows = self.query(f"SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id=?", (ws_id,))
        return WorkspaceRecord.from_row(rows[0]) if rows else None

    def list_workspaces(self) -> list[WorkspaceRecord]:
        rows = self.query(f"SELECT {WORKSPACE_COLUMNS} FROM workspaces ORDER BY id")
        return [WorkspaceRecord.from_row(r) for r in rows]

    def ensure_workspace(self, path: str, settings: dict) -> WorkspaceRecord:
        with self.transaction() as conn:
            row = conn.execute(
                f"SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE path=?", (path,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO workspaces(path, settings, created_at) VALUES (?, ?, ?)",
                    (path, json.dumps(settings, sort_keys=True), time.time()),
                )
            elif json.loads(row[2]) != settings:
                conn.execute(
                    "UPDATE workspaces SET settings=? WHERE id=?",
                    (json.dumps(settings, sort_keys=True), row[0]),
                )
        ws = self.get_workspace(path)
        assert ws is not None
        return ws

    def remove_workspace(self, ws_id: int) -> int:
        """Forget a workspace: its snapshots, head and stat cache. Returns snapshots removed."""
        with self.transaction() as conn:
            row = conn.execute("SELECT head_tree FROM workspaces WHERE id=?", (ws_id,)).fetchone()
            if row is None:
                raise NotFound(f"workspace {ws_id} does not exist")
            snaps = conn.execute(
                "SELECT root_tree FROM snapshots WHERE workspace=?", (ws_id,)
            ).fetchall()
            for (root,) in snaps:
                _decref(conn, root)
            if row[0] is not None:
                _decref(conn, row[0])
            conn.execute("DELETE FROM snapshots WHERE workspace=?", (ws_id,))
            conn.execute("DELETE FROM ws_index WHERE workspace=?", (ws_id,))
            conn.execute("DELETE FROM workspaces WHERE id=?", (ws_id,))
        return len(snaps)

    def load_index(self, ws_id: int) -> list[tuple[bytes, bytes]]:
        return self.query(
            "SELECT path, rec FROM ws_index WHERE workspace=? ORDER BY path", (ws_id,)
        )

    # --- snapshots ----------------------------------------------------------------------------
    def get_snapshot(self, snap_id: str) -> SnapshotRecord:
        rows = self.query(f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id=?", (snap_id,))
        if not rows:
            raise NotFound(f"snapshot {snap_id!r} does not exist (it may have been evicted)")
        return SnapshotRecord.from_row(rows[0])

    def find_snapshot(self, prefix: str, ws_id: int | None = None) -> SnapshotRecord:
        """A snapshot by id or unique id prefix (at least 4 characters)."""
        if not prefix or len(prefix) > 64 or not all(c in "0123456789abcdef" for c in prefix):
            raise InvalidArgument(f"{prefix!r} is not a snapshot id (lowercase hex)")
        rows = self.query(f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id=?", (prefix,))
        if not rows and len(prefix) >= 4:
            rows = self.query(
                f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id >= ? AND id < ? LIMIT 2",
                (prefix, prefix + "g"),
            )
            if len(rows) > 1:
                raise InvalidArgument(f"snapshot id prefix {prefix!r} is ambiguous; give more")
        if not rows:
            raise NotFound(f"snapshot {prefix!r} does not exist (it may have been evicted)")
        rec = SnapshotRecord.from_row(rows[0])
        if ws_id is not None and rec.workspace_id != ws_id:
            raise FailedPrecondition(
                f"snapshot {rec.id} belongs to another workspace; restore it there, or fork it "
                "into a new workspace"
            )
        return rec

    def list_snapshots(
        self, ws_id: int | None = None, *, limit: int = -1, before_seq: int | None = None
    ) -> list[SnapshotRecord]:
        sql = f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots"
        cond, args = [], []
        if ws_id is not None:
            cond.append("workspace=?")
            args.append(ws_id)
        if before_seq is not None:
            cond.append("seq < ?")
            args.append(before_seq)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [SnapshotRecord.from_row(r) for r in self.query(sql, tuple(args))]

    def snapshot_with_tree(self, ws_id: int, root_tree: bytes) -> str | None:
        """The newest snapshot of the workspace whose content is exactly this tree."""
        rows = self.query(
            "SELECT id FROM snapshots WHERE workspace=? AND root_tree=? ORDER BY seq DESC LIMIT 1",
            (ws_id, root_tree),
        )
        return rows[0][0] if rows else None

    def latest_snapshot(self, ws_id: int) -> SnapshotRecord | None:
        snaps = self.list_snapshots(ws_id, limit=1)
        return snaps[0] if snaps else None

    def set_pinned(self, snap_id: str, pinned: bool) -> None:
        with self.transaction() as conn:
            cur = conn.execute("UPDATE snapshots SET pinned=? WHERE id=?", (int(pinned), snap_id))
            if cur.rowcount == 0:
                raise NotFound(f"snapshot {snap_id!r} does not exist")

    def persist(self, snap_id: str) -> SnapshotRecord:
        """Make a snapshot durable: its data, trees and record reach stable storage, in order."""
        self.get_snapshot(snap_id)
        synced = self.sync_packs()
        with self.transaction(durable=True) as conn:
            cur = conn.execute("UPDATE snapshots SET durable=1 WHERE id=?", (snap_id,))
            if cur.rowcount == 0:
                raise NotFound(f"snapshot {snap_id!r} was deleted while it was being persisted")
            self._record_synced(conn, synced)
        return self.get_snapshot(snap_id)

    def delete_snapshot(self, snap_id: str) -> None:
        with self.transaction() as conn:
            row = conn.execute("SELECT root_tree FROM snapshots WHERE id=?", (snap_id,)).fetchone()
            if row is None:
                raise NotFound(f"snapshot {snap_id!r} does not exist")
            conn.execute("DELETE FROM snapshots WHERE id=?", (snap_id,))
            _decref(conn, row[0])

    def _commit(
        self,
        writer: ObjectWriter,
        *,
        workspace_id: int,
        head: bytes | None,
        snapshot: NewSnapshot | None,
        index: IndexDelta | None,
        durable: bool,
        retention: Retention | None,
        protect: set[str] | None = None,
    ) -> SnapshotRecord | None:
        records = writer._take_pending()
        placed = self._append(records)
        synced = self.sync_packs() if durable else []
        snap_id = None
        with self.transaction(durable=durable) as conn:
            self._insert_objects(conn, records, placed)
            ws = conn.execute("SELECT head_tree FROM workspaces WHERE id=?", (workspace_id,))
            row = ws.fetchone()
            if row is None:
                raise NotFound(f"workspace {workspace_id} was removed during the operation")
            if head is not None and head != row[0]:
                _incref(conn, [head])
                if row[0] is not None:
                    _decref(conn, row[0])
                conn.execute("UPDATE workspaces SET head_tree=? WHERE id=?", (head, workspace_id))
            if index is not None:
                _apply_index(conn, workspace_id, index)
            if snapshot is not None:
                snap_id = _insert_snapshot(conn, workspace_id, snapshot, durable)
            if retention is not None:
                _evict(conn, workspace_id, retention, time.time(), protect or set())
            self._record_synced(conn, synced)
        self._notify_deferred()
        return self.get_snapshot(snap_id) if snap_id else None

    def _notify_deferred(self) -> None:
        if self._deferred_refs and self.on_deferred_refs is not None:
            self._deferred_refs = False
            self.on_deferred_refs()

    def _append(self, records: list[_Pending]) -> list[tuple[int, int, int]]:
        if not records:
            return []
        blobs = [
            encode_record(r.kind, r.codec, r.oid, len(r.raw), r.payload, r.base) for r in records
        ]
        pack_id, offsets = self._writer.append(blobs)
        return [(pack_id, off, len(b)) for off, b in zip(offsets, blobs, strict=True)]

    def _insert_objects(
        self,
        conn: sqlite3.Connection,
        records: list[_Pending],
        placed: list[tuple[int, int, int]],
    ) -> None:
        live: dict[int, int] = {}
        ends: dict[int, int] = {}
        fresh: list[tuple[_Pending, int, int, int]] = []
        for r, (pack_id, offset, length) in zip(records, placed, strict=True):
            ends[pack_id] = max(ends.get(pack_id, 0), offset + length)
            if r.repair and self._repoint(conn, r, pack_id, offset, length, live):
                continue
            fresh.append((r, pack_id, offset, length))
        first: dict[bytes, tuple[_Pending, int, int, int]] = {}
        for item in fresh:  # an object twice in one batch: its first copy is the one stored
            first.setdefault(item[0].oid, item)
        fresh = list(first.values())

        def held(r: _Pending) -> list[bytes]:
            """The references r takes in this transaction (a deferred r: its base only)."""
            refs = r.edges if len(r.edges) < DEFER_REFS_MIN_CHILDREN else []
            return refs if r.base is None else [*refs, r.base]

        # References the new objects take on each other go into the rows they insert: a new
        # object then does not enter the index of unreferenced objects only to leave it in the
        # same transaction, and only references to older objects are UPDATEs.
        planned: dict[bytes, int] = {}
        for r, _pack_id, _offset, _length in fresh:
            for x in held(r):
                planned[x] = planned.get(x, 0) + 1
        # Many rows per statement; RETURNING tells which ones were really inserted (another
        # writer may have stored the same object first: then ours is dead bytes in the pack).
        inserted: set[bytes] = set()
        for i in range(0, len(fresh), INSERT_ROWS):
            batch = fresh[i : i + INSERT_ROWS]
            sql = (
                "INSERT INTO objects(id, kind, codec, pack, offset, length, raw_size, base, refs) "
                "VALUES "
                + ",".join(["(?,?,?,?,?,?,?,?,?)"] * len(batch))
                + " ON CONFLICT(id) DO NOTHING RETURNING id"
            )
            args: list = []
            for r, pack_id, offset, length in batch:
                args += (
                    r.oid,
                    r.kind,
                    r.codec,
                    pack_id,
                    offset,
                    length,
                    len(r.raw),
                    r.base,
                    planned.get(r.oid, 0),
                )
            inserted.update(row[0] for row in conn.execute(sql, args).fetchall())
        counted = {x: n for x, n in planned.items() if x in inserted}  # in the new rows
        deferred: list[tuple[bytes]] = []
        ids = self._ids
        for r, pack_id, _offset, length in fresh:
            if r.oid not in inserted:
                for x in held(r):  # the existing row counted its references long ago
                    planned[x] -= 1
                continue
            if ids is not None:
                ids.add(r.oid)
            live[pack_id] = live.get(pack_id, 0) + length
            if len(r.edges) >= DEFER_REFS_MIN_CHILDREN:
                deferred.append((r.oid,))
        _change_refs(conn, {x: n - counted.get(x, 0) for x, n in planned.items()}, strict=True)
        if deferred:
            conn.executemany("INSERT OR IGNORE INTO pending_refs(id) VALUES (?)", deferred)
            self._deferred_refs = True
        for pack_id, n in live.items():
            conn.execute("UPDATE packs SET live = live + ? WHERE id = ?", (n, pack_id))
        for pack_id, end in ends.items():
            conn.execute("UPDATE packs SET size = max(size, ?) WHERE id = ?", (end, pack_id))

    def _repoint(
        self, conn, r: _Pending, pack_id: int, offset: int, length: int, live: dict
    ) -> bool:
        """Point a damaged object's index row at a fresh copy; False if the row is gone."""
        row = conn.execute(
            "SELECT pack, length, base, codec FROM objects WHERE id=?", (r.oid,)
        ).fetchone()
        if row is None:
            return False
        conn.execute(
            "UPDATE objects SET codec=?, pack=?, offset=?, length=?, base=? WHERE id=?",
            (r.codec, pack_id, offset, length, r.base, r.oid),
        )
        live[row[0]] = live.get(row[0], 0) - row[1]
        live[pack_id] = live.get(pack_id, 0) + length
        # Trade the damaged copy's references for the fresh copy's: with another base the
        # fresh copy may hold other children (delta_edges).
        old_edges = self._stored_edges(r, row[2], row[3])
        pending = conn.execute("SELECT done FROM pending_refs WHERE id=?", (r.oid,)).fetchone()
        if pending is not None and old_edges is not None:
            old_edges = old_edges[: pending[0]]
        if old_edges:
            _add_refs(conn, old_edges, -1)
        if len(r.edges) >= DEFER_REFS_MIN_CHILDREN:
            conn.execute("INSERT OR REPLACE INTO pending_refs(id, done) VALUES (?, 0)", (r.oid,))
            self._deferred_refs = True
        else:
            conn.execute("DELETE FROM pending_refs WHERE id=?", (r.oid,))
            if r.edges:
                _add_refs(conn, r.edges)
        if r.base is not None:
            _incref(conn, [r.base])
        if row[2] is not None:
            _decref(conn, row[2])
        return True

    def _stored_edges(self, r: _Pending, base: bytes | None, codec: int) -> list[bytes] | None:
        """The children a stored copy of r (with that base and codec) holds references on;
        None when that cannot be known (its base is unreadable: releasing nothing leaks, and
        'snapd verify --repair' recounts)."""
        try:
            return self._held(r.kind, r.raw, codec, base)
        except (DataLoss, ValueError):
            return None

    def _held(self, kind: int, raw: bytes, codec: int, base: bytes | None) -> list[bytes]:
        """The children an object with this content, codec and base holds references on."""
        kids = object_refs(kind, raw)
        if codec == CODEC_ZSTD_DELTA and base is not None and kids:
            kids = delta_edges(kids, object_refs(kind, self.read(base, kind)))
        return kids

    def _flush(self, writer: ObjectWriter) -> None:
        records = writer._take_pending()
        if not records:
            return
        placed = self._append(records)
        with self.transaction() as conn:
            self._insert_objects(conn, records, placed)
        self._notify_deferred()

    # --- deferred reference counts ------------------------------------------------------------
    def children(self, oid: bytes, kind: int) -> list[bytes]:
        """The children a tree or chunk list holds references on, one per reference, in stored
        order: all the ids it names, less those its delta base names (see delta_edges)."""
        if kind not in (KIND_TREE, KIND_CHUNKLIST):
            return []
        info = self.object_info(oid)
        if info is None:
            raise DataLoss(f"object {oid.hex()} is missing from the store")
        if info.kind != kind:
            raise DataLoss(
                f"object {oid.hex()} is a {KIND_NAMES.get(info.kind)}, expected "
                f"{KIND_NAMES.get(kind)}"
            )
        return self._held(kind, self._read_info(info), info.codec, info.base)

    def settle_refs(self, *, max_seconds: float | None = None) -> dict:
        """Count the references of the objects queued in pending_refs, in short transactions.

        Safe at any time and from any process: it only adds counts the objects are owed. GC
        settles everything before it deletes (an object referenced only by a pending object
        has refs 0 but is not garbage). Returns {"objects": settled, "refs": counted,
        "complete": nothing left}.
        """
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        out = {"objects": 0, "refs": 0, "complete": False}
        memo: dict[bytes, list[bytes]] = {}  # a wide tree is read once, not once per batch
        with self.shared():
            while True:
                with self.transaction() as conn:
                    objects, refs, more = settle_batch(self, conn, SETTLE_BATCH_REFS, memo)
                out["objects"] += objects
                out["refs"] += refs
                if not more:
                    out["complete"] = True
                    return out
                if deadline is not None and time.monotonic() >= deadline:
                    return out


class ObjectWriter:
    """Buffers new objects of one operation and commits them with its catalog changes.

    Use as a context manager: it holds the store's shared lock until it is closed, so garbage
    collection cannot delete an object this operation decided to reuse.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._pending_by_id: dict[bytes, _Pending] = {}
        self._pending_raw = 0
        self._lock_cm = None
        # Catalog rows of likely delta bases, fetched in one query (prefetch_bases). Valid for
        # this writer's life: it holds the store's shared lock, so GC deletes nothing meanwhile.
        self._base_infos: dict[bytes, ObjectInfo] = {}
        # compress_behind: a helper thread, the batch being filled, the batches handed over.
        self._behind: Executor | None = None
        self._batch: list[tuple[_Pending, tuple[bytes, bytes] | None]] = []
        self._batch_raw = 0
        self._inflight: list[Future] = []
        # One drain at a time (the others wait for it); _take_pending holds it to the take.
        self._drain_lock = threading.RLock()
        self._failed: BaseException | None = None  # what a drain hit (see _drain)
        self.new_objects = 0
        self.new_bytes = 0  # stored (compressed) bytes written
        self.reused = 0

    def __enter__(self) -> ObjectWriter:
        self._lock_cm = self.store.shared()
        self._lock_cm.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._stop_behind()
        with self._lock:
            self._pending.clear()
            self._pending_by_id.clear()
        if self._lock_cm is not None:
            self._lock_cm.__exit__(*exc)
            self._lock_cm = None

    def put(
        self,
        kind: int,
        raw: bytes,
        *,
        children: list[bytes] | None = None,
        base: bytes | None = None,
    ) -> bytes:
        """Store `raw` as an object of `kind`; returns its id.

        children: ids this object refers to (trees, chunk lists); base: the id of an earlier
        version of the same path, used as a delta base if that makes the object smaller.
        """
        store = self.store
        oid = store.keys.object_id(kind, raw)
        with self._lock:
            pending = self._pending_by_id.get(oid)
        if pending is not None:
            if pending.raw != raw:
                raise _collision(oid)
            self.reused += 1
            return oid
        info = store.object_info(oid) if store.might_have(oid) else None
        repair = False
        if info is not None:
            try:
                existing = store._read_info(info)
            except DataLoss:
                repair = True  # the stored copy is damaged: store a fresh one in its place
                self._base_infos.pop(oid, None)  # its row will point at the fresh copy
            else:
                if existing != raw:
                    raise _collision(oid)
                self.reused += 1
                return oid
        if self._failed is not None:
            raise self._failed
        if self._behind is not None and kind == KIND_DATA and not children:
            # The helper compresses it; codec None until then (_delta_base will not use it).
            item = _Pending(oid, KIND_DATA, None, raw, b"", None, [], repair)
            return self._queue(item, True, self._base_for(kind, raw, base, oid))
        codec, payload, base_id, base_raw = self._encode(kind, raw, base, oid)
        edges = children or []
        if base_raw is not None and edges:
            assert base_id is not None
            edges = delta_edges(edges, store._base_refs(kind, base_id, base_raw))
            if kind == KIND_TREE and _rebase(len(edges), len(children or ())):
                # Far from its base: store it whole, as the next versions' base. (Not a
                # chunk list: a large file's whole list costs far more bytes than its delta.)
                codec, payload, base_id = self._plain(kind, raw)
                base_raw, edges = None, children or []
        if base_raw is None and kind in (KIND_TREE, KIND_CHUNKLIST):
            store._remember_base(oid, raw)  # the likely base of this directory's next version
        return self._queue(_Pending(oid, kind, codec, raw, payload, base_id, edges, repair))

    def _queue(
        self, item: _Pending, behind: bool = False, found: tuple[bytes, bytes] | None = None
    ) -> bytes:
        """Add a new object to what the commit writes (behind: and to the helper's next batch,
        with the base found for it); flush once enough is buffered."""
        with self._lock:
            if item.oid in self._pending_by_id:
                self.reused += 1
                return item.oid
            self._pending.append(item)
            self._pending_by_id[item.oid] = item
            self._pending_raw += len(item.raw)
            self.new_objects += 1
            self.new_bytes += len(item.payload)  # behind: counted by the helper
            full = self._pending_raw >= FLUSH_RAW_BYTES or len(self._pending) >= FLUSH_OBJECTS
            if behind:
                self._batch.append((item, found))
                self._batch_raw += len(item.raw)
                if (
                    self._batch_raw >= BEHIND_BATCH_BYTES
                    or len(self._batch) >= BEHIND_BATCH_OBJECTS
                ):
                    self._hand_over()
        if full:
            self.store._flush(self)
        return item.oid

    def compress_behind(self, helper: Executor) -> None:
        """Compress new data objects on `helper` (a single-thread executor; a workspace keeps
        one) from now on, until the commit.

        For a large ingest: the caller reads and hashes the next files while the helper
        compresses the files read so far (zstd releases the GIL, so the two overlap on 2
        cores). Every flush and the commit wait for the objects handed over; an error there
        fails the writer.
        """
        if self._behind is None:
            self._behind = helper

    def hand_over(self) -> None:
        """Hand the objects waiting for a full batch to the helper now (the caller is done
        reading and goes on to other work)."""
        with self._lock:
            self._hand_over()

    def wait(self) -> None:
        """Wait until the objects handed to the helper are compressed (new_bytes is then
        complete); the commit does this itself."""
        self._drain()

    def _stop_behind(self) -> None:
        """At the writer's close: objects still queued are dropped, running batches end."""
        with self._lock:
            inflight, self._inflight = self._inflight, []
            self._batch, self._batch_raw, self._behind = [], 0, None
        for f in inflight:
            f.cancel()
        futures_wait(inflight)

    def _hand_over(self) -> None:
        """Give the batch being filled to the helper thread (caller holds self._lock)."""
        if self._batch and self._behind is not None:
            self._inflight.append(self._behind.submit(self._compress_batch, self._batch))
        self._batch, self._batch_raw = [], 0

    def _compress_batch(self, batch: list[tuple[_Pending, tuple[bytes, bytes] | None]]) -> None:
        stored = 0
        for item, found in batch:
            item.codec, item.payload, item.base, _ = self._compress(KIND_DATA, item.raw, found)
            stored += len(item.payload)
        with self._lock:
            self.new_bytes += stored

    def _drain(self) -> None:
        """Wait until every object handed to the helper thread has its payload. A failure
        (here or on the helper) fails this writer for good: its objects without a payload
        must never reach a pack, so every later put, flush and commit raises it again."""
        with self._drain_lock:
            if self._failed is not None:
                raise self._failed
            with self._lock:
                batch, self._batch, self._batch_raw = self._batch, [], 0
                inflight, self._inflight = self._inflight, []
            error: BaseException | None = None
            if batch:
                try:
                    self._compress_batch(batch)  # the tail: here, not after a hand-off
                except BaseException as e:
                    error = e
            futures_wait(inflight)  # all of them, even after a failure: none may run on
            for f in inflight:
                if error is None and not f.cancelled() and f.exception() is not None:
                    error = f.exception()
            if error is not None:
                self._failed = error
                raise error

    def _encode(
        self, kind: int, raw: bytes, base: bytes | None, oid: bytes
    ) -> tuple[int, bytes, bytes | None, bytes | None]:
        """(codec, payload, base id, the base's raw content if a delta against it)."""
        return self._compress(kind, raw, self._base_for(kind, raw, base, oid))

    def _base_for(
        self, kind: int, raw: bytes, base: bytes | None, oid: bytes
    ) -> tuple[bytes, bytes] | None:
        """(id, raw content) of the object to try a delta against, if any."""
        if base is not None and base != oid and len(raw) >= 256:
            return self._delta_base(kind, base)
        return None

    def _compress(
        self, kind: int, raw: bytes, found: tuple[bytes, bytes] | None
    ) -> tuple[int, bytes, bytes | None, bytes | None]:
        if found is not None:
            base_id, base_data = found
            level = TREE_DELTA_LEVEL if kind != KIND_DATA else codecs.DEFAULT_LEVEL
            delta = codecs.compress_delta(raw, base_data, level, base_id=base_id)
            if len(delta) * GOOD_DELTA_RATIO <= len(raw):
                return CODEC_ZSTD_DELTA, delta, base_id, base_data
            codec, payload, dict_id = self._plain(kind, raw)
            if len(delta) < len(payload):
                return CODEC_ZSTD_DELTA, delta, base_id, base_data
            return codec, payload, dict_id, None
        return (*self._plain(kind, raw), None)

    def _plain(self, kind: int, raw: bytes) -> tuple[int, bytes, bytes | None]:
        """Compress without a delta: small data with the store's dictionary when it has one."""
        if kind == KIND_DATA and codecs.MIN_COMPRESS_SIZE <= len(raw) <= DICT_MAX_SIZE:
            d = self.store.dictionary()
            if d is not None:
                z = codecs.compress_with_dict(raw, d[0], d[1])
                if len(z) < len(raw):
                    return CODEC_ZSTD_DICT, z, d[0]
        codec, payload = codecs.compress(raw)
        return codec, payload, None

    def install_dictionary(self, samples: list[bytes]) -> bool:
        """Give the store its dictionary. With compress_behind on, it is trained on the helper
        thread (~0.1 s) while the caller reads on; the batches handed over after it are
        compressed with it, and a commit waits for it as for them."""
        with self._lock:
            if self._behind is not None:
                self._hand_over()  # objects put before it are compressed without it
                self._inflight.append(self._behind.submit(self.store.install_dictionary, samples))
                return True
        return self.store.install_dictionary(samples)

    def wants_dictionary(self) -> bool:
        return self.store.dictionary() is None

    def prefetch_bases(self, oids: Iterable[bytes]) -> None:
        """Look up the catalog rows of these future delta bases (and of their own bases) in
        one or two queries instead of one per object."""
        infos = self._base_infos
        want = [o for o in oids if o not in infos]
        if not want:
            return
        got = self.store.object_infos(want)
        infos.update(got)
        store = self.store
        second = [
            i.base
            for i in got.values()
            if i.codec == CODEC_ZSTD_DELTA
            and i.base is not None
            and i.base not in infos
            and store._cached_base(i.base) is None
        ]
        if second:
            infos.update(store.object_infos(second))

    def _info(self, oid: bytes) -> ObjectInfo | None:
        info = self._base_infos.get(oid)
        return info if info is not None else self.store.object_info(oid)

    def _delta_base(self, kind: int, base: bytes) -> tuple[bytes, bytes] | None:
        """The full (non-delta) object to delta against: `base` or its own base."""
        with self._lock:
            p = self._pending_by_id.get(base)
        if p is not None:
            if p.kind != kind or p.codec is None:  # None: the helper has not compressed it
                return None
            if p.codec != CODEC_ZSTD_DELTA:
                return base, p.raw
            base = p.base
        store = self.store
        info = self._info(base)
        if info is None or info.kind != kind:
            return None
        cacheable = kind in (KIND_TREE, KIND_CHUNKLIST)
        if info.codec == CODEC_ZSTD_DELTA and info.base is not None:
            # The catalog has `base`, and `base` holds its own base: that one exists too.
            if cacheable and (raw := store._cached_base(info.base)) is not None:
                return info.base, raw
            info = self._info(info.base)
            if info is None:
                return None
        elif cacheable and (raw := store._cached_base(base)) is not None:
            return base, raw
        if info.raw_size > 64 * 1024 * 1024:
            return None
        try:
            raw = store._read_info(info)
        except DataLoss:
            return None
        if cacheable:
            store._remember_base(info.id, raw)
        return info.id, raw

    def _take_pending(self) -> list[_Pending]:
        # Under the drain lock no other thread can take batches off the in-flight list, so once
        # both are empty every pending object has its payload.
        with self._drain_lock:
            while True:
                self._drain()
                with self._lock:
                    if self._batch or self._inflight:
                        continue  # another thread handed more over meanwhile
                    out = self._pending
                    self._pending = []
                    self._pending_by_id = {}
                    self._pending_raw = 0
                    return out

    def flush(self) -> None:
        self.store._flush(self)

    def commit(
        self,
        *,
        workspace_id: int,
        head: bytes | None = None,
        snapshot: NewSnapshot | None = None,
        index: IndexDelta | None = None,
        durable: bool = False,
        retention: Retention | None = None,
        protect: set[str] | None = None,
    ) -> SnapshotRecord | None:
        """Write what is pending, then commit everything in one transaction.

        retention evicts the workspace's snapshots it no longer keeps, except those in protect.
        """
        return self.store._commit(
            self,
            workspace_id=workspace_id,
            head=head,
            snapshot=snapshot,
            index=index,
            durable=durable,
            retention=retention,
            protect=protect,
        )


# --- helpers ----------------------------------------------------------------------------------
def _collision(oid: bytes) -> SnapdError:
    return DataLoss(
        f"two different contents share the content address {oid.hex()}; the snapshot was "
        "refused so that neither is lost. This indicates crafted input; report it."
    )


def object_refs(kind: int, raw: bytes) -> list[bytes]:
    """Every id a tree or chunk list names, in stored order (repeats included)."""
    if kind == KIND_TREE:
        return tree_refs(raw)
    if kind == KIND_CHUNKLIST:
        return [c for c, _ in decode_chunklist(raw)]
    return []


def _rebase(edges: int, children: int) -> bool:
    """Whether a delta that holds `edges` of its `children` ids should be stored whole instead.

    Every version of a directory is a delta against the same full base, so the ids a version
    names that its base does not (its edges, each one reference to count in its commit) grow
    as the directory drifts from the base: after 50 agent steps a Django 5k-file slice paid
    ~140 reference updates per snapshot for ~30 new trees. Storing a version whole costs one
    reference per child once (deferred from 32 on) and makes the next versions' deltas small
    again. Re-basing once a delta holds k edges costs (k*k/2 + children) / k references per
    version, least at k = sqrt(2 * children).
    """
    return edges > 2 and edges * edges > 2 * children


def delta_edges(kids: list[bytes], base_kids: list[bytes]) -> list[bytes]:
    """The references a delta-compressed tree or chunk list holds: its ids less its base's.

    The object holds a reference on its base, and the base (a full object) holds one on each
    id it names, so the ids both name are kept alive through the base. Counting only the
    difference (a multiset difference, in the object's order) makes a new version of a
    directory that changed one entry take ~2 references instead of one per entry, so a
    snapshot's commit updates far fewer B-tree pages (docs/store-format.md).
    """
    if not base_kids:
        return kids
    base = set(base_kids)
    if len(base) == len(base_kids) and len(set(kids)) == len(kids):
        # No id twice on either side (the usual case): the ordered set difference.
        return [k for k in kids if k not in base]
    left: dict[bytes, int] = {}
    for k in base_kids:
        left[k] = left.get(k, 0) + 1
    out = []
    for k in kids:
        n = left.get(k, 0)
        if n:
            left[k] = n - 1
        else:
            out.append(k)
    return out


def _tally(ids: Iterable[bytes], sign: int = 1) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + sign
    return counts


def _change_refs(conn: sqlite3.Connection, counts: dict[bytes, int], *, strict: bool) -> None:
    """Add counts[id] references to each object (negative: remove them).

    strict: an object that no longer exists aborts the operation (something being committed
    refers to it); otherwise it is logged (damage met while settling or repairing).
    """
    # In key order the updates walk the objects B-tree left to right (43k updates: 288 ms
    # against 360 ms in random order, in a micro-benchmark; the sort adds ~25 ms).
    items = [(n, i) for i, n in sorted(counts.items()) if n]
    if not items:
        return
    cur = conn.executemany("UPDATE objects SET refs = refs + ? WHERE id = ?", items)
    if cur.rowcount == len(items):
        return
    if strict:
        missing = [
            i.hex()
            for _, i in items
            if not conn.execute("SELECT 1 FROM objects WHERE id=?", (i,)).fetchone()
        ]
        raise Aborted(
            f"objects {', '.join(missing[:3])} vanished while being referenced (concurrent "
            "garbage collection or damage); retry the operation"
        )
    log.warning(
        "%d object(s) referenced by a pending or repaired object are missing; 'snapd verify' "
        "names the damaged snapshots",
        len(items) - cur.rowcount,
    )


def _incref(conn: sqlite3.Connection, ids: Iterable[bytes]) -> None:
    _change_refs(conn, _tally(ids), strict=True)


def settle_batch(
    store: Store,
    conn: sqlite3.Connection,
    max_refs: int | None,
    memo: dict[bytes, list[bytes]] | None = None,
) -> tuple[int, int, bool]:
    """Count up to max_refs (None: all) pending references inside the caller's transaction.

    Returns (objects finished, references counted, more pending). A pending object records how
    many of its children are counted already (`done`), so a wide tree is settled over several
    transactions and a crash between them neither loses nor doubles a count.
    """
    budget = max_refs
    finished = counted = 0
    rows = conn.execute(
        "SELECT p.id, p.done, o.kind FROM pending_refs p LEFT JOIN objects o ON o.id = p.id"
    ).fetchall()
    for oid, done, kind in rows:
        if budget is not None and budget <= 0:
            return finished, counted, True
        children: list[bytes] = []
        if kind is not None:  # gone (a recount settled and GC deleted it): nothing owed
            try:
                kids = memo.get(oid) if memo is not None else None
                if kids is None:
                    kids = store.children(oid, kind)
                children = kids[done:]
            except (DataLoss, ValueError) as e:
                # Like GC and recount_refs: an unreadable object gives its children nothing;
                # verify reports the damage.
                log.warning("pending object %s is unreadable (%s); not counting it", oid.hex(), e)
        take = children if budget is None else children[:budget]
        if take:
            _add_refs(conn, take)
            counted += len(take)
            if budget is not None:
                budget -= len(take)
        if len(take) < len(children):
            if memo is not None:
                memo[oid] = kids
            conn.execute("UPDATE pending_refs SET done = ? WHERE id = ?", (done + len(take), oid))
            return finished, counted, True
        conn.execute("DELETE FROM pending_refs WHERE id = ?", (oid,))
        if memo is not None:
            memo.pop(oid, None)
        finished += 1
    return finished, counted, False


def _add_refs(conn: sqlite3.Connection, ids: list[bytes], sign: int = 1) -> None:
    """Add (sign=-1: remove) one reference per id occurrence; missing ids are logged."""
    _change_refs(conn, _tally(ids, sign), strict=False)


def _decref(conn: sqlite3.Connection, oid: bytes) -> None:
    conn.execute("UPDATE objects SET refs = refs - 1 WHERE id = ?", (oid,))


def _apply_index(conn: sqlite3.Connection, ws_id: int, delta: IndexDelta) -> None:
    if delta.replace_all:
        conn.execute("DELETE FROM ws_index WHERE workspace=?", (ws_id,))
    for prefix in delta.delete_subtrees:
        lo = prefix + b"/"
        hi = prefix + b"0"  # '0' follows '/' in byte order
        conn.execute(
            "DELETE FROM ws_index WHERE workspace=? AND path >= ? AND path < ?", (ws_id, lo, hi)
        )
    if delta.deletes:
        conn.executemany(
            "DELETE FROM ws_index WHERE workspace=? AND path=?",
            [(ws_id, p) for p in delta.deletes],
        )
    if delta.upserts:
        conn.executemany(
            "INSERT INTO ws_index(workspace, path, rec) VALUES (?, ?, ?) "
            "ON CONFLICT(workspace, path) DO UPDATE SET rec=excluded.rec",
            [(ws_id, p, r) for p, r in delta.upserts],
        )


def new_snapshot_id() -> str:
    return secrets.token_hex(6)


def _insert_snapshot(conn: sqlite3.Connection, ws_id: int, snap: NewSnapshot, durable: bool) -> str:
    for _ in range(8):
        snap_id = new_snapshot_id()
        try:
            conn.execute(
                "INSERT INTO snapshots(id, workspace, parent, created_at, label, metadata, "
                "origin, durable, pinned, root_tree, stats, excludes) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    snap_id,
                    ws_id,
                    snap.parent,
                    time.time(),
                    snap.label,
                    json.dumps(snap.metadata, sort_keys=True),
                    snap.origin,
                    int(durable),
                    int(snap.pinned),
                    snap.root_tree,
                    json.dumps(snap.stats, sort_keys=True),
                    json.dumps(snap.excludes),
                ),
            )
        except sqlite3.IntegrityError:
            continue
        _incref(conn, [snap.root_tree])
        return snap_id
    raise RuntimeError("could not allocate a unique snapshot id")


def _evict(
    conn: sqlite3.Connection, ws_id: int, policy: Retention, now: float, protect: set[str]
) -> list[str]:
    """Delete the workspace's snapshots that the retention policy no longer keeps."""
    rows = conn.execute(
        "SELECT id, created_at, durable, pinned, root_tree FROM snapshots WHERE workspace=? "
        "ORDER BY seq DESC",
        (ws_id,),
    ).fetchall()
    evicted = []
    durable_seen = 0
    for i, (snap_id, created_at, durable, pinned, root) in enumerate(rows):
        keep = i < policy.keep_last or pinned or snap_id in protect
        if durable:
            durable_seen += 1
            if durable_seen <= policy.keep_durable or (
                policy.durable_max_age is not None and now - created_at <= policy.durable_max_age
            ):
                keep = True
        if not keep:
            evicted.append(snap_id)
            conn.execute("DELETE FROM snapshots WHERE id=?", (snap_id,))
            _decref(conn, root)
    return evicted


def _sqlite_error(e: sqlite3.Error) -> SnapdError:
    text = str(e).lower()
    if "full" in text or "no space" in text:
        return ResourceExhausted(
            "no space left on the store's file system; free space or run 'snapd gc', then retry"
        )
    if "locked" in text or "busy" in text:
        return Aborted("the store is busy (locked by another writer); retry")
    return DataLoss(f"the store's catalog reported an error: {e}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_store(root: str) -> None:
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    os.makedirs(os.path.join(root, PACKS_DIR), mode=0o700, exist_ok=True)
    secret_path = os.path.join(root, SECRET_FILE)
    if not os.path.exists(secret_path):
        tmp = secret_path + ".tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, secret_path)
    for name in (LOCK_FILE, GATE_FILE):
        path = os.path.join(root, name)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    conn = connect(os.path.join(root, CATALOG_FILE))
    try:
        init_schema(conn)
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('format_version', ?), "
            "('created_at', ?), ('store_id', ?), ('refs_rule', ?)",
            (str(FORMAT_VERSION), str(time.time()), secrets.token_hex(8), REFS_RULE),
        )
    finally:
        conn.close()
    _fsync_dir(os.path.join(root, PACKS_DIR))
    _fsync_dir(root)
    _fsync_dir(parent)
