"""The pipeline experiment (benchmarks/bench_pipeline.py) runs end to end on a tiny synthetic tree
with a few runs per configuration, and its parts do what the table relies on."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import bench_pipeline as bp  # noqa: E402


def test_calibrated_p_gives_the_naive_restart_share() -> None:
    p = bp.calibrate_p(0.34)
    first_try_fails = 1 - sum(w * (1 - p) ** n for n, w in bp.PLAN_LENGTHS.items())
    assert first_try_fails == pytest.approx(0.34, abs=1e-9)
    assert 0.07 < p < 0.09


def test_virtual_clock_orders_sleepers_and_charges_real_work() -> None:
    async def go() -> tuple[list[tuple[str, float]], float, float]:
        woke: list[tuple[str, float]] = []
        async with bp.VirtualClock() as clock:

            async def sleeper(name: str, seconds: float) -> None:
                await clock.sleep(seconds)
                woke.append((name, clock.now))

            async def real_work() -> str:
                await asyncio.sleep(0.01)  # stands in for a daemon call
                return "done"

            await asyncio.gather(sleeper("late", 30.0), sleeper("early", 5.0))
            result, took = await clock.charge(real_work())
            assert result == "done"
            return woke, clock.now, took

    woke, now, took = asyncio.run(go())
    assert woke == [("early", 5.0), ("late", 30.0)]  # virtual time, no 30 s wait
    assert now == pytest.approx(30.0 + took) and took >= 0.01


def test_a_cancelled_sleeper_does_not_stop_the_clock() -> None:
    async def go() -> float:
        async with bp.VirtualClock() as clock:
            doomed = asyncio.ensure_future(clock.sleep(100.0))
            await asyncio.sleep(0)
            doomed.cancel()
            await clock.sleep(3.0)
            return clock.now

    assert asyncio.run(go()) == 3.0


def test_experiment_end_to_end_on_a_tiny_tree(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    logs = tmp_path / "logs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_pipeline",
            "--runs",
            "6",
            "--workload",
            "synthetic",
            "--synthetic-files",
            "120",
            "--full-check-every",
            "2",
            "--tmp",
            str(tmp_path),
            "--json",
            str(out),
            "--event-log",
            str(logs),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for label in bp.CONFIGS.values():
        assert f"| {label} |" in text
    assert "/ 45 s" in text and "/ $31.80" in text  # the article's figures beside ours
    assert "checkpoint (snapshot):  n=" in text and "assumption 200 ms" in text
    data = json.loads(out.read_text())
    assert set(data["rows"]) == {"naive", "checkpoints", "overlap"}
    for row in data["rows"].values():
        assert (
            row["runs"] == 6 and row["mean_s"] > 0 and row["full_checks"] == 4
        )  # runs 0, 2, 4 and the last
    assert data["rows"]["naive"]["cost"] == pytest.approx(47.20)
    assert data["timings_ms"]["snapshot"] and data["timings_ms"]["read_file"]
    # The pipeline's own event logs, in simulated seconds, one run per run id.
    events = [json.loads(line) for line in (logs / "overlap.jsonl").read_text().splitlines()]
    assert {e["run"] for e in events} == {f"overlap-{i}" for i in range(6)}
    assert sum(e["event"] == "run_finished" for e in events) == 6
    # Only the result file and the logs are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "result.json"]


def test_the_check_catches_a_workspace_that_is_not_what_it_should_be(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    for i in range(60):
        (pristine / f"m{i}.py").write_text(f"x = {i}\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    for f in pristine.iterdir():
        (ws / f.name).write_bytes(f.read_bytes())
    tree = bp.Tree(pristine)

    async def go() -> None:
        async with bp.VirtualClock() as clock:
            args = argparse.Namespace(
                seed=1,
                naive_restart_share=0.34,
                exec_median=5.0,
                verify_ratio=0.4,
                step_flaw_share=0.1,
                plan_flaw_share=12 / 340,
                retry_factor=1.0,
                p=None,
            )
            exp = bp.Experiment(args, lambda _m: None)
            task = bp.SimTask(exp.model, tree, 0, str(ws), clock)
            steps = await task.plan(bp.PlanRequest(None, "initial", ""))
            for step in steps:
                for part in (0, 1):
                    bp.apply_edits(task.disk, tree, step.action.tag, bad=False, part=part)
            exp.check(task, steps, full=True)  # right: no complaint
            (ws / "m1.py").write_text("tampered\n")  # a file no step touched
            with pytest.raises(bp.BenchError, match=r"m1\.py"):
                exp.check(task, steps, full=True)

    asyncio.run(go())
