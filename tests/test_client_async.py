"""The asyncio client: every call, the same results and errors as the sync client, against a real
daemon subprocess."""

from __future__ import annotations

import asyncio
import os
import random

import pytest
import treeutil
from snapd_client import (
    AsyncClient,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    UnavailableError,
)


def run(coro):
    return asyncio.run(coro)


def test_every_call(daemon, tmp_path) -> None:
    d = str(tmp_path / "ws")
    treeutil.write(d, "src/app.py", "v1\n")
    treeutil.write(d, "big.bin", random.Random(3).randbytes(2 * 1024 * 1024 + 5))

    async def main() -> None:
        async with AsyncClient("unix://" + daemon.socket) as client:
            ws = await client.open_workspace(d, keep_last=10, exclude=["*.tmp"])
            assert ws.created and ws.settings.keep_last == 10
            assert (await client.open_workspace(d)).id == ws.id
            assert ws.id in {w.id for w in await client.workspaces()}

            before = treeutil.capture(d)
            s1 = await ws.snapshot(label="one", metadata={"k": "v"})
            assert s1.label == "one" and s1.metadata == {"k": "v"} and s1.parent_id is None
            treeutil.write(d, "src/app.py", "v2 longer\n")
            assert [(c.path, c.change) for c in await ws.diff(s1.id)] == [
                ("src/app.py", "modified")
            ]
            s2 = await ws.snapshot(label="two", durable=True)
            assert s2.parent_id == s1.id and s2.durable
            assert [c.path for c in await ws.diff(s1.id, s2.id)] == ["src/app.py"]
            assert [s.id for s in await ws.snapshots()] == [s2.id, s1.id]
            assert [s.id async for s in client.iter_snapshots(ws.id, page_size=1)] == [
                s2.id,
                s1.id,
            ]
            assert (await ws.get_snapshot(s1.id)).id == s1.id

            assert await client.read_file(s1.id, "src/app.py") == b"v1\n"
            assert await ws.read_file(s1.id, "big.bin") == treeutil.read(d, "big.bin")
            pieces = [p async for p in client.iter_file(s1.id, "big.bin")]
            assert len(pieces) >= 2
            names = {e.path for e in await ws.list_tree(s1.id, recursive=True)}
            assert names == {"src", "src/app.py", "big.bin"}

            dry = await ws.restore(s1.id, dry_run=True)
            assert dry.dry_run and [c.path for c in dry.changes] == ["src/app.py"]
            res = await ws.restore(s1.id)
            assert res.safety_snapshot_id == s2.id
            treeutil.assert_same(treeutil.capture(d), before, "async restore")
            await ws.restore(s2.id, paths=["src/app.py"])
            assert treeutil.read(d, "src/app.py") == b"v2 longer\n"

            assert (await ws.persist(s1.id)).durable
            assert (await ws.pin(s1.id)).pinned
            assert not (await ws.unpin(s1.id)).pinned
            full = await ws.snapshot(full=True)
            assert full.stats["scan"] == "full"
            assert (await client.snapshot(ws.id, full=True)).stats["scan"] == "full"
            pinned = await ws.snapshot(pinned=True)
            with pytest.raises(FailedPreconditionError):
                await ws.delete_snapshot(pinned.id)
            await ws.delete_snapshot(pinned.id, force=True)
            with pytest.raises(NotFoundError):
                await client.get_snapshot(pinned.id)

            fork_dir = str(tmp_path / "fork")
            new_ws, first = await ws.fork(s2.id, fork_dir)
            assert first.origin == "fork" and new_ws.path == os.path.realpath(fork_dir)
            assert treeutil.read(fork_dir, "src/app.py") == b"v2 longer\n"

            progress: list = []

            async def on_progress(p) -> None:  # coroutine callbacks are awaited
                progress.append(p)

            report = await client.verify(progress=on_progress)
            assert report.ok and report.repair is None
            assert progress
            repaired = await client.verify(repair=True)
            assert repaired.ok and repaired.repair.objects_fixed == 0
            assert repaired.repair.objects > 0
            gc = await client.collect_garbage(progress=progress.append)
            assert gc.complete
            stats = await client.stats(ws.id)
            assert stats.workspaces[0].snapshots >= 2 and stats.store["objects"] > 0
            assert (await ws.stats()).workspace_id == ws.id
            assert "events" in (await ws.stats()).watcher  # a watcher by default
            assert (await client.ping()).version

            await ws.delete_snapshot(s1.id)
            with pytest.raises(NotFoundError):
                await client.get_snapshot(s1.id)
            assert await new_ws.close(forget=True) == 1
            assert await ws.close() == 0

    run(main())


def test_errors_carry_status_and_message(daemon, tmp_path) -> None:
    d = tmp_path / "ws"
    treeutil.write(d, "f", "x")

    async def main() -> None:
        async with AsyncClient(daemon.socket) as client:  # a bare socket path works too
            with pytest.raises(InvalidArgumentError) as e:
                await client.open_workspace("relative")
            assert e.value.code == "INVALID_ARGUMENT" and "absolute" in e.value.message
            with pytest.raises(NotFoundError):
                await client.open_workspace(str(tmp_path / "missing"))
            ws = await client.open_workspace(str(d))
            s = await ws.snapshot()
            with pytest.raises(InvalidArgumentError):
                await client.read_file(s.id, "../x")
            with pytest.raises(NotFoundError):
                await client.read_file("abcdef123456", "f")
            with pytest.raises(FailedPreconditionError):
                await client.open_workspace(str(tmp_path))
            with pytest.raises(ResourceExhaustedError):
                await ws.snapshot(label="x" * (5 * 1024 * 1024))
            await ws.close(forget=True)

    run(main())


def test_unavailable_without_a_daemon(tmp_path) -> None:
    async def main() -> None:
        policy = RetryPolicy(max_attempts=2, initial_backoff=0.01)
        async with AsyncClient(str(tmp_path / "none.sock"), retry=policy, timeout=5) as client:
            with pytest.raises(UnavailableError):
                await client.workspaces()
            with pytest.raises(UnavailableError):
                await client.snapshot(1)

    run(main())
