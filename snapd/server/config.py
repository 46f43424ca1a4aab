"""Daemon configuration: command-line flags over environment over a TOML file over defaults.

Nothing needs configuring: the defaults put the store in $XDG_DATA_HOME/snapd-workspace/store
and the socket in $XDG_RUNTIME_DIR/snapd-workspace/snapd.sock (see snapd.paths). The file is
--config PATH, else $SNAPD_CONFIG, else ~/.config/snapd-workspace/config.toml if it exists:

    store = "/var/lib/snapd-workspace/store"      # or $SNAPD_STORE, or --store
    socket = "/run/user/1000/snapd-workspace/snapd.sock"   # or $SNAPD_SOCKET, or --socket

    [server]
    max_workers = 32            # threads serving calls
    grace_seconds = 10.0        # on SIGTERM, in-flight calls get this long to finish
    max_message_bytes = 4194304 # larger requests get RESOURCE_EXHAUSTED

    [log]
    format = "text"             # or "json"
    level = "info"

    [tcp]                       # optional: also listen on TCP, TLS required
    listen = "127.0.0.1:7443"
    cert = "/etc/snapd-workspace/server.crt"
    key = "/etc/snapd-workspace/server.key"
    client_ca = "/etc/snapd-workspace/clients-ca.crt"   # optional: require client certificates

    [gc]
    background = true           # collect garbage in short passes while there is some
    interval_seconds = 30.0
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields

from .. import paths
from ..errors import InvalidArgument


@dataclass
class ServeConfig:
    store: str = ""
    socket: str = ""
    max_workers: int = 32
    grace_seconds: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    log_format: str = "text"
    log_level: str = "info"
    tcp_listen: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    background_gc: bool = True
    gc_interval_seconds: float = 30.0
    config_file: str = ""  # the file these values were read from, if any

    def validate(self) -> None:
        if self.max_workers < 1:
            raise InvalidArgument("server.max_workers must be at least 1")
        if self.grace_seconds < 0:
            raise InvalidArgument("server.grace_seconds must not be negative")
        if self.max_message_bytes < 64 * 1024:
            raise InvalidArgument("server.max_message_bytes must be at least 65536")
        if self.log_format not in ("text", "json"):
            raise InvalidArgument("log.format must be 'text' or 'json'")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise InvalidArgument("log.level must be debug, info, warning or error")
        if self.tcp_listen and not (self.tls_cert and self.tls_key):
            raise InvalidArgument(
                "tcp.listen needs tcp.cert and tcp.key: the daemon serves TCP only over TLS "
                "(add tcp.client_ca to require client certificates)"
            )
        if (self.tls_cert or self.tls_key or self.tls_client_ca) and not self.tcp_listen:
            raise InvalidArgument("TLS files are set but tcp.listen is not")
        if not os.path.isabs(self.socket):
            raise InvalidArgument(f"socket path {self.socket!r} must be absolute")


# TOML table/key -> ServeConfig field
_FILE_KEYS = {
    ("store",): "store",
    ("socket",): "socket",
    ("server", "max_workers"): "max_workers",
    ("server", "grace_seconds"): "grace_seconds",
    ("server", "max_message_bytes"): "max_message_bytes",
    ("log", "format"): "log_format",
    ("log", "level"): "log_level",
    ("tcp", "listen"): "tcp_listen",
    ("tcp", "cert"): "tls_cert",
    ("tcp", "key"): "tls_key",
    ("tcp", "client_ca"): "tls_client_ca",
    ("gc", "background"): "background_gc",
    ("gc", "interval_seconds"): "gc_interval_seconds",
}


def read_file(path: str) -> dict[str, object]:
    """The TOML file as {field: value}; unknown keys and wrong types are errors."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidArgument(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"config file {path} is not valid TOML: {e}") from None
    types = {f.name: f.type for f in fields(ServeConfig)}
    out: dict[str, object] = {}

    def visit(table: dict, prefix: tuple[str, ...]) -> None:
        for key, value in table.items():
            where = (*prefix, key)
            if isinstance(value, dict) and where not in _FILE_KEYS:
                visit(value, where)
                continue
            name = _FILE_KEYS.get(where)
            if name is None:
                raise InvalidArgument(f"config file {path}: unknown setting {'.'.join(where)}")
            want = types[name]
            ok = (
                (want == "str" and isinstance(value, str))
                or (want == "bool" and isinstance(value, bool))
                or (want == "int" and isinstance(value, int) and not isinstance(value, bool))
                or (
                    want == "float"
                    and isinstance(value, int | float)
                    and not isinstance(value, bool)
                )
            )
            if not ok:
                raise InvalidArgument(
                    f"config file {path}: {'.'.join(where)} must be a {want}, not {value!r}"
                )
            out[name] = float(value) if want == "float" else value

    visit(data, ())
    return out


def load(
    flags: dict[str, object] | None = None,
    *,
    config_file: str | None = None,
    env: dict[str, str] | None = None,
) -> ServeConfig:
    """Merge defaults, the config file, the environment and flags (highest last).

    flags: ServeConfig field -> value; None values are "not given".
    """
    env = dict(os.environ) if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    cfg = ServeConfig()
    path = config_file or env.get("SNAPD_CONFIG")
    if not path and os.path.exists(paths.default_config_file()):
        path = paths.default_config_file()
    if path:
        for name, value in read_file(path).items():
            setattr(cfg, name, value)
        cfg.config_file = path
    if env.get("SNAPD_STORE"):
        cfg.store = env["SNAPD_STORE"]
    if env.get("SNAPD_SOCKET"):
        sock = env["SNAPD_SOCKET"]
        cfg.socket = sock[len("unix://") :] if sock.startswith("unix://") else sock
    for name, value in flags.items():
        if not hasattr(cfg, name):
            raise InvalidArgument(f"unknown setting {name}")
        setattr(cfg, name, value)
    if not cfg.store:
        cfg.store = paths.default_store_dir()
    if not cfg.socket:
        cfg.socket = paths.default_socket_path()
    cfg.store = os.path.abspath(os.path.expanduser(cfg.store))
    cfg.socket = os.path.expanduser(cfg.socket)
    if cfg.socket.startswith("unix:"):
        cfg.socket = cfg.socket[len("unix:") :].lstrip("/")
        cfg.socket = "/" + cfg.socket
    cfg.socket = os.path.abspath(cfg.socket)
    cfg.validate()
    return cfg
