"""What the sync and asyncio clients share: channel set-up, retry policy, request builders."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from ._proto import snapd_pb2 as pb
from ._target import grpc_target

# The daemon streams large results in pieces of at most 1 MiB; this leaves headroom for
# unary answers such as a long snapshot list page.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# Calls that change nothing, or whose repetition has the same effect as one call: only these
# are retried when the daemon is unavailable (restarting, not yet up).
IDEMPOTENT = frozenset(
    {
        "OpenWorkspace",
        "CloseWorkspace",
        "ListWorkspaces",
        "PersistSnapshot",
        "PinSnapshot",
        "UnpinSnapshot",
        "ListSnapshots",
        "GetSnapshot",
        "Diff",
        "ListTree",
        "ReadFile",
        "VerifyStore",
        "GetStats",
    }
)
# Calls that may take long (scan or write a whole tree): they get the long default deadline.
LONG = frozenset(
    {"CreateSnapshot", "Restore", "ForkSnapshot", "CollectGarbage", "VerifyStore", "Diff"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, for UNAVAILABLE on idempotent calls only."""

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(cap / 2, cap)


def should_retry(method: str, status: grpc.StatusCode | None, attempt: int, p: RetryPolicy) -> bool:
    return (
        status == grpc.StatusCode.UNAVAILABLE and method in IDEMPOTENT and attempt < p.max_attempts
    )


def channel_credentials(
    credentials: grpc.ChannelCredentials | None,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
) -> grpc.ChannelCredentials | None:
    if credentials is not None:
        return credentials
    if root_certificates or private_key or certificate_chain:
        return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
    return None


def channel_args(target: str | None, options: list[tuple[str, object]] | None):
    opts = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    opts.extend(options or [])
    return grpc_target(target), opts


def settings_or_none(settings: pb.WorkspaceSettings) -> pb.WorkspaceSettings | None:
    return settings if settings.ListFields() else None
