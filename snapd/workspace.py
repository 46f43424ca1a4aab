"""The per-workspace manager: snapshot, restore, diff and fork one workspace directory.

It owns the workspace's root descriptor, its in-memory index (the stat cache), its exclude
rules, and a lock that serializes operations on this workspace; different workspaces run in
parallel. It drives the scanner and the restorer and commits through the store, which knows
nothing of directories.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from . import index as idx
from .admission import AdmissionGate
from .diff import diff_trees
from .errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from .fsutil import LOCAL_FS_TYPES, fs_type, open_root
from .ignore import IGNORE_FILE, INTERNAL_PREFIX, Excludes, combine
from .index import DirNode
from .restore import Applier, Change, Planner, RestoreStats, parse_paths, verify_needed
from .scanner import Scanner, ScanStats, encode_dirty
from .store.catalog import SnapshotRecord
from .store.store import IndexDelta, NewSnapshot, Retention, Store
from .watcher import DirtySet, TreeWatcher

log = logging.getLogger("snapd.workspace")

# The timestamp probe file an open creates and removes in the workspace root.
PROBE_PREFIX = INTERNAL_PREFIX + b"probe-"
# A watched snapshot of at most this many dirty paths (and no subtree to rescan) waits for its
# turn at the daemon's admission gate; larger ones compute alongside (snapd/admission.py).
ADMIT_MAX_PATHS = 1000


@dataclass
class WorkspaceSettings:
    exclude: list[str] = field(default_factory=list)
    keep_last: int = 5
    keep_durable: int = 20
    durable_max_age: float | None = None
    watch: bool = True

    def retention(self) -> Retention:
        return Retention(self.keep_last, self.keep_durable, self.durable_max_age)

    def validate(self) -> None:
        self.retention().validate()
        if not isinstance(self.exclude, list) or not all(isinstance(p, str) for p in self.exclude):
            raise InvalidArgument("exclude must be a list of gitignore-style patterns")
        try:
            Excludes.validate(self.exclude)
        except ValueError as e:
            raise InvalidArgument(str(e)) from e

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WorkspaceSettings:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Hints:
    """Paths that may have changed since the index was last brought up to date."""

    paths: set[bytes] = field(default_factory=set)
    subtrees: set[bytes] = field(default_factory=set)  # rescan these recursively


@dataclass
class RestoreResult:
    snapshot_id: str
    safety_snapshot_id: str | None
    dry_run: bool
    changes: list[Change]
    stats: RestoreStats
    duration_ms: float


def validate_workspace_path(path: str) -> str:
    """Canonical path of a directory that may become a workspace, or a precise error."""
    if not isinstance(path, str) or not path:
        raise InvalidArgument("workspace path must be a non-empty string")
    if "\x00" in path:
        raise InvalidArgument("workspace path must not contain NUL bytes")
    if not os.path.isabs(path):
        raise InvalidArgument(f"workspace path {path!r} must be absolute")
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise NotFound(f"workspace directory {path} does not exist; create it first") from None
    except PermissionError:
        raise PermissionDenied(f"cannot access {path}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"workspace path {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise PermissionDenied(
            f"workspace {path} is owned by uid {st.st_uid}; this daemon runs as uid "
            f"{os.geteuid()} and only manages directories its user owns"
        )
    if real == "/":
        raise InvalidArgument("the file system root cannot be a workspace")
    return real


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def probe_timestamps(rootfd: int) -> tuple[bool, bool]:
    """(fine timestamps, directory mtimes track entries) for the workspace's file system.

    Fine: a write right after an fstat always gets a later ctime. Linux 6.13+ gives ext4, xfs,
    btrfs and tmpfs such "multigrain" timestamps; then no stat entry is ever racy. On coarse file
    systems a write within one clock tick can leave stat data unchanged, so recently changed
    files are re-read on the next scan.
    Directory mtimes: creating and removing an entry visibly changes the directory's mtime and
    ctime (checked here, and only trusted on local file systems that are known to do so); then a
    full walk need not list a directory whose stat data is unchanged.
    """
    name = PROBE_PREFIX + secrets.token_hex(6).encode()
    before = os.fstat(rootfd)
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=rootfd)
    except OSError:
        return False, False
    try:
        created = os.fstat(rootfd)
        last = os.fstat(fd).st_ctime_ns
        fine = True
        for i in range(5):
            os.pwrite(fd, b"x", i)
            now = os.fstat(fd).st_ctime_ns
            if now <= last:
                fine = False
                break
            last = now
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=rootfd)
    removed = os.fstat(rootfd)
    dirs_ok = (
        before.st_mtime_ns < created.st_mtime_ns < removed.st_mtime_ns
        and before.st_ctime_ns < created.st_ctime_ns < removed.st_ctime_ns
    )
    return fine, dirs_ok


def check_placement(store: Store, real: str) -> None:
    """A workspace may not contain the store, lie inside it, or overlap another workspace."""
    store_root = os.path.realpath(store.root)
    if _inside(store_root, real):
        raise FailedPrecondition(
            f"workspace {real} contains the snapd store ({store_root}); choose a directory "
            "outside the store or move the store"
        )
    if _inside(real, store_root):
        raise FailedPrecondition(f"workspace {real} is inside the snapd store")
    for other in store.list_workspaces():
        if other.path != real and (_inside(real, other.path) or _inside(other.path, real)):
            raise FailedPrecondition(
                f"workspace {real} overlaps workspace {other.path}; workspaces may not be "
                "nested. Forget the other one first (snapd workspaces forget PATH) or pick "
                "another directory"
            )


def remove_leftovers(rootfd: int) -> int:
    """Delete snapd's own temporary names left in the root by a killed process."""
    removed = 0
    with os.scandir(rootfd) as it:
        for de in it:
            name = os.fsencode(de.name)
            if name.startswith(INTERNAL_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=rootfd)
                    removed += 1
    return removed


class Workspace:
    """One workspace directory bound to a store. Thread-safe (operations are serialized)."""

    def __init__(
        self,
        store: Store,
        ws_id: int,
        path: str,
        settings: WorkspaceSettings,
    ) -> None:
        self.store = store
        self.id = ws_id
        self.path = path
        self.settings = settings
        self.lock = threading.RLock()
        self.rootfd = open_root(path)
        with contextlib.suppress(OSError):
            remove_leftovers(self.rootfd)  # cookies, probes, restore temporaries of a crash
        self.fine_timestamps, dirs_ok = probe_timestamps(self.rootfd)
        self.trust_dir_mtime = dirs_ok and fs_type(path) in LOCAL_FS_TYPES
        # Inode -> paths of files with several names inside the workspace: a write through one
        # name changes them all, but a watcher or a hint reports only the name written.
        self.links: dict[int, set[bytes]] = {}
        self._links_known = False  # rebuilt by every full walk
        self._ignore_bytes: bytes | None = None
        self._pending_full = False
        self._walk_due = False  # a failed operation: the next scan walks everything
        self._taken: DirtySet | None = None  # see _scan
        self._caller_hints = False
        self.excludes = Excludes(list(settings.exclude))
        self._refresh_excludes()
        self.root: DirNode = DirNode()
        self._replace_index = True
        self._load_index()
        latest = store.latest_snapshot(ws_id)
        self.current_snapshot: str | None = latest.id if latest else None
        self.closed = False
        self.last_stats: dict = {}
        self._racy_paths: set[bytes] = set()
        self.watcher: TreeWatcher | None = None
        # The daemon's gate for short snapshots (snapd/admission.py); None: not shared.
        self.admission: AdmissionGate | None = None
        self._admission_wait_ms: float | None = None  # the last scan's wait there, if it queued
        # Compresses what large ingests read while they read on (ObjectWriter.compress_behind):
        # one thread per workspace, so one workspace's first snapshot delays no other's commits.
        self._compress_helper: ThreadPoolExecutor | None = None
        # Set once the watcher is ready and the walk that follows is done (or failed): from
        # then on snapshots use the watcher's events. Set at once without a watcher.
        self.settled = threading.Event()
        if settings.watch:
            self.start_watcher()
        else:
            self.settled.set()

    # --- opening ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        store: Store,
        path: str,
        settings: WorkspaceSettings | None = None,
    ) -> Workspace:
        settings = settings or WorkspaceSettings()
        settings.validate()
        real = validate_workspace_path(path)
        check_placement(store, real)
        rec = store.ensure_workspace(real, settings.to_dict())
        return cls(store, rec.id, real, settings)

    def start_watcher(self) -> None:
        # Under the lock: the watcher's setup thread can finish and start the settling walk
        # (refresh(), which takes this lock) before the constructor returns. Without the lock
        # that walk could run while self.watcher was still None: it walked the tree without
        # taking the watcher's "scan everything" state, and the first snapshot after
        # settling walked the whole tree again.
        with self.lock:
            if self.watcher is None:
                self.settled.clear()
                self.watcher = TreeWatcher(
                    self.path, self._watch_excluded, on_ready=self._refresh_when_watched
                )

    def _refresh_when_watched(self) -> None:
        """Once every directory is watched, walk the tree once in the background.

        Changes made while the watches were being added may have raised no event, so the
        first snapshot after that must walk the whole tree. Doing that walk here instead (on
        its own thread: it waits for the workspace lock, which close() holds while it stops
        the watcher) keeps that cost out of the caller's first snapshot after an open.
        """

        def run() -> None:
            try:
                self.refresh()
            except FailedPrecondition:
                pass  # closed meanwhile
            except Exception as e:  # the next snapshot walks the tree instead
                log.warning("background scan of %s after its watches failed: %s", self.path, e)
            finally:
                self.settled.set()

        threading.Thread(target=run, name="snapd-watch-ready-scan", daemon=True).start()

    def stop_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        self.settled.set()

    def _watch_excluded(self, rel: bytes, is_dir: bool) -> bool:
        return self.excludes.excluded(rel, is_dir)

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.stop_watcher()
                os.close(self.rootfd)
                if self._compress_helper is not None:
                    self._compress_helper.shutdown(wait=True)

    def _helper(self) -> ThreadPoolExecutor:
        """This workspace's compression helper thread (started by its first large ingest)."""
        if self._compress_helper is None:
            self._compress_helper = ThreadPoolExecutor(
                1, thread_name_prefix=f"snapd-compress-{self.id}"
            )
        return self._compress_helper

    def _reload_index(self, *, wrote_files: bool = False) -> None:
        """After a failed operation: back to the index as last committed, and make sure the
        next scan finds again what the failed one had found. The watcher's paths it took go
        back to the watcher. Paths a caller gave as hints cannot be given back, and a failed
        restore or fork may have changed files: then the next scan walks the whole tree."""
        self._load_index()
        taken, self._taken = self._taken, None
        if taken is not None and self.watcher is not None:
            self.watcher.put_back(taken)
        if wrote_files or self._caller_hints:
            self._walk_due = True
        # The entries to re-check on every hinted scan, as the committed index has them.
        self._racy_paths = {
            p for p, n in idx.walk(self.root) if n.__class__ is idx.FileNode and n.racy
        }

    def _check_open(self) -> None:
        if self.closed:
            raise FailedPrecondition(f"workspace {self.path} is closed; open it again")

    def _load_index(self) -> None:
        rows = self.store.load_index(self.id)
        root = idx.load(rows) if rows else None
        if root is None:
            self.root = DirNode()
            self._replace_index = True
        else:
            self.root = root
            self._replace_index = False

    def update_settings(self, settings: WorkspaceSettings) -> None:
        settings.validate()
        with self.lock:
            self.settings = settings
            self.store.ensure_workspace(self.path, settings.to_dict())
            self._refresh_excludes(force=True)
            if settings.watch:
                self.start_watcher()
            else:
                self.stop_watcher()

    # --- excludes -----------------------------------------------------------------------------
    def _read_ignore_file(self) -> bytes | None:
        try:
            fd = os.open(
                IGNORE_FILE,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=self.rootfd,
            )
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, 1024 * 1024)
        finally:
            os.close(fd)

    def _refresh_excludes(self, force: bool = False) -> bool:
        """Re-read .snapdignore; True if the effective rules changed (a full scan is due)."""
        data = self._read_ignore_file()
        if data == self._ignore_bytes and not force:
            return self._pending_full
        self._ignore_bytes = data
        new = combine(list(self.settings.exclude), data)
        if new != self.excludes or force:
            self._pending_full = True  # cleared by the next successful scan
        self.excludes = new
        return self._pending_full

    # --- snapshot -----------------------------------------------------------------------------
    def _scan(
        self,
        sink,
        hints: Hints | None,
        *,
        full: bool = False,
        admitted: contextlib.ExitStack | None = None,
    ) -> tuple[bytes, IndexDelta, ScanStats]:
        """Bring the index up to date; returns (root tree id, persisted-index delta, stats).

        hints=None uses the watcher's dirty set when it has one, else walks the whole tree;
        full=True always walks (it catches what no watcher sees, e.g. writes through a hard
        link from outside the workspace or through a shared mmap). admitted: a short scan
        waits for its turn at the admission gate, and holds it until this stack closes.
        """
        # Until the operation commits, what it took from the watcher (given back on failure by
        # _reload_index, which every caller runs then) and whether a caller chose the paths.
        self._taken, self._caller_hints = None, hints is not None and not full
        self._admission_wait_ms = None
        watcher = self.watcher
        if hints is None and watcher is not None and watcher.ready.is_set():
            watcher.barrier()
            self._taken = taken = watcher.take()
            if not taken.full and not full:
                hints = Hints(taken.paths, taken.subtrees)
        if full:
            hints = None
        return self._scan_hinted(sink, hints, admitted)

    def _scan_hinted(
        self, sink, hints: Hints | None, admitted: contextlib.ExitStack | None = None
    ) -> tuple[bytes, IndexDelta, ScanStats]:
        excludes_changed = self._refresh_excludes()
        if excludes_changed and self.watcher is not None:
            self.watcher.rewatch()
        full = (
            hints is None
            or self._replace_index
            or excludes_changed
            or not self._links_known
            or self._walk_due
        )
        if (
            admitted is not None
            and self.admission is not None
            and hints is not None
            and not full
            and not hints.subtrees
            and len(hints.paths) <= ADMIT_MAX_PATHS
        ):
            t = time.perf_counter()
            admitted.enter_context(self.admission.admit())  # after the barrier: waits overlap
            self._admission_wait_ms = (time.perf_counter() - t) * 1000
        scanner = Scanner(
            self.rootfd,
            self.root,
            self.excludes,
            sink,
            fine_timestamps=self.fine_timestamps,
            links=self.links,
            # New exclude rules may un-exclude names no listing recorded: list everything.
            trust_dir_mtime=self.trust_dir_mtime and not excludes_changed,
            compress_helper=self._helper,
        )
        if full:
            scanner.full()
            self.links, self._links_known = scanner.found_links, True
        else:
            # Racy entries (coarse timestamps, large files caught mid-write) are re-checked by
            # every hinted pass, whoever gave the hints.
            scanner.paths(hints.paths | self._racy_paths, hints.subtrees)
        scanner.stats.scan = "full" if full else "hinted"
        scanners = [scanner]
        if scanner.ignore_file_changed and self._refresh_excludes():
            again = Scanner(
                self.rootfd,
                self.root,
                self.excludes,
                sink,
                fine_timestamps=self.fine_timestamps,
                compress_helper=self._helper,
            )
            again.full()
            self.links = again.found_links
            scanners.append(again)
        dirs: list[tuple[bytes, idx.Node]] = []
        root_id = encode_dirty(self.root, sink, dirs)
        delta = IndexDelta(replace_all=self._replace_index)
        changed: dict[bytes, idx.Node] = {}
        removed: set[bytes] = set()
        for sc in scanners:
            for p in sc.removed:
                changed.pop(p, None)
            removed |= sc.removed | sc.cleared
            changed.update(sc.changed)
        for p, node in dirs:
            changed[p] = node
        if any(sc.dropped_dirs for sc in scanners):
            changed = idx.live_changes(self.root, changed)
        if self._replace_index:
            changed = dict(idx.walk(self.root))
            changed[b""] = self.root
            removed = set()
        delta.deletes = sorted(removed - set(changed))
        delta.delete_subtrees = sorted(removed)
        delta.upserts = [(p, idx.encode_record(n)) for p, n in changed.items()]
        self._pending_full = self._walk_due = False
        # Racy entries (coarse timestamps only) are re-checked by the next hinted scan too.
        self._racy_paths = {p for p, n in changed.items() if isinstance(n, idx.FileNode) and n.racy}
        stats = scanner.stats
        for extra in scanners[1:]:
            stats = extra.stats
        return root_id, delta, stats

    def snapshot(
        self,
        label: str = "",
        metadata: dict[str, str] | None = None,
        *,
        durable: bool = False,
        pinned: bool = False,
        hints: Hints | None = None,
        origin: str = "user",
        full: bool = False,
    ) -> SnapshotRecord:
        """Take a snapshot: of the watcher's dirty paths when there is a watcher, of the
        hinted paths when hints are given, of the whole tree otherwise or with full=True."""
        metadata = _check_metadata(metadata)
        t0 = time.perf_counter()
        with self.lock, contextlib.ExitStack() as admitted:
            self._check_open()
            with self.store.writer() as w:
                try:
                    root_id, delta, stats = self._scan(w, hints, full=full, admitted=admitted)
                    w.wait()  # the helper's compressed sizes count in new_bytes
                    st = stats.as_dict()
                    st["logical_bytes"], st["total_files"] = self.root.subtree_totals()
                    if self.watcher is not None:
                        st["watcher"] = dict(self.watcher.counters)
                    if self._admission_wait_ms is not None:
                        st["admission_wait_ms"] = round(self._admission_wait_ms, 3)
                    st.update(
                        new_objects=w.new_objects,
                        new_bytes=w.new_bytes,
                        reused_objects=w.reused,
                        changed_entries=len(delta.upserts),
                        duration_ms=round((time.perf_counter() - t0) * 1000, 3),
                    )
                    rec = w.commit(
                        workspace_id=self.id,
                        head=root_id,
                        snapshot=NewSnapshot(
                            root_id,
                            label,
                            metadata,
                            origin,
                            self.current_snapshot,
                            st,
                            pinned,
                            list(self.excludes.patterns),
                        ),
                        index=delta,
                        durable=durable,
                        retention=self.settings.retention(),
                    )
                except BaseException:
                    self._reload_index()
                    raise
            self._replace_index = False
            assert rec is not None
            self.current_snapshot = rec.id
            self.last_stats = st
            return rec

    def refresh(self, hints: Hints | None = None) -> bytes:
        """Bring the index and the workspace head up to date without a snapshot record."""
        with self.lock:
            self._check_open()
            with self.store.writer() as w:
                try:
                    root_id, delta, _ = self._scan(w, hints)
                    w.commit(workspace_id=self.id, head=root_id, index=delta)
                except BaseException:
                    self._reload_index()
                    raise
            self._replace_index = False
            return root_id

    # --- restore ------------------------------------------------------------------------------
    def restore(
        self,
        snapshot_id: str,
        paths: list[str] | None = None,
        *,
        dry_run: bool = False,
        hints: Hints | None = None,
    ) -> RestoreResult:
        """Make the workspace (or just `paths`) equal to a snapshot of this workspace.

        A safety snapshot of the current state is taken first (unless it equals the latest
        snapshot), so the restore can be undone by restoring it.
        """
        t0 = time.perf_counter()
        scope = parse_paths(paths) if paths else None
        with self.lock:
            self._check_open()
            target = self.store.find_snapshot(snapshot_id, self.id)
            target_excludes = Excludes(list(target.excludes))
            with self.store.writer() as w:
                try:
                    root_id, delta, stats = self._scan(w, hints)
                    safety_id = None
                    same = self.store.snapshot_with_tree(self.id, root_id)
                    if dry_run:
                        w.commit(workspace_id=self.id, head=root_id, index=delta)
                    elif same is not None:
                        # The current state is saved already (e.g. a redo after an undo): no
                        # duplicate safety snapshot crowding the window.
                        safety_id = same
                        w.commit(workspace_id=self.id, head=root_id, index=delta)
                    else:
                        st = stats.as_dict()
                        st["logical_bytes"], st["total_files"] = self.root.subtree_totals()
                        rec = w.commit(
                            workspace_id=self.id,
                            head=root_id,
                            snapshot=NewSnapshot(
                                root_id,
                                f"before restore to {target.id}",
                                {"restore_target": target.id},
                                "safety",
                                self.current_snapshot,
                                st,
                                False,
                                list(self.excludes.patterns),
                            ),
                            index=delta,
                        )
                        assert rec is not None
                        safety_id = rec.id
                    self._replace_index = False
                    planner = Planner(self.store, self.excludes, target_excludes)
                    plan = planner.plan(self.root, target.root_tree, scope)
                    if dry_run or plan is None:
                        return RestoreResult(
                            target.id,
                            safety_id,
                            dry_run,
                            planner.changes,
                            RestoreStats(),
                            round((time.perf_counter() - t0) * 1000, 3),
                        )
                    contents = verify_needed(self.store, planner.needed)
                    watched = self.watcher is not None and self.watcher.ready.is_set()
                    applier = Applier(
                        self.store,
                        self.rootfd,
                        contents,
                        fine_timestamps=self.fine_timestamps,
                        check_listings=not watched,
                    )
                    applier.apply(self.root, plan, target.root_tree if scope is None else None)
                    dirs: list[tuple[bytes, idx.Node]] = []
                    head = encode_dirty(self.root, w, dirs)
                    changed = dict(applier.changed)
                    changed.update(dirs)
                    if applier.dropped_dirs:
                        changed = idx.live_changes(self.root, changed)
                    removed = applier.removed | applier.cleared
                    w.commit(
                        workspace_id=self.id,
                        head=head,
                        index=IndexDelta(
                            upserts=[(p, idx.encode_record(n)) for p, n in changed.items()],
                            deletes=sorted(removed - set(changed)),
                            delete_subtrees=sorted(removed),
                        ),
                        retention=self.settings.retention(),
                        protect={target.id},  # the safety snapshot may push it out
                    )
                except BaseException:
                    self._reload_index(wrote_files=True)
                    raise
            if scope is None:
                self.current_snapshot = target.id
            return RestoreResult(
                target.id,
                safety_id,
                False,
                planner.changes,
                applier.stats,
                round((time.perf_counter() - t0) * 1000, 3),
            )

    # --- inspection ---------------------------------------------------------------------------
    def diff(
        self, old_id: str, new_id: str | None = None, hints: Hints | None = None
    ) -> Iterator[Change]:
        """Changes from snapshot old_id to snapshot new_id, or to the live workspace."""
        with self.lock:
            self._check_open()
            old = self.store.find_snapshot(old_id)
            if new_id is not None:
                new = self.store.find_snapshot(new_id)
                changes = list(diff_trees(self.store, old.root_tree, new.root_tree))
            else:
                self.refresh(hints)
                changes = list(diff_trees(self.store, old.root_tree, self.root))
        return iter(changes)

    def snapshots(self, limit: int = -1, before_seq: int | None = None) -> list[SnapshotRecord]:
        return self.store.list_snapshots(self.id, limit=limit, before_seq=before_seq)

    def get_snapshot(self, snap_id: str) -> SnapshotRecord:
        return self.store.find_snapshot(snap_id, self.id)

    def persist(self, snap_id: str) -> SnapshotRecord:
        rec = self.get_snapshot(snap_id)
        return self.store.persist(rec.id)

    def pin(self, snap_id: str, pinned: bool = True) -> SnapshotRecord:
        rec = self.get_snapshot(snap_id)
        self.store.set_pinned(rec.id, pinned)
        return self.store.get_snapshot(rec.id)

    def delete_snapshot(self, snap_id: str, *, force: bool = False) -> None:
        rec = self.get_snapshot(snap_id)
        if rec.pinned and not force:
            raise FailedPrecondition(
                f"snapshot {rec.id} is pinned; unpin it first or delete it with force"
            )
        self.store.delete_snapshot(rec.id)


def fork(
    store: Store,
    snapshot_id: str,
    new_path: str,
    settings: WorkspaceSettings | None = None,
) -> tuple[Workspace, SnapshotRecord]:
    """Restore a snapshot into a new, empty directory that becomes a new workspace."""
    src = store.find_snapshot(snapshot_id)
    if not isinstance(new_path, str) or not os.path.isabs(new_path):
        raise InvalidArgument(f"fork target {new_path!r} must be an absolute path")
    created = False
    if os.path.lexists(new_path):
        if not os.path.isdir(new_path) or os.path.islink(new_path) or os.listdir(new_path):
            raise FailedPrecondition(f"fork target {new_path} exists and is not an empty directory")
    else:
        parent = os.path.dirname(os.path.abspath(new_path))
        if not os.path.isdir(parent):
            raise NotFound(f"parent directory of fork target {new_path} does not exist")
        # Refuse before creating anything (the check runs again, on the real path, at open).
        check_placement(store, os.path.join(os.path.realpath(parent), os.path.basename(new_path)))
        os.mkdir(new_path, 0o755)
        created = True
    if settings is None:
        origin_ws = store.get_workspace_by_id(src.workspace_id)
        settings = WorkspaceSettings.from_dict(origin_ws.settings if origin_ws else {})
    try:
        ws = Workspace.open(store, new_path, settings)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(new_path)
        raise
    with ws.lock:
        planner = Planner(store, ws.excludes, Excludes(list(src.excludes)))
        with store.writer() as w:
            try:
                plan = planner.plan(ws.root, src.root_tree, None)
                contents = verify_needed(store, planner.needed)
                applier = Applier(store, ws.rootfd, contents, fine_timestamps=ws.fine_timestamps)
                if plan is not None:
                    applier.apply(ws.root, plan, src.root_tree)
                dirs: list[tuple[bytes, idx.Node]] = []
                head = encode_dirty(ws.root, w, dirs)
                nodes = dict(idx.walk(ws.root))
                nodes[b""] = ws.root
                rec = w.commit(
                    workspace_id=ws.id,
                    head=head,
                    snapshot=NewSnapshot(
                        head,
                        f"fork of {src.id}",
                        {"forked_from": src.id},
                        "fork",
                        src.id,
                        {"files_written": applier.stats.files_written},
                        False,
                        list(ws.excludes.patterns),
                    ),
                    index=IndexDelta(
                        upserts=[(p, idx.encode_record(n)) for p, n in nodes.items()],
                        replace_all=True,
                    ),
                    retention=ws.settings.retention(),
                )
            except BaseException:
                ws._reload_index(wrote_files=True)
                raise
        ws._replace_index = False
        assert rec is not None
        ws.current_snapshot = rec.id
    return ws, rec


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidArgument("snapshot metadata must map strings to strings")
    if sum(len(k) + len(v) for k, v in metadata.items()) > 64 * 1024:
        raise InvalidArgument("snapshot metadata is larger than 64 KiB")
    return dict(metadata)


def iter_paths(values: Iterable[str]) -> set[bytes]:
    return {os.fsencode(v) for v in values}
