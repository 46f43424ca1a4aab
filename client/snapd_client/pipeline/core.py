"""CheckpointedPipeline: a planner-executor-verifier loop that rolls back a failed step and
retries it, instead of restarting the whole task.

    pipeline = CheckpointedPipeline(planner, executor, verifier, "/abs/workspace",
                                    event_log="run.jsonl")
    result = await pipeline.run(goal="make the tests pass")

The loop, per step N (positions from 0):
  1. the snapshot taken after step N-1 (or at the start) is step N's checkpoint, pre[N];
  2. execute step N, then snapshot the result: pre[N+1];
  3. verify step N against that snapshot while step N+1 executes (overlap; can be switched off);
  4. verification of N fails: cancel (or let finish) step N+1, restore pre[N] - which rolls back
     N+1 as well - and run N again, told it is a retry and asked for temperature 0; the retry is
     verified like any execution, and N+1 runs again after it;
  5. after max_retries failed retries of a step, ask the planner for a new plan from pre[N], the
     last verified state; after max_replans, restore the start and plan from scratch (a full
     restart), at most max_restarts times.
The loop keeps snapshot ids only. The checkpoints it may still restore are pinned until their
step is verified, so neither the sliding window nor the safety snapshots that restores add can
evict them. Every persist_every-th verified checkpoint, and the final state, are made durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..aio import AsyncClient, AsyncWorkspace
from ..errors import NotFoundError
from .events import EventLog, EventSink
from .types import (
    PipelineFailed,
    PipelineResult,
    PlanRequest,
    Step,
    StepContext,
    Verdict,
)

OverlapFailure = Literal["cancel", "finish"]


class CheckpointedPipeline:
    """Run a plan step by step in a snapd workspace, with a checkpoint before every step.

    planner, executor, verifier: async callables (see Planner, Executor, Verifier in
        snapd_client.pipeline), or objects with async plan/execute/verify methods.
    workspace: an AsyncWorkspace, or the workspace's absolute path (then `client`, or a
        default AsyncClient created inside the running loop, opens it).
    window: the workspace's sliding window (keep_last), set when the pipeline opens it; None
        leaves the workspace's setting alone.
    persist_every: make every k-th verified checkpoint durable (0: never); persist_final makes
        the final state durable too.
    overlap: verify step N while step N+1 executes. on_overlap_failure: what happens to the
        running step N+1 when step N fails verification: "cancel" it (the default) or let it
        "finish"; it is rolled back either way.
    max_retries: retries per step before replanning; max_replans: replans per attempt before a
        full restart; max_restarts: full restarts before giving up (PipelineFailed).
    step_timeout, verify_timeout, plan_timeout: seconds (None: no limit). A step that runs out
        of time is cancelled and counts as a failed attempt.
    retry_temperature: the temperature retries ask for (StepContext.temperature).
    restore_on_cancel: when the run is cancelled, restore the last verified checkpoint so the
        workspace is not left half-changed by an interrupted step.
    event_log: path (appended to), text stream or callable receiving each event dict.
    clock: the clock for event times and durations (seconds; time.perf_counter by default).
    """

    def __init__(
        self,
        planner: Any,
        executor: Any,
        verifier: Any,
        workspace: AsyncWorkspace | str,
        *,
        client: AsyncClient | None = None,
        window: int | None = 5,
        persist_every: int = 3,
        persist_final: bool = True,
        overlap: bool = True,
        on_overlap_failure: OverlapFailure = "cancel",
        max_retries: int = 2,
        max_replans: int = 2,
        max_restarts: int = 1,
        step_timeout: float | None = None,
        verify_timeout: float | None = None,
        plan_timeout: float | None = None,
        retry_temperature: float = 0.0,
        restore_on_cancel: bool = True,
        exclude: list[str] | None = None,
        event_log: EventSink = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.plan_fn = _role(planner, "plan")
        self.execute_fn = _role(executor, "execute")
        self.verify_fn = _role(verifier, "verify")
        if isinstance(workspace, AsyncWorkspace):
            self.path = workspace.path
            self.client = client or workspace.client
        elif isinstance(workspace, str):
            self.path = workspace
            self.client = client
        else:
            raise TypeError("workspace must be an AsyncWorkspace or an absolute path")
        if window is not None and window < 1:
            raise ValueError("window must be at least 1")
        for name, value in (
            ("persist_every", persist_every),
            ("max_retries", max_retries),
            ("max_replans", max_replans),
            ("max_restarts", max_restarts),
        ):
            if value < 0:
                raise ValueError(f"{name} must not be negative")
        if on_overlap_failure not in ("cancel", "finish"):
            raise ValueError("on_overlap_failure must be 'cancel' or 'finish'")
        self.window = window
        self.persist_every = persist_every
        self.persist_final = persist_final
        self.overlap = overlap
        self.on_overlap_failure = on_overlap_failure
        self.max_retries = max_retries
        self.max_replans = max_replans
        self.max_restarts = max_restarts
        self.step_timeout = step_timeout
        self.verify_timeout = verify_timeout
        self.plan_timeout = plan_timeout
        self.retry_temperature = retry_temperature
        self.restore_on_cancel = restore_on_cancel
        self.exclude = exclude
        self.event_log = event_log
        self.clock = clock or time.perf_counter

    async def run(
        self, goal: Any = None, *, plan: Sequence[Any] | None = None, run_id: str | None = None
    ) -> PipelineResult:
        """Carry out the task. `plan` skips the first planner call (the planner is still asked
        for replans and restarts). Raises PipelineFailed when every recovery ran out, and
        asyncio.CancelledError when cancelled (after restoring the last verified state)."""
        return await _Run(self, goal, run_id or uuid.uuid4().hex[:12]).go(plan)


def _role(obj: Any, method: str) -> Callable[..., Any]:
    if callable(obj):
        return obj
    fn = getattr(obj, method, None)
    if callable(fn):
        return fn
    raise TypeError(f"{obj!r} is neither callable nor has a {method}() method")


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a role; sync functions work too (they block the loop while they run)."""
    out = fn(*args)
    if inspect.isawaitable(out):
        out = await out
    return out


def _as_step(item: Any) -> Step:
    return item if isinstance(item, Step) else Step(item)


def _as_verdict(value: Any) -> Verdict:
    if isinstance(value, Verdict):
        return value
    if isinstance(value, bool):
        return Verdict(value, "" if value else "the verifier returned False")
    raise TypeError(f"a verifier must return a Verdict or a bool, not {type(value).__name__}")


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _Restart(Exception):
    """Replanning failed (or was not allowed): the attempt must start over."""


@dataclass
class _Executed:
    ok: bool
    ctx: StepContext
    after_id: str | None = None
    result: Any = None
    reason: str = ""


@dataclass
class _Pending:
    index: int
    task: asyncio.Task[Verdict]


class _Run:
    """The state of one run(); nothing here outlives it."""

    def __init__(self, p: CheckpointedPipeline, goal: Any, run_id: str) -> None:
        self.p = p
        self.goal = goal
        self.run_id = run_id
        self.log = EventLog(p.event_log, run_id, p.clock)
        self.ws: AsyncWorkspace | None = None
        self.own_client: AsyncClient | None = None
        self.pinned: set[str] = set()  # snapshot ids this run pinned and has not unpinned
        self.children: set[asyncio.Task[Any]] = set()
        self.durable: list[str] = []
        self.start_id = ""
        self.last_good = ""  # the newest checkpoint whose steps are all verified
        self.plan_version = 0
        self.executions = self.retries = self.replans = self.restarts = 0
        self.attempt_replans = 0

    # --- the run ------------------------------------------------------------------------------
    async def go(self, initial: Sequence[Any] | None) -> PipelineResult:
        try:
            await self._open()
            self.start_id = await self._snapshot("start", {"pipeline.step": "0"})
            self.last_good = self.start_id
            steps = [_as_step(s) for s in initial] if initial is not None else None
            failure = ""
            while True:
                try:
                    if steps is None:
                        reason = "restart" if self.restarts else "initial"
                        steps = await self._plan(
                            PlanRequest(
                                self.goal,
                                reason,
                                self.start_id,
                                failure=failure,
                                restarts=self.restarts,
                            )
                        )
                    return await self._attempt(steps)
                except _Restart as r:
                    failure = str(r)
                    if self.restarts >= self.p.max_restarts:
                        self.log.emit("run_failed", reason=failure, snapshot=self.last_good)
                        raise PipelineFailed(
                            f"gave up after {self.restarts} full restart(s): {failure}",
                            checkpoint_id=self.last_good,
                            events=self.log.events,
                        ) from None
                    self.restarts += 1
                    for stale in sorted(self.pinned - {self.start_id}):
                        await self._unpin(stale)  # the failed attempt's checkpoints
                    await self._restore(self.start_id)
                    self.last_good = self.start_id
                    self.plan_version += 1
                    self.log.emit("restarted", restarts=self.restarts, reason=failure)
                    steps = None
        except asyncio.CancelledError:
            await self._stop_children()
            problem = None
            if self.p.restore_on_cancel and self.last_good and self.ws is not None:
                try:
                    await self._restore(self.last_good)
                except Exception as e:  # the cancellation is what the caller must see
                    problem = f"could not restore {self.last_good}: {_describe(e)}"
            self.log.emit("cancelled", snapshot=self.last_good or None, reason=problem)
            raise
        finally:
            await self._stop_children()
            await self._unpin_all()
            self.log.close()
            if self.own_client is not None:
                await self.own_client.close()

    async def _open(self) -> None:
        client = self.p.client
        if client is None:
            client = self.own_client = AsyncClient()
        self.ws = await client.open_workspace(
            self.p.path, keep_last=self.p.window, exclude=self.p.exclude
        )
        self.log.emit(
            "run_started",
            workspace=self.ws.path,
            workspace_id=self.ws.id,
            window=self.ws.settings.keep_last,
            overlap=self.p.overlap,
            persist_every=self.p.persist_every,
            max_retries=self.p.max_retries,
            max_replans=self.p.max_replans,
            max_restarts=self.p.max_restarts,
        )

    async def _attempt(self, steps: list[Step]) -> PipelineResult:
        """Run a plan from the start snapshot to the end; raises _Restart."""
        plan = list(steps)
        pre: dict[int, str] = {0: self.start_id}  # pre[i]: the checkpoint before step i
        attempts: dict[int, int] = {}
        feedback: dict[int, str] = {}
        self.attempt_replans = 0
        i = 0
        pending: _Pending | None = None
        while i < len(plan) or pending is not None:
            running = None
            if i < len(plan) and (self.p.overlap or pending is None):
                running = self._spawn(
                    self._execute(plan[i], i, attempts.get(i, 0), pre[i], feedback.get(i, ""))
                )
            if pending is not None:
                verdict = await pending.task
                if not verdict.ok:
                    await self._abandon(running, i)
                    i, plan = await self._recover(
                        plan, pre, attempts, feedback, pending.index, "verify", verdict.reason
                    )
                    pending = None
                    continue
                await self._accept(pending.index, pre)
                pending = None
            if running is not None:
                done = await running
                if not done.ok:
                    i, plan = await self._recover(
                        plan, pre, attempts, feedback, i, "execute", done.reason
                    )
                    continue
                assert done.after_id is not None
                pre[i + 1] = done.after_id
                ctx = replace(
                    done.ctx,
                    after_id=done.after_id,
                    result=done.result,
                    overlapped=self.p.overlap and i + 1 < len(plan),
                )
                pending = _Pending(i, self._spawn(self._verify(plan[i], ctx)))
                i += 1
        final_id = pre[len(plan)]
        if self.p.persist_final and final_id not in self.durable:
            await self._persist(final_id, None)
        self.log.emit(
            "run_finished",
            ok=True,
            snapshot=final_id,
            steps=len(plan),
            executions=self.executions,
            retries=self.retries,
            replans=self.replans,
            restarts=self.restarts,
            ms=round(self.log.elapsed() * 1000, 3),
        )
        return PipelineResult(
            run_id=self.run_id,
            steps=plan,
            start_snapshot_id=self.start_id,
            final_snapshot_id=final_id,
            durable_snapshot_ids=list(self.durable),
            executions=self.executions,
            retries=self.retries,
            replans=self.replans,
            restarts=self.restarts,
            duration_s=self.log.elapsed(),
            events=self.log.events,
        )

    # --- one step -----------------------------------------------------------------------------
    async def _execute(
        self, step: Step, index: int, attempt: int, before_id: str, feedback: str
    ) -> _Executed:
        assert self.ws is not None
        ctx = StepContext(
            workspace=self.ws,
            path=self.ws.path,
            goal=self.goal,
            index=index,
            attempt=attempt,
            plan_version=self.plan_version,
            before_id=before_id,
            temperature=self.p.retry_temperature if attempt else None,
            feedback=feedback,
        )
        self.executions += 1
        ids = self._ids(index, step, attempt)
        self.log.emit("step_started", **ids, snapshot=before_id, temperature=ctx.temperature)
        t0 = self.p.clock()
        try:
            async with asyncio.timeout(self.p.step_timeout) as limit:
                result = await _call(self.p.execute_fn, step, ctx)
        except TimeoutError as e:
            reason = (
                f"step timed out after {self.p.step_timeout:g} s"
                if limit.expired()
                else _describe(e)
            )
            self.log.emit("executed", **ids, ok=False, reason=reason, ms=self._ms(t0))
            return _Executed(False, ctx, reason=reason)
        except Exception as e:
            reason = f"executor raised {_describe(e)}"
            self.log.emit("executed", **ids, ok=False, reason=reason, ms=self._ms(t0))
            return _Executed(False, ctx, reason=reason)
        self.log.emit("executed", **ids, ok=True, ms=self._ms(t0))
        after = await self._snapshot(
            f"after step {index + 1}: {step.name}",
            {
                "pipeline.step": str(index + 1),
                "pipeline.attempt": str(attempt),
                "pipeline.plan": str(self.plan_version),
            },
            step=index,
        )
        return _Executed(True, ctx, after, result)

    async def _verify(self, step: Step, ctx: StepContext) -> Verdict:
        ids = self._ids(ctx.index, step, ctx.attempt)
        self.log.emit("verify_started", **ids, snapshot=ctx.after_id, overlapped=ctx.overlapped)
        t0 = self.p.clock()
        try:
            async with asyncio.timeout(self.p.verify_timeout) as limit:
                verdict = _as_verdict(await _call(self.p.verify_fn, step, ctx))
        except TimeoutError as e:
            verdict = Verdict(
                False,
                f"verification timed out after {self.p.verify_timeout:g} s"
                if limit.expired()
                else f"verifier raised {_describe(e)}",
            )
        except Exception as e:
            verdict = Verdict(False, f"verifier raised {_describe(e)}")
        self.log.emit(
            "verified", **ids, ok=verdict.ok, reason=verdict.reason or None, ms=self._ms(t0)
        )
        return verdict

    async def _accept(self, index: int, pre: dict[int, str]) -> None:
        """Step `index` is verified: its result becomes the last good checkpoint."""
        after = pre[index + 1]
        self.last_good = after
        if pre[index] != self.start_id:  # the start stays pinned for a full restart
            await self._unpin(pre[index])
        if self.p.persist_every and (index + 1) % self.p.persist_every == 0:
            await self._persist(after, index)

    async def _abandon(self, running: asyncio.Task[_Executed] | None, index: int) -> None:
        """The step executing while its predecessor failed verification: stop or finish it
        (it is rolled back either way) and wait until it no longer touches the workspace."""
        if running is None:
            return
        how = "done"
        if not running.done():
            how = "cancelled" if self.p.on_overlap_failure == "cancel" else "finished"
            if how == "cancelled":
                running.cancel()
        await asyncio.wait({running})
        if not running.cancelled():
            if running.exception() is not None:
                how += f" ({_describe(running.exception())})"
            elif running.result().after_id:
                await self._unpin(running.result().after_id)
        self.log.emit("abandoned", step=index, how=how)

    async def _recover(
        self,
        plan: list[Step],
        pre: dict[int, str],
        attempts: dict[int, int],
        feedback: dict[int, str],
        index: int,
        phase: str,
        reason: str,
    ) -> tuple[int, list[Step]]:
        """Step `index` failed: roll back to its checkpoint, then retry it or replan from
        there. Returns the position to continue from and the (possibly new) plan."""
        step = plan[index]
        attempt = attempts.get(index, 0)
        self.log.emit("failed", **self._ids(index, step, attempt), phase=phase, reason=reason)
        target = pre[index]
        await self._restore(target)  # rolls back this step and any later one
        for j in [j for j in pre if j > index]:
            stale = pre.pop(j)
            if stale != self.start_id:
                await self._unpin(stale)
        self.last_good = target
        attempts[index] = attempt + 1
        feedback[index] = reason
        if attempts[index] <= self.p.max_retries:
            self.retries += 1
            self.log.emit(
                "retried",
                **self._ids(index, step, attempts[index]),
                temperature=self.p.retry_temperature,
            )
            return index, plan
        if self.attempt_replans >= self.p.max_replans:
            raise _Restart(
                f"step {index + 1} ({step.name}) failed {attempts[index]} time(s) "
                f"after {self.attempt_replans} replan(s): {reason}"
            )
        self.attempt_replans += 1
        self.replans += 1
        new = await self._plan(
            PlanRequest(
                self.goal,
                "replan",
                target,
                completed=tuple(plan[:index]),
                failed_step=step,
                failure=reason,
                replans=self.attempt_replans - 1,
                restarts=self.restarts,
            )
        )
        self.plan_version += 1
        for table in (attempts, feedback):
            for j in [j for j in table if j >= index]:
                del table[j]
        self.log.emit("replanned", step=index, snapshot=target, steps=len(new))
        return index, plan[:index] + new

    async def _plan(self, request: PlanRequest) -> list[Step]:
        t0 = self.p.clock()
        try:
            async with asyncio.timeout(self.p.plan_timeout) as limit:
                items = await _call(self.p.plan_fn, request)
            steps = [_as_step(s) for s in items]
        except TimeoutError as e:
            why = (
                f"planning timed out after {self.p.plan_timeout:g} s"
                if limit.expired()
                else f"planner raised {_describe(e)}"
            )
            self.log.emit("failed", phase="plan", reason=why, ms=self._ms(t0))
            raise _Restart(why) from None
        except Exception as e:
            why = f"planner raised {_describe(e)}"
            self.log.emit("failed", phase="plan", reason=why, ms=self._ms(t0))
            raise _Restart(why) from None
        self.log.emit(
            "planned",
            reason=request.reason,
            plan=self.plan_version,
            snapshot=request.checkpoint_id,
            steps=[s.name for s in steps],
            ms=self._ms(t0),
        )
        return steps

    # --- daemon calls -------------------------------------------------------------------------
    async def _snapshot(self, label: str, metadata: dict[str, str], step: int | None = None) -> str:
        """A pinned checkpoint. If the run is cancelled while the daemon is taking it, the call
        is allowed to finish and the snapshot is unpinned, so no pin is left behind unseen."""
        assert self.ws is not None
        t0 = self.p.clock()
        meta = {"pipeline.run": self.run_id, **metadata}
        call = asyncio.ensure_future(
            self.ws.snapshot(f"pipeline {self.run_id} {label}"[:200], metadata=meta, pinned=True)
        )
        try:
            snap = await asyncio.shield(call)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                snap = await call
                await self.ws.unpin(snap.id)
            raise
        self.pinned.add(snap.id)
        self.log.emit("checkpoint", step=step, snapshot=snap.id, ms=self._ms(t0))
        return snap.id

    async def _restore(self, snapshot_id: str) -> None:
        """Restore, never interrupted halfway: a cancelled restore still finishes before the
        cancellation goes on, so nothing else writes into the workspace while it runs."""
        assert self.ws is not None
        t0 = self.p.clock()
        call = asyncio.ensure_future(self.ws.restore(snapshot_id))
        try:
            res = await asyncio.shield(call)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await call
            raise
        self.log.emit(
            "restored",
            snapshot=snapshot_id,
            safety=res.safety_snapshot_id,
            files_written=res.stats.files_written,
            deleted=res.stats.deleted,
            ms=self._ms(t0),
        )

    async def _persist(self, snapshot_id: str, index: int | None) -> None:
        assert self.ws is not None
        t0 = self.p.clock()
        await self.ws.persist(snapshot_id)
        self.durable.append(snapshot_id)
        self.log.emit("persisted", step=index, snapshot=snapshot_id, ms=self._ms(t0))

    async def _unpin(self, snapshot_id: str) -> None:
        if snapshot_id not in self.pinned:
            return
        assert self.ws is not None
        with contextlib.suppress(NotFoundError):
            await self.ws.unpin(snapshot_id)
        self.pinned.discard(snapshot_id)

    async def _unpin_all(self) -> None:
        if self.ws is None:
            return
        for snapshot_id in sorted(self.pinned):
            with contextlib.suppress(Exception):  # best effort: the run is over either way
                await self._unpin(snapshot_id)

    # --- plumbing -----------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.children.add(task)
        task.add_done_callback(self.children.discard)
        return task

    async def _stop_children(self) -> None:
        tasks = [t for t in self.children if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for t in tasks:  # retrieve outcomes so asyncio does not warn about them
            if not t.cancelled():
                t.exception()

    def _ids(self, index: int, step: Step, attempt: int) -> dict[str, Any]:
        return {"step": index, "name": step.name, "attempt": attempt, "plan": self.plan_version}

    def _ms(self, t0: float) -> float:
        return round((self.p.clock() - t0) * 1000, 3)
