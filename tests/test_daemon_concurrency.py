"""Concurrency through the daemon: many clients on many workspaces at once, every restore exact;
reads never wait behind a long operation holding a workspace."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import treeutil
from snapd_client import Client

from snapd.server.config import ServeConfig
from snapd.server.daemon import Daemon
from snapd.server.testing import DaemonProcess, short_tempdir

CLIENTS = 8
ROUNDS = 5


def seed_tree(root, rng: random.Random) -> None:
    for i in range(20):
        treeutil.write(root, f"d{i % 4}/f{i}.txt", rng.randbytes(rng.randrange(0, 3000)))
    treeutil.write(root, "bin/tool", b"#!/bin/sh\n", mode=0o755)


def mutate(root, rng: random.Random, step: int) -> None:
    files = sorted(
        os.path.relpath(os.path.join(dp, f), root)
        for dp, _, fs in os.walk(root)
        for f in fs
        if not os.path.islink(os.path.join(dp, f))
    )
    for rel in rng.sample(files, min(3, len(files))):
        treeutil.write(root, rel, rng.randbytes(rng.randrange(1, 5000)))
    if files and rng.random() < 0.7:
        os.unlink(os.path.join(root, rng.choice(files)))
    treeutil.write(root, f"new{step}/n{rng.randrange(1000)}.bin", rng.randbytes(700))
    if rng.random() < 0.3:
        victim = os.path.join(root, f"d{rng.randrange(4)}")
        shutil.rmtree(victim, ignore_errors=True)
    if rng.random() < 0.3:
        link = os.path.join(root, f"link{step}")
        os.symlink("bin/tool", link)


def test_eight_clients_on_eight_workspaces(tmp_path) -> None:
    root = short_tempdir()
    try:
        with DaemonProcess(
            os.path.join(root, "store"), os.path.join(root, "run", "snapd.sock")
        ) as daemon:
            start = threading.Barrier(CLIENTS)

            def worker(i: int) -> int:
                rng = random.Random(1000 + i)
                d = tmp_path / f"ws{i}"
                seed_tree(d, rng)
                with daemon.client() as client:
                    ws = client.open_workspace(str(d), keep_last=ROUNDS + 10)
                    start.wait()
                    history = []
                    for step in range(ROUNDS):
                        mutate(d, rng, step)
                        snap = ws.snapshot(label=f"client {i} step {step}")
                        history.append((snap.id, treeutil.capture(d)))
                    assert [s.id for s in ws.snapshots()][:ROUNDS] == [h[0] for h in history][::-1]
                    for snap_id, expected in rng.sample(history, len(history)):
                        ws.restore(snap_id)
                        treeutil.assert_same(
                            treeutil.capture(d), expected, f"client {i} restore {snap_id}"
                        )
                    return len(history)

            with ThreadPoolExecutor(CLIENTS) as pool:
                done = list(pool.map(worker, range(CLIENTS)))
            assert done == [ROUNDS] * CLIENTS
            with daemon.client() as client:
                assert client.verify().ok
            assert daemon.terminate() == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def in_process_daemon():
    """A real daemon (socket, server, engine) running in this process, so that a test can hold
    a workspace's lock to stand for a long snapshot."""
    root = short_tempdir()
    cfg = ServeConfig(
        store=os.path.join(root, "store"),
        socket=os.path.join(root, "run", "snapd.sock"),
        background_gc=False,
    )
    daemon = Daemon(cfg)
    daemon.start()
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        runner.join(60)
        shutil.rmtree(root, ignore_errors=True)


def test_reads_do_not_wait_behind_a_busy_workspace(in_process_daemon, tmp_path) -> None:
    daemon = in_process_daemon
    client = Client("unix://" + daemon.config.socket)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    treeutil.write(a_dir, "src/app.py", "v1")
    treeutil.write(b_dir, "b.txt", "b")
    a, b = client.open_workspace(str(a_dir)), client.open_workspace(str(b_dir))
    a1 = a.snapshot()
    treeutil.write(a_dir, "src/app.py", "v2")
    a2 = a.snapshot()

    busy = daemon.registry.get(a.id).lock
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:  # stands for a long snapshot of workspace a
        with busy:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    with ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(a.snapshot, label="waits for the lock")
        try:
            # Every read of workspace a's stored snapshots, and everything on workspace b,
            # completes while a's lock is held.
            assert [s.id for s in a.snapshots()] == [a2.id, a1.id]
            assert a.get_snapshot(a1.id).id == a1.id
            assert [c.path for c in a.diff(a1.id, a2.id)] == ["src/app.py"]
            assert client.read_file(a1.id, "src/app.py") == b"v1"
            assert {e.path for e in client.list_tree(a2.id, recursive=True)} == {
                "src",
                "src/app.py",
            }
            assert a.persist(a1.id).durable and a.pin(a2.id).pinned
            assert a.stats().snapshots == 2
            assert client.stats().store["snapshots"] == 2
            b_snap = b.snapshot()
            assert b.restore(b_snap.id).snapshot_id == b_snap.id
            assert client.workspaces()
            assert not blocked.done()  # the write on a still waits: its lock is held
        finally:
            release.set()
        assert blocked.result(60).label == "waits for the lock"
    holder.join(10)
    client.close()


def test_a_snapshot_holding_the_admission_gate_long_holds_up_no_other(
    in_process_daemon, tmp_path
) -> None:
    """Short watched snapshots queue at one shared gate (snapd/admission.py). One that keeps
    its slot (here the test holds it, standing for a huge file in a small dirty set) stops
    counting after LONG_HOLD, so another workspace's snapshot still completes."""
    daemon = in_process_daemon
    gate = daemon.registry.admission
    assert gate is not None
    client = Client("unix://" + daemon.config.socket)
    d = tmp_path / "w"
    treeutil.write(d, "a.txt", "v1")
    ws = client.open_workspace(str(d), watch=True)
    ws.snapshot()
    with client:
        _until_settled(client, ws.id)
        treeutil.write(d, "a.txt", "v2")
        with gate.admit():  # held for the whole snapshot below
            snap = ws.snapshot(label="behind a long holder", timeout=60)
        assert snap.stats["scan"] == "hinted"
        assert snap.stats["admission_wait_ms"] >= 0
        assert client.read_file(snap.id, "a.txt") == b"v2"
        assert gate.waiting() == 0


def _until_settled(client: Client, ws_id: int) -> None:
    deadline = time.monotonic() + 60
    while not (client.workspace(ws_id).stats().watcher or {}).get("settled"):
        assert time.monotonic() < deadline, "the watcher did not settle"
        time.sleep(0.02)
