"""The daemon's open workspaces.

The store's catalog is the truth about which workspaces exist; this registry only caches the
open Workspace objects (directory handle, stat cache, later the watcher). A call naming a
workspace the daemon has not opened yet (after a restart, or after CloseWorkspace) opens it on
demand, so client handles survive daemon restarts.

Locks: `_create` serializes the calls that add or remove workspaces (open, fork, close), so
two concurrent opens cannot both pass the no-overlap check. Calls on existing workspaces never
take it; opening one on demand takes only a per-workspace gate.
"""

from __future__ import annotations

import os
import threading

from ..admission import AdmissionGate
from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..store.store import Store
from ..workspace import Workspace, WorkspaceSettings, fork, validate_workspace_path
from . import convert


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


class Registry:
    def __init__(self, store: Store, admission: AdmissionGate | None = None) -> None:
        self.store = store
        self.admission = admission  # shared by the open workspaces' short snapshots
        self._open: dict[int, Workspace] = {}
        self._lock = threading.Lock()  # guards _open and _gates
        self._gates: dict[int, threading.Lock] = {}
        self._create = threading.Lock()

    # --- lookup -------------------------------------------------------------------------------
    def get(self, ws_id: int) -> Workspace:
        """The open workspace with this id, opening it if the store knows it."""
        if ws_id <= 0:
            raise InvalidArgument("workspace_id is required (the id OpenWorkspace returned)")
        ws = self._open.get(ws_id)
        if ws is not None and not ws.closed:
            return ws
        with self._lock:
            gate = self._gates.setdefault(ws_id, threading.Lock())
        with gate:
            ws = self._open.get(ws_id)
            if ws is not None and not ws.closed:
                return ws
            rec = self.store.get_workspace_by_id(ws_id)
            if rec is None:
                raise NotFound(
                    f"workspace {ws_id} does not exist (it may have been forgotten); open its "
                    "directory with OpenWorkspace"
                )
            ws = Workspace.open(self.store, rec.path, WorkspaceSettings.from_dict(rec.settings))
            self._adopt(ws)
            return ws

    def _adopt(self, ws: Workspace) -> None:
        ws.admission = self.admission
        with self._lock:
            self._open[ws.id] = ws

    def peek(self, ws_id: int) -> Workspace | None:
        """The workspace if the daemon holds it open; never opens it."""
        ws = self._open.get(ws_id)
        return ws if ws is not None and not ws.closed else None

    def watcher_counters(self, ws_id: int) -> dict | None:
        """A copy of the open workspace's file watcher counters; None if it is not open or
        has no watcher."""
        ws = self.peek(ws_id)
        watcher = ws.watcher if ws is not None else None
        if watcher is None:
            return None
        # settled: 1 once the watches are set up and the walk after them is done; from then
        # on snapshots use the watcher's events (before, the first one walks the tree).
        return {**watcher.counters, "settled": int(ws.settled.is_set())}

    def is_open(self, ws_id: int) -> bool:
        ws = self._open.get(ws_id)
        return ws is not None and not ws.closed

    def open_settings(self, ws_id: int) -> WorkspaceSettings | None:
        ws = self._open.get(ws_id)
        return ws.settings if ws is not None else None

    def count(self) -> int:
        return sum(1 for ws in list(self._open.values()) if not ws.closed)

    # --- adding and removing ------------------------------------------------------------------
    def open(self, path: str, settings: convert.pb.WorkspaceSettings | None):
        """(workspace, created). Idempotent per path; given settings replace the stored ones."""
        real = validate_workspace_path(path)
        with self._create:
            rec = self.store.get_workspace(real)
            if rec is not None:
                ws = self.get(rec.id)
                wanted = convert.merge_settings(ws.settings.to_dict(), settings)
                if wanted != ws.settings:
                    ws.update_settings(wanted)
                return ws, False
            ws = Workspace.open(self.store, real, convert.merge_settings(None, settings))
            self._adopt(ws)
            return ws, True

    def fork(self, snapshot_id: str, path: str, settings: convert.pb.WorkspaceSettings | None):
        """(new workspace, its first snapshot)."""
        if not isinstance(path, str) or not os.path.isabs(path) or "\x00" in path:
            raise InvalidArgument(f"fork target {path!r} must be an absolute path")
        with self._create:
            src = self.store.find_snapshot(snapshot_id)
            # Check before the engine creates the directory, so a refused fork leaves nothing
            # behind inside another workspace.
            real = os.path.realpath(path)
            store_root = os.path.realpath(self.store.root)
            if _inside(real, store_root) or _inside(store_root, real):
                raise FailedPrecondition(f"fork target {path} overlaps the snapd store")
            for other in self.store.list_workspaces():
                if _inside(real, other.path) or _inside(other.path, real):
                    raise FailedPrecondition(
                        f"fork target {path} overlaps workspace {other.path}; workspaces may "
                        "not be nested. Pick a directory outside every workspace"
                    )
            chosen = None
            if settings is not None:
                origin = self.store.get_workspace_by_id(src.workspace_id)
                chosen = convert.merge_settings(origin.settings if origin else None, settings)
            ws, rec = fork(self.store, src.id, path, chosen)
            self._adopt(ws)
            return ws, rec

    def close(self, ws_id: int, *, forget: bool = False) -> int:
        """Release an open workspace; with forget, delete it from the store. Returns the
        number of snapshots deleted."""
        if ws_id <= 0:
            raise InvalidArgument("workspace_id is required (the id OpenWorkspace returned)")
        with self._create:
            if self.store.get_workspace_by_id(ws_id) is None:
                raise NotFound(f"workspace {ws_id} does not exist")
            with self._lock:
                ws = self._open.pop(ws_id, None)
            if ws is not None:
                ws.close()  # waits for an operation in progress on it
            return self.store.remove_workspace(ws_id) if forget else 0

    def close_all(self) -> None:
        with self._lock:
            items = list(self._open.values())
            self._open.clear()
        for ws in items:
            ws.close()
