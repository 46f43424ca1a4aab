"""Client library behaviour: targets and defaults, deadlines, retries on UNAVAILABLE for idempotent
calls only, streams stopped early, handles that survive a daemon restart."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time

import pytest
import treeutil
from snapd_client import (
    Client,
    DeadlineExceededError,
    RetryPolicy,
    SnapdError,
    UnavailableError,
)
from snapd_client._common import IDEMPOTENT, should_retry
from snapd_client._proto import snapd_pb2 as pb
from snapd_client._target import default_socket_path, grpc_target

from snapd import paths
from snapd.server.testing import DaemonProcess, short_tempdir


@pytest.fixture
def root():
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_default_socket_matches_the_daemon(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("SNAPD_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_socket_path() == paths.default_socket_path()
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path() == paths.default_socket_path()
    monkeypatch.setenv("SNAPD_SOCKET", "unix:///x/y.sock")
    assert default_socket_path() == paths.default_socket_path() == "/x/y.sock"


def test_targets() -> None:
    assert grpc_target("/run/s.sock") == "unix:///run/s.sock"
    assert grpc_target("unix:///run/s.sock") == "unix:///run/s.sock"
    assert grpc_target("unix:/run/s.sock") == "unix:/run/s.sock"
    assert grpc_target("localhost:7443") == "localhost:7443"
    assert grpc_target("tcp://10.0.0.1:7443") == "10.0.0.1:7443"
    assert grpc_target(None).startswith("unix:///")


def test_retry_policy_covers_only_idempotent_calls() -> None:
    service = pb.DESCRIPTOR.services_by_name["SnapdService"]
    methods = {m.name for m in service.methods}
    assert methods >= IDEMPOTENT  # no typo in the list
    unavailable = __import__("grpc").StatusCode.UNAVAILABLE
    for never in ("CreateSnapshot", "Restore", "DeleteSnapshot", "ForkSnapshot"):
        assert not should_retry(never, unavailable, 1, RetryPolicy())
    assert should_retry("ListSnapshots", unavailable, 1, RetryPolicy())
    assert not should_retry("ListSnapshots", unavailable, 5, RetryPolicy(max_attempts=5))
    p = RetryPolicy(initial_backoff=0.1, max_backoff=0.3)
    assert all(0.05 <= p.backoff(1) <= 0.1 for _ in range(50))
    assert all(0.15 <= p.backoff(6) <= 0.3 for _ in range(50))


def test_idempotent_call_waits_for_a_starting_daemon(root) -> None:
    store, sock = os.path.join(root, "store"), os.path.join(root, "run", "snapd.sock")
    daemon = DaemonProcess(store, sock)
    client = Client(sock, retry=RetryPolicy(max_attempts=1000, max_backoff=0.2), timeout=90)
    try:
        with pytest.raises(UnavailableError):  # not idempotent: fails at once
            client.snapshot(1)
        result: dict = {}

        def call() -> None:
            try:
                result["workspaces"] = client.workspaces()
            except SnapdError as e:
                result["error"] = e

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.3)  # the call is retrying against the missing socket meanwhile
        assert t.is_alive()
        daemon.start()
        t.join(60)
        assert result == {"workspaces": []}
    finally:
        client.close()
        daemon.close()


def test_deadlines_and_cancelled_streams(root, tmp_path) -> None:
    store, sock = os.path.join(root, "store"), os.path.join(root, "run", "snapd.sock")
    d = tmp_path / "ws"
    treeutil.write(d, "big.bin", random.Random(5).randbytes(24 * 1024 * 1024))
    with DaemonProcess(store, sock) as daemon, daemon.client() as client:
        ws = client.open_workspace(str(d))
        with pytest.raises(DeadlineExceededError):
            ws.snapshot(timeout=0.001)
        s = ws.snapshot(timeout=120)
        stream = client.iter_file(s.id, "big.bin")
        assert 0 < len(next(stream)) <= 1024 * 1024
        stream.close()  # stop early: the daemon is told
        deadline = time.monotonic() + 30
        while "ReadFile workspace=1 code=CANCELLED" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        assert client.read_file(s.id, "big.bin") == treeutil.read(d, "big.bin")


def test_handles_survive_a_daemon_restart(root, tmp_path) -> None:
    store, sock = os.path.join(root, "store"), os.path.join(root, "run", "snapd.sock")
    d = tmp_path / "ws"
    treeutil.write(d, "a.txt", "one")
    daemon = DaemonProcess(store, sock).start()
    client = Client(sock)
    try:
        ws = client.open_workspace(str(d))
        s1 = ws.snapshot()
        assert daemon.terminate() == 0
        daemon.close()
        daemon = DaemonProcess(store, sock).start()
        treeutil.write(d, "a.txt", "two")
        s2 = ws.snapshot()  # the same handle; the daemon opens the workspace on demand
        assert s2.parent_id == s1.id
        ws.restore(s1.id)
        assert treeutil.read(d, "a.txt") == b"one"
    finally:
        client.close()
        daemon.close()
