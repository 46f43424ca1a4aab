"""What every inspection command shares: the client connection, workspace and snapshot
resolution, output (tables or one JSON document), progress displays, and the one place where
failures become messages and exit codes.

Imported only when a command runs (it pulls in grpc through snapd_client, and rich).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import snapd_client
from snapd_client import SnapdError, WorkspaceInfo

from . import exitcodes

LATEST = ("latest", "@")
START_HINT = "start one with 'snapd serve' (or 'systemctl --user start snapd-workspace')"


class CliError(Exception):
    """A failure the CLI itself detects, with the status name and exit code it reports."""

    def __init__(self, code: str, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code if exit_code is not None else exitcodes.for_status(code)


def jsonable(value: Any) -> Any:
    """Dataclasses (the client's result types) and containers as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = bool(getattr(args, "json", False))
        self.socket: str | None = getattr(args, "socket", None) or getattr(
            args, "global_socket", None
        )
        self._client: snapd_client.Client | None = None
        self._workspaces: list[WorkspaceInfo] | None = None
        self._console = None
        self._err_console = None

    # --- connection ---------------------------------------------------------------------------
    @property
    def client(self) -> snapd_client.Client:
        if self._client is None:
            client = snapd_client.Client(self.socket)
            path = client.target[len("unix://") :] if client.target.startswith("unix:") else None
            if path is not None and not os.path.exists(path):
                # Fail at once instead of retrying calls against a daemon that is not there.
                client.close()
                where = f"{path} (the socket does not exist)"
                if self.socket is None and not os.environ.get("SNAPD_SOCKET"):
                    # The default also looks for the system unit's socket: say so.
                    from snapd_client._target import system_socket_path

                    system = system_socket_path()
                    if system is not None and system != path:
                        where = f"{path} or {system} (neither socket exists)"
                raise CliError(
                    "UNAVAILABLE", f"no snapd daemon is running at {where}; " + START_HINT
                )
            self._client = client
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # --- workspaces and snapshots -------------------------------------------------------------
    def workspaces(self) -> list[WorkspaceInfo]:
        if self._workspaces is None:
            self._workspaces = self.client.workspaces()
        return self._workspaces

    @property
    def workspace_given(self) -> bool:
        return bool(getattr(self.args, "workspace", None))

    def workspace(self, path: str | None = None) -> WorkspaceInfo:
        """The workspace enclosing `path`, else --workspace, else the current directory."""
        target = path or getattr(self.args, "workspace", None) or os.getcwd()
        real = os.path.realpath(os.path.abspath(os.path.expanduser(target)))
        best: WorkspaceInfo | None = None
        for ws in self.workspaces():
            root = ws.path.rstrip("/")
            inside = real == ws.path or real.startswith(root + "/") or root == ""
            if inside and (best is None or len(ws.path) > len(best.path)):
                best = ws
        if best is None:
            raise CliError(
                "NOT_FOUND",
                f"no workspace contains {real}; open one with 'snapd workspaces open DIR' or "
                "name one with --workspace",
            )
        return best

    def scope(self) -> int:
        """The workspace id that snapshot lookups must match: that of --workspace when it is
        given; 0 (any workspace) otherwise, so ids from anywhere work from any directory."""
        return self.workspace().id if self.workspace_given else 0

    def snapshot_id(self, text: str, ws: WorkspaceInfo | None = None) -> str:
        """A snapshot reference as the daemon takes it: an id or unique prefix as given;
        'latest' (or '@') the newest snapshot of `ws` (default: the selected workspace), and
        'latest~N' the one N before it."""
        ref = text.strip().lower()
        base, _, back = ref.partition("~")
        if base not in LATEST:
            return ref
        if back and not back.isdigit():
            raise CliError("INVALID_ARGUMENT", f"{text!r}: write latest~N with a number N")
        steps = int(back or "0")
        ws = ws or self.workspace()
        if not ws.latest_snapshot_id:
            raise CliError(
                "NOT_FOUND",
                f"workspace {ws.path} has no snapshots yet; take one with 'snapd snapshot'",
            )
        if steps == 0:
            return ws.latest_snapshot_id
        snaps = self.client.snapshots(ws.id, limit=steps + 1)
        if len(snaps) <= steps:
            raise CliError(
                "NOT_FOUND", f"workspace {ws.path} has only {len(snaps)} snapshots; no {text}"
            )
        return snaps[steps].id

    # --- output -------------------------------------------------------------------------------
    @property
    def console(self):
        """rich Console on stdout. Off a terminal it is wide, so nothing is cut to 80 columns."""
        if self._console is None:
            from rich.console import Console

            tty = sys.stdout.isatty()
            self._console = Console(
                highlight=False,
                emoji=False,
                soft_wrap=False,
                width=None if tty else max(160, int(os.environ.get("COLUMNS", "0") or 0)),
            )
        return self._console

    @property
    def err_console(self):
        if self._err_console is None:
            from rich.console import Console

            self._err_console = Console(stderr=True, highlight=False, emoji=False)
        return self._err_console

    def out(self, *objects: Any, **kw: Any) -> None:
        """Print to stdout through rich. Off a terminal, without the padding rich leaves at the
        ends of table lines, so the output greps and diffs cleanly."""
        console = self.console
        kw.setdefault("markup", False)
        # Plain lines are never folded at the console width (tables fit themselves).
        kw.setdefault("soft_wrap", all(isinstance(o, str) for o in objects))
        if console.is_terminal:
            console.print(*objects, **kw)
            return
        with console.capture() as captured:
            console.print(*objects, **kw)
        text = "\n".join(line.rstrip() for line in captured.get().splitlines())
        sys.stdout.write(text + "\n")

    def emit(self, document: dict[str, Any]) -> None:
        """The one JSON document of a --json run."""
        sys.stdout.write(json.dumps(jsonable(document), indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()

    def note(self, message: str) -> None:
        """A remark for people on stderr (never mixed into stdout)."""
        self.err_console.print(message, markup=False)

    def wants_progress(self) -> bool:
        return (
            not self.json and not getattr(self.args, "no_progress", False) and sys.stderr.isatty()
        )

    @contextmanager
    def progress(self, title: str, describe: Describe) -> Iterator[ProgressDisplay | None]:
        """A progress bar on stderr fed by the daemon's progress messages. Yields the callback
        for the client call, or None when no display is wanted (--json, no tty)."""
        if not self.wants_progress():
            yield None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.err_console,
        ) as bar:
            yield ProgressDisplay(bar, bar.add_task(title, total=None, detail="starting"), describe)


# (text, total or None for an open-ended task, completed) for one progress message.
Describe = Callable[[snapd_client.Progress], tuple[str, "int | None", int]]


class ProgressDisplay:
    """Feeds a rich progress task from the daemon's progress messages."""

    def __init__(self, bar: Any, task: Any, describe: Describe) -> None:
        self.bar, self.task, self.describe = bar, task, describe
        self.total: int | None = None
        self.completed = 0

    def __call__(self, p: snapd_client.Progress) -> None:
        detail, self.total, self.completed = self.describe(p)
        self.bar.update(self.task, total=self.total, completed=self.completed, detail=detail)

    def finish(self, detail: str) -> None:
        """Show the final figures: the daemon throttles progress messages, so the last one
        seen may predate the end."""
        done = self.total if self.total is not None else self.completed
        self.bar.update(self.task, total=done, completed=done, detail=detail)


def _error_document(code: str, message: str, exit_code: int) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "exit_code": exit_code}}


def _unavailable_message(ctx: Context, e: SnapdError) -> str:
    """UNAVAILABLE from a missing daemon says so and how to start one."""
    if "shutting down" in e.message or ctx._client is None:
        return e.message
    target = ctx._client.target
    where = target[len("unix://") :] if target.startswith("unix://") else target
    return f"cannot reach the snapd daemon at {where} ({e.message}); {START_HINT}"


def execute(module: str, function: str, args: argparse.Namespace) -> int:
    """Run snapd.cli_commands.<module>.<function>(ctx) and turn failures into exit codes."""
    ctx = Context(args)
    try:
        command = getattr(importlib.import_module(f"{__package__}.{module}"), function)
        return int(command(ctx) or 0)
    except CliError as e:
        return _fail(ctx, e.code, e.message, e.exit_code)
    except SnapdError as e:
        message = _unavailable_message(ctx, e) if e.code == "UNAVAILABLE" else e.message
        return _fail(ctx, e.code, message, exitcodes.for_status(e.code))
    except KeyboardInterrupt:
        return _fail(ctx, "CANCELLED", "interrupted", exitcodes.INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`snapd cat ... | head`): not an error; keep Python from
        # complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return exitcodes.OK
    finally:
        ctx.close()


def _fail(ctx: Context, code: str, message: str, exit_code: int) -> int:
    if ctx.json:
        ctx.emit(_error_document(code, message, exit_code))
    print(f"snapd: {message}", file=sys.stderr)
    return exit_code
