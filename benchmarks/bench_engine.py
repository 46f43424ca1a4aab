"""Benchmark: the snapshot engine (in process, no daemon) against a shadow git repository.

Both get the same workload (by default Django 5.0 ... 5.0.14 applied as 15 agent steps) in
separate copies of the workspace. For every step: apply it to both copies, snapshot ours and
commit git's; then restore both to the previous step ("undo"), check the result, and restore
them forward again ("redo") so the next step starts from where it should. Every restore of ours
is compared with the tree as it was when that snapshot was taken (bytes, modes, mtimes); git's
with the bytes and exec bits it keeps. A wrong restore stops the run with the differences.

Run:  .venv/bin/python -m benchmarks.bench_engine [--steps N] [--json [FILE]] [--keep]
See benchmarks/README.md for the columns.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import snapd
from benchmarks.baselines import ShadowGit
from benchmarks.workloads import (
    DjangoReleases,
    Manifest,
    SyntheticEdits,
    Workload,
    compare_manifests,
    dir_size,
    tree_manifest,
)
from snapd import gcpolicy
from snapd.store.store import Store
from snapd.workspace import Workspace, WorkspaceSettings

# Retention for the size comparison: git keeps every commit, so ours must keep every snapshot.
KEEP_LAST = 1000

# (summary row key, the target for ours/git, how it is written)
TARGETS: dict[str, tuple[float, str]] = {
    "first_snapshot": (0.2, "<= 0.20 (5x faster)"),
    "step_median": (0.5, "<= 0.50"),
    "undo_median": (0.5, "<= 0.50"),
    "store_size": (1.2, "<= 1.20"),
}


class VerificationError(AssertionError):
    """A restore (or a workload step) did not produce the tree it should have."""


@dataclass
class SideResult:
    """Measurements for one contender (ours or git). Times in seconds."""

    name: str
    setup_s: float = 0.0
    first_s: float = 0.0
    step_s: list[float] = field(default_factory=list)  # snapshots of steps 1..n-1
    undo_s: list[float] = field(default_factory=list)  # restore step i -> i-1
    redo_s: list[float] = field(default_factory=list)  # restore step i-1 -> i
    # CPU seconds (all threads, plus child processes for git) of the same operations: far
    # less disturbed than wall time when other work shares the machine.
    first_cpu_s: float = 0.0
    # Every first-snapshot sample (the extra ones go into throwaway stores / git dirs);
    # first_s and first_cpu_s are their medians.
    first_samples_s: list[float] = field(default_factory=list)
    first_samples_cpu_s: list[float] = field(default_factory=list)
    step_cpu_s: list[float] = field(default_factory=list)
    undo_cpu_s: list[float] = field(default_factory=list)
    redo_cpu_s: list[float] = field(default_factory=list)
    size_bytes: int = 0
    size_before_gc: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class StepRecord:
    label: str
    touched: int  # entries the workload step changed
    ours_read_files: int | None = None  # files our scanner read (not served by the stat cache)
    ours_restore_files_written: int | None = None


@dataclass
class BenchResult:
    workload: str
    steps: list[StepRecord]
    ours: SideResult
    git: SideResult | None
    env: dict
    summary: list[dict]
    workdir: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


# --- statistics -----------------------------------------------------------------------------------
def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (with fewer than 20 samples this is the maximum)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


# --- the run --------------------------------------------------------------------------------------
class _Profiles:
    """Optional cProfile of each of our per-step snapshots and undo restores."""

    def __init__(self, enabled: bool, timer: str = "wall") -> None:
        self.enabled = enabled
        self.timer = time.process_time if timer == "cpu" else time.perf_counter
        self.taken: list[tuple[str, int, cProfile.Profile]] = []

    def call(self, kind: str, step: int, fn: Callable, *args, **kw):
        if not self.enabled or step == 0:
            return fn(*args, **kw)
        prof = cProfile.Profile(self.timer)
        self.taken.append((kind, step, prof))
        return prof.runcall(fn, *args, **kw)


def _cpu_now() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished git processes
    return time.process_time() + children.ru_utime + children.ru_stime


def _timed(fn: Callable, *args, **kw) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of one call."""
    c0 = _cpu_now()
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    wall = time.perf_counter() - t0
    return wall, _cpu_now() - c0, out


def _check(problems: list[str], what: str) -> None:
    if problems:
        raise VerificationError(f"{what}:\n  " + "\n  ".join(problems))


def run(
    workload: Workload,
    *,
    steps: int | None = None,
    tmp_root: str | Path | None = None,
    keep: bool = False,
    baseline: bool = True,
    profile_dir: str | Path | None = None,
    profile_timer: str = "wall",
    first_repeats: int = 1,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> BenchResult:
    """Run the whole benchmark once; raises VerificationError if any restore is wrong."""
    workload.prepare(log)
    plan = workload.steps()
    if steps is not None:
        plan = plan[:steps]
    if len(plan) < 2:
        raise ValueError("the benchmark needs at least 2 steps (one to snapshot, one to undo)")
    base = Path(tempfile.mkdtemp(prefix="snapd-bench-", dir=tmp_root or "/tmp"))
    ours_ws, store_dir = base / "ours-workspace", base / "ours-store"
    git_ws, git_dir = base / "git-workspace", base / "git-dir"
    ours_ws.mkdir()
    git_ws.mkdir()
    profiles = _Profiles(profile_dir is not None, profile_timer)
    ours = SideResult("snapd")
    git = SideResult("shadow git") if baseline else None
    records: list[StepRecord] = []
    manifests: list[Manifest] = []
    snap_ids: list[str] = []
    commits: list[str] = []
    # The interpreter's collector as the daemon runs it: full collections wait for idle time
    # (snapd/gcpolicy.py), which the harness gives between steps (gc.collect below, untimed).
    # Left automatic, a full collection of the harness's own heap (manifests) lands in
    # whichever timed call trips it: 156 ms inside one 14-file snapshot.
    thresholds = gc.get_threshold()
    gcpolicy.defer_full_collections()
    try:
        t0 = time.perf_counter()
        store = Store.open(str(store_dir))
        settings = WorkspaceSettings(keep_last=KEEP_LAST, keep_durable=KEEP_LAST, watch=False)
        ws = Workspace.open(store, str(ours_ws), settings)
        ours.setup_s = time.perf_counter() - t0
        ours.extra["fine_timestamps"] = ws.fine_timestamps
        shadow = ShadowGit(git_dir, git_ws)
        if git is not None:
            git.setup_s, _, _ = _timed(shadow.init)
        try:
            for i, step in enumerate(plan):
                log(f"step {i}: {step.label}")
                gc.collect()  # the daemon's idle-time full collection, between steps
                applied = step.apply(ours_ws)
                expected = tree_manifest(ours_ws)
                if step.source is not None:
                    _check(
                        compare_manifests(tree_manifest(step.source), expected),
                        f"workload bug: step {step.label} did not reproduce {step.source}",
                    )
                if git is not None:
                    step.apply(git_ws)
                    _check(
                        compare_manifests(expected, tree_manifest(git_ws)),
                        f"workload bug: the two workspaces differ after {step.label}",
                    )
                manifests.append(expected)
                if i == 0:
                    for k in range(first_repeats - 1):
                        log(f"first snapshot, extra sample {k + 1} of {first_repeats - 1}")
                        _sample_first_snapshot(ours, git, base / f"first-{k}", ours_ws, git_ws)
                rec = StepRecord(step.label, applied.touched)
                records.append(rec)

                dt, cpu, snap = _timed(profiles.call, "snapshot", i, ws.snapshot, label=step.label)
                snap_ids.append(snap.id)
                rec.ours_read_files = snap.stats.get("read_files")
                _record_snapshot(ours, i, dt, cpu)
                if git is not None:
                    dt, cpu, _ = _timed(shadow.snapshot, step.label)
                    commits.append(shadow.head())
                    _record_snapshot(git, i, dt, cpu)
                if i == 0:
                    continue

                # Undo: back to the previous step, then check the whole tree.
                dt, cpu, res = _timed(profiles.call, "restore", i, ws.restore, snap_ids[i - 1])
                ours.undo_s.append(dt)
                ours.undo_cpu_s.append(cpu)
                rec.ours_restore_files_written = res.stats.files_written
                _check(
                    compare_manifests(manifests[i - 1], tree_manifest(ours_ws), mtimes=True),
                    f"snapd restore to {snap_ids[i - 1]} ({plan[i - 1].label}) is wrong",
                )
                # Redo: forward again, so step i+1 applies to the state step i left.
                dt, cpu, _ = _timed(ws.restore, snap_ids[i])
                ours.redo_s.append(dt)
                ours.redo_cpu_s.append(cpu)
                _check(
                    compare_manifests(manifests[i], tree_manifest(ours_ws), mtimes=True),
                    f"snapd restore to {snap_ids[i]} ({step.label}) is wrong",
                )
                if git is not None:
                    dt, cpu, _ = _timed(shadow.restore, commits[i - 1])
                    git.undo_s.append(dt)
                    git.undo_cpu_s.append(cpu)
                    _check(
                        compare_manifests(
                            manifests[i - 1], tree_manifest(git_ws), modes="exec", dirs=False
                        ),
                        f"git restore to {plan[i - 1].label} is wrong",
                    )
                    dt, cpu, _ = _timed(shadow.restore, commits[i])
                    git.redo_s.append(dt)
                    git.redo_cpu_s.append(cpu)
                    _check(
                        compare_manifests(
                            manifests[i], tree_manifest(git_ws), modes="exec", dirs=False
                        ),
                        f"git restore to {step.label} is wrong",
                    )
            ours.extra["snapshots_in_catalog"] = len(store.list_snapshots(ws.id))
            stats_fn = getattr(store, "stats", None)
            if stats_fn is not None:
                try:
                    ours.extra["store_stats"] = stats_fn()
                except Exception as e:  # not finished by the lead yet: report, do not fail
                    ours.extra["store_stats"] = f"unavailable: {type(e).__name__}: {e}"
        finally:
            ws.close()
            store.close()
        ours.size_bytes = dir_size(store_dir)
        if git is not None:
            git.size_before_gc = shadow.size_bytes()
            git.extra["gc_s"], _, _ = _timed(shadow.gc)
            git.size_bytes = shadow.size_bytes()
            git.extra["version"] = shadow.version()
        if profile_dir is not None:
            _dump_profiles(profiles, Path(profile_dir), log)
    finally:
        gc.set_threshold(*thresholds)
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return BenchResult(
        workload=workload.describe(),
        steps=records,
        ours=ours,
        git=git,
        env=_environment(),
        summary=_summary(ours, git),
        workdir=str(base) if keep else None,
    )


def _sample_first_snapshot(
    ours: SideResult, git: SideResult | None, scratch: Path, ours_ws: Path, git_ws: Path
) -> None:
    """One more first snapshot of each workspace, into a store / git dir thrown away after."""
    scratch.mkdir()
    store = Store.open(str(scratch / "store"))
    try:
        settings = WorkspaceSettings(keep_last=KEEP_LAST, keep_durable=KEEP_LAST, watch=False)
        ws = Workspace.open(store, str(ours_ws), settings)
        try:
            wall, cpu, _ = _timed(ws.snapshot, label="first snapshot (extra sample)")
        finally:
            ws.close()
    finally:
        store.close()
    _record_snapshot(ours, 0, wall, cpu)
    if git is not None:
        # A separate index too (it lives in the git dir), so this is a real first commit.
        shadow = ShadowGit(scratch / "git", git_ws)
        shadow.init()
        wall, cpu, _ = _timed(shadow.snapshot, "first commit (extra sample)")
        _record_snapshot(git, 0, wall, cpu)
    shutil.rmtree(scratch)


def _record_snapshot(side: SideResult, step: int, wall: float, cpu: float) -> None:
    if step == 0:
        side.first_samples_s.append(wall)
        side.first_samples_cpu_s.append(cpu)
        side.first_s = median(side.first_samples_s)
        side.first_cpu_s = median(side.first_samples_cpu_s)
    else:
        side.step_s.append(wall)
        side.step_cpu_s.append(cpu)


def _dump_profiles(profiles: _Profiles, out: Path, log: Callable[[str], None]) -> None:
    """One .prof per operation (snapshot-step05.prof, ...) and one per kind over all steps."""
    out.mkdir(parents=True, exist_ok=True)
    for kind in ("snapshot", "restore"):
        files = []
        for k, step, prof in profiles.taken:
            if k == kind:
                path = out / f"{kind}-step{step:02d}.prof"
                prof.dump_stats(str(path))
                files.append(str(path))
        if files:
            pstats.Stats(*files).dump_stats(str(out / f"{kind}.prof"))
            log(f"profiles of our per-step {kind}s: {out}/{kind}.prof (all), {kind}-stepNN.prof")


def _cpu_pressure() -> float | None:
    """Share of the last minute some runnable task waited for a CPU (Linux PSI), in %."""
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        return float(dict(kv.split("=") for kv in some[1:])["avg60"])
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _environment() -> dict:
    try:
        rev = subprocess.run(
            ["git", "-c", "safe.directory=*", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        rev = ""
    return {
        "snapd_from": str(Path(snapd.__file__).resolve().parent),
        "cpu_pressure_avg60": _cpu_pressure(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "snapd_commit": rev,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


# --- the table ------------------------------------------------------------------------------------
def _summary(ours: SideResult, git: SideResult | None) -> list[dict]:
    def pair(measure: Callable[[SideResult], float]) -> tuple[float, float | None]:
        return measure(ours), (measure(git) if git is not None else None)

    rows = [
        ("first_snapshot", "first snapshot, median", "s", pair(lambda s: s.first_s)),
        ("step_median", "snapshot per step, median", "ms", pair(lambda s: median(s.step_s))),
        ("step_p95", "snapshot per step, p95", "ms", pair(lambda s: p95(s.step_s))),
        ("undo_median", "restore previous step, median", "ms", pair(lambda s: median(s.undo_s))),
        ("undo_p95", "restore previous step, p95", "ms", pair(lambda s: p95(s.undo_s))),
        ("redo_median", "restore forward again, median", "ms", pair(lambda s: median(s.redo_s))),
        ("step_cpu", "snapshot per step, CPU median", "ms", pair(lambda s: median(s.step_cpu_s))),
        ("undo_cpu", "restore previous, CPU median", "ms", pair(lambda s: median(s.undo_cpu_s))),
        ("store_size", "store size", "MB", pair(lambda s: s.size_bytes)),
    ]
    out = []
    for key, label, unit, (a, b) in rows:
        ratio = a / b if b else None
        target = TARGETS.get(key)
        verdict = None
        if target is not None and ratio is not None:
            verdict = "PASS" if ratio <= target[0] else "FAIL"
        out.append(
            {
                "key": key,
                "measure": label,
                "unit": unit,
                "snapd": a,
                "git": b,
                "ratio": ratio,
                "target": target[1] if target else None,
                "result": verdict,
            }
        )
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value * 1000:.0f} ms"
    if unit == "MB":
        return f"{value / 1e6:.1f} MB"
    return str(value)


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def render(result: BenchResult, out: TextIO = sys.stdout) -> None:
    ours, git = result.ours, result.git
    print(f"\nworkload: {result.workload}; {len(result.steps)} steps", file=out)
    step_rows = []
    for i, rec in enumerate(result.steps):
        j = i - 1

        def cell(side: SideResult | None, series: str, i: int = i, j: int = j) -> str:
            if side is None:
                return "-"
            if series == "snap":
                return _fmt(side.first_s if i == 0 else side.step_s[j], "ms")
            return _fmt(getattr(side, series)[j], "ms") if i > 0 else ""

        step_rows.append(
            [
                str(i),
                rec.label,
                str(rec.touched),
                "" if rec.ours_read_files is None else str(rec.ours_read_files),
                cell(ours, "snap"),
                cell(git, "snap"),
                cell(ours, "undo_s"),
                cell(git, "undo_s"),
                cell(ours, "redo_s"),
                cell(git, "redo_s"),
            ]
        )
    header = ["#", "step", "changed", "read", "snapd snap", "git commit"]
    header += ["snapd undo", "git undo", "snapd redo", "git redo"]
    print(_table(header, step_rows, right=set(range(2, 10))), file=out)
    print(file=out)
    rows = []
    for r in result.summary:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        rows.append(
            [
                r["measure"],
                _fmt(r["snapd"], r["unit"]),
                _fmt(r["git"], r["unit"]),
                ratio,
                r["target"] or "(info)",
                r["result"] or "",
            ]
        )
    print(
        _table(
            ["measure", "snapd", "shadow git", "snapd/git", "target", "result"], rows, {1, 2, 3}
        ),
        file=out,
    )
    notes = [
        f"snapd: engine in process, keep_last={KEEP_LAST} so nothing is evicted "
        f"({ours.extra.get('snapshots_in_catalog')} snapshots in the catalog, including the "
        "safety snapshots the redo restores take); store size = all files in the store "
        "directory after close.",
        f"snapd: store + workspace open {_fmt(ours.setup_s, 'ms')}; fine timestamps: "
        f"{ours.extra.get('fine_timestamps')}; the interpreter's full garbage collections run "
        "between steps, as the daemon runs them when idle (snapd/gcpolicy.py).",
    ]
    st = ours.extra.get("store_stats")
    if isinstance(st, dict):
        notes.append(
            f"snapd store.stats(): {st.get('objects')} objects, {st.get('packs')} pack(s), "
            f"dedup ratio {st.get('dedup_ratio')}, compression ratio {st.get('compression_ratio')}"
            f", garbage {st.get('garbage_bytes')} bytes."
        )
    samples = [ours] + ([git] if git is not None else [])
    notes.append(
        f"first snapshot: median of {len(ours.first_samples_s)} sample(s), each into an empty "
        "store / git dir ("
        + "; ".join(
            f"{side.name}: " + ", ".join(f"{x:.2f}" for x in side.first_samples_s) + " s"
            for side in samples
        )
        + ")."
    )
    if git is not None:
        notes.append(
            f"git: {git.extra.get('version')}; size after `git gc` (before: "
            f"{_fmt(git.size_before_gc, 'MB')}, gc took {_fmt(git.extra.get('gc_s'), 's')}); "
            "restore = read-tree -u --reset + clean -fd."
        )
    notes.append(
        "per-step figures are over steps 1..n-1; p95 is nearest-rank (the maximum below 20 "
        "steps). 'changed' = entries the step rewrote/created/deleted; 'read' = files our "
        "scanner read (the rest came from the stat cache)."
    )
    env = result.env
    load = "/".join(str(x) for x in env["loadavg_at_end"])
    notes.append(
        f"machine: {env['platform']}, {env['cpus']} CPUs, Python {env['python']}, "
        f"snapd {env['snapd_commit']} from {env['snapd_from']}; at the end: load average "
        f"{load}, CPU pressure {env['cpu_pressure_avg60']}% (other work on the machine skews "
        "the times)."
    )
    if result.workdir:
        notes.append(f"kept: {result.workdir}")
    for n in notes:
        print(f"- {n}", file=out)


def _json_default(o: object) -> object:
    if isinstance(o, bytes):
        return o.hex()
    return str(o)


def print_profiles(profile_dir: Path, top: int, out: TextIO = sys.stdout) -> None:
    for name in ("snapshot", "restore"):
        path = profile_dir / f"{name}.prof"
        if not path.exists():
            continue
        for order in ("cumulative", "tottime"):
            buf = io.StringIO()
            pstats.Stats(str(path), stream=buf).strip_dirs().sort_stats(order).print_stats(top)
            print(f"\n=== our per-step {name}s, by {order} ===", file=out)
            print(buf.getvalue().split("\n", 4)[-1] if buf.getvalue() else "", file=out)


# --- command line ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_engine",
        description="Snapshot engine vs a shadow git repository on consecutive releases.",
    )
    ap.add_argument("--steps", type=int, help="use only the first N steps (default: all)")
    ap.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="also write the results as JSON (to FILE, or after the table on stdout)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    ap.add_argument(
        "--first-repeats",
        type=int,
        default=3,
        metavar="N",
        help="take the first snapshot/commit N times (extra ones into throwaway stores) and "
        "report the median; it is a single noisy sample otherwise (default 3)",
    )
    ap.add_argument("--tmp", default="/tmp", help="where the temporary directories go")
    ap.add_argument(
        "--workload",
        choices=["django", "synthetic"],
        default="django",
        help="django: Django 5.0 .. 5.0.14 sdists (default); synthetic: generated edit stream",
    )
    ap.add_argument("--synthetic-files", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1, help="seed of the synthetic edit stream")
    ap.add_argument("--no-git", action="store_true", help="skip the shadow git baseline")
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile our per-step snapshots and undo restores into DIR (inflates their times)",
    )
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument(
        "--profile-timer",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: attribute CPU time (process-wide) instead of wall time; steadier when the "
        "machine is busy",
    )
    args = ap.parse_args(argv)

    if args.workload == "django":
        workload: Workload = DjangoReleases()
    else:
        workload = SyntheticEdits(
            files=args.synthetic_files, steps=args.steps or 15, seed=args.seed
        )
    try:
        result = run(
            workload,
            steps=args.steps,
            tmp_root=args.tmp,
            keep=args.keep,
            baseline=not args.no_git,
            profile_dir=args.profile,
            profile_timer=args.profile_timer,
            first_repeats=args.first_repeats,
        )
    except VerificationError as e:
        print(f"VERIFICATION FAILED: {e}", file=sys.stderr)
        return 2
    render(result)
    if args.profile:
        print("\nnote: profiled run; the times above include cProfile's overhead")
        print_profiles(Path(args.profile), args.profile_top)
    if args.json:
        text = json.dumps(result.to_json(), indent=2, default=_json_default)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
