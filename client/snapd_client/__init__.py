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

The asyncio client and the pipeline are imported on first use (`from snapd_client import
AsyncClient` works as usual): together they cost tens of milliseconds (the pipeline pulls in
asyncio, subprocess, ...) that sync users, such as the `snapd` CLI on every run, need not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._common import RetryPolicy
from ._target import default_socket_path
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
from .types import (
    Change,
    DaemonInfo,
    GCResult,
    Problem,
    Progress,
    RefcountRepair,
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

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them
    from .aio import AsyncClient, AsyncWorkspace
    from .pipeline import CheckpointedPipeline, Executor, Planner, Verifier

__version__ = "0.1.0"

# Name -> the submodule that defines it, imported when the name is first asked for.
_LAZY = {
    "AsyncClient": ".aio",
    "AsyncWorkspace": ".aio",
    "CheckpointedPipeline": ".pipeline",  # the pipeline is built on the asyncio client
    "Executor": ".pipeline",
    "Planner": ".pipeline",
    "Verifier": ".pipeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "RefcountRepair",
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
