"""The `snapd` command line.

Structure: each subcommand is a `register_<name>(subparsers)` function that adds its parser
and sets `func` to a `cmd_<name>(args) -> int` function; `COMMANDS` lists the register
functions in help order. Command functions import what they need (gRPC, the engine) inside
their body, so `snapd --help` and argument errors stay fast.

The inspection commands (workspaces, log, show, diff, cat, ls, snapshot, restore, persist,
pin, unpin, rm, fork, gc, verify, stats) are registered from snapd.cli_commands, which keeps
their parsers import-light and loads each implementation only when it runs.

Exit codes: 0 success, 1 failure (the message says why), 2 usage error (argparse); the
inspection commands add 3-7 (see snapd.cli_commands.exitcodes and `snapd --help`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import cli_commands


# --- serve ------------------------------------------------------------------------------------
def register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the daemon in the foreground",
        description=(
            "Run the snapd daemon: a gRPC service on a Unix socket (and optionally TCP with "
            "TLS). Settings come from flags, then $SNAPD_SOCKET/$SNAPD_STORE, then the config "
            "file (--config, $SNAPD_CONFIG, or ~/.config/snapd-workspace/config.toml), then "
            "defaults that need no configuration. Under systemd use Type=notify."
        ),
    )
    p.add_argument("--store", metavar="DIR", help="store directory (created if missing)")
    p.add_argument("--socket", metavar="PATH", help="Unix socket to listen on")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--log-format", choices=["text", "json"], help="log line format")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--max-workers", type=int, metavar="N", help="threads serving calls")
    p.add_argument(
        "--grace", type=float, metavar="SECONDS", help="time in-flight calls get on SIGTERM"
    )
    p.add_argument(
        "--tcp", metavar="HOST:PORT", help="also listen on TCP (needs --tls-cert, --tls-key)"
    )
    p.add_argument("--tls-cert", metavar="FILE", help="server certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    p.add_argument(
        "--tls-client-ca", metavar="FILE", help="CA of client certificates (enables mutual TLS)"
    )
    p.add_argument(
        "--no-background-gc",
        action="store_true",
        default=None,
        help="do not collect garbage in the background",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .errors import SnapdError
    from .server import config, logs

    flags = {
        "store": args.store,
        "socket": args.socket,
        "log_format": args.log_format,
        "log_level": args.log_level,
        "max_workers": args.max_workers,
        "grace_seconds": args.grace,
        "tcp_listen": args.tcp,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "background_gc": False if args.no_background_gc else None,
    }
    try:
        cfg = config.load(flags, config_file=args.config)
    except SnapdError as e:
        print(f"snapd serve: {e}", file=sys.stderr)
        return 1
    logs.setup(cfg.log_format, cfg.log_level)
    from .server.daemon import serve

    return serve(cfg)


# --- entry point ------------------------------------------------------------------------------
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    register_serve,
    *cli_commands.REGISTER,
]


def build_parser() -> argparse.ArgumentParser:
    parser = cli_commands.ArgumentParser(
        prog="snapd",
        description="Workspace snapshots for AI agents: the daemon and its inspection commands.",
        epilog=cli_commands.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli_commands.add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "socket", None) is None and getattr(args, "global_socket", None):
        args.socket = args.global_socket  # `snapd --socket PATH serve` means what it says
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
