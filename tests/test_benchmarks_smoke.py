"""The benchmark harness runs end to end on a tiny synthetic workload (no downloads, no timings).

This keeps benchmarks/ from rotting as the engine changes: the workload helpers, the shadow git
baseline, the engine driver with its restore checks, the table and the JSON all run here.
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

from benchmarks import bench_engine  # noqa: E402
from benchmarks.baselines import ShadowGit  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    SyntheticEdits,
    TreeSequence,
    compare_manifests,
    sync_tree,
    tree_manifest,
)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def test_sync_tree_touches_only_what_differs(tmp_path: Path) -> None:
    a, b, ws = tmp_path / "a", tmp_path / "b", tmp_path / "ws"
    _write(a / "same.txt", b"same\n")
    _write(a / "changes.txt", b"old\n")
    _write(a / "gone/deep/file.txt", b"bye\n")
    _write(a / "becomes_dir", b"file first\n")
    _write(b / "same.txt", b"same\n")
    _write(b / "changes.txt", b"new!\n")
    _write(b / "run.sh", b"#!/bin/sh\n", 0o755)
    _write(b / "becomes_dir/inner.txt", b"now a dir\n")
    os.symlink("same.txt", b / "link")
    ws.mkdir()
    _write(ws / ".~snapd-tmp-123", b"engine temporary\n")  # not the workload's business

    first = sync_tree(a, ws)
    assert first.files_created == 4
    assert not compare_manifests(tree_manifest(a), tree_manifest(ws))
    same_ino = (ws / "same.txt").stat().st_ino
    same_mtime = (ws / "same.txt").stat().st_mtime_ns

    second = sync_tree(b, ws)
    assert not compare_manifests(tree_manifest(b), tree_manifest(ws))
    assert second.files_written == 1  # changes.txt, rewritten in place
    assert (ws / "same.txt").stat().st_ino == same_ino
    assert (ws / "same.txt").stat().st_mtime_ns == same_mtime  # equal bytes: not rewritten
    assert (ws / "run.sh").stat().st_mode & 0o777 == 0o755
    assert not (ws / "gone").exists()
    assert (ws / ".~snapd-tmp-123").read_bytes() == b"engine temporary\n"


def test_compare_manifests_catches_bytes_modes_and_mtimes(tmp_path: Path) -> None:
    _write(tmp_path / "f", b"abc")
    before = tree_manifest(tmp_path)
    os.chmod(tmp_path / "f", 0o600)
    assert compare_manifests(before, tree_manifest(tmp_path))
    assert not compare_manifests(before, tree_manifest(tmp_path), modes="exec")
    os.chmod(tmp_path / "f", 0o644)
    os.utime(tmp_path / "f", ns=(1, 1))
    assert not compare_manifests(before, tree_manifest(tmp_path))
    assert compare_manifests(before, tree_manifest(tmp_path), mtimes=True)
    _write(tmp_path / "f", b"abd")
    assert "content differs" in compare_manifests(before, tree_manifest(tmp_path))[0]


def test_synthetic_edits_are_reproducible(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for target in (one, two):
        target.mkdir()
        for step in SyntheticEdits(files=30, steps=4, seed=7).steps():
            step.apply(target)
    assert not compare_manifests(tree_manifest(one), tree_manifest(two))
    other = tmp_path / "other"
    other.mkdir()
    for step in SyntheticEdits(files=30, steps=4, seed=8).steps():
        step.apply(other)
    assert compare_manifests(tree_manifest(one), tree_manifest(other))
    # 30 files, then 3 steps of +2 added -1 deleted.
    assert sum(e.kind == "f" for e in tree_manifest(one).values()) == 33


def test_shadow_git_restore_removes_files_added_later(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _write(ws / "a.txt", b"one\n")
    git = ShadowGit(tmp_path / "git", ws)
    git.init()
    git.snapshot("first")
    first = git.head()
    _write(ws / "a.txt", b"two\n")
    _write(ws / "new/b.txt", b"added later\n")
    git.snapshot("second")
    git.restore(first)
    assert (ws / "a.txt").read_bytes() == b"one\n"
    assert not (ws / "new").exists()
    git.gc()
    assert git.size_bytes() > 0


def test_harness_end_to_end_on_a_tiny_workload(tmp_path: Path) -> None:
    workload = SyntheticEdits(files=40, steps=3, seed=3)
    result = bench_engine.run(workload, tmp_root=tmp_path, first_repeats=2, log=lambda _m: None)
    assert [s.label for s in result.steps] == ["initial tree", "edit 1", "edit 2"]
    assert len(result.ours.step_s) == len(result.git.step_s) == 2
    assert len(result.ours.undo_s) == len(result.git.undo_s) == 2
    assert len(result.ours.first_samples_s) == len(result.git.first_samples_s) == 2
    assert result.ours.size_bytes > 0 and result.git.size_bytes > 0
    keys = {r["key"] for r in result.summary}
    assert {"first_snapshot", "step_median", "undo_median", "store_size"} <= keys
    assert all(r["result"] in ("PASS", "FAIL") for r in result.summary if r["target"])
    assert not list(tmp_path.iterdir())  # temporary directories removed
    json.dumps(result.to_json(), default=bench_engine._json_default)


def test_harness_fails_loudly_when_a_step_is_not_reproduced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write(src / "a.txt", b"a\n")

    class Broken(TreeSequence):
        """Claims its steps reproduce `src` but the second step writes something else."""

        def steps(self):
            steps = super().steps()
            real_apply = steps[1].apply

            def apply(ws):
                out = real_apply(ws)
                (Path(ws) / "a.txt").write_bytes(b"tampered\n")
                return out

            steps[1].apply = apply
            return steps

    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(bench_engine.VerificationError, match="did not reproduce"):
        bench_engine.run(
            Broken("broken", [("one", src), ("two", src)]),
            tmp_root=work,
            baseline=False,
            log=lambda _m: None,
        )


def test_command_line_prints_table_and_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_engine",
            "--workload",
            "synthetic",
            "--synthetic-files",
            "30",
            "--steps",
            "2",
            "--tmp",
            str(tmp_path),
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "restore previous step, median" in proc.stdout
    data = json.loads(proc.stdout[proc.stdout.index("\n{") :])
    assert data["workload"].startswith("synthetic edits")
    assert len(data["steps"]) == 2
