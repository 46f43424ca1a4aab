"""Errors that carry a stable status code.

Every error a caller can act on is a `SnapdError` subclass whose `code` names the gRPC status the
daemon maps it to (in one place, snapd.server.errors). Messages name the thing and say what to do;
they never contain tracebacks.
"""

from __future__ import annotations


class SnapdError(Exception):
    """Base class: an error with a status code and a message meant for a person."""

    code = "INTERNAL"

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return self.message


class InvalidArgument(SnapdError):
    code = "INVALID_ARGUMENT"


class NotFound(SnapdError):
    code = "NOT_FOUND"


class AlreadyExists(SnapdError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(SnapdError):
    code = "FAILED_PRECONDITION"


class PermissionDenied(SnapdError):
    code = "PERMISSION_DENIED"


class ResourceExhausted(SnapdError):
    code = "RESOURCE_EXHAUSTED"


class Aborted(SnapdError):
    """The operation raced with a concurrent change; retrying it is safe."""

    code = "ABORTED"


class DeadlineExceeded(SnapdError):
    code = "DEADLINE_EXCEEDED"


class Unavailable(SnapdError):
    code = "UNAVAILABLE"


class DataLoss(SnapdError):
    """Stored data is missing or does not match its content address."""

    code = "DATA_LOSS"


class StoreLocked(FailedPrecondition):
    """Another process holds an exclusive lock that this operation needs."""
