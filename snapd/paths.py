"""Default locations. Names avoid Canonical's snapd (snapd.service, /run/snapd.socket)."""

from __future__ import annotations

import os

APP_DIR = "snapd-workspace"


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
    """$SNAPD_SOCKET, else <runtime dir>/snapd.sock."""
    env = os.environ.get("SNAPD_SOCKET")
    if env:
        return env[len("unix://") :] if env.startswith("unix://") else env
    return os.path.join(default_runtime_dir(), "snapd.sock")


def default_config_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, APP_DIR, "config.toml")
