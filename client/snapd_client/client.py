"""The synchronous client.

    from snapd_client import Client
    client = Client()                      # $SNAPD_SOCKET or the default socket
    ws = client.open_workspace("/abs/path", keep_last=5, exclude=["node_modules/"])
    snap = ws.snapshot(label="step 3")
    ws.restore(snap.id)

Every call has a deadline (`timeout=` per call, else the client's default: `timeout` for quick
calls, `long_timeout` for snapshots, restores, forks, diffs, GC and verify). Calls that are safe
to repeat are retried with backoff while the daemon is UNAVAILABLE (restarting); others raise
at once. Failures raise snapd_client.SnapdError subclasses carrying the status and message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc

from . import types as t
from ._common import (
    LONG,
    RetryPolicy,
    channel_args,
    channel_credentials,
    settings_or_none,
    should_retry,
)
from ._proto import snapd_pb2 as pb
from ._proto import snapd_pb2_grpc as pb_grpc
from .errors import DeadlineExceededError, InternalError, NotFoundError, from_rpc_error

ProgressCallback = Callable[[t.Progress], None]


class Client:
    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float = 30.0,
        long_timeout: float = 3600.0,
        retry: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        options: list[tuple[str, object]] | None = None,
    ) -> None:
        """target: None (default socket), a socket path, 'unix:///path', or 'host:port' (TCP;
        pass root_certificates, and private_key + certificate_chain for mutual TLS)."""
        self.target, opts = channel_args(target, options)
        self.timeout = timeout
        self.long_timeout = long_timeout
        self.retry = retry or RetryPolicy()
        creds = channel_credentials(credentials, root_certificates, private_key, certificate_chain)
        if creds is not None:
            self._channel = grpc.secure_channel(self.target, creds, options=opts)
        else:
            self._channel = grpc.insecure_channel(self.target, options=opts)
        self._stub = pb_grpc.SnapdServiceStub(self._channel)

    # --- plumbing -----------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _deadline(self, method: str, timeout: float | None) -> float:
        if timeout is None:
            timeout = self.long_timeout if method in LONG else self.timeout
        return time.monotonic() + timeout

    def _unary(self, method: str, request, timeout: float | None = None):
        deadline = self._deadline(method, timeout)
        rpc = getattr(self._stub, method)
        attempt = 1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError("deadline exceeded before the call", method=method)
            try:
                return rpc(request, timeout=remaining)
            except grpc.RpcError as e:
                if should_retry(method, e.code(), attempt, self.retry):
                    pause = self.retry.backoff(attempt)
                    if time.monotonic() + pause < deadline:
                        time.sleep(pause)
                        attempt += 1
                        continue
                raise from_rpc_error(e, method) from None

    def _stream(self, method: str, request, timeout: float | None = None) -> Iterator:
        """Messages of a server-streaming call; retried only until the first one arrives."""
        deadline = self._deadline(method, timeout)
        rpc = getattr(self._stub, method)
        attempt = 1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError("deadline exceeded before the call", method=method)
            call = rpc(request, timeout=remaining)
            try:
                first = next(call, None)
            except grpc.RpcError as e:
                if should_retry(method, e.code(), attempt, self.retry):
                    pause = self.retry.backoff(attempt)
                    if time.monotonic() + pause < deadline:
                        time.sleep(pause)
                        attempt += 1
                        continue
                raise from_rpc_error(e, method) from None
            break
        try:
            if first is not None:
                yield first
            yield from call
        except grpc.RpcError as e:
            raise from_rpc_error(e, method) from None
        finally:
            call.cancel()  # the caller stopped early: tell the daemon

    # --- workspaces ---------------------------------------------------------------------------
    def open_workspace(
        self,
        path: str,
        *,
        keep_last: int | None = None,
        keep_durable: int | None = None,
        durable_max_age: float | None = None,
        exclude: list[str] | None = None,
        watch: bool | None = None,
        timeout: float | None = None,
    ) -> Workspace:
        """Open the workspace at an absolute path (idempotent). Settings left None keep their
        current value (the default for a new workspace); given ones replace it."""
        settings = t.settings_pb(
            keep_last=keep_last,
            keep_durable=keep_durable,
            durable_max_age=durable_max_age,
            watch=watch,
            exclude=exclude,
        )
        resp = self._unary(
            "OpenWorkspace", pb.OpenWorkspaceRequest(path=path, settings=settings), timeout
        )
        return Workspace(self, t.WorkspaceInfo.from_pb(resp.workspace), created=resp.created)

    def workspace(self, workspace_id: int) -> Workspace:
        """A handle on a known workspace by id."""
        for info in self.workspaces():
            if info.id == workspace_id:
                return Workspace(self, info)
        raise NotFoundError(f"workspace {workspace_id} does not exist")

    def workspaces(self, *, timeout: float | None = None) -> list[t.WorkspaceInfo]:
        resp = self._unary("ListWorkspaces", pb.ListWorkspacesRequest(), timeout)
        return [t.WorkspaceInfo.from_pb(w) for w in resp.workspaces]

    def close_workspace(
        self, workspace_id: int, *, forget: bool = False, timeout: float | None = None
    ) -> int:
        """Release the daemon's resources for it; forget=True also deletes its snapshots.
        Returns the number of snapshots deleted."""
        req = pb.CloseWorkspaceRequest(workspace_id=workspace_id, forget=forget)
        return self._unary("CloseWorkspace", req, timeout).deleted_snapshots

    # --- snapshots ----------------------------------------------------------------------------
    def snapshot(
        self,
        workspace_id: int,
        label: str = "",
        *,
        metadata: dict[str, str] | None = None,
        durable: bool = False,
        pinned: bool = False,
        full: bool = False,
        timeout: float | None = None,
    ) -> t.Snapshot:
        """full=True walks the whole tree even when the file watcher is on (catches writes it
        cannot see: through a hard link from outside the workspace, through a shared mmap)."""
        req = pb.CreateSnapshotRequest(
            workspace_id=workspace_id,
            label=label,
            metadata=metadata or {},
            durable=durable,
            pinned=pinned,
            full_scan=full,
        )
        return t.Snapshot.from_pb(self._unary("CreateSnapshot", req, timeout).snapshot)

    def restore(
        self,
        workspace_id: int,
        snapshot_id: str,
        paths: list[str] | None = None,
        *,
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> t.RestoreResult:
        req = pb.RestoreRequest(
            workspace_id=workspace_id, snapshot_id=snapshot_id, paths=paths or [], dry_run=dry_run
        )
        changes: list[t.Change] = []
        summary = None
        for msg in self._stream("Restore", req, timeout):
            changes.extend(t.Change.from_pb(c) for c in msg.changes)
            if msg.HasField("summary"):
                summary = msg.summary
        if summary is None:
            raise InternalError("the daemon ended the restore without a summary")
        return t.RestoreResult.from_pb(summary, changes)

    def persist(
        self, snapshot_id: str, *, workspace_id: int = 0, timeout: float | None = None
    ) -> t.Snapshot:
        req = pb.PersistSnapshotRequest(workspace_id=workspace_id, snapshot_id=snapshot_id)
        return t.Snapshot.from_pb(self._unary("PersistSnapshot", req, timeout).snapshot)

    def pin(
        self, snapshot_id: str, *, workspace_id: int = 0, timeout: float | None = None
    ) -> t.Snapshot:
        req = pb.PinSnapshotRequest(workspace_id=workspace_id, snapshot_id=snapshot_id)
        return t.Snapshot.from_pb(self._unary("PinSnapshot", req, timeout).snapshot)

    def unpin(
        self, snapshot_id: str, *, workspace_id: int = 0, timeout: float | None = None
    ) -> t.Snapshot:
        req = pb.UnpinSnapshotRequest(workspace_id=workspace_id, snapshot_id=snapshot_id)
        return t.Snapshot.from_pb(self._unary("UnpinSnapshot", req, timeout).snapshot)

    def delete_snapshot(
        self,
        snapshot_id: str,
        *,
        workspace_id: int = 0,
        force: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Delete a snapshot now. A pinned one needs force=True (else FailedPreconditionError)."""
        req = pb.DeleteSnapshotRequest(
            workspace_id=workspace_id, snapshot_id=snapshot_id, force=force
        )
        self._unary("DeleteSnapshot", req, timeout)

    def get_snapshot(
        self, snapshot_id: str, *, workspace_id: int = 0, timeout: float | None = None
    ) -> t.Snapshot:
        req = pb.GetSnapshotRequest(workspace_id=workspace_id, snapshot_id=snapshot_id)
        return t.Snapshot.from_pb(self._unary("GetSnapshot", req, timeout).snapshot)

    def iter_snapshots(
        self,
        workspace_id: int = 0,
        *,
        page_size: int = 100,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[t.Snapshot]:
        """Snapshots newest first (of one workspace, or of all with workspace_id=0)."""
        token, n = "", 0
        while True:
            req = pb.ListSnapshotsRequest(
                workspace_id=workspace_id, page_size=page_size, page_token=token
            )
            resp = self._unary("ListSnapshots", req, timeout)
            for s in resp.snapshots:
                if limit is not None and n >= limit:
                    return
                n += 1
                yield t.Snapshot.from_pb(s)
            token = resp.next_page_token
            if not token:
                return

    def snapshots(
        self, workspace_id: int = 0, *, limit: int | None = None, timeout: float | None = None
    ) -> list[t.Snapshot]:
        return list(self.iter_snapshots(workspace_id, limit=limit, timeout=timeout))

    # --- inspection ---------------------------------------------------------------------------
    def iter_diff(
        self,
        a: str,
        b: str | None = None,
        *,
        workspace_id: int = 0,
        timeout: float | None = None,
    ) -> Iterator[t.Change]:
        req = pb.DiffRequest(workspace_id=workspace_id, from_snapshot_id=a, to_snapshot_id=b or "")
        for msg in self._stream("Diff", req, timeout):
            for c in msg.changes:
                yield t.Change.from_pb(c)

    def diff(
        self,
        a: str,
        b: str | None = None,
        *,
        workspace_id: int = 0,
        timeout: float | None = None,
    ) -> list[t.Change]:
        """Changes from snapshot a to snapshot b, or to the live workspace (b=None)."""
        return list(self.iter_diff(a, b, workspace_id=workspace_id, timeout=timeout))

    def iter_tree(
        self,
        snapshot_id: str,
        path: str = "",
        *,
        recursive: bool = False,
        timeout: float | None = None,
    ) -> Iterator[t.TreeEntry]:
        req = pb.ListTreeRequest(snapshot_id=snapshot_id, path=path, recursive=recursive)
        for msg in self._stream("ListTree", req, timeout):
            for e in msg.entries:
                yield t.TreeEntry.from_pb(e)

    def list_tree(
        self,
        snapshot_id: str,
        path: str = "",
        *,
        recursive: bool = False,
        timeout: float | None = None,
    ) -> list[t.TreeEntry]:
        """Entries of a directory in a snapshot ('' is the root); a file path gives its entry."""
        return list(self.iter_tree(snapshot_id, path, recursive=recursive, timeout=timeout))

    def iter_file(
        self, snapshot_id: str, path: str, *, timeout: float | None = None
    ) -> Iterator[bytes]:
        """A file's content from a snapshot, piece by piece (for large files)."""
        req = pb.ReadFileRequest(snapshot_id=snapshot_id, path=path)
        for msg in self._stream("ReadFile", req, timeout):
            if msg.data:
                yield msg.data

    def read_file(self, snapshot_id: str, path: str, *, timeout: float | None = None) -> bytes:
        return b"".join(self.iter_file(snapshot_id, path, timeout=timeout))

    def fork(
        self,
        snapshot_id: str,
        path: str,
        *,
        keep_last: int | None = None,
        keep_durable: int | None = None,
        durable_max_age: float | None = None,
        exclude: list[str] | None = None,
        watch: bool | None = None,
        timeout: float | None = None,
    ) -> tuple[Workspace, t.Snapshot]:
        """Restore a snapshot into a new empty directory that becomes a new workspace."""
        settings = t.settings_pb(
            keep_last=keep_last,
            keep_durable=keep_durable,
            durable_max_age=durable_max_age,
            watch=watch,
            exclude=exclude,
        )
        req = pb.ForkSnapshotRequest(
            snapshot_id=snapshot_id, path=path, settings=settings_or_none(settings)
        )
        resp = self._unary("ForkSnapshot", req, timeout)
        ws = Workspace(self, t.WorkspaceInfo.from_pb(resp.workspace), created=True)
        return ws, t.Snapshot.from_pb(resp.snapshot)

    # --- maintenance --------------------------------------------------------------------------
    def collect_garbage(
        self,
        *,
        max_seconds: float | None = None,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> t.GCResult:
        req = pb.CollectGarbageRequest()
        if max_seconds is not None:
            req.max_seconds = max_seconds
        result = None
        for msg in self._stream("CollectGarbage", req, timeout):
            if msg.HasField("progress") and progress is not None:
                progress(t.Progress.from_pb(msg.progress))
            if msg.HasField("result"):
                result = t.GCResult.from_pb(msg.result)
        if result is None:
            raise InternalError("the daemon ended garbage collection without a result")
        return result

    def verify(
        self,
        *,
        sample: float = 1.0,
        snapshot_ids: list[str] | None = None,
        repair: bool = False,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> t.VerifyReport:
        """Check stored objects against their content addresses. repair=True then recomputes
        every reference count and fixes the catalog (report.repair says what it fixed)."""
        req = pb.VerifyStoreRequest(sample=sample, snapshot_ids=snapshot_ids or [], repair=repair)
        report = None
        for msg in self._stream("VerifyStore", req, timeout):
            if msg.HasField("progress") and progress is not None:
                progress(t.Progress.from_pb(msg.progress))
            if msg.HasField("report"):
                report = t.VerifyReport.from_pb(msg.report)
        if report is None:
            raise InternalError("the daemon ended verification without a report")
        return report

    def stats(
        self,
        workspace_id: int = 0,
        *,
        skip_store: bool = False,
        timeout: float | None = None,
    ) -> t.Stats:
        req = pb.GetStatsRequest(workspace_id=workspace_id, skip_store=skip_store)
        return t.Stats.from_pb(self._unary("GetStats", req, timeout))

    def ping(self, *, timeout: float | None = None) -> t.DaemonInfo:
        """The daemon's version and load (a cheap call that proves it answers)."""
        return self.stats(skip_store=True, workspace_id=-1, timeout=timeout).daemon


class Workspace:
    """A handle on one workspace of a Client: the calls that take a workspace."""

    def __init__(self, client: Client, info: t.WorkspaceInfo, *, created: bool = False) -> None:
        self.client = client
        self.info = info
        self.id = info.id
        self.path = info.path
        self.settings = info.settings
        self.created = created

    def __repr__(self) -> str:
        return f"Workspace(id={self.id}, path={self.path!r})"

    def snapshot(
        self,
        label: str = "",
        *,
        metadata: dict[str, str] | None = None,
        durable: bool = False,
        pinned: bool = False,
        full: bool = False,
        timeout: float | None = None,
    ) -> t.Snapshot:
        """Take a snapshot; full=True walks the whole tree even with the file watcher on."""
        return self.client.snapshot(
            self.id,
            label,
            metadata=metadata,
            durable=durable,
            pinned=pinned,
            full=full,
            timeout=timeout,
        )

    def restore(
        self,
        snapshot_id: str,
        paths: list[str] | None = None,
        *,
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> t.RestoreResult:
        return self.client.restore(self.id, snapshot_id, paths, dry_run=dry_run, timeout=timeout)

    def persist(self, snapshot_id: str, *, timeout: float | None = None) -> t.Snapshot:
        return self.client.persist(snapshot_id, workspace_id=self.id, timeout=timeout)

    def pin(self, snapshot_id: str, *, timeout: float | None = None) -> t.Snapshot:
        return self.client.pin(snapshot_id, workspace_id=self.id, timeout=timeout)

    def unpin(self, snapshot_id: str, *, timeout: float | None = None) -> t.Snapshot:
        return self.client.unpin(snapshot_id, workspace_id=self.id, timeout=timeout)

    def delete_snapshot(
        self, snapshot_id: str, *, force: bool = False, timeout: float | None = None
    ) -> None:
        """Delete a snapshot now. A pinned one needs force=True."""
        self.client.delete_snapshot(snapshot_id, workspace_id=self.id, force=force, timeout=timeout)

    def get_snapshot(self, snapshot_id: str, *, timeout: float | None = None) -> t.Snapshot:
        return self.client.get_snapshot(snapshot_id, workspace_id=self.id, timeout=timeout)

    def snapshots(
        self, *, limit: int | None = None, timeout: float | None = None
    ) -> list[t.Snapshot]:
        """This workspace's snapshots, newest first."""
        return self.client.snapshots(self.id, limit=limit, timeout=timeout)

    def diff(self, a: str, b: str | None = None, *, timeout: float | None = None) -> list[t.Change]:
        """Changes from snapshot a to snapshot b, or to this workspace as it is now (b=None)."""
        return self.client.diff(a, b, workspace_id=self.id, timeout=timeout)

    def read_file(self, snapshot_id: str, path: str, *, timeout: float | None = None) -> bytes:
        return self.client.read_file(snapshot_id, path, timeout=timeout)

    def list_tree(
        self,
        snapshot_id: str,
        path: str = "",
        *,
        recursive: bool = False,
        timeout: float | None = None,
    ) -> list[t.TreeEntry]:
        return self.client.list_tree(snapshot_id, path, recursive=recursive, timeout=timeout)

    def fork(self, snapshot_id: str, path: str, **kw) -> tuple[Workspace, t.Snapshot]:
        return self.client.fork(snapshot_id, path, **kw)

    def stats(self, *, timeout: float | None = None) -> t.WorkspaceStats:
        return self.client.stats(self.id, skip_store=True, timeout=timeout).workspaces[0]

    def close(self, *, forget: bool = False, timeout: float | None = None) -> int:
        return self.client.close_workspace(self.id, forget=forget, timeout=timeout)
