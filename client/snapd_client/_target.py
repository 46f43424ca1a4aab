"""Where the daemon listens by default, and how a target string becomes a gRPC target.

Mirrors snapd.paths (the client must not depend on the daemon's package); a test checks that
the two agree.
"""

from __future__ import annotations

import os

APP_DIR = "snapd-workspace"


def default_socket_path() -> str:
    """$SNAPD_SOCKET, else $XDG_RUNTIME_DIR/snapd-workspace/snapd.sock, else
    /tmp/snapd-workspace-<uid>/snapd.sock."""
    env = os.environ.get("SNAPD_SOCKET")
    if env:
        return env[len("unix://") :] if env.startswith("unix://") else env
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, APP_DIR, "snapd.sock")
    return os.path.join("/tmp", f"{APP_DIR}-{os.getuid()}", "snapd.sock")


def grpc_target(target: str | None) -> str:
    """None -> the default socket; '/path' or 'unix:///path' -> a Unix socket; else host:port."""
    if not target:
        return "unix://" + os.path.abspath(default_socket_path())
    if target.startswith("unix:"):
        return target
    if target.startswith("/") or target.startswith("."):
        return "unix://" + os.path.abspath(target)
    for scheme in ("tcp://", "https://", "grpcs://"):
        if target.startswith(scheme):
            return target[len(scheme) :]
    return target
