"""Thin client library for the snapd workspace snapshot daemon (sync and asyncio).

    from snapd_client import Client, AsyncClient
    client = Client()                  # $SNAPD_SOCKET or the default socket; or Client("unix:///path")
    ws = client.open_workspace("/abs/path", keep_last=5, keep_durable=20, exclude=["node_modules/"])
    snap = ws.snapshot(label="step 3")   # .id .parent_id .label .created_at .durable .stats
    ws.restore(snap.id)                  # also paths=[...], dry_run=True
    ws.persist(snap.id)
    ws.snapshots()                       # newest first
    ws.diff(a_id, b_id=None)             # None: the live workspace
    client.read_file(snap.id, "src/app.py")  # -> bytes

Depends only on grpcio and protobuf. The generated protocol modules are in snapd_client._proto.
"""

from ._common import RetryPolicy
from ._target import default_socket_path
from .aio import AsyncClient, AsyncWorkspace
from .client import Client, Workspace
from .errors import (
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SnapdError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)
from .pipeline import CheckpointedPipeline, Executor, Planner, Verifier
from .types import (
    Change,
    DaemonInfo,
    GCResult,
    Problem,
    Progress,
    RestoreResult,
    RestoreStats,
    Snapshot,
    Stats,
    TreeEntry,
    VerifyReport,
    WorkspaceInfo,
    WorkspaceSettings,
    WorkspaceStats,
)

__version__ = "0.1.0"

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncWorkspace",
    "CancelledError",
    "Change",
    "CheckpointedPipeline",
    "Client",
    "DaemonInfo",
    "DataLossError",
    "DeadlineExceededError",
    "Executor",
    "FailedPreconditionError",
    "GCResult",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "Planner",
    "Problem",
    "Progress",
    "ResourceExhaustedError",
    "RestoreResult",
    "RestoreStats",
    "RetryPolicy",
    "SnapdError",
    "Snapshot",
    "Stats",
    "TreeEntry",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "Verifier",
    "VerifyReport",
    "Workspace",
    "WorkspaceInfo",
    "WorkspaceSettings",
    "WorkspaceStats",
    "default_socket_path",
]
