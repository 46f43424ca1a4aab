"""snapd log, show, snapshot, persist, pin, unpin, rm."""

from __future__ import annotations

from . import render
from .context import CliError, Context


def _summary(snap) -> str:
    st = snap.stats
    files = st.get("total_files", st.get("files"))
    parts = []
    if files is not None:
        parts.append(f"{files} files")
    if "logical_bytes" in st:
        parts.append(render.size(st["logical_bytes"]))
    if "new_bytes" in st:
        parts.append(f"{render.size(st['new_bytes'])} new")
    if "duration_ms" in st:
        parts.append(f"{st['duration_ms']:.1f} ms")
    return ", ".join(parts)


def cmd_log(ctx: Context) -> int:
    args = ctx.args
    ws = None if args.all_workspaces else ctx.workspace()
    limit = args.limit or None
    # One more than asked tells whether another page exists.
    take = None if limit is None else args.skip + limit + 1
    page = min(take or 1000, 1000)
    listed = list(ctx.client.iter_snapshots(ws.id if ws else 0, page_size=page, limit=take))
    snaps = listed[args.skip :]
    more = limit is not None and len(snaps) > limit
    snaps = snaps[:limit] if limit is not None else snaps
    if ctx.json:
        ctx.emit(
            {
                "workspace": ws,
                "snapshots": snaps,
                "skip": args.skip,
                "more": more,
            }
        )
        return 0
    if not snaps:
        where = f"workspace {ws.path}" if ws else "the store"
        ctx.note(f"no snapshots in {where}" + (" at this offset" if args.skip else ""))
        return 0
    columns = ["ID", "CREATED", "LABEL", "FLAGS", "FILES", "SIZE", "NEW", "TOOK"]
    if ws is None:
        columns.insert(1, "WS")
    t = render.table(*columns)
    for s in snaps:
        st = s.stats
        row = [
            s.id,
            render.when(s.created_at),
            s.label,
            render.flags(s),
            str(st.get("total_files", st.get("files", "-"))),
            render.size(st.get("logical_bytes")),
            render.size(st.get("new_bytes")),
            f"{st['duration_ms']:.1f} ms" if "duration_ms" in st else "-",
        ]
        if ws is None:
            row.insert(1, str(s.workspace_id))
        t.add_row(*row)
    ctx.out(t)
    if more:
        ctx.note(f"more: snapd log --skip {args.skip + len(snaps)} -n {limit}")
    return 0


def cmd_show(ctx: Context) -> int:
    snap = ctx.client.get_snapshot(ctx.snapshot_id(ctx.args.snapshot), workspace_id=ctx.scope())
    ws = next((w for w in ctx.workspaces() if w.id == snap.workspace_id), None)
    if ctx.json:
        ctx.emit({"snapshot": snap, "workspace_path": ws.path if ws else None})
        return 0
    rows = [
        ("id", snap.id),
        ("workspace", f"{snap.workspace_id} ({ws.path})" if ws else str(snap.workspace_id)),
        ("created", render.when(snap.created_at)),
        ("label", snap.label or "-"),
        ("parent", snap.parent_id or "-"),
        ("origin", snap.origin),
        ("durable", "yes" if snap.durable else "no"),
        ("pinned", "yes" if snap.pinned else "no"),
        ("excludes", ", ".join(snap.excludes) or "-"),
    ]
    ctx.out(render.key_values(rows))
    if snap.metadata:
        ctx.out()
        ctx.out(render.key_values(sorted(snap.metadata.items()), title="metadata"))
    if snap.stats:
        ctx.out()
        flat = sorted(render.flatten(snap.stats).items())
        stats = [(k, render.stat_value(k, v)) for k, v in flat]
        ctx.out(render.key_values(stats, title="stats"))
    return 0


def cmd_snapshot(ctx: Context) -> int:
    ws = ctx.workspace()
    # The API streams no progress for CreateSnapshot, so no bar is shown (see docs/cli.md).
    snap = ctx.client.snapshot(
        ws.id,
        ctx.args.label,
        metadata=dict(ctx.args.meta),
        durable=ctx.args.durable,
        pinned=ctx.args.pin,
        full=ctx.args.full,
    )
    if ctx.json:
        ctx.emit({"snapshot": snap})
        return 0
    ctx.out(f"{snap.id}  {ws.path}  {_summary(snap)}")
    return 0


def _mark(ctx: Context, call: str, done: str) -> int:
    snap_id = ctx.snapshot_id(ctx.args.snapshot)
    snap = getattr(ctx.client, call)(snap_id, workspace_id=ctx.scope())
    if ctx.json:
        ctx.emit({"snapshot": snap})
    else:
        ctx.out(f"{done} {snap.id}")
    return 0


def cmd_persist(ctx: Context) -> int:
    return _mark(ctx, "persist", "persisted")


def cmd_pin(ctx: Context) -> int:
    return _mark(ctx, "pin", "pinned")


def cmd_unpin(ctx: Context) -> int:
    return _mark(ctx, "unpin", "unpinned")


def cmd_rm(ctx: Context) -> int:
    scope = ctx.scope()
    # Resolve every id first, so a typo in the last one deletes nothing.
    snaps = [
        ctx.client.get_snapshot(ctx.snapshot_id(ref), workspace_id=scope)
        for ref in ctx.args.snapshots
    ]
    # Checked here as well as by the daemon, so that nothing is deleted when any is pinned.
    pinned = list(dict.fromkeys(s.id for s in snaps if s.pinned))
    if pinned and not ctx.args.force:
        if len(pinned) == 1:
            what, them = f"snapshot {pinned[0]} is", "it"
        else:
            what, them = f"snapshots {', '.join(pinned)} are", "them"
        raise CliError(
            "FAILED_PRECONDITION",
            f"{what} pinned; unpin {them} first or delete {them} with --force",
        )
    deleted: list[str] = []
    for s in snaps:
        if s.id in deleted:
            continue
        ctx.client.delete_snapshot(s.id, workspace_id=s.workspace_id, force=ctx.args.force)
        deleted.append(s.id)
        if not ctx.json:
            ctx.out(f"deleted {s.id}")
    if ctx.json:
        ctx.emit({"deleted": deleted})
    return 0
