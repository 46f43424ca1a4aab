"""Each bad input gets its precise status and a message that names the thing; no traceback or
daemon-internal path reaches the client; the daemon keeps serving afterwards."""

from __future__ import annotations

import logging
import os

import grpc
import pytest
import treeutil
from snapd_client import (
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SnapdError,
)

from snapd.errors import NotFound
from snapd.server.errors import ErrorMapper


@pytest.fixture
def ws(client, tmp_path):
    d = str(tmp_path / "ws")
    treeutil.write(d, "src/app.py", "x = 1\n")
    w = client.open_workspace(d)
    yield w
    w.close(forget=True)


def clean(e: SnapdError, daemon) -> None:
    """The message is for people: no traceback, no daemon-internal location."""
    assert e.message and "Traceback" not in e.message
    assert daemon.store not in e.message


def raises(cls, daemon, fn, *args, **kw) -> SnapdError:
    with pytest.raises(cls) as info:
        fn(*args, **kw)
    clean(info.value, daemon)
    return info.value


def test_workspace_path_errors(client: Client, daemon, tmp_path) -> None:
    e = raises(InvalidArgumentError, daemon, client.open_workspace, "relative/dir")
    assert "absolute" in e.message and e.code == "INVALID_ARGUMENT"
    e = raises(NotFoundError, daemon, client.open_workspace, str(tmp_path / "missing"))
    assert "does not exist" in e.message and "missing" in e.message
    f = tmp_path / "file"
    f.write_text("x")
    raises(InvalidArgumentError, daemon, client.open_workspace, str(f))
    raises(InvalidArgumentError, daemon, client.open_workspace, "")
    raises(InvalidArgumentError, daemon, client.open_workspace, "/")


def test_overlapping_workspaces_and_the_store(client: Client, daemon, tmp_path) -> None:
    outer = tmp_path / "outer"
    (outer / "inner").mkdir(parents=True)
    ws = client.open_workspace(str(outer))
    try:
        e = raises(FailedPreconditionError, daemon, client.open_workspace, str(outer / "inner"))
        assert "overlaps" in e.message and str(outer) in e.message
        raises(FailedPreconditionError, daemon, client.open_workspace, str(tmp_path))
    finally:
        ws.close(forget=True)
    store_parent = os.path.dirname(daemon.store)
    raises(FailedPreconditionError, daemon, client.open_workspace, store_parent)
    raises(FailedPreconditionError, daemon, client.open_workspace, daemon.store)


def test_directory_of_another_user(client: Client, daemon, tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    d = tmp_path / "theirs"
    d.mkdir()
    os.chown(d, 65534, 65534)
    e = raises(PermissionDeniedError, daemon, client.open_workspace, str(d))
    assert "owned by uid 65534" in e.message


def test_snapshot_id_errors(client: Client, daemon, ws) -> None:
    s = ws.snapshot()
    for call in (client.get_snapshot, client.persist, client.pin, client.delete_snapshot):
        e = raises(NotFoundError, daemon, call, "abcdef123456")
        assert "abcdef123456" in e.message
    raises(NotFoundError, daemon, ws.restore, "abcdef123456")
    raises(NotFoundError, daemon, client.read_file, "abcdef123456", "src/app.py")
    raises(NotFoundError, daemon, client.list_tree, "abcdef123456")
    raises(NotFoundError, daemon, ws.diff, "abcdef123456")
    raises(NotFoundError, daemon, ws.diff, s.id, "abcdef123456")
    raises(InvalidArgumentError, daemon, client.get_snapshot, "not-hex!")
    raises(InvalidArgumentError, daemon, client.get_snapshot, "")
    raises(InvalidArgumentError, daemon, ws.restore, "")


def test_paths_inside_snapshots(client: Client, daemon, ws) -> None:
    s = ws.snapshot()
    for bad in ("../etc/passwd", "src/../../x", "/etc/passwd"):
        e = raises(InvalidArgumentError, daemon, client.read_file, s.id, bad)
        assert bad in e.message
        raises(InvalidArgumentError, daemon, ws.restore, s.id, [bad])
        raises(InvalidArgumentError, daemon, client.list_tree, s.id, bad)
    e = raises(NotFoundError, daemon, client.read_file, s.id, "src/nope.py")
    assert "src/nope.py" in e.message
    e = raises(InvalidArgumentError, daemon, client.read_file, s.id, "src")
    assert "directory" in e.message


def test_workspace_id_and_argument_errors(client: Client, daemon, ws, tmp_path) -> None:
    raises(InvalidArgumentError, daemon, client.snapshot, 0)
    raises(NotFoundError, daemon, client.snapshot, 999_999)
    raises(NotFoundError, daemon, client.close_workspace, 999_999)
    raises(NotFoundError, daemon, client.snapshots, 999_999)
    raises(NotFoundError, daemon, client.stats, 999_999)
    raises(InvalidArgumentError, daemon, client.open_workspace, ws.path, keep_last=0)
    raises(InvalidArgumentError, daemon, client.open_workspace, ws.path, keep_durable=-1)
    raises(InvalidArgumentError, daemon, client.verify, sample=2.0)
    raises(InvalidArgumentError, daemon, client.collect_garbage, max_seconds=-1)
    e = raises(InvalidArgumentError, daemon, ws.snapshot, metadata={"k": "v" * 70_000})
    assert "64 KiB" in e.message
    from snapd_client._proto import snapd_pb2 as pb

    with pytest.raises(InvalidArgumentError):
        client._unary("ListSnapshots", pb.ListSnapshotsRequest(page_token="garbage"))
    snap = ws.snapshot()
    raises(InvalidArgumentError, daemon, client.fork, snap.id, "rel/dir")


def test_restore_into_another_workspace_is_refused(client: Client, daemon, tmp_path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    treeutil.write(a, "f", "a")
    treeutil.write(b, "f", "b")
    wa, wb = client.open_workspace(str(a)), client.open_workspace(str(b))
    try:
        s = wa.snapshot()
        e = raises(FailedPreconditionError, daemon, wb.restore, s.id)
        assert "another workspace" in e.message and "fork" in e.message
        assert treeutil.read(b, "f") == b"b"
    finally:
        wa.close(forget=True)
        wb.close(forget=True)


def test_fork_target_errors(client: Client, daemon, ws, tmp_path) -> None:
    s = ws.snapshot()
    full = tmp_path / "full"
    treeutil.write(full, "x", "x")
    e = raises(FailedPreconditionError, daemon, client.fork, s.id, str(full))
    assert "not an empty directory" in e.message
    raises(NotFoundError, daemon, client.fork, s.id, str(tmp_path / "no" / "parent"))


def test_oversize_message_is_resource_exhausted(client: Client, daemon, ws) -> None:
    e = raises(ResourceExhaustedError, daemon, ws.snapshot, label="x" * (5 * 1024 * 1024))
    assert e.code == "RESOURCE_EXHAUSTED"
    assert ws.snapshot(label="fine").label == "fine"  # the daemon is still serving


def test_malformed_request_is_invalid_argument(daemon) -> None:
    with grpc.insecure_channel("unix://" + daemon.socket) as ch:
        raw = ch.unary_unary(
            "/snapd.v1.SnapdService/OpenWorkspace",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        for bad in (b"\x0a\x02\xff\xfe", b"\xff\xff\xff"):  # invalid UTF-8; not protobuf
            with pytest.raises(grpc.RpcError) as info:
                raw(bad, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid snapd.v1 OpenWorkspace request" in info.value.details()
        stream = ch.unary_stream(
            "/snapd.v1.SnapdService/ReadFile",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stream(b"\x12\x01\xff", timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unexpected_exception_becomes_internal_without_details(caplog) -> None:
    # The mapper itself, on a real exception that no handler expects (no daemon needed).
    mapper = ErrorMapper("/srv/secret/store")
    try:
        raise ValueError("boom at /srv/secret/store/packs/x")
    except ValueError as exc:
        with caplog.at_level(logging.ERROR, logger="snapd.server"):
            code, message = mapper.status(exc, "CreateSnapshot")
    assert code == grpc.StatusCode.INTERNAL
    assert "boom" not in message and "/srv" not in message and "ref " in message
    ref = message.split("ref ")[1].split(")")[0]
    assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)
    code, message = mapper.status(NotFound("snapshot in /srv/secret/store/x is gone"))
    assert code == grpc.StatusCode.NOT_FOUND and message == "snapshot in <store>/x is gone"
    code, _ = mapper.status(OSError(28, "No space left on device", "/srv/secret/store/p"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_daemon_survives_bad_input(client: Client, daemon) -> None:
    assert client.ping().version
    assert daemon.proc.poll() is None
    assert "Traceback" not in daemon.log()
