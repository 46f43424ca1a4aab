"""Benchmark: store lifecycle - a sliding window of 5 versus keeping every snapshot.

The same fixed-seed synthetic edit stream (benchmarks.workloads.SyntheticEdits: a source-like
tree, N files modified / added / deleted per step) is applied for --steps steps to three fresh
workspaces, each with its own store:

  window5+gc  keep_last=--window (5), keep_durable=0, and a GC pass (snapd.store.gc.collect,
              unbounded) after every snapshot: bounded size, paid for by the GC passes
  window5     the same eviction, GC never runs: the cost of eviction alone (the snapshot's
              time against keep-all's), and how much garbage the window leaves
  keep-all    keep_last large: nothing is evicted (as a shadow git repository keeps everything)

Measured per step: the snapshot's wall time (ws.snapshot(), a full scan with the stat cache, no
watcher), the eviction inside it (the time of snapd.store.store._evict, wrapped by a timer), the
GC pass (window5+gc only), and the store's size on disk (allocated blocks of every file in the
store directory, as `du` counts, plus the apparent size). Every --report-every steps the sizes
are printed side by side. At the end: median and p95 of each cost (wall time, and CPU time of
the process, which other load on the machine disturbs less), the final sizes, GC totals, and a
check that the oldest snapshot in the window still restores exactly (bytes, modes, mtimes) and
that verify passes.

Run:  .venv/bin/python -m benchmarks.bench_lifecycle [--steps 200] [--files 2000] [--seed 1]
      [--window 5] [--report-every 20] [--json [FILE]] [--tmp DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import snapd
import snapd.store.store as store_mod
from benchmarks.workloads import Manifest, SyntheticEdits, compare_manifests, tree_manifest
from snapd.store import gc
from snapd.store.store import Store
from snapd.store.verify import verify
from snapd.workspace import Workspace, WorkspaceSettings

KEEP_ALL = 1_000_000


@dataclass
class Variant:
    name: str
    keep_last: int
    gc_each_step: bool
    snapshot_s: list[float] = field(default_factory=list)
    snapshot_cpu_s: list[float] = field(default_factory=list)
    evict_s: list[float] = field(default_factory=list)  # summed _evict time of each step
    gc_s: list[float] = field(default_factory=list)
    gc_cpu_s: list[float] = field(default_factory=list)
    pack_bytes: list[int] = field(default_factory=list)  # apparent size of the pack files
    du_bytes: list[int] = field(default_factory=list)  # allocated, after the step's GC
    apparent_bytes: list[int] = field(default_factory=list)
    snapshots: list[int] = field(default_factory=list)  # kept after the step
    gc_totals: dict = field(default_factory=dict)
    logical_bytes: int = 0
    verify_ok: bool = False
    restore_ok: bool = False
    seconds: float = 0.0


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def disk_usage(path: str) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of every file below path."""
    allocated = apparent = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except FileNotFoundError:
                continue
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


class EvictTimer:
    """Times snapd.store.store._evict, which every snapshot commit calls for its eviction.

    It wraps the real function (same arguments, same result); only the clock is added.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self._real = store_mod._evict

    def __enter__(self) -> EvictTimer:
        real = self._real

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - t0

        store_mod._evict = timed
        return self

    def __exit__(self, *exc) -> None:
        store_mod._evict = self._real


def run_variant(
    variant: Variant, workload: SyntheticEdits, base: Path, log, report_every: int
) -> None:
    ws_dir, store_dir = base / f"{variant.name}-ws", base / f"{variant.name}-store"
    ws_dir.mkdir()
    t_start = time.perf_counter()
    store = Store.open(str(store_dir))
    settings = WorkspaceSettings(keep_last=variant.keep_last, keep_durable=0, watch=False)
    ws = Workspace.open(store, str(ws_dir), settings)
    manifests: dict[str, Manifest] = {}
    totals = {"deleted_objects": 0, "deleted_bytes": 0, "packs_compacted": 0, "bytes_copied": 0}
    try:
        with EvictTimer() as evict:
            for i, step in enumerate(workload.steps()):
                step.apply(ws_dir)
                evict.total = 0.0
                t0, c0 = time.perf_counter(), time.process_time()
                rec = ws.snapshot(label=f"step {i}")
                variant.snapshot_s.append(time.perf_counter() - t0)
                variant.snapshot_cpu_s.append(time.process_time() - c0)
                variant.evict_s.append(evict.total)
                manifests[rec.id] = tree_manifest(ws_dir)
                if variant.gc_each_step:
                    t0, c0 = time.perf_counter(), time.process_time()
                    result = gc.collect(store)
                    variant.gc_s.append(time.perf_counter() - t0)
                    variant.gc_cpu_s.append(time.process_time() - c0)
                    for k in totals:
                        totals[k] += result[k]
                allocated, apparent = disk_usage(str(store_dir))
                variant.du_bytes.append(allocated)
                variant.apparent_bytes.append(apparent)
                variant.pack_bytes.append(disk_usage(str(store_dir / "packs"))[1])
                kept = ws.snapshots()
                variant.snapshots.append(len(kept))
                manifests = {k: v for k, v in manifests.items() if k in {s.id for s in kept}}
                if (i + 1) % report_every == 0:
                    log(
                        f"  {variant.name}: step {i + 1}, {len(kept)} snapshots, "
                        f"{allocated / 1e6:.1f} MB"
                    )
        variant.gc_totals = totals
        variant.logical_bytes = store.stats()["logical_bytes"]
        oldest = ws.snapshots()[-1]
        ws.restore(oldest.id)
        variant.restore_ok = not compare_manifests(
            manifests[oldest.id], tree_manifest(ws_dir), mtimes=True
        )
        variant.verify_ok = verify(store).ok
    finally:
        ws.close()
        store.close()
    variant.seconds = time.perf_counter() - t_start


def ms(x: float) -> str:
    return f"{x * 1000:8.2f}"


def print_report(variants: list[Variant], workload: SyntheticEdits, report_every: int, out) -> None:
    w = out.write
    w(f"\nStore lifecycle: {workload.describe()}, {len(variants[0].snapshot_s)} steps\n")
    for v in variants:
        gc_note = "GC pass after every step" if v.gc_each_step else "no GC"
        keep = "no eviction" if v.keep_last >= KEEP_ALL else f"keep_last {v.keep_last}"
        w(f"  {v.name}: {keep}, keep_durable 0, {gc_note}\n")
    w("\nStore size on disk (du of the whole store directory: packs, catalog and its WAL, MB)")
    w(" and snapshots kept, after each step (and its GC):\n")
    w("| step | " + " | ".join(f"{v.name}: MB | {v.name}: snaps" for v in variants) + " |\n")
    w("| ---: |" + " ---: | ---: |" * len(variants) + "\n")
    n = len(variants[0].du_bytes)
    for i in sorted({0, *range(report_every - 1, n, report_every), n - 1}):
        cells = " | ".join(f"{v.du_bytes[i] / 1e6:.2f} | {v.snapshots[i]}" for v in variants)
        w(f"| {i + 1} | {cells} |\n")
    w("\nCost per step in ms (steps 2..n; step 1 is the initial full snapshot):\n")
    w("| operation | median | p95 | max |\n| --- | ---: | ---: | ---: |\n")

    def row(label: str, values: list[float]) -> None:
        if values:
            med, hi = statistics.median(values), p95(values)
            w(f"| {label} | {ms(med)} | {ms(hi)} | {ms(max(values))} |\n")

    for v in variants:
        row(f"snapshot, {v.name}", v.snapshot_s[1:])
    for v in variants:
        row(f"snapshot CPU time, {v.name}", v.snapshot_cpu_s[1:])
    for v in variants:
        row(f"eviction (_evict in the commit), {v.name}", v.evict_s[1:])
    for v in variants:
        row(f"GC pass after the snapshot, {v.name}", v.gc_s[1:])
        row(f"GC pass CPU time, {v.name}", v.gc_cpu_s[1:])
    w("\n| final | " + " | ".join(v.name for v in variants) + " |\n")
    w("| --- |" + " ---: |" * len(variants) + "\n")

    def final(label: str, cells: list[str]) -> None:
        w(f"| {label} | " + " | ".join(cells) + " |\n")

    final("store on disk (du)", [f"{v.du_bytes[-1] / 1e6:.2f} MB" for v in variants])
    final("store, apparent size", [f"{v.apparent_bytes[-1] / 1e6:.2f} MB" for v in variants])
    final("pack files, apparent size", [f"{v.pack_bytes[-1] / 1e6:.2f} MB" for v in variants])
    final("snapshots kept", [str(v.snapshots[-1]) for v in variants])
    final("logical bytes kept", [f"{v.logical_bytes / 1e6:.1f} MB" for v in variants])
    for k in ("deleted_objects", "deleted_bytes", "packs_compacted", "bytes_copied"):
        final(f"GC total {k}", [str(v.gc_totals.get(k, "-")) for v in variants])
    final("oldest kept snapshot restores exactly", [str(v.restore_ok) for v in variants])
    final("verify ok", [str(v.verify_ok) for v in variants])
    final("run time", [f"{v.seconds:.1f} s" for v in variants])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--modify", type=int, default=20, help="files modified per step")
    ap.add_argument("--add", type=int, default=3, help="files added per step")
    ap.add_argument("--delete", type=int, default=2, help="files deleted per step")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--report-every", type=int, default=20)
    ap.add_argument("--tmp", default=None, help="parent of the temporary directories")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    ap.add_argument("--json", nargs="?", const="-", default=None, help="write results as JSON")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    workload = SyntheticEdits(
        files=args.files,
        steps=args.steps,
        seed=args.seed,
        modify=args.modify,
        add=args.add,
        delete=args.delete,
    )
    base = Path(tempfile.mkdtemp(prefix="snapd-bench-lifecycle-", dir=args.tmp))
    variants = [
        Variant(f"window{args.window}+gc", args.window, True),
        Variant(f"window{args.window}", args.window, False),
        Variant("keep-all", KEEP_ALL, False),
    ]
    try:
        log(f"workload: {workload.describe()}, {args.steps} steps; in {base}")
        for v in variants:
            log(f"running {v.name} ...")
            run_variant(v, workload, base, log, args.report_every)
    finally:
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print_report(variants, workload, args.report_every, sys.stdout)
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "snapd": os.path.dirname(snapd.__file__),
    }
    print(f"\nsnapd from {env['snapd']}, Python {env['python']}, {env['cpus']} CPUs")
    if args.json:
        doc = {"args": vars(args), "env": env, "variants": [asdict(v) for v in variants]}
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    return 0 if all(v.restore_ok and v.verify_ok for v in variants) else 2


if __name__ == "__main__":
    sys.exit(main())
