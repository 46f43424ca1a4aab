"""Client library behaviour: targets and defaults, deadlines, retries on UNAVAILABLE for idempotent
calls only, streams stopped early, handles that survive a daemon restart."""

from __future__ import annotations

import os
import pwd
import random
import shutil
import socket
import subprocess
import sys
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
    _target,
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
    assert default_socket_path() == paths.client_socket_path() == paths.default_socket_path()
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path() == paths.client_socket_path() == paths.default_socket_path()
    monkeypatch.setenv("SNAPD_SOCKET", "unix:///x/y.sock")
    assert default_socket_path() == paths.client_socket_path() == "/x/y.sock"
    assert paths.default_socket_path() == "/x/y.sock"


def test_default_socket_falls_back_to_the_system_units_socket(monkeypatch, root, tmp_path) -> None:
    """Without $SNAPD_SOCKET and without a per-user socket, clients use the system template
    unit's socket for their user name if it exists; the daemon keeps binding the per-user
    path. The system runtime root (/run/snapd-workspace) is pointed at a temporary directory:
    a test must not create sockets in the host's /run."""
    system_root = os.path.join(root, "run")
    monkeypatch.setattr(_target, "SYSTEM_RUNTIME_ROOT", system_root)
    monkeypatch.setattr(paths, "SYSTEM_RUNTIME_ROOT", system_root)
    monkeypatch.delenv("SNAPD_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    user = os.path.join(str(tmp_path), "snapd-workspace", "snapd.sock")
    name = pwd.getpwuid(os.getuid()).pw_name
    system = os.path.join(system_root, name, "snapd.sock")
    assert _target.system_socket_path() == paths.system_socket_path() == system

    # Neither exists: the per-user path, so that an error names it.
    assert default_socket_path() == paths.client_socket_path() == user
    with DaemonProcess(os.path.join(root, "store"), system):
        assert default_socket_path() == paths.client_socket_path() == system
        assert paths.default_socket_path() == user  # what a daemon binds is unchanged
        with Client() as client:
            assert client.target == "unix://" + system and client.ping().version

        # A per-user socket, once there, wins; $SNAPD_SOCKET wins over both.
        os.makedirs(os.path.dirname(user))
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(user)
        assert default_socket_path() == paths.client_socket_path() == user
        monkeypatch.setenv("SNAPD_SOCKET", "/elsewhere.sock")
        assert default_socket_path() == paths.client_socket_path() == "/elsewhere.sock"


def test_importing_the_library_leaves_out_the_async_client_and_the_pipeline() -> None:
    code = (
        "import sys, snapd_client\n"
        "lazy = ('snapd_client.aio', 'snapd_client.pipeline')\n"
        "assert not [m for m in lazy if m in sys.modules], sorted(sys.modules)\n"
        "from snapd_client import AsyncClient, AsyncWorkspace, CheckpointedPipeline, Verifier\n"
        "from snapd_client.aio import AsyncClient as A\n"
        "assert AsyncClient is A and all(m in sys.modules for m in lazy)\n"
        "assert snapd_client.Planner is snapd_client.pipeline.Planner\n"
        "assert set(snapd_client.__all__) <= set(dir(snapd_client))\n"
        "try:\n"
        "    snapd_client.NoSuchName\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('NoSuchName resolved')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


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
