"""The checkpointed pipeline against a real daemon subprocess and real workspace files.

Every step of the scripted plan really changes the tree (contents, new and deleted
directories, a rename, a chmod, a symlink, a 200 KB binary file). An injected failure makes an
execution do something else (wrong content, a junk file, a garbage line, a chmod), and the
verifier finds it by reading the step's snapshot through the daemon. After any mix of failures
the final workspace must equal, byte for byte, the tree built by applying the same steps
directly with no pipeline at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import treeutil
from snapd_client import AsyncClient, Client
from snapd_client.pipeline import (
    CheckpointedPipeline,
    PipelineFailed,
    PlanRequest,
    Step,
    StepContext,
    Verdict,
    read_events,
)


# --- the task: a base tree and steps that change it -------------------------------------------
def make_base(root: str) -> None:
    treeutil.write(root, "README.md", "# project\n")
    treeutil.write(root, "src/app.py", "print('v1')\n")
    treeutil.write(root, "src/lib/util.py", "def f():\n    return 1\n")
    treeutil.write(root, "bin/run.sh", "#!/bin/sh\necho run\n", mode=0o755)
    treeutil.write(root, "data/keep.txt", "keep\n")
    os.makedirs(os.path.join(root, "state"))
    os.symlink("README.md", os.path.join(root, "link"))


def _step0(root: str) -> None:
    treeutil.write(root, "src/app.py", "print('v2')\n")
    treeutil.write(root, "src/new_module.py", "X = 1\n")


def _step1(root: str) -> None:
    shutil.rmtree(os.path.join(root, "src/lib"))
    treeutil.write(root, "docs/guide.md", "# guide\n")


def _step2(root: str) -> None:
    os.chmod(os.path.join(root, "bin/run.sh"), 0o700)
    os.rename(os.path.join(root, "data/keep.txt"), os.path.join(root, "data/kept.txt"))


def _step3(root: str) -> None:
    os.unlink(os.path.join(root, "link"))
    os.symlink("src/app.py", os.path.join(root, "link"))
    with open(os.path.join(root, "README.md"), "a") as f:
        f.write("more\n")


def _step4(root: str) -> None:
    treeutil.write(root, "data/blob.bin", random.Random(4).randbytes(200_000))
    treeutil.write(root, "src/new_module.py", "X = 2\n")


def _step5(root: str) -> None:
    treeutil.write(root, "src/app.py", "print('v3')\n")


def _step6(root: str) -> None:
    os.makedirs(os.path.join(root, "empty/dir"))


GOOD = [_step0, _step1, _step2, _step3, _step4, _step5, _step6]


def apply_good(root: str, index: int) -> None:
    GOOD[index](root)
    treeutil.write(root, f"state/step{index}.txt", f"ok {index}\n")


def apply_bad(root: str, index: int, attempt: int) -> None:
    """What a failed execution leaves behind; a restore must undo every part of it."""
    treeutil.write(root, f"state/step{index}.txt", "BROKEN\n")
    treeutil.write(root, f"junk/step{index}-{attempt}.tmp", "junk\n")
    with open(os.path.join(root, "README.md"), "a") as f:
        f.write("garbage\n")
    os.chmod(os.path.join(root, "src/app.py"), 0o600)


def reference(tmp_path, n: int, name: str = "reference") -> treeutil.Capture:
    """The tree after the first n steps, built without any pipeline."""
    root = str(tmp_path / name)
    os.mkdir(root)
    make_base(root)
    for i in range(n):
        apply_good(root, i)
    return treeutil.capture(root)


def same_tree(actual: treeutil.Capture, expected: treeutil.Capture, what: str) -> None:
    # Byte for byte: kind, content, size, permission bits, symlink targets. mtimes are left
    # out: the reference tree was written at other times than the pipeline's workspace.
    treeutil.assert_same(actual, expected, what, mtimes=False)


class Script:
    """Planner, executor and verifier for the scripted task, with failures injected at chosen
    (step, attempt) pairs and a record of everything the pipeline asked for.

    next_step: how a failure of step k meets step k+1 when verification is overlapped:
      "done"    - the verdict comes only after step k+1 has finished executing,
      "cancel"  - the verdict comes while step k+1 is executing (k+1 blocks until cancelled),
      "finish"  - like "cancel", but step k+1 goes on to finish once the verdict is out.
    """

    def __init__(
        self, steps: int = 5, fail: set[tuple[int, int]] = frozenset(), next_step: str = ""
    ) -> None:
        self.n = steps
        self.fail = set(fail)
        self.next_step = next_step
        self.plans: list[PlanRequest] = []
        self.executions: list[StepContext] = []
        self.verifications: list[tuple[int, int, bool]] = []
        self.cancelled: list[int] = []
        self.finished: dict[int, asyncio.Event] = {}
        self.started: dict[int, asyncio.Event] = {}
        self.verdict_out: dict[int, asyncio.Event] = {}

    def _event(self, table: dict[int, asyncio.Event], key: int) -> asyncio.Event:
        return table.setdefault(key, asyncio.Event())

    def _injected(self, index: int, attempt: int) -> bool:
        return (index, attempt) in self.fail

    async def planner(self, request: PlanRequest) -> list[Step]:
        self.plans.append(request)
        return [Step(i, f"step {i}") for i in range(len(request.completed), self.n)]

    async def executor(self, step: Step, ctx: StepContext) -> str:
        index = step.action
        self.executions.append(ctx)
        self._event(self.started, index).set()
        waits_on_previous = self._injected(index - 1, 0) and self.next_step in ("cancel", "finish")
        if waits_on_previous and sum(c.index == index for c in self.executions) == 1:
            try:
                if self.next_step == "cancel":
                    await asyncio.Event().wait()  # until cancelled
                await self._event(self.verdict_out, index - 1).wait()
            except asyncio.CancelledError:
                self.cancelled.append(index)
                raise
        if self._injected(index, ctx.attempt):
            apply_bad(ctx.path, index, ctx.attempt)
        else:
            apply_good(ctx.path, index)
        self._event(self.finished, index).set()
        return f"did {index}"

    async def verifier(self, step: Step, ctx: StepContext) -> Verdict:
        index = step.action
        assert ctx.after_id is not None and ctx.result == f"did {index}"
        if self._injected(index, ctx.attempt) and ctx.overlapped:
            if self.next_step == "done":
                await self._event(self.finished, index + 1).wait()
            elif self.next_step in ("cancel", "finish"):
                await self._event(self.started, index + 1).wait()
        # The live workspace may already hold part of the next step: judge the snapshot.
        data = await ctx.workspace.read_file(ctx.after_id, f"state/step{index}.txt")
        ok = data == f"ok {index}\n".encode()
        self.verifications.append((index, ctx.attempt, ok))
        self._event(self.verdict_out, index).set()
        return Verdict(ok, "" if ok else f"state/step{index}.txt says {data!r}")


def new_workspace(tmp_path, name: str = "ws") -> str:
    root = str(tmp_path / name)
    os.mkdir(root)
    make_base(root)
    return root


def run(daemon, ws_dir: str, script: Script, **kw) -> object:
    async def go():
        async with AsyncClient("unix://" + daemon.socket) as c:
            pipeline = CheckpointedPipeline(
                script.planner, script.executor, script.verifier, ws_dir, client=c, **kw
            )
            return await pipeline.run("the task")

    return asyncio.run(go())


def pinned(client: Client, ws_dir: str) -> list[str]:
    ws = client.open_workspace(ws_dir)
    return [s.id for s in ws.snapshots() if s.pinned]


# --- failures at every position ---------------------------------------------------------------
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "sequential"])
@pytest.mark.parametrize("position", range(5))
def test_failure_at_every_position_ends_in_the_clean_tree(
    daemon, client, tmp_path, position, overlap
) -> None:
    expected = reference(tmp_path, 5)
    ws = new_workspace(tmp_path)
    script = Script(fail={(position, 0)})
    result = run(daemon, ws, script, overlap=overlap)
    same_tree(treeutil.capture(ws), expected, f"failure at step {position + 1}")

    assert result.retries == 1 and result.replans == 0 and result.restarts == 0
    retry = [c for c in script.executions if c.index == position and c.attempt == 1]
    assert len(retry) == 1
    assert retry[0].retry and retry[0].temperature == 0.0
    assert "BROKEN" in retry[0].feedback
    assert (position, 1, True) in script.verifications  # the retry was verified
    assert all(c.temperature is None for c in script.executions if c.attempt == 0)
    # Restored to the checkpoint taken before the failed step, not the one after it.
    failed = [e for e in result.events if e["event"] == "failed"]
    restored = [e for e in result.events if e["event"] == "restored"]
    before = retry[0].before_id
    assert len(failed) == 1 and restored[0]["snapshot"] == before
    first = next(c for c in script.executions if c.index == position)
    assert first.before_id == before
    assert pinned(client, ws) == []


@pytest.mark.parametrize("next_step", ["done", "cancel", "finish"])
@pytest.mark.parametrize("position", range(4))
def test_overlapped_failure_rolls_back_the_next_step_and_runs_it_again(
    daemon, client, tmp_path, position, next_step
) -> None:
    expected = reference(tmp_path, 5)
    ws = new_workspace(tmp_path)
    script = Script(fail={(position, 0)}, next_step=next_step)
    on_failure = "finish" if next_step == "finish" else "cancel"
    result = run(daemon, ws, script, on_overlap_failure=on_failure)
    same_tree(treeutil.capture(ws), expected, f"overlapped failure at step {position + 1}")

    order = [(c.index, c.attempt) for c in script.executions]
    k = position
    # Step k+1 ran on top of the bad step k, then k was retried, then k+1 ran again.
    assert (
        order.index((k + 1, 0))
        < order.index((k, 1))
        < len(order) - 1 - order[::-1].index((k + 1, 0))
    )
    assert order.count((k + 1, 0)) == 2
    abandoned = [e for e in result.events if e["event"] == "abandoned"]
    assert len(abandoned) == 1 and abandoned[0]["step"] == k + 1
    if next_step == "cancel":
        assert script.cancelled == [k + 1] and abandoned[0]["how"] == "cancelled"
    elif next_step == "finish":
        assert script.cancelled == [] and abandoned[0]["how"] == "finished"
    else:
        assert script.cancelled == []
    assert (k, 1, True) in script.verifications
    assert pinned(client, ws) == []  # nor the abandoned step's checkpoint


def test_failures_everywhere_and_a_second_failed_retry(daemon, tmp_path) -> None:
    expected = reference(tmp_path, 5)
    ws = new_workspace(tmp_path)
    fail = {(i, 0) for i in range(5)} | {(2, 1)}
    script = Script(fail=fail)
    result = run(daemon, ws, script)
    same_tree(treeutil.capture(ws), expected, "failures everywhere")
    assert result.retries == 6 and result.replans == 0
    third = [c for c in script.executions if c.index == 2 and c.attempt == 2]
    assert len(third) == 1 and third[0].temperature == 0.0


def test_executor_exception_is_a_failed_step(daemon, tmp_path) -> None:
    expected = reference(tmp_path, 3)
    ws = new_workspace(tmp_path)
    script = Script(steps=3)
    real = script.executor

    async def executor(step: Step, ctx: StepContext) -> str:
        if step.action == 1 and ctx.attempt == 0:
            treeutil.write(ctx.path, "half-written.txt", "partial")
            raise RuntimeError("tool crashed")
        return await real(step, ctx)

    script.executor = executor
    result = run(daemon, ws, script)
    same_tree(treeutil.capture(ws), expected, "executor exception")
    failed = [e for e in result.events if e["event"] == "failed"]
    assert failed[0]["phase"] == "execute" and "tool crashed" in failed[0]["reason"]


# --- bounds: retries, replans, restarts -------------------------------------------------------
def test_retries_run_out_then_replan_from_the_last_good_checkpoint(daemon, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    script = Script(fail={(2, a) for a in range(10)})
    seen_at_replan: list[treeutil.Capture] = []
    plan_once = script.planner

    async def planner(request: PlanRequest) -> list[Step]:
        if request.reason == "initial":
            return await plan_once(request)
        script.plans.append(request)
        seen_at_replan.append(treeutil.capture(ws))
        return [Step(3, "step 3 instead"), Step(4)]  # skip the step that cannot pass

    script.planner = planner
    result = run(daemon, ws, script, max_retries=2)
    tries = [c for c in script.executions if c.index == 2 and c.plan_version == 0]
    assert [c.attempt for c in tries] == [0, 1, 2]
    replan = script.plans[-1]
    assert replan.reason == "replan" and replan.failed_step == Step(2, "step 2")
    assert [s.action for s in replan.completed] == [0, 1]
    assert replan.checkpoint_id == tries[0].before_id
    # The planner saw the workspace at the checkpoint: steps 0 and 1 done, nothing of step 2.
    same_tree(seen_at_replan[0], reference(tmp_path, 2), "workspace when replanning")
    assert result.replans == 1 and result.restarts == 0
    assert [s.action for s in result.steps] == [0, 1, 3, 4]
    ref = str(tmp_path / "ref")
    os.mkdir(ref)
    make_base(ref)
    for i in (0, 1, 3, 4):
        apply_good(ref, i)
    same_tree(treeutil.capture(ws), treeutil.capture(ref), "after the replan")


def test_replans_run_out_then_one_full_restart(daemon, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    script = Script(steps=3)
    real = script.executor
    at_restart: list[treeutil.Capture] = []

    async def executor(step: Step, ctx: StepContext) -> str:
        if step.action == 1 and ctx.plan_version < 2:  # plans 0 and 1 (the replan) cannot pass
            treeutil.write(ctx.path, "state/step1.txt", "BROKEN\n")
            return f"did {step.action}"
        return await real(step, ctx)

    async def planner(request: PlanRequest) -> list[Step]:
        script.plans.append(request)
        if request.reason == "restart":
            at_restart.append(treeutil.capture(ws))
        return [Step(i, f"step {i}") for i in range(len(request.completed), 3)]

    script.executor, script.planner = executor, planner
    result = run(daemon, ws, script, max_retries=1, max_replans=1, max_restarts=1)
    assert [p.reason for p in script.plans] == ["initial", "replan", "restart"]
    assert result.retries == 2 and result.replans == 1 and result.restarts == 1
    # A full restart starts from the start of the run: the base tree.
    base = str(tmp_path / "base")
    os.mkdir(base)
    make_base(base)
    same_tree(at_restart[0], treeutil.capture(base), "workspace at the full restart")
    same_tree(treeutil.capture(ws), reference(tmp_path, 3), "after the restart")
    events = [e["event"] for e in result.events]
    assert events.count("restarted") == 1 and events.count("replanned") == 1


def test_gives_up_when_restarts_run_out(daemon, client, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    script = Script(steps=3, fail={(1, a) for a in range(10)})
    with pytest.raises(PipelineFailed) as info:
        run(daemon, ws, script, max_retries=1, max_replans=1, max_restarts=1)
    err = info.value
    assert "step 2 (step 1) failed 2 time(s)" in str(err)
    # 2 attempts per plan, a replan, a restart with its own plan and replan: 8 executions.
    assert sum(c.index == 1 for c in script.executions) == 8
    assert [p.reason for p in script.plans] == ["initial", "replan", "restart", "replan"]
    # Left at the last verified state of the last attempt: step 0 done.
    same_tree(treeutil.capture(ws), reference(tmp_path, 1), "after giving up")
    assert err.events[-1]["event"] == "run_failed"
    assert err.events[-1]["snapshot"] == err.checkpoint_id
    assert pinned(client, ws) == []


def test_a_planner_error_while_replanning_means_a_full_restart(daemon, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    script = Script(steps=2)
    real = script.executor

    async def executor(step: Step, ctx: StepContext) -> str:
        if step.action == 1 and ctx.plan_version == 0:  # the first plan's step 2 cannot pass
            treeutil.write(ctx.path, "state/step1.txt", "BROKEN\n")
            return f"did {step.action}"
        return await real(step, ctx)

    async def planner(request: PlanRequest) -> list[Step]:
        script.plans.append(request)
        if request.reason == "replan":
            raise ConnectionError("model endpoint down")
        return [Step(i, f"step {i}") for i in range(2)]

    script.executor, script.planner = executor, planner
    result = run(daemon, ws, script, max_retries=1)
    assert [p.reason for p in script.plans] == ["initial", "replan", "restart"]
    assert result.restarts == 1
    assert "model endpoint down" in script.plans[-1].failure
    failed = [e for e in result.events if e["event"] == "failed"]
    assert failed[-1]["phase"] == "plan"
    same_tree(treeutil.capture(ws), reference(tmp_path, 2), "after the restart")


# --- checkpoints: durability and the window ---------------------------------------------------
def test_persists_every_k_verified_steps_and_the_final_state(daemon, client, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    script = Script(steps=7, fail={(2, 0)})
    result = run(daemon, ws, script, persist_every=3)
    persisted = [e for e in result.events if e["event"] == "persisted"]
    assert [e.get("step") for e in persisted] == [2, 5, None]  # after steps 3 and 6, final
    assert result.durable_snapshot_ids == [e["snapshot"] for e in persisted]
    assert result.durable_snapshot_ids[-1] == result.final_snapshot_id
    by_id = {s.id: s for s in client.open_workspace(ws).snapshots()}
    for sid in result.durable_snapshot_ids:
        assert by_id[sid].durable
    # The checkpoint after step 3 is the verified retry's, holding the good state of step 2.
    after3 = result.durable_snapshot_ids[0]
    assert client.read_file(after3, "state/step2.txt") == b"ok 2\n"
    assert by_id[after3].metadata["pipeline.attempt"] == "1"  # the retry's result
    assert not any(s.durable for sid, s in by_id.items() if sid not in result.durable_snapshot_ids)


def test_persist_every_zero_and_no_final(daemon, client, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    result = run(daemon, ws, Script(steps=4), persist_every=0, persist_final=False)
    assert result.durable_snapshot_ids == []
    assert not any(s.durable for s in client.open_workspace(ws).snapshots())


def test_window_is_set_and_checkpoints_survive_many_retries(daemon, client, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    client.open_workspace(ws, keep_last=50)
    expected = reference(tmp_path, 4)
    # Each rollback adds a safety snapshot; with a window of 2, four failed attempts of one
    # step would evict its checkpoint if the pipeline did not pin it.
    script = Script(steps=4, fail={(1, a) for a in range(4)})
    result = run(daemon, ws, script, window=2, max_retries=4, persist_every=0)
    same_tree(treeutil.capture(ws), expected, "after many retries with a tiny window")
    assert result.retries == 4
    handle = client.open_workspace(ws)
    assert handle.settings.keep_last == 2
    handle.snapshot("after the run")  # eviction happens when a snapshot is committed
    snaps = handle.snapshots()
    assert [s for s in snaps if s.pinned] == []
    assert len([s for s in snaps if not s.durable]) <= 2


def test_default_window_is_five(daemon, client, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    client.open_workspace(ws, keep_last=50)
    result = run(daemon, ws, Script(steps=7, fail={(3, 0), (5, 0)}))
    handle = client.open_workspace(ws)
    assert handle.settings.keep_last == 5
    handle.snapshot("after the run")  # eviction happens when a snapshot is committed
    kept = [s for s in handle.snapshots() if not s.durable]
    assert len(kept) <= 5
    assert result.events[0]["event"] == "run_started" and result.events[0]["window"] == 5


def test_window_none_leaves_the_setting(daemon, client, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    client.open_workspace(ws, keep_last=40)
    run(daemon, ws, Script(steps=2), window=None)
    assert client.open_workspace(ws).settings.keep_last == 40


# --- cancellation and timeouts ----------------------------------------------------------------
def _run_and_cancel(daemon, ws: str, script: Script, block_at: int, **kw) -> list[dict]:
    events: list[dict] = []
    blocked = asyncio.Event()
    real = script.executor

    async def executor(step: Step, ctx: StepContext) -> str:
        if step.action == block_at:
            treeutil.write(ctx.path, "half/done.txt", "half of a step\n")
            blocked.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                script.cancelled.append(step.action)
                raise
        return await real(step, ctx)

    async def go():
        async with AsyncClient("unix://" + daemon.socket) as c:
            pipeline = CheckpointedPipeline(
                script.planner, executor, script.verifier, ws, client=c, event_log=events.append
            )
            task = asyncio.ensure_future(pipeline.run("the task", **kw))
            await blocked.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    return events


def test_cancellation_mid_step_restores_the_last_verified_state(daemon, client, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    script = Script(steps=5)
    events = _run_and_cancel(daemon, ws, script, block_at=3)
    assert script.cancelled == [3]
    assert events[-1]["event"] == "cancelled"
    # The verified checkpoint it went back to: after step 2 or step 3 (the verification of
    # step 3 runs alongside step 4 and may not have finished), never the half-done step.
    checkpoints = {e["snapshot"]: e.get("step") for e in events if e["event"] == "checkpoint"}
    done = checkpoints[events[-1]["snapshot"]]
    n = 0 if done is None else done + 1
    assert n in (2, 3)
    same_tree(treeutil.capture(ws), reference(tmp_path, n), "after cancelling")
    assert pinned(client, ws) == []


def test_cancellation_without_restore_leaves_the_partial_step(daemon, tmp_path) -> None:
    ws = new_workspace(tmp_path)

    async def go():
        script = Script(steps=3)
        blocked = asyncio.Event()

        async def executor(step: Step, ctx: StepContext) -> str:
            if step.action == 1:
                treeutil.write(ctx.path, "half/done.txt", "half\n")
                blocked.set()
                await asyncio.Event().wait()
            return await script.executor(step, ctx)

        async with AsyncClient("unix://" + daemon.socket) as c:
            p = CheckpointedPipeline(
                script.planner, executor, script.verifier, ws, client=c, restore_on_cancel=False
            )
            task = asyncio.ensure_future(p.run())
            await blocked.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    assert treeutil.read(ws, "half/done.txt") == b"half\n"


def test_step_timeout_fails_the_attempt_and_the_retry_goes_on(daemon, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    script = Script(steps=3)
    real = script.executor
    stopped: list[int] = []

    async def executor(step: Step, ctx: StepContext) -> str:
        if step.action == 1 and ctx.attempt == 0:
            treeutil.write(ctx.path, "half/done.txt", "half\n")
            try:
                await asyncio.Event().wait()  # a hung tool call
            except asyncio.CancelledError:
                stopped.append(step.action)
                raise
        return await real(step, ctx)

    script.executor = executor
    result = run(daemon, ws, script, step_timeout=2.0)
    same_tree(treeutil.capture(ws), reference(tmp_path, 3), "after a timed-out step")
    assert stopped == [1]
    failed = [e for e in result.events if e["event"] == "failed"]
    assert failed[0]["reason"] == "step timed out after 2 s"


def test_verify_timeout_fails_the_step(daemon, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    script = Script(steps=2)
    real = script.verifier

    async def verifier(step: Step, ctx: StepContext) -> Verdict:
        if step.action == 0 and ctx.attempt == 0:
            await asyncio.Event().wait()
        return await real(step, ctx)

    script.verifier = verifier
    result = run(daemon, ws, script, verify_timeout=2.0)
    same_tree(treeutil.capture(ws), reference(tmp_path, 2), "after a timed-out verification")
    failed = [e for e in result.events if e["event"] == "failed"]
    assert failed[0]["phase"] == "verify"
    assert failed[0]["reason"] == "verification timed out after 2 s"
    assert result.retries == 1


# --- the event log ----------------------------------------------------------------------------
def test_event_log_is_json_lines_with_durations(daemon, tmp_path) -> None:
    ws = new_workspace(tmp_path)
    log = str(tmp_path / "run.jsonl")
    result = run(daemon, ws, Script(steps=3, fail={(1, 0)}), event_log=log)
    events = read_events(log)
    assert events == json.loads(json.dumps(result.events))
    names = [e["event"] for e in events]
    for name in ("step_started", "executed", "verified", "failed", "restored", "retried"):
        assert name in names, name
    assert "persisted" in names and names[-1] == "run_finished"
    for e in events:
        assert e["run"] == result.run_id and e["t"] >= 0
        if e["event"] in ("executed", "verified", "restored", "persisted", "checkpoint"):
            assert e["ms"] >= 0
    shown = subprocess.run(
        [sys.executable, "-m", "snapd_client.pipeline", "show", log],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"run {result.run_id}" in shown and "restored" in shown and "FAILED" in shown


def test_plain_functions_and_an_initial_plan(daemon, tmp_path) -> None:
    """Sync functions work as roles; plan= skips the first planner call."""
    ws = new_workspace(tmp_path)

    def planner(request: PlanRequest) -> list[int]:
        raise AssertionError("not asked: the plan was given")

    def executor(step: Step, ctx: StepContext) -> None:
        apply_good(ctx.path, step.action)

    def verifier(step: Step, ctx: StepContext) -> bool:
        return True

    async def go():
        async with AsyncClient("unix://" + daemon.socket) as c:
            handle = await c.open_workspace(ws)
            p = CheckpointedPipeline(planner, executor, verifier, handle)
            return await p.run(plan=[0, 1, 2])

    result = asyncio.run(go())
    assert [s.action for s in result.steps] == [0, 1, 2] and result.steps[0].name == "0"
    same_tree(treeutil.capture(ws), reference(tmp_path, 3), "plain functions")
