"""Exceptions raised by the client: one class per gRPC status, each with `.code` and `.message`.

try:
    ws.restore(snap_id)
except snapd_client.NotFoundError as e:
    print(e.code, e.message)      # "NOT_FOUND", "snapshot 'abc123' does not exist ..."
"""

from __future__ import annotations

import grpc


class SnapdError(Exception):
    """A call failed. `code` is the status name ("NOT_FOUND"), `status` the grpc.StatusCode."""

    status: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, method: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.method = method

    @property
    def code(self) -> str:
        return self.status.name

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class CancelledError(SnapdError):
    status = grpc.StatusCode.CANCELLED


class UnknownError(SnapdError):
    status = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(SnapdError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(SnapdError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(SnapdError):
    status = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(SnapdError):
    status = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(SnapdError):
    status = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(SnapdError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(SnapdError):
    status = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(SnapdError):
    """The operation raced with another one; retrying it is safe."""

    status = grpc.StatusCode.ABORTED


class OutOfRangeError(SnapdError):
    status = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(SnapdError):
    status = grpc.StatusCode.UNIMPLEMENTED


class InternalError(SnapdError):
    status = grpc.StatusCode.INTERNAL


class UnavailableError(SnapdError):
    """The daemon is not running, not reachable, or shutting down."""

    status = grpc.StatusCode.UNAVAILABLE


class DataLossError(SnapdError):
    status = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(SnapdError):
    status = grpc.StatusCode.UNAUTHENTICATED


_BY_STATUS: dict[grpc.StatusCode, type[SnapdError]] = {
    cls.status: cls
    for cls in (
        CancelledError,
        UnknownError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        AbortedError,
        OutOfRangeError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        DataLossError,
        UnauthenticatedError,
    )
}


def error_for(status: grpc.StatusCode | None, message: str, method: str = "") -> SnapdError:
    cls = _BY_STATUS.get(status, UnknownError) if status is not None else UnknownError
    return cls(message or (status.name if status else "unknown error"), method=method)


def from_rpc_error(e: grpc.RpcError, method: str = "") -> SnapdError:
    """The SnapdError for a failed call (grpc.RpcError from sync or aio calls)."""
    status = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    return error_for(status, details or "", method)
