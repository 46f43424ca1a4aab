"""The asyncio client: the same methods and results as snapd_client.Client, awaited.

    from snapd_client import AsyncClient
    async with AsyncClient() as client:
        ws = await client.open_workspace("/abs/path", keep_last=5)
        snap = await ws.snapshot(label="step 3")
        await ws.restore(snap.id)

Create it inside the running event loop (grpc.aio binds a channel to it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio

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

AsyncProgressCallback = Callable[[t.Progress], Awaitable[None] | None]


class AsyncClient:
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
        self.target, opts = channel_args(target, options)
        self.timeout = timeout
        self.long_timeout = long_timeout
        self.retry = retry or RetryPolicy()
        creds = channel_credentials(credentials, root_certificates, private_key, certificate_chain)
        if creds is not None:
            self._channel = grpc.aio.secure_channel(self.target, creds, options=opts)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=opts)
        self._stub = pb_grpc.SnapdServiceStub(self._channel)

    # --- plumbing -----------------------------------------------------------------------------
    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _deadline(self, method: str, timeout: float | None) -> float:
        if timeout is None:
            timeout = self.long_timeout if method in LONG else self.timeout
        return time.monotonic() + timeout

    async def _unary(self, method: str, request, timeout: float | None = None):
        deadline = self._deadline(method, timeout)
        rpc = getattr(self._stub, method)
        attempt = 1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError("deadline exceeded before the call", method=method)
            try:
                return await rpc(request, timeout=remaining)
            except grpc.RpcError as e:
                if should_retry(method, e.code(), attempt, self.retry):
                    pause = self.retry.backoff(attempt)
                    if time.monotonic() + pause < deadline:
                        await asyncio.sleep(pause)
                        attempt += 1
                        continue
                raise from_rpc_error(e, method) from None

    async def _stream(self, method: str, request, timeout: float | None = None) -> AsyncIterator:
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
                first = await call.read()
            except grpc.RpcError as e:
                if should_retry(method, e.code(), attempt, self.retry):
                    pause = self.retry.backoff(attempt)
                    if time.monotonic() + pause < deadline:
                        await asyncio.sleep(pause)
                        attempt += 1
                        continue
                raise from_rpc_error(e, method) from None
            break
        try:
            msg = first
            while msg is not grpc.aio.EOF:
                yield msg
                msg = await call.read()
        except grpc.RpcError as e:
            raise from_rpc_error(e, method) from None
        finally:
            call.cancel()

    # --- workspaces ---------------------------------------------------------------------------
    async def open_workspace(
        self,
        path: str,
        *,
        keep_last: int | None = None,
        keep_durable: int | None = None,
        durable_max_age: float | None = None,
        exclude: list[str] | None = None,
        watch: bool | None = None,
        timeout: float | None = None,
    ) -> AsyncWorkspace:
        settings = t.settings_pb(
            keep_last=keep_last,
            keep_durable=keep_durable,
            durable_max_age=durable_max_age,
            watch=watch,
            exclude=exclude,
        )
        resp = await self._unary(
            "OpenWorkspace", pb.OpenWorkspaceRequest(path=path, settings=settings), timeout
        )
        return AsyncWorkspace(self, t.WorkspaceInfo.from_pb(resp.workspace), created=resp.created)

    async def workspace(self, workspace_id: int) -> AsyncWorkspace:
        for info in await self.workspaces():
            if info.id == workspace_id:
                return AsyncWorkspace(self, info)
        raise NotFoundError(f"workspace {workspace_id} does not exist")

    async def workspaces(self, *, timeout: float | None = None) -> list[t.WorkspaceInfo]:
        resp = await self._unary("ListWorkspaces", pb.ListWorkspacesRequest(), timeout)
        return [t.WorkspaceInfo.from_pb(w) for w in resp.workspaces]

    async def close_workspace(
        self, workspace_id: int, *, forget: bool = False, timeout: float | None = None
    ) -> int:
        req = pb.CloseWorkspaceRequest(workspace_id=workspace_id, forget=forget)
        return (await self._unary("CloseWorkspace", req, timeout)).deleted_snapshots

    # --- snapshots ----------------------------------------------------------------------------
    async def snapshot(
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
        return t.Snapshot.from_pb((await self._unary("CreateSnapshot", req, timeout)).snapshot)

    async def restore(
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
        async for msg in self._stream("Restore", req, timeout):
            changes.extend(t.Change.from_pb(c) for c in msg.changes)
            if msg.HasField("summary"):
                summary = msg.summary
        if summary is None:
            raise InternalError("the daemon ended the restore without a summary")
        return t.RestoreResult.from_pb(summary, changes)

    async def persist(
        self, snapshot_id: str, *, workspace_id: int = 0, timeout: float | None = None
    ) -> t.Snapshot:
        req = pb.PersistSnapshotRequest(workspace_id=workspace_id, snapshot_id=snapshot_id)
        return t.Snapshot.from_pb((await self._unary("PersistSnapshot", req, timeout)).snapshot)

    async def pin(
        self, snapshot_id: str, *, workspace_id: int = 0, timeout: float | None = None
    ) -> t.Snapshot:
        req = pb.PinSnapshotRequest(workspace_id=workspace_id, snapshot_id=snapshot_id)
        return t.Snapshot.from_pb((await self._unary("PinSnapshot", req, timeout)).snapshot)

    async def unpin(
        self, snapshot_id: str, *, workspace_id: int = 0, timeout: float | None = None
    ) -> t.Snapshot:
        req = pb.UnpinSnapshotRequest(workspace_id=workspace_id, snapshot_id=snapshot_id)
        return t.Snapshot.from_pb((await self._unary("UnpinSnapshot", req, timeout)).snapshot)

    async def delete_snapshot(
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
        await self._unary("DeleteSnapshot", req, timeout)

    async def get_snapshot(
        self, snapshot_id: str, *, workspace_id: int = 0, timeout: float | None = None
    ) -> t.Snapshot:
        req = pb.GetSnapshotRequest(workspace_id=workspace_id, snapshot_id=snapshot_id)
        return t.Snapshot.from_pb((await self._unary("GetSnapshot", req, timeout)).snapshot)

    async def iter_snapshots(
        self,
        workspace_id: int = 0,
        *,
        page_size: int = 100,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[t.Snapshot]:
        token, n = "", 0
        while True:
            req = pb.ListSnapshotsRequest(
                workspace_id=workspace_id, page_size=page_size, page_token=token
            )
            resp = await self._unary("ListSnapshots", req, timeout)
            for s in resp.snapshots:
                if limit is not None and n >= limit:
                    return
                n += 1
                yield t.Snapshot.from_pb(s)
            token = resp.next_page_token
            if not token:
                return

    async def snapshots(
        self, workspace_id: int = 0, *, limit: int | None = None, timeout: float | None = None
    ) -> list[t.Snapshot]:
        return [s async for s in self.iter_snapshots(workspace_id, limit=limit, timeout=timeout)]

    # --- inspection ---------------------------------------------------------------------------
    async def iter_diff(
        self,
        a: str,
        b: str | None = None,
        *,
        workspace_id: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[t.Change]:
        req = pb.DiffRequest(workspace_id=workspace_id, from_snapshot_id=a, to_snapshot_id=b or "")
        async for msg in self._stream("Diff", req, timeout):
            for c in msg.changes:
                yield t.Change.from_pb(c)

    async def diff(
        self,
        a: str,
        b: str | None = None,
        *,
        workspace_id: int = 0,
        timeout: float | None = None,
    ) -> list[t.Change]:
        return [c async for c in self.iter_diff(a, b, workspace_id=workspace_id, timeout=timeout)]

    async def iter_tree(
        self,
        snapshot_id: str,
        path: str = "",
        *,
        recursive: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[t.TreeEntry]:
        req = pb.ListTreeRequest(snapshot_id=snapshot_id, path=path, recursive=recursive)
        async for msg in self._stream("ListTree", req, timeout):
            for e in msg.entries:
                yield t.TreeEntry.from_pb(e)

    async def list_tree(
        self,
        snapshot_id: str,
        path: str = "",
        *,
        recursive: bool = False,
        timeout: float | None = None,
    ) -> list[t.TreeEntry]:
        it = self.iter_tree(snapshot_id, path, recursive=recursive, timeout=timeout)
        return [e async for e in it]

    async def iter_file(
        self, snapshot_id: str, path: str, *, timeout: float | None = None
    ) -> AsyncIterator[bytes]:
        req = pb.ReadFileRequest(snapshot_id=snapshot_id, path=path)
        async for msg in self._stream("ReadFile", req, timeout):
            if msg.data:
                yield msg.data

    async def read_file(
        self, snapshot_id: str, path: str, *, timeout: float | None = None
    ) -> bytes:
        return b"".join([p async for p in self.iter_file(snapshot_id, path, timeout=timeout)])

    async def fork(
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
    ) -> tuple[AsyncWorkspace, t.Snapshot]:
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
        resp = await self._unary("ForkSnapshot", req, timeout)
        ws = AsyncWorkspace(self, t.WorkspaceInfo.from_pb(resp.workspace), created=True)
        return ws, t.Snapshot.from_pb(resp.snapshot)

    # --- maintenance --------------------------------------------------------------------------
    async def collect_garbage(
        self,
        *,
        max_seconds: float | None = None,
        progress: AsyncProgressCallback | None = None,
        timeout: float | None = None,
    ) -> t.GCResult:
        req = pb.CollectGarbageRequest()
        if max_seconds is not None:
            req.max_seconds = max_seconds
        result = None
        async for msg in self._stream("CollectGarbage", req, timeout):
            if msg.HasField("progress") and progress is not None:
                await _maybe_await(progress(t.Progress.from_pb(msg.progress)))
            if msg.HasField("result"):
                result = t.GCResult.from_pb(msg.result)
        if result is None:
            raise InternalError("the daemon ended garbage collection without a result")
        return result

    async def verify(
        self,
        *,
        sample: float = 1.0,
        snapshot_ids: list[str] | None = None,
        repair: bool = False,
        progress: AsyncProgressCallback | None = None,
        timeout: float | None = None,
    ) -> t.VerifyReport:
        """Check stored objects against their content addresses. repair=True then recomputes
        every reference count and fixes the catalog (report.repair says what it fixed)."""
        req = pb.VerifyStoreRequest(sample=sample, snapshot_ids=snapshot_ids or [], repair=repair)
        report = None
        async for msg in self._stream("VerifyStore", req, timeout):
            if msg.HasField("progress") and progress is not None:
                await _maybe_await(progress(t.Progress.from_pb(msg.progress)))
            if msg.HasField("report"):
                report = t.VerifyReport.from_pb(msg.report)
        if report is None:
            raise InternalError("the daemon ended verification without a report")
        return report

    async def stats(
        self,
        workspace_id: int = 0,
        *,
        skip_store: bool = False,
        timeout: float | None = None,
    ) -> t.Stats:
        req = pb.GetStatsRequest(workspace_id=workspace_id, skip_store=skip_store)
        return t.Stats.from_pb(await self._unary("GetStats", req, timeout))

    async def ping(self, *, timeout: float | None = None) -> t.DaemonInfo:
        return (await self.stats(-1, skip_store=True, timeout=timeout)).daemon


class AsyncWorkspace:
    """A handle on one workspace of an AsyncClient."""

    def __init__(
        self, client: AsyncClient, info: t.WorkspaceInfo, *, created: bool = False
    ) -> None:
        self.client = client
        self.info = info
        self.id = info.id
        self.path = info.path
        self.settings = info.settings
        self.created = created

    def __repr__(self) -> str:
        return f"AsyncWorkspace(id={self.id}, path={self.path!r})"

    async def snapshot(
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
        return await self.client.snapshot(
            self.id,
            label,
            metadata=metadata,
            durable=durable,
            pinned=pinned,
            full=full,
            timeout=timeout,
        )

    async def restore(
        self,
        snapshot_id: str,
        paths: list[str] | None = None,
        *,
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> t.RestoreResult:
        return await self.client.restore(
            self.id, snapshot_id, paths, dry_run=dry_run, timeout=timeout
        )

    async def persist(self, snapshot_id: str, *, timeout: float | None = None) -> t.Snapshot:
        return await self.client.persist(snapshot_id, workspace_id=self.id, timeout=timeout)

    async def pin(self, snapshot_id: str, *, timeout: float | None = None) -> t.Snapshot:
        return await self.client.pin(snapshot_id, workspace_id=self.id, timeout=timeout)

    async def unpin(self, snapshot_id: str, *, timeout: float | None = None) -> t.Snapshot:
        return await self.client.unpin(snapshot_id, workspace_id=self.id, timeout=timeout)

    async def delete_snapshot(
        self, snapshot_id: str, *, force: bool = False, timeout: float | None = None
    ) -> None:
        """Delete a snapshot now. A pinned one needs force=True."""
        await self.client.delete_snapshot(
            snapshot_id, workspace_id=self.id, force=force, timeout=timeout
        )

    async def get_snapshot(self, snapshot_id: str, *, timeout: float | None = None) -> t.Snapshot:
        return await self.client.get_snapshot(snapshot_id, workspace_id=self.id, timeout=timeout)

    async def snapshots(
        self, *, limit: int | None = None, timeout: float | None = None
    ) -> list[t.Snapshot]:
        return await self.client.snapshots(self.id, limit=limit, timeout=timeout)

    async def diff(
        self, a: str, b: str | None = None, *, timeout: float | None = None
    ) -> list[t.Change]:
        return await self.client.diff(a, b, workspace_id=self.id, timeout=timeout)

    async def read_file(
        self, snapshot_id: str, path: str, *, timeout: float | None = None
    ) -> bytes:
        return await self.client.read_file(snapshot_id, path, timeout=timeout)

    async def list_tree(
        self,
        snapshot_id: str,
        path: str = "",
        *,
        recursive: bool = False,
        timeout: float | None = None,
    ) -> list[t.TreeEntry]:
        return await self.client.list_tree(snapshot_id, path, recursive=recursive, timeout=timeout)

    async def fork(self, snapshot_id: str, path: str, **kw) -> tuple[AsyncWorkspace, t.Snapshot]:
        return await self.client.fork(snapshot_id, path, **kw)

    async def stats(self, *, timeout: float | None = None) -> t.WorkspaceStats:
        return (await self.client.stats(self.id, skip_store=True, timeout=timeout)).workspaces[0]

    async def close(self, *, forget: bool = False, timeout: float | None = None) -> int:
        return await self.client.close_workspace(self.id, forget=forget, timeout=timeout)


async def _maybe_await(value) -> None:
    if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
        await value
