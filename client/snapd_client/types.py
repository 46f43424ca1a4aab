"""Typed results of client calls, converted from the wire messages.

Field names follow the engine's (snapd.store.catalog.SnapshotRecord, snapd.restore.Change,
snapd.browse.Entry) so code moves between in-process and client use without renaming.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ._proto import snapd_pb2 as pb

_ORIGIN = {
    pb.SNAPSHOT_ORIGIN_USER: "user",
    pb.SNAPSHOT_ORIGIN_SAFETY: "safety",
    pb.SNAPSHOT_ORIGIN_FORK: "fork",
}
_CHANGE = {
    pb.CHANGE_TYPE_ADDED: "added",
    pb.CHANGE_TYPE_MODIFIED: "modified",
    pb.CHANGE_TYPE_DELETED: "deleted",
    pb.CHANGE_TYPE_TYPE_CHANGED: "type_changed",
    pb.CHANGE_TYPE_METADATA: "metadata",
}
_KIND = {
    pb.ENTRY_KIND_FILE: "file",
    pb.ENTRY_KIND_DIRECTORY: "dir",
    pb.ENTRY_KIND_SYMLINK: "symlink",
}


def _struct(msg) -> dict[str, Any]:
    """A google.protobuf.Struct as a dict; whole numbers come back as int.

    Written out by hand: json_format.MessageToDict is several times slower."""
    if msg is None:
        return {}
    return {k: _value(v) for k, v in msg.fields.items()}


def _value(v) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        n = v.number_value
        return int(n) if n.is_integer() and abs(n) < 2**53 else n
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return _struct(v.struct_value)
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    return None


def _time(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


def _path(path: str, raw: bytes) -> str:
    """The path as the engine spells it: non-UTF-8 names decoded with surrogateescape."""
    return os.fsdecode(raw) if raw else path


@dataclass(frozen=True)
class WorkspaceSettings:
    keep_last: int = 5
    keep_durable: int = 20
    durable_max_age: float | None = None  # seconds
    watch: bool = True
    exclude: list[str] = field(default_factory=list)

    @classmethod
    def from_pb(cls, m: pb.WorkspaceSettings) -> WorkspaceSettings:
        return cls(
            keep_last=m.keep_last,
            keep_durable=m.keep_durable,
            durable_max_age=m.durable_max_age_seconds or None,
            watch=m.watch,
            exclude=list(m.exclude.patterns),
        )


def settings_pb(
    *,
    keep_last: int | None = None,
    keep_durable: int | None = None,
    durable_max_age: float | None = None,
    watch: bool | None = None,
    exclude: list[str] | None = None,
) -> pb.WorkspaceSettings:
    """Request settings: None leaves a setting as it is (the default for a new workspace)."""
    m = pb.WorkspaceSettings()
    if keep_last is not None:
        m.keep_last = keep_last
    if keep_durable is not None:
        m.keep_durable = keep_durable
    if durable_max_age is not None:
        m.durable_max_age_seconds = durable_max_age
    if watch is not None:
        m.watch = watch
    if exclude is not None:
        if isinstance(exclude, str):
            raise TypeError("exclude must be a list of patterns, not a string")
        m.exclude.patterns.extend(exclude)
    return m


@dataclass(frozen=True)
class WorkspaceInfo:
    id: int
    path: str
    settings: WorkspaceSettings
    created_at: float
    open: bool
    latest_snapshot_id: str | None

    @classmethod
    def from_pb(cls, m: pb.Workspace) -> WorkspaceInfo:
        return cls(
            id=m.id,
            path=m.path,
            settings=WorkspaceSettings.from_pb(m.settings),
            created_at=_time(m.create_time),
            open=m.open,
            latest_snapshot_id=m.latest_snapshot_id or None,
        )


@dataclass(frozen=True)
class Snapshot:
    id: str
    workspace_id: int
    parent_id: str | None
    created_at: float  # unix seconds
    label: str
    metadata: dict[str, str]
    origin: str  # "user" | "safety" | "fork"
    durable: bool
    pinned: bool
    stats: dict[str, Any]
    excludes: list[str]
    seq: int

    @classmethod
    def from_pb(cls, m: pb.Snapshot) -> Snapshot:
        return cls(
            id=m.id,
            workspace_id=m.workspace_id,
            parent_id=m.parent_id or None,
            created_at=_time(m.create_time),
            label=m.label,
            metadata=dict(m.metadata),
            origin=_ORIGIN.get(m.origin, "user"),
            durable=m.durable,
            pinned=m.pinned,
            stats=_struct(m.stats),
            excludes=list(m.excludes),
            seq=m.sequence,
        )


@dataclass(frozen=True)
class Change:
    path: str
    change: str  # added | modified | deleted | type_changed | metadata
    kind: str  # file | dir | symlink (the new kind; the old one for deletions)
    old_size: int = 0
    new_size: int = 0

    @classmethod
    def from_pb(cls, m: pb.Change) -> Change:
        return cls(
            _path(m.path, m.path_bytes),
            _CHANGE.get(m.change, "modified"),
            _KIND.get(m.kind, "file"),
            m.old_size,
            m.new_size,
        )


@dataclass(frozen=True)
class RestoreStats:
    files_written: int = 0
    bytes_written: int = 0
    deleted: int = 0
    dirs_created: int = 0
    metadata_only: int = 0
    conflicts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreResult:
    snapshot_id: str
    safety_snapshot_id: str | None  # restore this to undo the restore
    dry_run: bool
    changes: list[Change]
    stats: RestoreStats
    duration_ms: float

    @classmethod
    def from_pb(cls, s: pb.RestoreSummary, changes: list[Change]) -> RestoreResult:
        return cls(
            snapshot_id=s.snapshot_id,
            safety_snapshot_id=s.safety_snapshot_id or None,
            dry_run=s.dry_run,
            changes=changes,
            stats=RestoreStats(
                files_written=s.files_written,
                bytes_written=s.bytes_written,
                deleted=s.deleted,
                dirs_created=s.directories_created,
                metadata_only=s.metadata_only,
                conflicts=list(s.conflicts),
            ),
            duration_ms=s.duration_ms,
        )


@dataclass(frozen=True)
class TreeEntry:
    path: str
    kind: str  # file | dir | symlink
    mode: int
    mtime_ns: int
    size: int
    target: str = ""  # symlinks
    object_id: str = ""  # hex content address (files, dirs)

    @classmethod
    def from_pb(cls, m: pb.TreeEntry) -> TreeEntry:
        return cls(
            path=_path(m.path, m.path_bytes),
            kind=_KIND.get(m.kind, "file"),
            mode=m.mode,
            mtime_ns=m.mtime_ns,
            size=m.size,
            target=m.symlink_target,
            object_id=m.object_id,
        )


@dataclass(frozen=True)
class Progress:
    phase: str
    counters: dict[str, Any]

    @classmethod
    def from_pb(cls, m: pb.Progress) -> Progress:
        return cls(m.phase, _struct(m.counters))


@dataclass(frozen=True)
class GCResult:
    deleted_objects: int
    deleted_bytes: int
    packs_compacted: int
    packs_deleted: int
    reclaimed_bytes: int
    complete: bool
    duration_s: float
    counters: dict[str, Any]

    @classmethod
    def from_pb(cls, m: pb.GarbageCollectionResult) -> GCResult:
        return cls(
            m.deleted_objects,
            m.deleted_bytes,
            m.packs_compacted,
            m.packs_deleted,
            m.reclaimed_bytes,
            m.complete,
            m.duration_seconds,
            _struct(m.counters),
        )


@dataclass(frozen=True)
class Problem:
    snapshot_id: str
    path: str
    object_id: str
    error: str


@dataclass(frozen=True)
class RefcountRepair:
    """What verify(repair=True) did: every reference count recomputed, the wrong ones fixed."""

    objects_fixed: int
    objects: int
    unreadable_objects: list[str]  # hex ids of trees/chunk lists that could not be read
    missing_objects: list[str]  # hex ids referenced but absent from the catalog
    duration_s: float

    @classmethod
    def from_pb(cls, m: pb.RefcountRepair) -> RefcountRepair:
        return cls(
            objects_fixed=m.objects_fixed,
            objects=m.objects,
            unreadable_objects=list(m.unreadable_objects),
            missing_objects=list(m.missing_objects),
            duration_s=m.duration_seconds,
        )


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    snapshots_checked: int
    objects_checked: int
    bytes_checked: int
    catalog_ok: bool
    problems: list[Problem]
    problem_count: int
    damaged_snapshots: list[str]
    duration_s: float
    sample: float
    repair: RefcountRepair | None = None  # set when verify ran with repair=True

    @classmethod
    def from_pb(cls, m: pb.VerifyReport) -> VerifyReport:
        return cls(
            ok=m.ok,
            snapshots_checked=m.snapshots_checked,
            objects_checked=m.objects_checked,
            bytes_checked=m.bytes_checked,
            catalog_ok=m.catalog_ok,
            problems=[Problem(p.snapshot_id, p.path, p.object_id, p.error) for p in m.problems],
            problem_count=m.problem_count,
            damaged_snapshots=list(m.damaged_snapshots),
            duration_s=m.duration_seconds,
            sample=m.sample,
            repair=RefcountRepair.from_pb(m.repair) if m.HasField("repair") else None,
        )


@dataclass(frozen=True)
class WorkspaceStats:
    workspace_id: int
    path: str
    snapshots: int
    durable_snapshots: int
    pinned_snapshots: int
    latest_snapshot_id: str | None
    latest_created_at: float | None
    open: bool
    latest_snapshot_stats: dict[str, Any]
    # The file watcher's counters (events, overflows, watches, rescans_full, ...); None when
    # the workspace is not open in the daemon or has no watcher.
    watcher: dict[str, Any] | None = None

    @classmethod
    def from_pb(cls, m: pb.WorkspaceStats) -> WorkspaceStats:
        return cls(
            workspace_id=m.workspace_id,
            path=m.path,
            snapshots=m.snapshots,
            durable_snapshots=m.durable_snapshots,
            pinned_snapshots=m.pinned_snapshots,
            latest_snapshot_id=m.latest_snapshot_id or None,
            latest_created_at=_time(m.latest_create_time) if m.latest_snapshot_id else None,
            open=m.open,
            latest_snapshot_stats=_struct(m.latest_snapshot_stats),
            watcher=_struct(m.watcher) if m.HasField("watcher") else None,
        )


@dataclass(frozen=True)
class DaemonInfo:
    version: str
    uptime_s: float
    calls_in_flight: int
    open_workspaces: int


@dataclass(frozen=True)
class Stats:
    """store: the store-wide figures (logical_bytes, stored_bytes, dedup_ratio, ...; {} if
    skipped); workspaces: one entry per workspace asked for; daemon: the daemon itself."""

    store: dict[str, Any]
    workspaces: list[WorkspaceStats]
    daemon: DaemonInfo

    @classmethod
    def from_pb(cls, m: pb.GetStatsResponse) -> Stats:
        return cls(
            store=_struct(m.store.all) if m.HasField("store") else {},
            workspaces=[WorkspaceStats.from_pb(w) for w in m.workspaces],
            daemon=DaemonInfo(
                m.daemon.version,
                m.daemon.uptime_seconds,
                m.daemon.calls_in_flight,
                m.daemon.open_workspaces,
            ),
        )
