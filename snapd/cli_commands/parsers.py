"""Argument parsers of the inspection commands. Standard library only: `snapd --help` and
argument errors must not pay for grpc, rich or the engine.

Each register_<name>(sub) adds one subcommand whose `func` runs `<module>.<function>(ctx)`
through context.execute, which imports the module only then.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import NoReturn

Register = Callable[[argparse._SubParsersAction], None]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a usage error of a --json run also prints the JSON error
    document, so a script reading stdout always gets exactly one document."""

    json_errors = False  # set by the top-level parse_args; subparsers share the class

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        argv = sys.argv[1:] if args is None else list(args)
        ArgumentParser.json_errors = "--json" in argv
        return super().parse_args(argv, namespace)

    def error(self, message: str) -> NoReturn:
        if ArgumentParser.json_errors:
            from .exitcodes import USAGE

            doc = {"error": {"code": "INVALID_ARGUMENT", "message": message, "exit_code": USAGE}}
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        super().error(message)


def lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A command function that imports snapd.cli_commands.<module> when it runs."""

    def run(args: argparse.Namespace) -> int:
        from .context import execute

        return execute(module, function, args)

    run.__qualname__ = f"{module}.{function}"
    return run


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """--socket and --json before the command name (`snapd --json log`)."""
    parser.add_argument(
        "--socket",
        dest="global_socket",
        metavar="PATH",
        help="daemon socket (default: $SNAPD_SOCKET, else the per-user runtime socket)",
    )
    parser.add_argument(
        "--json",
        dest="json",
        action="store_true",
        default=False,
        help="print exactly one JSON document (also on failure)",
    )


def _common(*, workspace: bool = True) -> argparse.ArgumentParser:
    """Options every command accepts after its name too (`snapd log --json`). Their default
    is SUPPRESS so that a value given before the command name is not overwritten."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument(
        "--socket",
        dest="socket",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="daemon socket (default: $SNAPD_SOCKET, else the per-user runtime socket)",
    )
    g.add_argument(
        "--json",
        dest="json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print exactly one JSON document (also on failure)",
    )
    if workspace:
        g.add_argument(
            "-w",
            "--workspace",
            metavar="PATH",
            help="the workspace directory, or any path inside it (default: the workspace "
            "enclosing the current directory)",
        )
    return p


def _sub(
    sub: argparse._SubParsersAction, name: str, help: str, description: str, **kw
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=description,
        parents=[_common(workspace=kw.pop("workspace", True))],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kw,
    )


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative")
    return n


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < f <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1]")
    return f


def _positive_float(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not f > 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return f


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


_SNAP = "snapshot id, unique id prefix (4+ hex characters), 'latest' or 'latest~N'"


def _settings_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workspace settings (unset: keep the current ones)")
    g.add_argument("--keep-last", type=_non_negative, metavar="N", help="newest N snapshots kept")
    g.add_argument(
        "--keep-durable", type=_non_negative, metavar="N", help="newest N durable snapshots kept"
    )
    g.add_argument(
        "--durable-max-age",
        type=float,
        metavar="SECONDS",
        help="durable snapshots younger than this are kept too (0: no age rule)",
    )
    g.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        help="gitignore-style pattern left out of snapshots (repeat; replaces the list)",
    )
    g.add_argument(
        "--no-excludes", action="store_true", help="clear the exclude list (snapshot everything)"
    )
    g.add_argument(
        "--watch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="track changes with a file watcher",
    )


# --- workspaces -------------------------------------------------------------------------------
def register_workspaces(sub: argparse._SubParsersAction) -> None:
    p = _sub(
        sub,
        "workspaces",
        "list, open, close or forget workspaces",
        "Workspaces are directories whose snapshots the daemon keeps. Without an action, "
        "list them.",
        workspace=False,
    )
    p.set_defaults(func=lazy("workspaces", "cmd_list"))
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    ls = _sub(actions, "list", "list workspaces (the default)", "List every workspace.")
    ls.set_defaults(func=lazy("workspaces", "cmd_list"))

    op = _sub(
        actions,
        "open",
        "open (register) a directory as a workspace, or change its settings",
        "Open the directory as a workspace (idempotent: the same path is the same workspace). "
        "Settings given here replace the stored ones; the others stay.",
        workspace=False,
    )
    op.add_argument("path", nargs="?", default=".", help="the directory (default: .)")
    _settings_options(op)
    op.set_defaults(func=lazy("workspaces", "cmd_open"))

    cl = _sub(
        actions,
        "close",
        "release the daemon's resources for a workspace (snapshots stay)",
        "Close a workspace: the daemon drops its directory handle and watcher; its snapshots "
        "stay and the next call on it opens it again.",
    )
    cl.add_argument("path", nargs="?", help="the workspace (default: --workspace or the cwd's)")
    cl.set_defaults(func=lazy("workspaces", "cmd_close"))

    fg = _sub(
        actions,
        "forget",
        "delete a workspace's snapshots and forget it (the directory stays)",
        "Forget a workspace: delete all its snapshots from the store. The directory itself "
        "is not touched. Asks for confirmation on a terminal; elsewhere needs --yes.",
    )
    fg.add_argument("path", nargs="?", help="the workspace (default: --workspace or the cwd's)")
    fg.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    fg.set_defaults(func=lazy("workspaces", "cmd_forget"))


# --- snapshots --------------------------------------------------------------------------------
def register_log(sub: argparse._SubParsersAction) -> None:
    p = _sub(
        sub,
        "log",
        "list a workspace's snapshots, newest first",
        "List snapshots newest first, a page at a time (-n, --skip).",
    )
    p.add_argument(
        "-n",
        "--limit",
        type=_non_negative,
        default=20,
        metavar="N",
        help="show at most N snapshots (default 20; 0: all)",
    )
    p.add_argument(
        "--skip", type=_non_negative, default=0, metavar="N", help="skip the newest N (paging)"
    )
    p.add_argument(
        "-a", "--all-workspaces", action="store_true", help="snapshots of every workspace"
    )
    p.set_defaults(func=lazy("snapshots", "cmd_log"))


def register_show(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "show", "one snapshot with its stats and metadata", "Show one snapshot.")
    p.add_argument("snapshot", nargs="?", default="latest", help=_SNAP + " (default: latest)")
    p.set_defaults(func=lazy("snapshots", "cmd_show"))


def register_diff(sub: argparse._SubParsersAction) -> None:
    p = _sub(
        sub,
        "diff",
        "what changed between two snapshots, or a snapshot and the live workspace",
        "List changed paths from FROM to TO (default: the live workspace). -p adds a "
        "unified diff of text files; binary files are noted.\n\n"
        "  snapd diff                 latest snapshot -> live workspace\n"
        "  snapd diff 3fa2            snapshot 3fa2.. -> live workspace\n"
        "  snapd diff -p 3fa2 91bc    snapshot 3fa2.. -> snapshot 91bc.., with patches",
    )
    p.add_argument("from_snapshot", nargs="?", default="latest", help=_SNAP + " (default: latest)")
    p.add_argument("to_snapshot", nargs="?", help="snapshot (default: the live workspace)")
    p.add_argument("-p", "--patch", action="store_true", help="show a unified diff of text files")
    p.add_argument(
        "-U",
        "--unified",
        type=_non_negative,
        default=3,
        metavar="N",
        help="lines of context (default 3)",
    )
    p.add_argument(
        "--max-bytes",
        type=_non_negative,
        default=4 * 1024 * 1024,
        metavar="N",
        help="no patch for files larger than this (default 4 MiB)",
    )
    p.set_defaults(func=lazy("files", "cmd_diff"))


def register_cat(sub: argparse._SubParsersAction) -> None:
    p = _sub(
        sub,
        "cat",
        "write a file from a snapshot to stdout",
        "Write a file's content from a snapshot to stdout, byte for byte. PATH is relative "
        "to the workspace root.",
    )
    p.add_argument("snapshot", help=_SNAP)
    p.add_argument("path", help="file path inside the snapshot (relative, '/'-separated)")
    p.set_defaults(func=lazy("files", "cmd_cat"))


def register_ls(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "ls", "list a snapshot's tree", "List a directory of a snapshot.")
    p.add_argument("snapshot", nargs="?", default="latest", help=_SNAP + " (default: latest)")
    p.add_argument("path", nargs="?", default="", help="directory inside the snapshot (root)")
    p.add_argument("-R", "--recursive", action="store_true", help="list subdirectories too")
    p.set_defaults(func=lazy("files", "cmd_ls"))


def register_snapshot(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "snapshot", "take a snapshot of a workspace", "Take a snapshot now.")
    p.add_argument("label", nargs="?", default="", help="a label for people")
    p.add_argument(
        "-m",
        "--meta",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="metadata entry (repeat)",
    )
    p.add_argument(
        "--durable", action="store_true", help="commit to stable storage before answering"
    )
    p.add_argument("--pin", action="store_true", help="keep it regardless of retention")
    p.add_argument(
        "--full",
        action="store_true",
        help="walk the whole tree even with the file watcher on (catches writes the watcher "
        "cannot see: through a hard link from outside the workspace, a shared mmap)",
    )
    p.set_defaults(func=lazy("snapshots", "cmd_snapshot"))


def register_restore(sub: argparse._SubParsersAction) -> None:
    p = _sub(
        sub,
        "restore",
        "make the workspace (or some paths) equal to a snapshot",
        "Restore a snapshot into its own workspace, whole or only PATHs. A safety snapshot "
        "of the current state is taken first (restore it to undo). --dry-run only shows "
        "what would change.",
    )
    p.add_argument("snapshot", help=_SNAP)
    p.add_argument("paths", nargs="*", metavar="PATH", help="relative paths inside the snapshot")
    p.add_argument("-n", "--dry-run", action="store_true", help="change nothing, show changes")
    p.set_defaults(func=lazy("restore", "cmd_restore"))


def _snapshot_action(sub, name: str, help: str, description: str, function: str) -> None:
    p = _sub(sub, name, help, description)
    p.add_argument("snapshot", help=_SNAP)
    p.set_defaults(func=lazy("snapshots", function))


def register_persist(sub: argparse._SubParsersAction) -> None:
    _snapshot_action(
        sub,
        "persist",
        "make a snapshot durable",
        "Commit a snapshot to stable storage; the durable retention rule keeps it.",
        "cmd_persist",
    )


def register_pin(sub: argparse._SubParsersAction) -> None:
    _snapshot_action(
        sub, "pin", "keep a snapshot regardless of retention", "Pin a snapshot.", "cmd_pin"
    )


def register_unpin(sub: argparse._SubParsersAction) -> None:
    _snapshot_action(
        sub, "unpin", "let retention evict a snapshot again", "Unpin a snapshot.", "cmd_unpin"
    )


def register_rm(sub: argparse._SubParsersAction) -> None:
    p = _sub(
        sub,
        "rm",
        "delete snapshots",
        "Delete snapshots now; their data goes at the next garbage collection. A pinned "
        "snapshot needs --force.",
    )
    p.add_argument("snapshots", nargs="+", metavar="SNAPSHOT", help=_SNAP)
    p.add_argument("-f", "--force", action="store_true", help="delete pinned snapshots too")
    p.set_defaults(func=lazy("snapshots", "cmd_rm"))


def register_fork(sub: argparse._SubParsersAction) -> None:
    p = _sub(
        sub,
        "fork",
        "restore a snapshot into a new directory that becomes a new workspace",
        "Fork a snapshot: restore it into PATH (new or empty, outside every workspace), which "
        "becomes a new workspace. Settings default to the snapshot's workspace's.",
    )
    p.add_argument("snapshot", help=_SNAP)
    p.add_argument("path", help="the new workspace directory")
    _settings_options(p)
    p.set_defaults(func=lazy("restore", "cmd_fork"))


# --- maintenance ------------------------------------------------------------------------------
def _progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none is shown off a tty)"
    )


def register_gc(sub: argparse._SubParsersAction) -> None:
    p = _sub(
        sub,
        "gc",
        "delete unreferenced data and compact packs",
        "Run garbage collection now, with a progress display fed by the daemon.",
        workspace=False,
    )
    p.add_argument(
        "--max-seconds",
        type=_positive_float,
        metavar="S",
        help="stop after about S seconds (run again to continue)",
    )
    _progress_option(p)
    p.set_defaults(func=lazy("maintenance", "cmd_gc"))


def register_verify(sub: argparse._SubParsersAction) -> None:
    p = _sub(
        sub,
        "verify",
        "check stored data against its content addresses",
        "Verify the store: every tree, and all (or a sample of) file contents. Exits 6 when "
        "it finds problems. --repair then recomputes every object's reference count and "
        "fixes the wrong ones (store-wide; snapshots wait meanwhile).",
        workspace=False,
    )
    p.add_argument(
        "--sample",
        type=_fraction,
        default=1.0,
        metavar="F",
        help="fraction of file contents to check, in (0, 1] (default 1)",
    )
    p.add_argument(
        "--snapshot",
        dest="snapshot_ids",
        action="append",
        metavar="ID",
        help="only this snapshot (repeat)",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="after verifying, recompute reference counts and fix the catalog",
    )
    _progress_option(p)
    p.set_defaults(func=lazy("maintenance", "cmd_verify"))


def register_stats(sub: argparse._SubParsersAction) -> None:
    p = _sub(
        sub,
        "stats",
        "store, workspace and daemon statistics",
        "Store-wide figures (sizes, dedup and compression), per-workspace counts, the file "
        "watcher counters of open workspaces, and the daemon's. Without --workspace, every "
        "workspace.",
    )
    p.add_argument(
        "--no-store", action="store_true", help="skip the store-wide figures (they walk the store)"
    )
    p.set_defaults(func=lazy("maintenance", "cmd_stats"))


REGISTER: list[Register] = [
    register_workspaces,
    register_log,
    register_show,
    register_diff,
    register_cat,
    register_ls,
    register_snapshot,
    register_restore,
    register_persist,
    register_pin,
    register_unpin,
    register_rm,
    register_fork,
    register_gc,
    register_verify,
    register_stats,
]
