"""snapd workspaces [list | open | close | forget]."""

from __future__ import annotations

import argparse
import os
import sys

from . import render
from .context import CliError, Context


def settings_kwargs(args: argparse.Namespace) -> dict:
    """Client keyword arguments for the settings given on the command line (others unset)."""
    if args.exclude and args.no_excludes:
        raise CliError("INVALID_ARGUMENT", "--exclude and --no-excludes contradict each other")
    exclude = [] if args.no_excludes else args.exclude
    return {
        "keep_last": args.keep_last,
        "keep_durable": args.keep_durable,
        "durable_max_age": args.durable_max_age,
        "exclude": exclude,
        "watch": args.watch,
    }


def absolute(path: str) -> str:
    """Paths on the command line are relative to the current directory; the daemon takes
    only absolute ones."""
    return os.path.abspath(os.path.expanduser(path))


def _row(ws) -> list[str]:
    s = ws.settings
    retention = f"last {s.keep_last}, durable {s.keep_durable}"
    if s.durable_max_age:
        retention += f", {s.durable_max_age:g}s"
    return [
        str(ws.id),
        ws.path,
        "open" if ws.open else "closed",
        ws.latest_snapshot_id or "-",
        retention,
        ", ".join(s.exclude) or "-",
    ]


def cmd_list(ctx: Context) -> int:
    workspaces = ctx.workspaces()
    if ctx.json:
        ctx.emit({"workspaces": workspaces})
        return 0
    if not workspaces:
        ctx.note("no workspaces yet; open one with 'snapd workspaces open DIR'")
        return 0
    t = render.table("ID", "PATH", "STATE", "LATEST", "RETENTION", "EXCLUDES")
    for ws in workspaces:
        t.add_row(*_row(ws))
    ctx.out(t)
    return 0


def cmd_open(ctx: Context) -> int:
    path = absolute(ctx.args.path)
    ws = ctx.client.open_workspace(path, **settings_kwargs(ctx.args))
    if ctx.json:
        ctx.emit({"workspace": ws.info, "created": ws.created})
        return 0
    verb = "opened new workspace" if ws.created else "workspace"
    ctx.out(f"{verb} {ws.id}: {ws.path}")
    t = render.table("ID", "PATH", "STATE", "LATEST", "RETENTION", "EXCLUDES")
    t.add_row(*_row(ws.info))
    ctx.out(t)
    return 0


def _selected(ctx: Context):
    return ctx.workspace(absolute(ctx.args.path) if ctx.args.path else None)


def cmd_close(ctx: Context) -> int:
    ws = _selected(ctx)
    ctx.client.close_workspace(ws.id)
    if ctx.json:
        after = next((w for w in ctx.client.workspaces() if w.id == ws.id), ws)
        ctx.emit({"workspace": after, "closed": True})
    else:
        ctx.out(f"closed workspace {ws.id}: {ws.path} (its snapshots stay)")
    return 0


def cmd_forget(ctx: Context) -> int:
    ws = _selected(ctx)
    if not ctx.args.yes:
        if ctx.json or not sys.stdin.isatty():
            raise CliError(
                "INVALID_ARGUMENT",
                f"forgetting {ws.path} deletes all its snapshots; pass --yes to confirm",
            )
        answer = input(f"Delete every snapshot of {ws.path} and forget it? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            ctx.note("nothing changed")
            return 0
    deleted = ctx.client.close_workspace(ws.id, forget=True)
    if ctx.json:
        ctx.emit({"workspace": ws, "forgotten": True, "deleted_snapshots": deleted})
    else:
        ctx.out(
            f"forgot workspace {ws.id}: {ws.path} ({deleted} snapshots deleted; the directory "
            "is untouched)",
        )
    return 0
