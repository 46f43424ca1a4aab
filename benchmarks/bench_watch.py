"""Benchmark: watcher-driven snapshots of a large workspace through the daemon, against a full
walk and a shadow git repository, in the same run.

Workload (default): node_modules of popular npm packages plus the Django 5.0 source tree, about
108k files and 1.1 GB (workloads.NodeModulesDjango, cached under benchmarks/.cache/), then
--steps agent steps, each modifying 10 real files, adding 2 and deleting 1 (fixed --seed).

One `snapd serve` subprocess (its own temporary store and socket), driven through the client
library, and three identical copies of the tree:

  watch   a workspace with the file watcher (the default): snapshots look at dirty paths only
  full    a workspace with watch=False: every snapshot walks the whole tree
  git     a shadow git repository (`add -A` + commit; restore = read-tree -u --reset + clean -fd)

Per step: apply the step to all three copies; snapshot `watch` and `full` (alternating which goes
first) and commit git; then restore `watch` to the previous snapshot ("undo", timed), check it,
and restore it forward again ("redo") so the next step starts from the right state; the same for
git. Undo and redo are checked on the paths the step touched every time, and on the whole tree
(bytes, modes, mtimes) every --verify-every steps; at the end all three copies must hold the same
bytes.

Also: the time to open `watch` (OpenWorkspace + initial snapshot + until the daemon's watcher
counters show every directory watched), the daemon's RSS, and a concurrency run: 20 workspaces
of about 5k files (slices of the tree), 20 threads each with its own Client doing edit + snapshot
for --rounds rounds.

Run:  .venv/bin/python -m benchmarks.bench_watch [--steps 50] [--seed 1] [--skip-git]
          [--skip-concurrency] [--edit-scope tree|project] [--json [FILE]] [--keep]
Progress goes to stderr, the tables to stdout. Exit status 2 means a restore was wrong.
See benchmarks/README.md ("bench_watch").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import stat as st_mod
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `snapd` importable
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import snapd
from benchmarks.baselines import ShadowGit
from benchmarks.bench_engine import _cpu_pressure, _table, median, p95
from benchmarks.workloads import (
    Entry,
    Manifest,
    NodeModulesDjango,
    RealFileEdits,
    Step,
    SyntheticEdits,
    SyntheticStep,
    compare_manifests,
    copy_files,
    tree_manifest,
)
from snapd.server.testing import DaemonProcess, short_tempdir

Log = Callable[[str], None]

# The targets (milliseconds, or "at least N times faster than git").
TARGET_SNAP_MEDIAN_MS = 10.0
TARGET_SNAP_P95_MS = 30.0
TARGET_RESTORE_MEDIAN_MS = 30.0
TARGET_SPEEDUP = 20.0
TARGET_CONCURRENT_P95_MS = 50.0

# Retention of the benchmark's workspaces: the previous snapshot must survive until its undo.
KEEP_LAST = 10


class VerificationError(AssertionError):
    """A restore did not produce the tree it should have."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- small helpers --------------------------------------------------------------------------------
def p99(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def closed_loop_floor_ms(
    clients: int, daemon_cpu_ms: float, client_cpu_ms: float, target_ms: float
) -> dict:
    """What the measured CPU per snapshot allows, whatever the scheduling. With `clients`
    clients each waiting for its snapshot before its next edit, every round of `clients`
    snapshots needs clients x (daemon + client CPU) of the machine's cores, so a client's
    cycle (its edit, then its snapshot) takes at least that over the core count on average.
    `daemon_budget_ms`: the most daemon CPU per snapshot that leaves that floor at
    `target_ms`, with the clients' CPU as measured."""
    cores = os.cpu_count() or 1
    return {
        "cores": cores,
        "cycle_ms": clients * (daemon_cpu_ms + client_cpu_ms) / cores,
        "daemon_budget_ms": target_ms * cores / clients - client_cpu_ms,
    }


def count_real_dirs(root: Path) -> int:
    """Directories the watcher should watch: root and every directory below (no symlinks)."""
    n = 1
    for dirpath, dirnames, _files in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        n += len(dirnames)
    return n


def touched_paths(step: Step) -> list[str]:
    """Paths a step writes or deletes (the directories a deletion may empty are checked by the
    sampled whole-tree comparisons)."""
    if isinstance(step, SyntheticStep):
        return sorted({w[0] for w in step.writes} | set(step.deletes))
    return []


def path_entries(root: Path, rels: list[str]) -> Manifest:
    """Manifest entries of just these paths (absent ones are left out)."""
    out: Manifest = {}
    for rel in rels:
        path = root / rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        single = tree_manifest_one(path, st)
        if single is not None:
            out[os.fsencode(rel)] = single
    return out


def tree_manifest_one(path: Path, st: os.stat_result) -> Entry | None:
    mode = st_mod.S_IMODE(st.st_mode)
    if st_mod.S_ISREG(st.st_mode):
        h = hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
        return Entry("f", mode, st.st_size, h, st.st_mtime_ns)
    if st_mod.S_ISLNK(st.st_mode):
        return Entry("l", mode, st.st_size, os.fsencode(os.readlink(path)), st.st_mtime_ns)
    if st_mod.S_ISDIR(st.st_mode):
        return Entry("d", mode, 0, b"", st.st_mtime_ns)
    return None


def check(problems: list[str], what: str) -> None:
    if problems:
        raise VerificationError(f"{what}:\n  " + "\n  ".join(problems))


def timed(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[float, Any]:
    """(wall seconds, result) of fn(*args, **kw)."""
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def watcher_counters(client, ws_id: int) -> dict:
    stats = client.stats(ws_id, skip_store=True)
    return dict(stats.workspaces[0].watcher or {})


def wait_watches(client, ws_id: int, want: int, timeout: float) -> tuple[float, dict]:
    """Poll the daemon's watcher counters until every directory is watched (or unwatchable)
    and the walk that follows the watches is done ('settled')."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    while True:
        c = watcher_counters(client, ws_id)
        watched = c.get("watches", 0) + c.get("unwatched_dirs", 0) >= want
        if watched and c.get("settled", 1):
            return time.perf_counter() - t0, c
        if time.monotonic() > deadline:
            raise TimeoutError(f"watches not ready after {timeout:.0f} s: {c} (want {want})")
        time.sleep(0.01)


def parse_call_log(text: str) -> tuple[list[dict], list[str]]:
    """The daemon's JSON log: (call lines, warning/error lines)."""
    calls, problems = [], []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            if line.strip():
                problems.append(line)
            continue
        if doc.get("logger") == "snapd.call":
            calls.append(doc)
        elif doc.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            problems.append(f"{doc.get('level')} {doc.get('logger')}: {doc.get('msg')}")
    return calls, problems


# --- results --------------------------------------------------------------------------------------
@dataclass
class StepRow:
    step: int
    watch_ms: float = math.nan  # client-side wall time
    watch_daemon_ms: float = math.nan  # the daemon's call log
    watch_engine_ms: float = math.nan  # stats["duration_ms"] (inside the engine)
    watch_scan: str = ""
    watch_read: int = 0
    watch_events: int = 0  # watcher events since the previous step's snapshot
    watch_rescans_full: int = 0
    full_ms: float = math.nan
    full_scan: str = ""
    undo_ms: float = math.nan
    undo_daemon_ms: float = math.nan
    undo_written: int = 0
    undo_safety: bool = False
    redo_ms: float = math.nan
    git_commit_ms: float = math.nan
    git_undo_ms: float = math.nan
    git_redo_ms: float = math.nan
    checked_whole_tree: bool = False


@dataclass
class Result:
    workload: str
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    copy_s: list[float] = field(default_factory=list)
    open: dict = field(default_factory=dict)
    rss_kib: dict = field(default_factory=dict)
    rows: list[StepRow] = field(default_factory=list)
    git_first_commit_s: float | None = None
    git_version: str | None = None
    concurrency: dict | None = None
    summary: list[dict] = field(default_factory=list)
    daemon_problems: list[str] = field(default_factory=list)
    final_counters: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    workdir: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


# --- the run --------------------------------------------------------------------------------------
def run(
    workload: RealFileEdits,
    *,
    tmp_root: str | Path = "/tmp",
    keep: bool = False,
    git: bool = True,
    concurrency: bool = True,
    conc_workspaces: int = 20,
    conc_files: int = 5000,
    rounds: int = 20,
    verify_every: int = 10,
    background_gc: bool = True,
    log: Log = _stderr,
) -> Result:
    workload.prepare(log)
    log(f"reading {workload.base} and generating the steps (seed {workload.seed})")
    plan = workload.steps()
    assert workload.files is not None
    n_steps = len(plan) - 1
    result = Result(workload.describe())
    result.files = len(workload.files)
    result.bytes = sum(f.size for f in workload.files)

    base = Path(tempfile.mkdtemp(prefix="snapd-bench-watch-", dir=tmp_root))
    sock_dir = short_tempdir("snapd-bw-")
    ws_watch, ws_full, ws_git = base / "ws-watch", base / "ws-full", base / "ws-git"
    daemon: DaemonProcess | None = None
    try:
        for d in (ws_watch, ws_full, *((ws_git,) if git else ())):
            log(f"copying the tree into {d}")
            dt, _ = timed(lambda d=d: plan[0].apply(d))
            result.copy_s.append(dt)
        result.dirs = count_real_dirs(ws_watch)
        log(f"tree: {result.files} files, {result.dirs} directories, {result.bytes / 1e9:.2f} GB")

        daemon_args = ["--log-format", "json", "--log-level", "info"]
        if not background_gc:
            daemon_args.append("--no-background-gc")
        daemon = DaemonProcess(
            str(base / "store"),
            os.path.join(sock_dir, "snapd.sock"),
            args=daemon_args,
            log_path=str(base / "daemon.log"),
        ).start()
        client = daemon.client(timeout=600.0)
        result.rss_kib["idle"] = rss_kib(daemon.pid)

        # Open the watched workspace: the call, the first snapshot, the watches.
        log("opening the watched workspace (initial snapshot, watches)")
        t0 = time.perf_counter()
        wsw = client.open_workspace(str(ws_watch), watch=True, keep_last=KEEP_LAST)
        t_open = time.perf_counter() - t0
        first = wsw.snapshot(label="initial")
        t_first = time.perf_counter() - t0
        _, counters = wait_watches(client, wsw.id, result.dirs, timeout=600)
        t_ready = time.perf_counter() - t0
        result.open = {
            "open_call_s": t_open,
            "first_snapshot_s": t_first - t_open,
            "first_snapshot_scan": first.stats.get("scan"),
            "first_snapshot_engine_ms": first.stats.get("duration_ms"),
            "watches_ready_after_s": t_ready,
            "total_s": max(t_first, t_ready),
            "counters_when_ready": counters,
        }
        result.rss_kib["after_open_watch"] = rss_kib(daemon.pid)
        log(f"  open {t_open * 1000:.0f} ms, first snapshot done at {t_first:.2f} s, watches "
            f"({counters.get('watches')}) ready at {t_ready:.2f} s")  # fmt: skip

        log("opening the full-walk workspace (watch=False)")
        t0 = time.perf_counter()
        wsf = client.open_workspace(str(ws_full), watch=False, keep_last=KEEP_LAST)
        wsf.snapshot(label="initial")
        result.open["full_walk_open_and_first_snapshot_s"] = time.perf_counter() - t0
        result.rss_kib["after_open_both"] = rss_kib(daemon.pid)

        shadow = None
        commits: list[str] = []
        if git:
            shadow = ShadowGit(base / "git-dir", ws_git)
            shadow.init()
            result.git_version = shadow.version()
            log("git: first commit of the whole tree")
            result.git_first_commit_s, _ = timed(lambda: shadow.snapshot("initial"))
            commits.append(shadow.head())

        sample = {
            s for s in range(1, n_steps + 1) if verify_every and (s == 1 or s % verify_every == 0)
        }
        if n_steps:
            sample.add(n_steps)
        snaps = [first.id]
        # Expected states, taken right after applying a step (before any snapshot of it):
        # partial[i] = the paths step i+1 touches; whole[i] = the whole tree (sampled steps).
        partial: dict[int, Manifest] = {0: path_entries(ws_watch, touched_paths(plan[1]))}
        whole: dict[int, Manifest] = {}
        if 1 in sample:
            whole[0] = tree_manifest(ws_watch)
        prev_events = watcher_counters(client, wsw.id).get("events", 0)
        prev_full = watcher_counters(client, wsw.id).get("rescans_full", 0)

        for i in range(1, n_steps + 1):
            step = plan[i]
            row = StepRow(i)
            result.rows.append(row)
            for d in (ws_watch, ws_full, *((ws_git,) if git else ())):
                step.apply(d)
            own = path_entries(ws_watch, touched_paths(step))
            if i < n_steps:
                partial[i] = path_entries(ws_watch, touched_paths(plan[i + 1]))
            if i + 1 in sample:
                whole[i] = tree_manifest(ws_watch)

            def snap_watch(i: int = i, row: StepRow = row) -> None:
                row.watch_ms, s = timed(lambda: wsw.snapshot(label=f"step {i}"))
                row.watch_ms *= 1000
                snaps.append(s.id)
                row.watch_engine_ms = s.stats.get("duration_ms", math.nan)
                row.watch_scan = s.stats.get("scan", "")
                row.watch_read = int(s.stats.get("read_files", 0))
                wc = s.stats.get("watcher") or {}
                nonlocal prev_events, prev_full
                row.watch_events = int(wc.get("events", 0)) - prev_events
                row.watch_rescans_full = int(wc.get("rescans_full", 0)) - prev_full
                prev_events = int(wc.get("events", 0))
                prev_full = int(wc.get("rescans_full", 0))

            def snap_full(i: int = i, row: StepRow = row) -> None:
                row.full_ms, s = timed(lambda: wsf.snapshot(label=f"step {i}"))
                row.full_ms *= 1000
                row.full_scan = s.stats.get("scan", "")

            order = [snap_watch, snap_full] if i % 2 else [snap_full, snap_watch]
            for fn in order:
                fn()
            if shadow is not None:
                dt, _ = timed(lambda i=i: shadow.snapshot(f"step {i}"))
                row.git_commit_ms = dt * 1000
                commits.append(shadow.head())

            # Undo: back to the previous snapshot; check; redo.
            dt, res = timed(wsw.restore, snaps[i - 1])
            row.undo_ms = dt * 1000
            row.undo_written = res.stats.files_written
            row.undo_safety = res.safety_snapshot_id is not None
            got = path_entries(ws_watch, touched_paths(step))
            check(
                compare_manifests(partial[i - 1], got, mtimes=True),
                f"undo of step {i}: the paths it touched are not as before",
            )
            if i - 1 in whole:
                log(f"step {i}: checking the whole tree after the undo")
                row.checked_whole_tree = True
                check(
                    compare_manifests(whole[i - 1], tree_manifest(ws_watch), mtimes=True),
                    f"undo of step {i}: the tree differs from step {i - 1}",
                )
            dt, _ = timed(wsw.restore, snaps[i])
            row.redo_ms = dt * 1000
            check(
                compare_manifests(own, path_entries(ws_watch, touched_paths(step)), mtimes=True),
                f"redo of step {i}: the paths it touched are not as the step left them",
            )
            if shadow is not None:
                dt, _ = timed(shadow.restore, commits[i - 1])
                row.git_undo_ms = dt * 1000
                if i - 1 in whole:
                    check(
                        compare_manifests(
                            whole[i - 1], tree_manifest(ws_git), modes="exec", dirs=False
                        ),
                        f"git undo of step {i} is wrong",
                    )
                dt, _ = timed(shadow.restore, commits[i])
                row.git_redo_ms = dt * 1000
            whole.pop(i - 1, None)
            partial.pop(i - 1, None)
            log(
                f"step {i}/{n_steps}: watch {row.watch_ms:.1f} ms ({row.watch_scan}), full "
                f"{row.full_ms:.0f} ms, undo {row.undo_ms:.1f} ms, redo {row.redo_ms:.1f} ms"
                + (
                    f", git commit {row.git_commit_ms:.0f} ms, undo {row.git_undo_ms:.0f} ms"
                    if shadow is not None
                    else ""
                )
            )

        result.final_counters = watcher_counters(client, wsw.id)
        result.rss_kib["after_steps"] = rss_kib(daemon.pid)
        log("final check: the three copies hold the same bytes")
        final = tree_manifest(ws_watch)
        check(compare_manifests(final, tree_manifest(ws_full)), "watch and full copies differ")
        if git:
            check(
                compare_manifests(final, tree_manifest(ws_git), modes="exec", dirs=False),
                "watch and git copies differ",
            )

        if concurrency:
            result.concurrency = run_concurrency(
                daemon,
                workload,
                base / "conc",
                workspaces=conc_workspaces,
                files=conc_files,
                rounds=rounds,
                log=log,
            )
            result.rss_kib["after_concurrency"] = rss_kib(daemon.pid)
        client.close()
        calls, problems = parse_call_log(daemon.log())
        result.daemon_problems = problems
        _add_daemon_latencies(result, calls, wsw.id, (result.concurrency or {}).get("ws_ids", []))
        result.rss_kib["end"] = rss_kib(daemon.pid)
    finally:
        if daemon is not None:
            daemon.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
        if not keep:
            log(f"removing {base}")
            shutil.rmtree(base, ignore_errors=True)
        else:
            result.workdir = str(base)
    result.summary = summarize(result)
    result.env = environment()
    return result


def _add_daemon_latencies(result: Result, calls: list[dict], ws_id: int, conc_ids: list) -> None:
    """Attach the daemon's own latency (its call log) to the per-step rows and concurrency."""
    snaps = [c for c in calls if c.get("msg") == "CreateSnapshot" and c.get("workspace") == ws_id]
    restores = [c for c in calls if c.get("msg") == "Restore" and c.get("workspace") == ws_id]
    # Calls on the watched workspace, in order: initial snapshot, then per step one snapshot
    # and two restores (undo, redo).
    for i, row in enumerate(result.rows):
        if i + 1 < len(snaps):
            row.watch_daemon_ms = float(snaps[i + 1]["ms"])
        if 2 * i < len(restores):
            row.undo_daemon_ms = float(restores[2 * i]["ms"])
    if result.concurrency is not None:
        ids = set(conc_ids)
        # The first snapshot of each workspace is its initial one (not a round).
        per_ws: dict[int, int] = {}
        rounds_ms = []
        for c in calls:
            w = c.get("workspace")
            if c.get("msg") == "CreateSnapshot" and w in ids:
                per_ws[w] = per_ws.get(w, 0) + 1
                if per_ws[w] > 1:
                    rounds_ms.append(float(c["ms"]))
        result.concurrency["daemon_ms"] = _dist(rounds_ms)


def _dist(values_ms: list[float]) -> dict:
    return {
        "n": len(values_ms),
        "median_ms": median(values_ms),
        "p95_ms": p95(values_ms),
        "p99_ms": p99(values_ms),
        "max_ms": max(values_ms) if values_ms else math.nan,
    }


# --- concurrency ----------------------------------------------------------------------------------
def run_concurrency(
    daemon: DaemonProcess,
    workload: RealFileEdits,
    root: Path,
    *,
    workspaces: int,
    files: int,
    rounds: int,
    log: Log,
) -> dict:
    """`workspaces` workspaces of `files` files each (evenly spread windows of the tree's sorted
    file list, or of the files outside the workload's skip_prefixes when there are enough), one
    thread and one Client per workspace, all doing edit + snapshot together."""
    assert workload.files is not None
    all_files = workload.files
    skip = workload.skip_prefixes
    if skip:
        # Slices of the part the steps edit (the project), when it is large enough.
        own = [f for f in all_files if not f.rel.startswith(skip)]
        if len(own) >= files:
            all_files = own
    files = min(files, len(all_files))
    span = max(0, len(all_files) - files)
    dirs = []
    log(f"concurrency: copying {workspaces} slices of {files} files")
    for k in range(workspaces):
        start = span * k // max(1, workspaces - 1)
        d = root / f"ws{k:02d}"
        copy_files(workload.base, all_files[start : start + files], d)
        dirs.append(d)
    plans = [
        RealFileEdits(
            d, steps=rounds + 1, seed=workload.seed * 1000 + k, copy_base=False, name=f"slice {k}"
        ).steps()
        for k, d in enumerate(dirs)
    ]
    barrier = threading.Barrier(workspaces + 1)
    latencies: list[list[float]] = [[] for _ in range(workspaces)]
    scans: list[list[str]] = [[] for _ in range(workspaces)]
    ws_ids: list[int] = [0] * workspaces
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        client = daemon.client(timeout=600.0)
        try:
            ws = client.open_workspace(str(dirs[k]), watch=True, keep_last=KEEP_LAST)
            ws_ids[k] = ws.id
            ws.snapshot(label="initial")
            wait_watches(client, ws.id, count_real_dirs(dirs[k]), timeout=300)
            barrier.wait()
            for r in range(1, rounds + 1):
                plans[k][r].apply(dirs[k])
                dt, s = timed(lambda r=r: ws.snapshot(label=f"round {r}"))
                latencies[k].append(dt * 1000)
                scans[k].append(s.stats.get("scan", ""))
        except BaseException as e:
            errors.append(e)
            barrier.abort()
        finally:
            client.close()

    threads = [
        threading.Thread(target=worker, args=(k,), name=f"client-{k}") for k in range(workspaces)
    ]
    for t in threads:
        t.start()
    log(f"concurrency: {workspaces} clients opening their workspaces")
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    daemon_cpu0, client_cpu0 = cpu_seconds(daemon.pid), time.process_time()
    log(f"concurrency: {rounds} rounds of edit + snapshot")
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    # This process runs only the clients now: their edits, gRPC calls and waits.
    daemon_cpu = cpu_seconds(daemon.pid) - daemon_cpu0
    client_cpu = time.process_time() - client_cpu0
    if errors:
        raise errors[0]
    flat = [x for per in latencies for x in per]
    hinted = sum(s == "hinted" for per in scans for s in per)
    daemon_ms = daemon_cpu * 1000 / max(1, len(flat))
    client_ms = client_cpu * 1000 / max(1, len(flat))
    return {
        "daemon_cpu_ms": daemon_ms,
        "client_cpu_ms": client_ms,
        "floor": closed_loop_floor_ms(workspaces, daemon_ms, client_ms, TARGET_CONCURRENT_P95_MS),
        "workspaces": workspaces,
        "files_per_workspace": files,
        "rounds": rounds,
        "client_ms": _dist(flat),
        "wall_s": wall,
        "hinted_scans": hinted,
        "snapshots": len(flat),
        "ws_ids": ws_ids,
    }


# --- summary and tables ---------------------------------------------------------------------------
def _series(rows: list[StepRow], name: str) -> list[float]:
    return [v for v in (getattr(r, name) for r in rows) if not math.isnan(v)]


def summarize(result: Result) -> list[dict]:
    rows = result.rows
    out = []

    def add(key: str, label: str, series: str, git_series: str | None) -> None:
        ours = _series(rows, series)
        theirs = _series(rows, git_series) if git_series else []
        out.append(
            {
                "key": key,
                "measure": label,
                "median_ms": median(ours),
                "p95_ms": p95(ours),
                "git_median_ms": median(theirs) if theirs else None,
                "git_p95_ms": p95(theirs) if theirs else None,
                "speedup_median": (median(theirs) / median(ours)) if theirs and ours else None,
            }
        )

    add("snap_watch", "snapshot, watcher", "watch_ms", "git_commit_ms")
    add("snap_watch_daemon", "  same, daemon call log", "watch_daemon_ms", None)
    add("snap_watch_engine", "  same, inside the engine", "watch_engine_ms", None)
    add("snap_full", "snapshot, no watcher (full walk)", "full_ms", "git_commit_ms")
    add("undo", "restore to previous, watcher", "undo_ms", "git_undo_ms")
    add("undo_daemon", "  same, daemon call log", "undo_daemon_ms", None)
    add("redo", "restore forward again", "redo_ms", "git_redo_ms")
    return out


def targets(result: Result) -> list[tuple[str, str, str, bool | None]]:
    by = {r["key"]: r for r in result.summary}
    sw, un = by["snap_watch"], by["undo"]
    out: list[tuple[str, str, str, bool | None]] = [
        ("snapshot with watcher, median", f"<= {TARGET_SNAP_MEDIAN_MS:.0f} ms",
         f"{sw['median_ms']:.1f} ms", sw["median_ms"] <= TARGET_SNAP_MEDIAN_MS),
        ("snapshot with watcher, p95", f"<= {TARGET_SNAP_P95_MS:.0f} ms",
         f"{sw['p95_ms']:.1f} ms", sw["p95_ms"] <= TARGET_SNAP_P95_MS),
        ("restore to previous, median", f"<= {TARGET_RESTORE_MEDIAN_MS:.0f} ms",
         f"{un['median_ms']:.1f} ms", un["median_ms"] <= TARGET_RESTORE_MEDIAN_MS),
    ]  # fmt: skip
    for key, label in (("snap_watch", "snapshot"), ("undo", "restore")):
        s = by[key]["speedup_median"]
        out.append(
            (
                f"{label} vs shadow git (median)",
                f">= {TARGET_SPEEDUP:.0f}x faster",
                "-" if s is None else f"{s:.0f}x",
                None if s is None else s >= TARGET_SPEEDUP,
            )
        )
    if result.concurrency is not None:
        p = result.concurrency["client_ms"]["p95_ms"]
        out.append(
            (
                f"{result.concurrency['workspaces']} concurrent clients, p95",
                f"<= {TARGET_CONCURRENT_P95_MS:.0f} ms",
                f"{p:.1f} ms",
                p <= TARGET_CONCURRENT_P95_MS,
            )
        )
    return out


def _ms(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def render(result: Result, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"\nworkload: {result.workload}")
    p(
        f"tree: {result.files} files, {result.dirs} directories, {result.bytes / 1e9:.2f} GB; "
        f"{len(result.rows)} steps"
    )
    header = ["#", "watch ms", "daemon", "engine", "scan", "read", "events", "full ms",
              "undo ms", "written", "redo ms", "git commit", "git undo", "checked"]  # fmt: skip
    rows = [
        [str(r.step), _ms(r.watch_ms), _ms(r.watch_daemon_ms), _ms(r.watch_engine_ms),
         r.watch_scan + ("*" if r.watch_rescans_full else ""), str(r.watch_read),
         str(r.watch_events), _ms(r.full_ms, 0), _ms(r.undo_ms), str(r.undo_written),
         _ms(r.redo_ms), _ms(r.git_commit_ms, 0), _ms(r.git_undo_ms, 0),
         "tree" if r.checked_whole_tree else "paths"]
        for r in result.rows
    ]  # fmt: skip
    p("\nper step (ms; 'daemon' = the daemon's call log, 'engine' = inside the engine):")
    p(_table(header, rows, right=set(range(1, 13)) - {4}))

    p("\nsummary (ms; speedup = git median / ours):")
    srows = [
        [r["measure"], _ms(r["median_ms"]), _ms(r["p95_ms"]), _ms(r["git_median_ms"], 0),
         _ms(r["git_p95_ms"], 0),
         "-" if r["speedup_median"] is None else f"{r['speedup_median']:.0f}x"]
        for r in result.summary
    ]  # fmt: skip
    p(
        _table(
            ["measure", "median", "p95", "git median", "git p95", "speedup"], srows, {1, 2, 3, 4, 5}
        )
    )

    o = result.open
    git_first = "-" if result.git_first_commit_s is None else f"{result.git_first_commit_s:.2f}"
    p("\nopening the watched workspace:")
    p(
        _table(
            ["what", "seconds"],
            [
                ["OpenWorkspace call", f"{o['open_call_s']:.3f}"],
                [f"initial snapshot ({o.get('first_snapshot_scan')})",
                 f"{o['first_snapshot_s']:.2f}"],
                ["watches ready and settled (after the open call)",
                 f"{o['watches_ready_after_s']:.2f}"],
                ["open total (snapshot and watches done)", f"{o['total_s']:.2f}"],
                ["no-watcher workspace: open + initial snapshot",
                 f"{o['full_walk_open_and_first_snapshot_s']:.2f}"],
                ["git: first add -A + commit", git_first],
            ],
            {1},
        )
    )  # fmt: skip
    c = o.get("counters_when_ready", {})
    p(f"watcher counters when ready: {json.dumps(c, sort_keys=True)}")
    final = json.dumps(result.final_counters, sort_keys=True)
    p(f"watcher counters at the end of the steps: {final}")

    p("\ndaemon memory (VmRSS / peak VmHWM, MiB):")
    rss_rows = [
        [k, f"{v.get('VmRSS', 0) / 1024:.0f}", f"{v.get('VmHWM', 0) / 1024:.0f}"]
        for k, v in result.rss_kib.items()
    ]
    p(_table(["when", "RSS", "peak"], rss_rows, {1, 2}))

    if result.concurrency is not None:
        cc = result.concurrency
        p(
            f"\nconcurrency: {cc['workspaces']} workspaces x {cc['files_per_workspace']} files, "
            f"{cc['workspaces']} clients (threads, one Client each), {cc['rounds']} rounds of "
            f"edit + snapshot; {cc['snapshots']} snapshots, {cc['hinted_scans']} hinted, "
            f"wall {cc['wall_s']:.1f} s"
        )
        crow = []
        for label, key in (("client", "client_ms"), ("daemon call log", "daemon_ms")):
            d = cc.get(key)
            if d:
                crow.append(
                    [label, _ms(d["median_ms"]), _ms(d["p95_ms"]), _ms(d["p99_ms"]),
                     _ms(d["max_ms"])]
                )  # fmt: skip
        p(_table(["snapshot latency", "p50 ms", "p95 ms", "p99 ms", "max ms"], crow, {1, 2, 3, 4}))
        if "floor" in cc:
            fl, n = cc["floor"], cc["workspaces"]
            budget = fl["daemon_budget_ms"]
            p(
                f"CPU per snapshot: daemon {cc['daemon_cpu_ms']:.1f} ms, clients (this process: "
                f"edits and calls) {cc['client_cpu_ms']:.1f} ms. So a client's edit + snapshot "
                f"cycle takes at least {n} x (daemon + clients) / {fl['cores']} cores = "
                f"{fl['cycle_ms']:.0f} ms on average; for a {TARGET_CONCURRENT_P95_MS:.0f} ms "
                + (
                    f"cycle the daemon could spend {budget:.1f} ms per snapshot."
                    if budget > 0
                    else "cycle the clients' CPU alone is too much."
                )
            )

    p("\ntargets (issue 5):")
    trow = [
        [what, want, got, "-" if ok is None else ("PASS" if ok else "FAIL")]
        for what, want, got, ok in targets(result)
    ]
    p(_table(["measure", "target", "measured", "result"], trow, {2}))

    notes = []
    if result.git_version:
        notes.append(
            f"git: {result.git_version}; commit = add -A + commit; restore = read-tree -u "
            "--reset + clean -fd."
        )
    notes.append(
        "p95 is nearest-rank over the steps; 'scan' hinted = the watcher's dirty set, full = a "
        "whole walk (* = the watcher asked for a full rescan); 'events' = watcher events since "
        "the previous step; 'checked' = what the undo was compared with (paths = the step's "
        "paths, tree = the whole tree with mtimes)."
    )
    notes.append(f"copying the tree: {', '.join(f'{s:.1f}' for s in result.copy_s)} s per copy.")
    if result.daemon_problems:
        notes.append(
            f"the daemon logged {len(result.daemon_problems)} warning/error line(s); first: "
            + " | ".join(result.daemon_problems[:5])
        )
    env = result.env
    load = "/".join(str(x) for x in env["loadavg_at_end"])
    notes.append(
        f"machine: {env['platform']}, {env['cpus']} CPUs, Python {env['python']}, snapd "
        f"{env['snapd_commit']} from {env['snapd_from']}; at the end: load average {load}, CPU "
        f"pressure {env['cpu_pressure_avg60']}% (other work on the machine skews the times)."
    )
    if result.workdir:
        notes.append(f"kept: {result.workdir}")
    for n in notes:
        p(f"- {n}")


def environment() -> dict:
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


# --- command line ---------------------------------------------------------------------------------
def synthetic_workload(files: int, steps: int, seed: int, tmp_root: str) -> RealFileEdits:
    """A generated source tree (no downloads) with the same real-file edit stream, for tests."""
    base = Path(tempfile.mkdtemp(prefix="snapd-bench-watch-tree-", dir=tmp_root))
    SyntheticEdits(files=files, steps=1, seed=seed).steps()[0].apply(base)
    return RealFileEdits(base, steps=steps + 1, seed=seed, name="synthetic tree")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_watch",
        description="Watcher-driven snapshots of a 100k-file workspace through the daemon, "
        "against a full walk and a shadow git repository.",
    )
    ap.add_argument("--steps", type=int, default=50, help="edit steps (default 50)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-git", action="store_true", help="no shadow git baseline")
    ap.add_argument("--skip-concurrency", action="store_true", help="no concurrency run")
    ap.add_argument("--workspaces", type=int, default=20, help="concurrency: workspaces/clients")
    ap.add_argument("--slice-files", type=int, default=5000, help="concurrency: files each")
    ap.add_argument("--rounds", type=int, default=20, help="concurrency: rounds per client")
    ap.add_argument(
        "--verify-every",
        type=int,
        default=10,
        metavar="N",
        help="compare the whole tree after the undo of step 1, every Nth step and the last "
        "(0: only the paths each step touched; default 10)",
    )
    ap.add_argument("--no-background-gc", action="store_true", help="pass it to the daemon")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE", help="also write JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    ap.add_argument("--tmp", default="/tmp", help="where the temporary directories go")
    ap.add_argument(
        "--workload",
        choices=["node-django", "synthetic"],
        default="node-django",
        help="node-django: npm node_modules + Django 5.0 (default); synthetic: a generated tree",
    )
    ap.add_argument("--synthetic-files", type=int, default=2000)
    ap.add_argument(
        "--edit-scope",
        choices=["tree", "project"],
        default="tree",
        help="node-django: where the steps' edits go: tree = any file of the tree (default; "
        "40%% of the files are in one 43k-entry directory, @mui/icons-material), project = "
        "outside node_modules/ (Django's sources and the manifests, where an agent edits)",
    )
    args = ap.parse_args(argv)

    cleanup: Path | None = None
    if args.workload == "synthetic":
        workload = synthetic_workload(args.synthetic_files, args.steps, args.seed, args.tmp)
        cleanup = workload.base
    else:
        workload = NodeModulesDjango(
            steps=args.steps + 1, seed=args.seed, edit_scope=args.edit_scope
        )
    try:
        result = run(
            workload,
            tmp_root=args.tmp,
            keep=args.keep,
            git=not args.skip_git,
            concurrency=not args.skip_concurrency,
            conc_workspaces=args.workspaces,
            conc_files=args.slice_files,
            rounds=args.rounds,
            verify_every=args.verify_every,
            background_gc=not args.no_background_gc,
        )
    except VerificationError as e:
        print(f"VERIFICATION FAILED: {e}", file=sys.stderr)
        return 2
    finally:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
    render(result)
    if args.json:
        text = json.dumps(result.to_json(), indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
