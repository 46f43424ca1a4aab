"""The RPC handlers of snapd.v1.SnapdService.

Every handler is wrapped by `_unary` or `_stream`, which refuse calls while the daemon shuts
down, count calls in flight, turn exceptions into statuses (snapd.server.errors, the one place)
and log one line per call.

Change tracking: handlers pass no hints to the engine; a workspace with a file watcher uses its
dirty set by itself, one without walks the tree.

Locking: calls that change a workspace (snapshot, restore, live diff) go through the engine's
Workspace methods, which hold that workspace's lock. Reads of stored snapshots (list, get,
diff between two snapshots, list tree, read file, stats, persist/pin) use the store directly
and take no workspace lock, so they never wait behind a long snapshot or restore, of another
workspace or of the same one. They hold the store's shared lock while reading objects so that
garbage collection cannot delete what they read.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from snapd_client._proto import snapd_pb2 as pb
from snapd_client._proto import snapd_pb2_grpc as pb_grpc

from .. import browse
from ..diff import diff_trees
from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..store.store import Store
from . import convert
from .errors import ErrorMapper
from .logs import log_call
from .workspaces import Registry

CHANGE_BATCH = 1000  # changes or tree entries per streamed message (~100 KiB)
CHUNK_BYTES = 1024 * 1024  # file content per streamed message
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_PROBLEMS = 10_000
PROGRESS_EVERY = 0.1  # seconds between progress messages


class CallState:
    """Calls in flight, and whether new ones are accepted (False once shutdown begins)."""

    def __init__(self) -> None:
        self.accepting = True
        self.in_flight = 0
        self._cond = threading.Condition()
        self.started = time.time()
        self._last_change = time.monotonic()  # a call began or ended

    def enter(self) -> bool:
        with self._cond:
            if not self.accepting:
                return False
            self.in_flight += 1
            self._last_change = time.monotonic()
            return True

    def leave(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._last_change = time.monotonic()
            if self.in_flight == 0:
                self._cond.notify_all()

    def idle_for(self) -> float:
        """Seconds since the last call ended, if none is running now; else 0."""
        with self._cond:
            return 0.0 if self.in_flight else time.monotonic() - self._last_change

    def stop_accepting(self) -> None:
        with self._cond:
            self.accepting = False

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.in_flight == 0, timeout)


class BadRequest:
    """Stands for a request that did not parse, so the handler can answer INVALID_ARGUMENT
    (grpcio answers a failing deserializer with INTERNAL)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception as e:  # DecodeError, invalid UTF-8 in a string field, ...
            return BadRequest(type(e).__name__)

    return deserialize


def generic_handler(service: Service) -> grpc.GenericRpcHandler:
    """The service's method handlers, built from the descriptor (what the generated
    add_SnapdServiceServicer_to_server does, but with requests that fail to parse reaching
    the handler as BadRequest)."""
    descriptor = pb.DESCRIPTOR.services_by_name["SnapdService"]
    handlers = {}
    for m in descriptor.methods:
        request = getattr(pb, m.input_type.name)
        response = getattr(pb, m.output_type.name)
        make = (
            grpc.unary_stream_rpc_method_handler
            if m.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[m.name] = make(
            getattr(service, m.name),
            request_deserializer=_tolerant(request.FromString),
            response_serializer=response.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


class _Call:
    __slots__ = ("method", "t0", "workspace")

    def __init__(self, method: str, workspace: int) -> None:
        self.method = method
        self.workspace = workspace
        self.t0 = time.perf_counter()


_SHUTTING_DOWN = "the snapd daemon is shutting down; retry once it is back"


def _unary(fn: Callable) -> Callable:
    method = fn.__name__

    @functools.wraps(fn)
    def handler(self: Service, request, context: grpc.ServicerContext):
        call = self._begin(method, request, context)
        try:
            response = fn(self, request, context, call)
        except Exception as e:
            code, message = self.errors.status(e, method)
            self._end(call, code)
            context.abort(code, message)
        self._end(call, grpc.StatusCode.OK, context)
        return response

    return handler


def _stream(fn: Callable) -> Callable:
    method = fn.__name__

    @functools.wraps(fn)
    def handler(self: Service, request, context: grpc.ServicerContext):
        call = self._begin(method, request, context)
        code = grpc.StatusCode.OK
        try:
            yield from fn(self, request, context, call)
        except GeneratorExit:  # the client went away mid-stream
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:
            code, message = self.errors.status(e, method)
            context.abort(code, message)
        finally:
            self._end(call, code, context)

    return handler


def _batches(items: Iterable, size: int, make: Callable[[list], Any]) -> Iterator:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield make(batch)
            batch = []
    if batch:
        yield make(batch)


class Service(pb_grpc.SnapdServiceServicer):
    def __init__(
        self,
        store: Store,
        registry: Registry,
        state: CallState,
        *,
        version: str = "",
        on_garbage: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.state = state
        self.version = version
        self.errors = ErrorMapper(store.root)
        self._on_garbage = on_garbage or (lambda: None)
        self._workers: set[threading.Thread] = set()

    # --- call bookkeeping ---------------------------------------------------------------------
    def _begin(self, method: str, request, context: grpc.ServicerContext) -> _Call:
        if isinstance(request, BadRequest):
            log_call(method, None, "INVALID_ARGUMENT", 0.0)
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid snapd.v1 {method} request ({request.error}); "
                "strings must be UTF-8",
            )
        if not self.state.enter():
            log_call(method, None, "UNAVAILABLE", 0.0)
            context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
        # The call counts as in flight until gRPC has finished it (answer sent or cancelled),
        # not just until the handler returns: shutdown must not cut off an answer being sent.
        if not context.add_callback(self.state.leave):
            self.state.leave()
        return _Call(method, getattr(request, "workspace_id", 0))

    def _end(self, call: _Call, code: grpc.StatusCode, context=None) -> None:
        if code == grpc.StatusCode.OK and context is not None and not context.is_active():
            code = grpc.StatusCode.CANCELLED  # done, but the client gave up (deadline, cancel)
        log_call(call.method, call.workspace, code.name, (time.perf_counter() - call.t0) * 1000)

    def join_workers(self, timeout: float) -> None:
        """Wait for background GC/verify threads whose callers went away."""
        deadline = time.monotonic() + timeout
        for t in list(self._workers):
            t.join(max(0.0, deadline - time.monotonic()))

    # --- helpers ------------------------------------------------------------------------------
    def _find(self, snapshot_id: str, workspace_id: int = 0):
        if workspace_id < 0:
            raise InvalidArgument("workspace_id must not be negative")
        return self.store.find_snapshot(snapshot_id, workspace_id or None)

    def _workspace_msg(self, ws_id: int) -> pb.Workspace:
        rec = self.store.get_workspace_by_id(ws_id)
        if rec is None:
            raise NotFound(f"workspace {ws_id} does not exist")
        latest = self.store.latest_snapshot(ws_id)
        return convert.workspace_msg(
            rec,
            open_=self.registry.is_open(ws_id),
            latest=latest.id if latest else None,
            settings=self.registry.open_settings(ws_id),
        )

    def _with_progress(self, fn: Callable, name: str, **kw) -> Iterator[tuple[str, Any]]:
        """Run fn(progress=cb, **kw) on its own thread; yield ("progress", dict) now and then,
        then ("result", value). The thread finishes its work even if the caller goes away."""
        q: queue.Queue = queue.Queue()

        def run() -> None:
            try:
                q.put(("result", fn(progress=lambda d: q.put(("progress", dict(d))), **kw)))
            except BaseException as e:
                q.put(("error", e))
            finally:
                self._workers.discard(threading.current_thread())

        t = threading.Thread(target=run, name=f"snapd-{name}", daemon=True)
        self._workers.add(t)
        t.start()
        last = 0.0
        while True:
            kind, value = q.get()
            if kind == "error":
                raise value
            if kind == "result":
                yield kind, value
                return
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                yield kind, value

    # --- workspaces ---------------------------------------------------------------------------
    @_unary
    def OpenWorkspace(self, request, context, call):
        settings = request.settings if request.HasField("settings") else None
        ws, created = self.registry.open(request.path, settings)
        call.workspace = ws.id
        return pb.OpenWorkspaceResponse(workspace=self._workspace_msg(ws.id), created=created)

    @_unary
    def CloseWorkspace(self, request, context, call):
        deleted = self.registry.close(request.workspace_id, forget=request.forget)
        if request.forget:
            self._on_garbage()
        return pb.CloseWorkspaceResponse(deleted_snapshots=deleted)

    @_unary
    def ListWorkspaces(self, request, context, call):
        return pb.ListWorkspacesResponse(
            workspaces=[self._workspace_msg(rec.id) for rec in self.store.list_workspaces()]
        )

    # --- snapshots ----------------------------------------------------------------------------
    @_unary
    def CreateSnapshot(self, request, context, call):
        ws = self.registry.get(request.workspace_id)
        rec = ws.snapshot(
            request.label,
            dict(request.metadata),
            durable=request.durable,
            pinned=request.pinned,
            full=request.full_scan,
        )
        # Evicted snapshots leave garbage too; the collector finds it on its next round (not
        # poked here: a poke per snapshot would cost every snapshot a garbage query).
        return pb.CreateSnapshotResponse(snapshot=convert.snapshot_msg(rec))

    @_stream
    def Restore(self, request, context, call):
        ws = self.registry.get(request.workspace_id)
        if not request.snapshot_id:
            raise InvalidArgument("snapshot_id is required")
        result = ws.restore(
            request.snapshot_id,
            list(request.paths) or None,
            dry_run=request.dry_run,
        )
        changes = result.changes
        for i in range(0, len(changes), CHANGE_BATCH):
            batch = changes[i : i + CHANGE_BATCH]
            yield pb.RestoreResponse(changes=[convert.change_msg(c) for c in batch])
        st = result.stats
        yield pb.RestoreResponse(
            summary=pb.RestoreSummary(
                snapshot_id=result.snapshot_id,
                safety_snapshot_id=result.safety_snapshot_id or "",
                dry_run=result.dry_run,
                files_written=st.files_written,
                bytes_written=st.bytes_written,
                deleted=st.deleted,
                directories_created=st.dirs_created,
                metadata_only=st.metadata_only,
                conflicts=[convert.utf8(c) for c in st.conflicts],
                duration_ms=result.duration_ms,
                change_count=len(changes),
            )
        )

    @_unary
    def PersistSnapshot(self, request, context, call):
        rec = self._find(request.snapshot_id, request.workspace_id)
        call.workspace = rec.workspace_id
        rec = self.store.persist(rec.id)
        return pb.PersistSnapshotResponse(snapshot=convert.snapshot_msg(rec))

    @_unary
    def PinSnapshot(self, request, context, call):
        rec = self._find(request.snapshot_id, request.workspace_id)
        call.workspace = rec.workspace_id
        self.store.set_pinned(rec.id, True)
        rec = self.store.get_snapshot(rec.id)
        return pb.PinSnapshotResponse(snapshot=convert.snapshot_msg(rec))

    @_unary
    def UnpinSnapshot(self, request, context, call):
        rec = self._find(request.snapshot_id, request.workspace_id)
        call.workspace = rec.workspace_id
        self.store.set_pinned(rec.id, False)
        return pb.UnpinSnapshotResponse(
            snapshot=convert.snapshot_msg(self.store.get_snapshot(rec.id))
        )

    @_unary
    def DeleteSnapshot(self, request, context, call):
        rec = self._find(request.snapshot_id, request.workspace_id)
        call.workspace = rec.workspace_id
        ws = self.registry.peek(rec.workspace_id)
        if ws is not None:
            ws.delete_snapshot(rec.id, force=request.force)  # the engine's rule (pinned: force)
        else:
            # Not opened here on purpose: opening needs the directory, which may be gone, and
            # starts a watcher just to delete. The same rule as Workspace.delete_snapshot.
            if rec.pinned and not request.force:
                raise FailedPrecondition(
                    f"snapshot {rec.id} is pinned; unpin it first or delete it with force"
                )
            self.store.delete_snapshot(rec.id)
        self._on_garbage()
        return pb.DeleteSnapshotResponse()

    @_unary
    def ListSnapshots(self, request, context, call):
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        if request.workspace_id < 0:
            raise InvalidArgument("workspace_id must not be negative")
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        before = None
        if request.page_token:
            if not request.page_token.isdigit():
                raise InvalidArgument(
                    "page_token is not one this daemon issued; pass next_page_token unchanged"
                )
            before = int(request.page_token)
        ws_id = request.workspace_id or None
        if ws_id is not None and self.store.get_workspace_by_id(ws_id) is None:
            raise NotFound(f"workspace {ws_id} does not exist")
        recs = self.store.list_snapshots(ws_id, limit=size + 1, before_seq=before)
        more = len(recs) > size
        recs = recs[:size]
        return pb.ListSnapshotsResponse(
            snapshots=[convert.snapshot_msg(r) for r in recs],
            next_page_token=str(recs[-1].seq) if more and recs else "",
        )

    @_unary
    def GetSnapshot(self, request, context, call):
        rec = self._find(request.snapshot_id, request.workspace_id)
        call.workspace = rec.workspace_id
        return pb.GetSnapshotResponse(snapshot=convert.snapshot_msg(rec))

    # --- restore, diff, browse ----------------------------------------------------------------
    @_stream
    def Diff(self, request, context, call):
        old = self._find(request.from_snapshot_id)
        call.workspace = request.workspace_id or old.workspace_id

        def make(batch: list) -> pb.DiffResponse:
            return pb.DiffResponse(changes=[convert.change_msg(c) for c in batch])

        if request.to_snapshot_id:
            new = self._find(request.to_snapshot_id)
            with self.store.shared():  # no workspace lock: both trees are immutable
                yield from _batches(
                    diff_trees(self.store, old.root_tree, new.root_tree), CHANGE_BATCH, make
                )
            return
        ws = self.registry.get(request.workspace_id or old.workspace_id)
        changes = ws.diff(old.id, None)
        yield from _batches(changes, CHANGE_BATCH, make)

    @_stream
    def ListTree(self, request, context, call):
        rec = self._find(request.snapshot_id)
        call.workspace = rec.workspace_id
        with self.store.shared():
            entries = browse.list_dir(self.store, rec.root_tree, request.path, request.recursive)
            yield from _batches(
                entries,
                CHANGE_BATCH,
                lambda b: pb.ListTreeResponse(entries=[convert.entry_msg(e) for e in b]),
            )

    @_stream
    def ReadFile(self, request, context, call):
        rec = self._find(request.snapshot_id)
        call.workspace = rec.workspace_id
        with self.store.shared():
            entry, pieces = browse.read_file(self.store, rec.root_tree, request.path)
            yield pb.ReadFileResponse(entry=convert.entry_msg(entry))
            for piece in pieces:
                for i in range(0, len(piece), CHUNK_BYTES):
                    yield pb.ReadFileResponse(data=piece[i : i + CHUNK_BYTES])

    @_unary
    def ForkSnapshot(self, request, context, call):
        settings = request.settings if request.HasField("settings") else None
        ws, rec = self.registry.fork(request.snapshot_id, request.path, settings)
        call.workspace = ws.id
        return pb.ForkSnapshotResponse(
            workspace=self._workspace_msg(ws.id), snapshot=convert.snapshot_msg(rec)
        )

    # --- maintenance and statistics -----------------------------------------------------------
    @_stream
    def CollectGarbage(self, request, context, call):
        from ..store import gc

        max_seconds = request.max_seconds if request.HasField("max_seconds") else None
        if max_seconds is not None and max_seconds <= 0:
            raise InvalidArgument("max_seconds must be positive")
        for kind, value in self._with_progress(
            gc.collect, "gc", store=self.store, max_seconds=max_seconds
        ):
            if kind == "progress":
                yield pb.CollectGarbageResponse(progress=_progress(value))
                continue
            result = pb.GarbageCollectionResult(
                deleted_objects=int(value.get("deleted_objects", 0)),
                deleted_bytes=int(value.get("deleted_bytes", 0)),
                packs_compacted=int(value.get("packs_compacted", 0)),
                packs_deleted=int(value.get("packs_deleted", 0)),
                reclaimed_bytes=int(value.get("reclaimed_bytes", 0)),
                complete=bool(value.get("complete", False)),
                duration_seconds=float(value.get("duration_s", 0.0)),
            )
            convert.set_struct(result.counters, value)
            yield pb.CollectGarbageResponse(result=result)

    @_stream
    def VerifyStore(self, request, context, call):
        sample = request.sample or 1.0
        if not 0.0 < sample <= 1.0:
            raise InvalidArgument("sample must be a fraction in (0, 1]")
        ids = list(request.snapshot_ids) or None
        for kind, result in self._with_progress(
            _verify_and_repair,
            "verify",
            store=self.store,
            sample=sample,
            snapshot_ids=ids,
            repair=request.repair,
        ):
            if kind == "progress":
                yield pb.VerifyStoreResponse(progress=_progress(result))
                continue
            value, repaired = result
            if repaired is not None and repaired["objects_fixed"]:
                self._on_garbage()  # counts that dropped to zero are garbage now
            problems = value.problems
            yield pb.VerifyStoreResponse(
                report=pb.VerifyReport(
                    ok=value.ok,
                    snapshots_checked=value.snapshots_checked,
                    objects_checked=value.objects_checked,
                    bytes_checked=getattr(value, "bytes_checked", 0),
                    catalog_ok=getattr(value, "catalog_ok", True),
                    problems=[
                        pb.Problem(
                            snapshot_id=p.snapshot_id,
                            path=convert.utf8(p.path),
                            object_id=p.object_id,
                            error=self.errors.scrub(convert.utf8(p.error)),
                        )
                        for p in problems[:MAX_PROBLEMS]
                    ],
                    problem_count=len(problems),
                    damaged_snapshots=list(getattr(value, "damaged_snapshots", [])),
                    duration_seconds=float(getattr(value, "duration_s", 0.0)),
                    sample=sample,
                    repair=_repair_msg(repaired) if repaired is not None else None,
                )
            )

    @_unary
    def GetStats(self, request, context, call):
        resp = pb.GetStatsResponse()
        if not request.skip_store:
            st = self.store.stats()
            s = resp.store
            s.logical_bytes = int(st.get("logical_bytes", 0))
            s.unique_bytes = int(st.get("unique_bytes", 0))
            s.stored_bytes = int(st.get("stored_bytes", 0))
            s.dedup_ratio = float(st.get("dedup_ratio", 1.0))
            s.compression_ratio = float(st.get("compression_ratio", 1.0))
            s.objects = int(st.get("objects", 0))
            s.packs = int(st.get("packs", 0))
            s.garbage_bytes = int(st.get("garbage_bytes", 0))
            s.snapshots = int(st.get("snapshots", 0))
            s.workspaces = int(st.get("workspaces", 0))
            convert.set_struct(s.all, st)
        if request.workspace_id >= 0:
            if request.workspace_id:
                rec = self.store.get_workspace_by_id(request.workspace_id)
                if rec is None:
                    raise NotFound(f"workspace {request.workspace_id} does not exist")
                recs = [rec]
            else:
                recs = self.store.list_workspaces()
            for rec in recs:
                snaps = self.store.list_snapshots(rec.id)
                w = resp.workspaces.add(
                    workspace_id=rec.id,
                    path=rec.path,
                    snapshots=len(snaps),
                    durable_snapshots=sum(1 for s in snaps if s.durable),
                    pinned_snapshots=sum(1 for s in snaps if s.pinned),
                    open=self.registry.is_open(rec.id),
                )
                if snaps:
                    w.latest_snapshot_id = snaps[0].id
                    convert.set_time(w.latest_create_time, snaps[0].created_at)
                    convert.set_struct(w.latest_snapshot_stats, snaps[0].stats)
                counters = self.registry.watcher_counters(rec.id)
                if counters is not None:
                    convert.set_struct(w.watcher, counters)
        d = resp.daemon
        d.version = self.version
        d.uptime_seconds = time.time() - self.state.started
        d.calls_in_flight = self.state.in_flight
        d.open_workspaces = self.registry.count()
        return resp


def _verify_and_repair(
    *,
    store: Store,
    sample: float,
    snapshot_ids: list[str] | None,
    repair: bool,
    progress: Callable[[dict], None],
) -> tuple[Any, dict | None]:
    """verify.verify, then (with repair) verify.recount_refs: (report, repair result or None)."""
    from ..store import verify

    report = verify.verify(store, sample=sample, snapshot_ids=snapshot_ids, progress=progress)
    if not repair:
        return report, None
    progress({"phase": "repair"})
    t0 = time.monotonic()
    repaired = verify.recount_refs(store)
    repaired["duration_s"] = time.monotonic() - t0
    return report, repaired


def _repair_msg(d: dict) -> pb.RefcountRepair:
    return pb.RefcountRepair(
        objects_fixed=int(d.get("objects_fixed", 0)),
        objects=int(d.get("objects", 0)),
        unreadable_objects=[str(x) for x in d.get("unreadable", [])],
        missing_objects=[str(x) for x in d.get("missing_referenced", [])],
        duration_seconds=float(d.get("duration_s", 0.0)),
    )


def _progress(d: dict) -> pb.Progress:
    m = pb.Progress(phase=str(d.get("phase", "")))
    convert.set_struct(m.counters, {k: v for k, v in d.items() if k != "phase"})
    return m
