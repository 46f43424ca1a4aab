"""benchmarks/bench_watch.py runs end to end on a tiny synthetic tree (no downloads, no timings).

A real daemon subprocess, the client library, the shadow git baseline, the restore checks, the
concurrency run, the tables and the JSON: everything the 100k-file run does, on a few dozen files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# benchmarks/ is not an installed package; `python -m pytest` from the repository root finds it,
# a bare `pytest` does not.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import bench_watch  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    RealFileEdits,
    SyntheticEdits,
    compare_manifests,
    list_tree_files,
    tree_manifest,
)


def _base_tree(root: Path, files: int = 40, seed: int = 5) -> Path:
    root.mkdir()
    SyntheticEdits(files=files, steps=1, seed=seed).steps()[0].apply(root)
    return root


def test_real_file_edits_are_reproducible_and_edit_real_files(tmp_path: Path) -> None:
    base = _base_tree(tmp_path / "base")
    before = {f.rel: (base / f.rel).read_bytes() for f in list_tree_files(base)}
    copies = []
    for name in ("one", "two"):
        target = tmp_path / name
        for step in RealFileEdits(base, steps=4, seed=9).steps():
            step.apply(target)
        copies.append(target)
    assert not compare_manifests(tree_manifest(copies[0]), tree_manifest(copies[1]))
    # 40 files, then 3 steps of +2 added -1 deleted; the base itself is never changed.
    assert len(list_tree_files(copies[0])) == 40 + 3
    assert {f.rel: (base / f.rel).read_bytes() for f in list_tree_files(base)} == before
    steps = RealFileEdits(base, steps=2, seed=9).steps()
    modified = [rel for rel, _data, _mode in steps[1].writes if rel in before]
    assert len(modified) == 10  # real files of the tree, edited
    assert all(steps[1].writes[i][1] != before[rel] for i, rel in enumerate(modified))
    other = RealFileEdits(base, steps=2, seed=10).steps()
    assert other[1].writes != steps[1].writes
    # skip_prefixes keeps every edit out of those directories.
    assert any(rel.startswith("pkg0/") for rel in before)
    kept_out = RealFileEdits(base, steps=6, seed=9, skip_prefixes=("pkg0/",)).steps()[1:]
    paths = [w[0] for s in kept_out for w in s.writes] + [d for s in kept_out for d in s.deletes]
    assert paths and not any(p.startswith("pkg0/") for p in paths)


def test_closed_loop_floor() -> None:
    cores = os.cpu_count() or 1
    floor = bench_watch.closed_loop_floor_ms(20, 16.0, 4.0, 50.0)
    assert floor["cycle_ms"] == 20 * (16.0 + 4.0) / cores
    # The daemon CPU that leaves the floor at the target: at it, the cycle is the target.
    budget = floor["daemon_budget_ms"]
    at_budget = bench_watch.closed_loop_floor_ms(20, budget, 4.0, 50.0)
    assert at_budget["cycle_ms"] == pytest.approx(50.0)


def test_run_end_to_end_on_a_tiny_tree(tmp_path: Path) -> None:
    base = _base_tree(tmp_path / "base", files=60)
    work = tmp_path / "work"
    work.mkdir()
    workload = RealFileEdits(base, steps=3, seed=2)
    result = bench_watch.run(
        workload,
        tmp_root=work,
        conc_workspaces=2,
        conc_files=30,
        rounds=2,
        verify_every=1,
        log=lambda _m: None,
    )
    assert result.files == 60
    assert [r.step for r in result.rows] == [1, 2]
    assert all(r.watch_scan in ("hinted", "full") for r in result.rows)
    assert all(r.full_scan == "full" for r in result.rows)  # watch=False walks every time
    assert all(r.checked_whole_tree for r in result.rows)
    assert all(r.git_commit_ms > 0 and r.git_undo_ms > 0 for r in result.rows)
    assert result.open["counters_when_ready"]["watches"] >= 1
    assert {"idle", "after_open_watch", "after_steps", "end"} <= set(result.rss_kib)
    assert result.rss_kib["end"]["VmRSS"] > 0
    assert result.concurrency is not None
    assert result.concurrency["snapshots"] == 2 * 2
    assert result.concurrency["daemon_ms"]["n"] == 2 * 2  # the daemon logged every round
    assert result.concurrency["daemon_cpu_ms"] >= 0 and result.concurrency["client_cpu_ms"] >= 0
    assert result.concurrency["floor"]["cycle_ms"] > 0
    keys = {r["key"] for r in result.summary}
    assert {"snap_watch", "snap_full", "undo"} <= keys
    assert len(bench_watch.targets(result)) == 6
    json.dumps(result.to_json(), default=str)
    assert not list(work.iterdir())  # temporary directories removed


def test_command_line_prints_tables_and_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_watch",
            "--workload",
            "synthetic",
            "--synthetic-files",
            "30",
            "--steps",
            "1",
            "--skip-git",
            "--skip-concurrency",
            "--tmp",
            str(tmp_path),
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "snapshot, watcher" in proc.stdout
    assert "daemon memory" in proc.stdout
    data = json.loads(proc.stdout[proc.stdout.index("\n{") :])
    assert data["files"] == 30
    assert len(data["rows"]) == 1
    assert data["concurrency"] is None
    assert not list(tmp_path.iterdir())
