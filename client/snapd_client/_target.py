"""Where the daemon listens by default, and how a target string becomes a gRPC target.

Mirrors snapd.paths.client_socket_path (the client must not depend on the daemon's package); a
test checks that the two agree.
"""

from __future__ import annotations

import os
import pwd

APP_DIR = "snapd-workspace"
# Where the system template unit snapd-workspace@<user>.service puts its sockets
# (RuntimeDirectory=snapd-workspace/%i; see systemd/ and docs/systemd.md).
SYSTEM_RUNTIME_ROOT = "/run/snapd-workspace"


def user_socket_path() -> str:
    """The per-user daemon's socket: $XDG_RUNTIME_DIR/snapd-workspace/snapd.sock, else
    /tmp/snapd-workspace-<uid>/snapd.sock."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, APP_DIR, "snapd.sock")
    return os.path.join("/tmp", f"{APP_DIR}-{os.getuid()}", "snapd.sock")


def system_socket_path() -> str | None:
    """The system template unit's socket for this user, /run/snapd-workspace/<user>/snapd.sock
    (None if the uid has no user name)."""
    try:
        name = pwd.getpwuid(os.getuid()).pw_name  # the account, not $USER (sudo keeps that)
    except KeyError:
        return None
    return os.path.join(SYSTEM_RUNTIME_ROOT, name, "snapd.sock")


def default_socket_path() -> str:
    """The socket a client connects to by default: $SNAPD_SOCKET; else the per-user socket
    (user_socket_path) if it exists; else the system template unit's socket for this user if
    that exists; else the per-user path (so that errors name it)."""
    env = os.environ.get("SNAPD_SOCKET")
    if env:
        return env[len("unix://") :] if env.startswith("unix://") else env
    user = user_socket_path()
    if os.path.exists(user):
        return user
    system = system_socket_path()
    if system is not None and os.path.exists(system):
        return system
    return user


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
