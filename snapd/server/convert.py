"""Engine objects to wire messages (and request settings to engine settings)."""

from __future__ import annotations

import math
import os
from typing import Any

from snapd_client._proto import snapd_pb2 as pb

from ..browse import Entry
from ..restore import Change
from ..store.catalog import SnapshotRecord, WorkspaceRecord
from ..workspace import WorkspaceSettings

ORIGIN = {
    "user": pb.SNAPSHOT_ORIGIN_USER,
    "safety": pb.SNAPSHOT_ORIGIN_SAFETY,
    "fork": pb.SNAPSHOT_ORIGIN_FORK,
}
CHANGE = {
    "added": pb.CHANGE_TYPE_ADDED,
    "modified": pb.CHANGE_TYPE_MODIFIED,
    "deleted": pb.CHANGE_TYPE_DELETED,
    "type_changed": pb.CHANGE_TYPE_TYPE_CHANGED,
    "metadata": pb.CHANGE_TYPE_METADATA,
}
KIND = {
    "file": pb.ENTRY_KIND_FILE,
    "dir": pb.ENTRY_KIND_DIRECTORY,
    "symlink": pb.ENTRY_KIND_SYMLINK,
}


def set_struct(target, data: dict[str, Any]) -> None:
    """Fill a google.protobuf.Struct with JSON-like data (non-finite floats become null).

    Written out by hand: Struct.update is several times slower, and every snapshot answer
    carries a stats struct."""
    fields = target.fields
    for key, value in data.items():
        _set_value(fields[utf8(str(key))], value)


def _set_value(v, value: Any) -> None:
    if value is None:
        v.null_value = 0
    elif isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            v.null_value = 0
        else:
            v.number_value = value
    elif isinstance(value, str):
        v.string_value = utf8(value)
    elif isinstance(value, dict):
        set_struct(v.struct_value, value)
    elif isinstance(value, list | tuple | set):
        values = v.list_value.values
        v.list_value.SetInParent()
        for item in value:
            _set_value(values.add(), item)
    elif isinstance(value, bytes):
        v.string_value = value.hex()
    else:
        v.string_value = utf8(str(value))


def utf8(text: str) -> str:
    """text, with any undecodable bytes (surrogate escapes) replaced so it encodes as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "replace")


def set_time(ts, seconds: float) -> None:
    ts.FromNanoseconds(int(seconds * 1e9))


def split_path(path: str) -> tuple[str, bytes]:
    """(UTF-8 path, raw bytes if the path is not valid UTF-8 else b"")."""
    try:
        path.encode("utf-8")
        return path, b""
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return raw.decode("utf-8", "replace"), raw


def settings_msg(s: WorkspaceSettings) -> pb.WorkspaceSettings:
    m = pb.WorkspaceSettings(
        keep_last=s.keep_last,
        keep_durable=s.keep_durable,
        durable_max_age_seconds=s.durable_max_age or 0.0,
        watch=s.watch,
    )
    m.exclude.patterns.extend(s.exclude)
    return m


def merge_settings(base: dict | None, m: pb.WorkspaceSettings | None) -> WorkspaceSettings:
    """Stored settings (or defaults) with the fields the request sets replaced."""
    s = WorkspaceSettings.from_dict(base or {})
    if m is None:
        return s
    if m.HasField("keep_last"):
        s.keep_last = m.keep_last
    if m.HasField("keep_durable"):
        s.keep_durable = m.keep_durable
    if m.HasField("durable_max_age_seconds"):
        s.durable_max_age = m.durable_max_age_seconds or None
    if m.HasField("watch"):
        s.watch = m.watch
    if m.HasField("exclude"):
        s.exclude = list(m.exclude.patterns)
    return s


def workspace_msg(
    rec: WorkspaceRecord, *, open_: bool, latest: str | None, settings: WorkspaceSettings | None
) -> pb.Workspace:
    m = pb.Workspace(id=rec.id, path=rec.path, open=open_, latest_snapshot_id=latest or "")
    m.settings.CopyFrom(settings_msg(settings or WorkspaceSettings.from_dict(rec.settings)))
    set_time(m.create_time, rec.created_at)
    return m


def snapshot_msg(rec: SnapshotRecord) -> pb.Snapshot:
    m = pb.Snapshot(
        id=rec.id,
        workspace_id=rec.workspace_id,
        parent_id=rec.parent or "",
        label=rec.label,
        metadata=rec.metadata,
        origin=ORIGIN.get(rec.origin, pb.SNAPSHOT_ORIGIN_UNSPECIFIED),
        durable=rec.durable,
        pinned=rec.pinned,
        excludes=[utf8(p) for p in rec.excludes],
        sequence=rec.seq,
    )
    set_time(m.create_time, rec.created_at)
    set_struct(m.stats, rec.stats)
    return m


def change_msg(c: Change) -> pb.Change:
    path, raw = split_path(c.path)
    return pb.Change(
        path=path,
        path_bytes=raw,
        change=CHANGE.get(c.change, pb.CHANGE_TYPE_UNSPECIFIED),
        kind=KIND.get(c.kind, pb.ENTRY_KIND_UNSPECIFIED),
        old_size=c.old_size or 0,
        new_size=c.new_size or 0,
    )


def entry_msg(e: Entry) -> pb.TreeEntry:
    path, raw = split_path(e.path)
    target, _ = split_path(e.target)
    return pb.TreeEntry(
        path=path,
        path_bytes=raw,
        kind=KIND.get(e.kind, pb.ENTRY_KIND_UNSPECIFIED),
        mode=e.mode,
        mtime_ns=e.mtime_ns,
        size=e.size,
        symlink_target=target,
        object_id=e.object_id,
    )
