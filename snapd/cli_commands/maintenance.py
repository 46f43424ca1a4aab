"""snapd gc, verify, stats."""

from __future__ import annotations

from . import exitcodes, render
from .context import Context
from .files import display

# Store figures shown first, in this order; any others the daemon reports follow.
STORE_KEYS = [
    "logical_bytes",
    "unique_bytes",
    "stored_bytes",
    "dedup_ratio",
    "compression_ratio",
    "objects",
    "packs",
    "garbage_bytes",
    "snapshots",
    "durable_snapshots",
    "pinned_snapshots",
    "workspaces",
]
PROBLEMS_SHOWN = 50
# File watcher counters shown first, in this order; any others the daemon reports follow.
WATCHER_KEYS = [
    "watches",
    "events",
    "overflows",
    "rescans_full",
    "rescans_subtree",
    "watch_limit_errors",
    "unwatched_dirs",
    "restarts",
    "no_inotify",
]


def _gc_progress(p) -> tuple[str, int | None, int]:
    c = p.counters
    deleted = int(c.get("deleted_objects", 0))
    compacted = int(c.get("packs_compacted", 0))
    detail = (
        f"{p.phase}: {deleted} objects ({render.size(c.get('deleted_bytes', 0))}) deleted, "
        f"{compacted} packs compacted"
    )
    # The collector does not know its total work in advance: an open-ended task.
    return detail, None, compacted if p.phase == "compact" else deleted


def cmd_gc(ctx: Context) -> int:
    with ctx.progress("gc", _gc_progress) as progress:
        result = ctx.client.collect_garbage(max_seconds=ctx.args.max_seconds, progress=progress)
        if progress is not None:
            progress.finish(
                f"{result.deleted_objects} objects ({render.size(result.deleted_bytes)}) "
                f"deleted, {result.packs_compacted} packs compacted"
            )
    if ctx.json:
        ctx.emit({"result": result})
        return 0
    rows = [
        ("deleted objects", result.deleted_objects),
        ("deleted bytes", render.size(result.deleted_bytes)),
        ("packs compacted", result.packs_compacted),
        ("packs deleted", result.packs_deleted),
        ("reclaimed on disk", render.size(result.reclaimed_bytes)),
        ("complete", "yes" if result.complete else "no (out of time; run again to continue)"),
        ("took", f"{result.duration_s:.3f} s"),
    ]
    ctx.out(render.key_values(rows, title="garbage collection"))
    return 0


def _verify_progress(p) -> tuple[str, int | None, int]:
    c = p.counters
    if p.phase == "repair":
        return "recounting references", None, 0
    detail = f"{c.get('objects_checked', 0)} objects checked, {c.get('problems', 0)} problems"
    total = c.get("snapshots")
    return detail, int(total) if total is not None else None, int(c.get("snapshots_done", 0))


def cmd_verify(ctx: Context) -> int:
    ids = [ctx.snapshot_id(s) for s in ctx.args.snapshot_ids or []]
    with ctx.progress("verify", _verify_progress) as progress:
        report = ctx.client.verify(
            sample=ctx.args.sample, snapshot_ids=ids, repair=ctx.args.repair, progress=progress
        )
        if progress is not None:
            progress.finish(
                f"{report.objects_checked} objects checked, {report.problem_count} problems"
            )
    # The exit status is the verification's; a repair changes counts, not data.
    status = exitcodes.OK if report.ok else exitcodes.DATA_LOSS
    if ctx.json:
        ctx.emit({"report": report})
        return status
    rows = [
        ("result", "ok" if report.ok else f"{report.problem_count} problems"),
        ("catalog", "ok" if report.catalog_ok else "damaged"),
        ("snapshots checked", report.snapshots_checked),
        ("objects checked", report.objects_checked),
        ("bytes checked", render.size(report.bytes_checked)),
        ("sample", f"{report.sample:g}"),
        ("took", f"{report.duration_s:.3f} s"),
    ]
    if report.damaged_snapshots:
        rows.append(("damaged snapshots", ", ".join(report.damaged_snapshots)))
    ctx.out(render.key_values(rows, title="verify"))
    if report.repair is not None:
        r = report.repair
        rows = [
            ("reference counts fixed", f"{r.objects_fixed} of {r.objects} objects"),
            ("took", f"{r.duration_s:.3f} s"),
        ]
        if r.unreadable_objects:
            rows.append(("unreadable (not counted)", ", ".join(r.unreadable_objects)))
        if r.missing_objects:
            rows.append(("referenced but missing", ", ".join(r.missing_objects)))
        ctx.out()
        ctx.out(render.key_values(rows, title="repair"))
    if report.problems:
        t = render.table("SNAPSHOT", "PATH", "OBJECT", "ERROR", title="problems")
        for pr in report.problems[:PROBLEMS_SHOWN]:
            t.add_row(pr.snapshot_id or "-", display(pr.path) or "-", pr.object_id or "-", pr.error)
        ctx.out(t)
        if report.problem_count > PROBLEMS_SHOWN:
            ctx.note(
                f"... and {report.problem_count - PROBLEMS_SHOWN} more (--json lists up to 10,000)"
            )
    return status


def cmd_stats(ctx: Context) -> int:
    ws = ctx.workspace() if ctx.workspace_given else None
    stats = ctx.client.stats(ws.id if ws else 0, skip_store=ctx.args.no_store)
    if ctx.json:
        ctx.emit(
            {"store": stats.store or None, "workspaces": stats.workspaces, "daemon": stats.daemon}
        )
        return 0
    if stats.store:
        keys = [k for k in STORE_KEYS if k in stats.store]
        keys += sorted(k for k in stats.store if k not in STORE_KEYS)
        rows = [(k, render.stat_value(k, stats.store[k])) for k in keys]
        ctx.out(render.key_values(rows, title="store"))
        ctx.out()
    if stats.workspaces:
        t = render.table(
            "ID",
            "PATH",
            "SNAPSHOTS",
            "DURABLE",
            "PINNED",
            "LATEST",
            "LATEST AT",
            "STATE",
            title="workspaces",
        )
        for w in stats.workspaces:
            t.add_row(
                str(w.workspace_id),
                w.path,
                str(w.snapshots),
                str(w.durable_snapshots),
                str(w.pinned_snapshots),
                w.latest_snapshot_id or "-",
                render.when(w.latest_created_at),
                "open" if w.open else "closed",
            )
        ctx.out(t)
        ctx.out()
    watched = [w for w in stats.workspaces if w.watcher is not None]
    if watched:
        keys = [k for k in WATCHER_KEYS if any(k in w.watcher for w in watched)]
        keys += sorted({k for w in watched for k in w.watcher} - set(WATCHER_KEYS))
        t = render.table("ID", *(k.replace("_", " ").upper() for k in keys), title="file watchers")
        for w in watched:
            t.add_row(
                str(w.workspace_id), *(render.stat_value(k, w.watcher.get(k, "-")) for k in keys)
            )
        ctx.out(t)
        ctx.out()
    d = stats.daemon
    rows = [
        ("version", d.version),
        ("uptime", f"{d.uptime_s:.0f} s"),
        ("calls in flight", d.calls_in_flight),
        ("open workspaces", d.open_workspaces),
    ]
    ctx.out(render.key_values(rows, title="daemon"))
    return 0
