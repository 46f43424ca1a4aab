"""The one place where exceptions become gRPC status codes and client-facing messages.

Rules: a SnapdError's code names its status; its message is written for the caller and is
passed on, with the daemon's store location replaced by "<store>". Operating-system errors get a
status by errno and a message without file names (they could be daemon-internal paths).
Anything else is a bug: INTERNAL with a generic message and a reference that is also logged
with the traceback. No exception text or traceback of an unexpected error reaches a client.
"""

from __future__ import annotations

import errno
import logging
import secrets

import grpc

from ..errors import SnapdError

log = logging.getLogger("snapd.server")

_OS_STATUS = {
    errno.EACCES: (grpc.StatusCode.PERMISSION_DENIED, "permission denied"),
    errno.EPERM: (grpc.StatusCode.PERMISSION_DENIED, "operation not permitted"),
    errno.EROFS: (grpc.StatusCode.FAILED_PRECONDITION, "the file system is read-only"),
    errno.ENOSPC: (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "no space left on device; free space or run 'snapd gc', then retry",
    ),
    errno.EDQUOT: (grpc.StatusCode.RESOURCE_EXHAUSTED, "disk quota exceeded; free space, retry"),
    errno.EMFILE: (grpc.StatusCode.RESOURCE_EXHAUSTED, "the daemon has too many open files"),
    errno.ENFILE: (grpc.StatusCode.RESOURCE_EXHAUSTED, "the system has too many open files"),
    errno.ENOMEM: (grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory"),
    errno.ENAMETOOLONG: (grpc.StatusCode.INVALID_ARGUMENT, "a file name is too long"),
    # A file or directory vanished or changed type under the operation: someone else is
    # changing the workspace at the same time. Retrying is the remedy.
    errno.ENOENT: (
        grpc.StatusCode.ABORTED,
        "a file disappeared while the operation ran (the workspace is being changed); retry",
    ),
    errno.ENOTDIR: (
        grpc.StatusCode.ABORTED,
        "a directory was replaced while the operation ran (the workspace is being changed); retry",
    ),
    errno.ELOOP: (
        grpc.StatusCode.ABORTED,
        "a directory was replaced by a symlink while the operation ran; retry",
    ),
}


class ErrorMapper:
    def __init__(self, store_root: str | None = None) -> None:
        self.store_root = store_root.rstrip("/") if store_root else None

    def scrub(self, message: str) -> str:
        if self.store_root and self.store_root in message:
            message = message.replace(self.store_root, "<store>")
        return message

    def status(self, exc: BaseException, method: str = "") -> tuple[grpc.StatusCode, str]:
        """(status, message) for an exception raised by a handler."""
        if isinstance(exc, SnapdError):
            code = getattr(grpc.StatusCode, exc.code, None)
            if not isinstance(code, grpc.StatusCode) or code == grpc.StatusCode.OK:
                code = grpc.StatusCode.INTERNAL
            return code, self.scrub(exc.message)
        if isinstance(exc, OSError) and exc.errno in _OS_STATUS:
            return _OS_STATUS[exc.errno]
        if isinstance(exc, MemoryError):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, "the daemon ran out of memory"
        ref = secrets.token_hex(4)
        log.error("internal error in %s (ref %s)", method or "call", ref, exc_info=exc)
        return (
            grpc.StatusCode.INTERNAL,
            f"internal error in the snapd daemon (ref {ref}); the daemon log has the details",
        )
