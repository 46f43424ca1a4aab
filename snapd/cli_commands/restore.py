"""snapd restore, fork."""

from __future__ import annotations

from . import exitcodes, render
from .context import Context
from .files import display, print_changes
from .workspaces import absolute, settings_kwargs


def cmd_restore(ctx: Context) -> int:
    args = ctx.args
    ws = ctx.workspace()
    snap_id = ctx.snapshot_id(args.snapshot, ws)
    result = ctx.client.restore(ws.id, snap_id, args.paths or None, dry_run=args.dry_run)
    # Paths the restore could not make exact: the workspace differs from the snapshot there.
    status = exitcodes.CONFLICT if result.stats.conflicts else exitcodes.OK
    if ctx.json:
        ctx.emit({"workspace": ws, "result": result})
        return status
    if result.changes:
        print_changes(ctx, result.changes)
    st = result.stats
    if result.dry_run:
        what = render.plural(len(result.changes), "path") if result.changes else "nothing"
        ctx.out(
            f"dry run: restoring {result.snapshot_id} into {ws.path} would change {what}; "
            "nothing was written",
        )
    else:
        ctx.out(
            f"restored {result.snapshot_id} into {ws.path}: {st.files_written} files written "
            f"({render.size(st.bytes_written)}), {st.deleted} deleted, {st.dirs_created} "
            f"directories created, {st.metadata_only} metadata-only, in "
            f"{result.duration_ms:.1f} ms",
        )
        if result.safety_snapshot_id:
            ctx.out(
                f"the state before is snapshot {result.safety_snapshot_id} "
                f"(undo: snapd restore {result.safety_snapshot_id})",
            )
    for path in st.conflicts:
        ctx.note(f"conflict: {display(path)} could not be made exact")
    return status


def cmd_fork(ctx: Context) -> int:
    args = ctx.args
    snap_id = ctx.snapshot_id(args.snapshot)
    new_ws, snap = ctx.client.fork(snap_id, absolute(args.path), **settings_kwargs(args))
    if ctx.json:
        ctx.emit({"workspace": new_ws.info, "snapshot": snap})
        return 0
    ctx.out(
        f"forked into new workspace {new_ws.id}: {new_ws.path} (first snapshot {snap.id})",
    )
    return 0
