"""Default locations. Names avoid Canonical's snapd (snapd.service, /run/snapd.socket)."""

from __future__ import annotations

import os
import pwd

APP_DIR = "snapd-workspace"
# The system template unit snapd-workspace@<user>.service binds its socket here (see systemd/).
SYSTEM_RUNTIME_ROOT = "/run/snapd-workspace"


def default_store_dir() -> str:
    """$SNAPD_STORE, else $XDG_DATA_HOME/snapd-workspace/store (~/.local/share/...)."""
    env = os.environ.get("SNAPD_STORE")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return os.path.join(base, APP_DIR, "store")


def default_runtime_dir() -> str:
    """$XDG_RUNTIME_DIR/snapd-workspace, else /tmp/snapd-workspace-<uid> (created 0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, APP_DIR)
    return os.path.join("/tmp", f"{APP_DIR}-{os.getuid()}")


def default_socket_path() -> str:
    """Where the daemon binds by default: $SNAPD_SOCKET, else <runtime dir>/snapd.sock."""
    env = os.environ.get("SNAPD_SOCKET")
    if env:
        return env[len("unix://") :] if env.startswith("unix://") else env
    return os.path.join(default_runtime_dir(), "snapd.sock")


def system_socket_path() -> str | None:
    """The system template unit's socket for this user, <SYSTEM_RUNTIME_ROOT>/<user>/snapd.sock
    (RuntimeDirectory=snapd-workspace/%i); None if the uid has no user name."""
    try:
        name = pwd.getpwuid(os.getuid()).pw_name  # the account, not $USER (sudo keeps that)
    except KeyError:
        return None
    return os.path.join(SYSTEM_RUNTIME_ROOT, name, "snapd.sock")


def client_socket_path() -> str:
    """Where clients connect by default: $SNAPD_SOCKET; else the per-user daemon's socket if it
    exists; else the system template unit's socket for this user if that exists; else the
    per-user path. For clients only: a daemon always binds default_socket_path(). The client
    library's snapd_client.default_socket_path() is the same rule."""
    if os.environ.get("SNAPD_SOCKET"):
        return default_socket_path()
    user = default_socket_path()
    if os.path.exists(user):
        return user
    system = system_socket_path()
    if system is not None and os.path.exists(system):
        return system
    return user


def default_config_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, APP_DIR, "config.toml")
