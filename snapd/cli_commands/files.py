"""snapd ls, cat, diff: looking inside snapshots."""

from __future__ import annotations

import base64
import difflib
import os
import sys
from dataclasses import dataclass

from snapd_client import InvalidArgumentError, NotFoundError

from . import render
from .context import Context, jsonable

BINARY_SNIFF = 8192  # bytes looked at for a NUL, as git does


def display(path: str) -> str:
    """A path as text that any terminal encoding can take (undecodable bytes as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# --- ls ---------------------------------------------------------------------------------------
def cmd_ls(ctx: Context) -> int:
    args = ctx.args
    snap = ctx.client.get_snapshot(ctx.snapshot_id(args.snapshot), workspace_id=ctx.scope())
    entries = sorted(
        ctx.client.iter_tree(snap.id, args.path, recursive=args.recursive),
        key=lambda e: os.fsencode(e.path),
    )
    if ctx.json:
        ctx.emit({"snapshot_id": snap.id, "path": args.path, "entries": entries})
        return 0
    t = render.table("MODE", "SIZE", "MODIFIED", "PATH")
    t.columns[1].justify = "right"
    for e in entries:
        name = display(e.path)
        if e.kind == "dir":
            name += "/"
        elif e.kind == "symlink":
            name += f" -> {display(e.target)}"
        size = "-" if e.kind == "dir" else str(e.size)
        t.add_row(render.mode(e.kind, e.mode), size, render.mtime(e.mtime_ns), name)
    ctx.out(t)
    return 0


# --- cat --------------------------------------------------------------------------------------
def cmd_cat(ctx: Context) -> int:
    args = ctx.args
    snap_id = ctx.snapshot_id(args.snapshot)
    if ctx.scope():
        snap_id = ctx.client.get_snapshot(snap_id, workspace_id=ctx.scope()).id
    if ctx.json:
        snap = ctx.client.get_snapshot(snap_id)
        data = ctx.client.read_file(snap.id, args.path)
        entry = ctx.client.list_tree(snap.id, args.path)[0]
        try:
            content, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(data).decode("ascii"), "base64"
        ctx.emit(
            {
                "snapshot_id": snap.id,
                "path": args.path,
                "entry": entry,
                "encoding": encoding,
                "content": content,
            }
        )
        return 0
    out = sys.stdout.buffer
    for piece in ctx.client.iter_file(snap_id, args.path):  # streamed: no size limit
        out.write(piece)
    out.flush()
    return 0


# --- diff -------------------------------------------------------------------------------------
@dataclass
class Patch:
    """The -p part of one change: a unified diff, or why there is none."""

    text: str | None = None
    binary: bool = False
    note: str | None = None


def _is_binary(data: bytes) -> bool:
    if b"\0" in data[:BINARY_SNIFF]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def unified(old: bytes | None, new: bytes | None, path: str, context: int) -> str:
    """A unified diff of two text versions (None: the file does not exist on that side)."""
    a = old.decode("utf-8").splitlines(keepends=True) if old else []
    b = new.decode("utf-8").splitlines(keepends=True) if new else []
    name = display(path)
    from_name = f"a/{name}" if old is not None else "/dev/null"
    to_name = f"b/{name}" if new is not None else "/dev/null"
    lines = [f"--- {from_name}\n", f"+++ {to_name}\n"]
    for line in list(difflib.unified_diff(a, b, n=context))[2:]:  # our own header above
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        lines.append(line)
    return "".join(lines)


class _Sides:
    """Reads the two versions of a changed file: from snapshots through the daemon, or the
    live side from the workspace directory on this machine."""

    def __init__(self, ctx: Context, a: str, b: str | None, live_root: str | None) -> None:
        self.ctx, self.a, self.b, self.live_root = ctx, a, b, live_root

    def snapshot_file(self, snap_id: str, path: str) -> bytes | None:
        """The file's bytes, or None when it is not a regular file there."""
        try:
            return self.ctx.client.read_file(snap_id, path)
        except (InvalidArgumentError, NotFoundError):  # a directory or symlink, or absent
            return None

    def old(self, path: str) -> bytes | None:
        return self.snapshot_file(self.a, path)

    def new(self, path: str) -> bytes | None:
        if self.b is not None:
            return self.snapshot_file(self.b, path)
        assert self.live_root is not None
        full = os.path.join(self.live_root, path)
        if not os.path.isfile(full) or os.path.islink(full):
            return None
        with open(full, "rb") as f:
            return f.read()


def _patch(change, sides: _Sides, max_bytes: int, context: int) -> Patch:
    if change.change == "metadata":
        return Patch(note="mode or modification time changed; content is the same")
    if change.kind != "file" and change.change != "type_changed":
        return Patch(note=f"{change.kind} {change.change}")
    if max(change.old_size, change.new_size) > max_bytes:
        return Patch(note=f"larger than {render.size(max_bytes)} (--max-bytes); no patch")
    try:
        old = sides.old(change.path) if change.change != "added" else None
        new = sides.new(change.path) if change.change != "deleted" else None
    except UnicodeEncodeError:
        return Patch(note="the name is not UTF-8, which the API cannot read by path")
    except OSError as e:
        return Patch(note=f"the live file cannot be read here: {e.strerror}")
    if old is None and new is None:
        return Patch(note=f"{change.kind} {change.change}")
    if (old is not None and _is_binary(old)) or (new is not None and _is_binary(new)):
        return Patch(binary=True, note="binary files differ")
    return Patch(text=unified(old, new, change.path, context))


def _live_root(ctx: Context, snap, workspace_id: int) -> str | None:
    ws_id = workspace_id or snap.workspace_id
    ws = next((w for w in ctx.workspaces() if w.id == ws_id), None)
    return ws.path if ws else None


def cmd_diff(ctx: Context) -> int:
    args = ctx.args
    scope = ctx.scope()
    a = ctx.client.get_snapshot(ctx.snapshot_id(args.from_snapshot), workspace_id=scope)
    b = (
        ctx.client.get_snapshot(ctx.snapshot_id(args.to_snapshot), workspace_id=scope)
        if args.to_snapshot
        else None
    )
    # Live side: --workspace if given, else the workspace of the FROM snapshot.
    ws_id = scope if b is None else 0
    changes = list(ctx.client.iter_diff(a.id, b.id if b else None, workspace_id=ws_id))
    patches: list[Patch | None] = [None] * len(changes)
    if args.patch:
        live = _live_root(ctx, a, ws_id) if b is None else None
        sides = _Sides(ctx, a.id, b.id if b else None, live)
        patches = [_patch(c, sides, args.max_bytes, args.unified) for c in changes]
    if ctx.json:
        items = []
        for c, p in zip(changes, patches, strict=True):
            item = jsonable(c)
            if p is not None:
                item.update(patch=p.text, binary=p.binary, note=p.note)
            items.append(item)
        ctx.emit(
            {
                "from": a.id,
                "to": b.id if b else None,
                "live_workspace_id": (ws_id or a.workspace_id) if b is None else None,
                "changes": items,
            }
        )
        return 0
    if not changes:
        ctx.note(f"no changes from {a.id} to {b.id if b else 'the live workspace'}")
        return 0
    if args.patch:
        _print_patches(ctx, changes, patches)
    else:
        print_changes(ctx, changes)
    return 0


def print_changes(ctx: Context, changes) -> None:
    t = render.table("CHANGE", "KIND", "PATH", "SIZE")
    for c in changes:
        if c.change == "added":
            size = render.size(c.new_size)
        elif c.change == "deleted":
            size = render.size(c.old_size)
        else:
            size = f"{render.size(c.old_size)} -> {render.size(c.new_size)}"
        if c.kind == "dir":
            size = "-"
        style = render.CHANGE_STYLE.get(c.change, "")
        t.add_row(c.change, c.kind, display(c.path), size, style=style)
    ctx.out(t)
    counts: dict[str, int] = {}
    for c in changes:
        counts[c.change] = counts.get(c.change, 0) + 1
    kinds = ", ".join(f"{n} {k}" for k, n in counts.items())
    ctx.out(f"{render.plural(len(changes), 'change')}: {kinds}")


def _print_patches(ctx: Context, changes, patches) -> None:
    tty = sys.stdout.isatty()
    write = sys.stdout.write
    for c, p in zip(changes, patches, strict=True):
        header = f"diff a/{display(c.path)} b/{display(c.path)} ({c.kind} {c.change})\n"
        body = p.text if p.text is not None else f"# {p.note}\n"
        if not tty:
            write(header + body)
            continue
        ctx.out(header.rstrip("\n"), style="bold")
        for line in body.splitlines():
            style = ""
            if line.startswith(("+++", "---")):
                style = "bold"
            elif line.startswith("+"):
                style = "green"
            elif line.startswith("-"):
                style = "red"
            elif line.startswith("@@"):
                style = "cyan"
            elif line.startswith("#"):
                style = "dim"
            ctx.out(line, style=style, soft_wrap=True)
    sys.stdout.flush()
