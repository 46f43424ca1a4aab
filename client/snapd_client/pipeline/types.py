"""What the pipeline hands to the planner, executor and verifier, and what it returns.

The three roles are typing.Protocol interfaces with a single `__call__`, so a plain
`async def` function satisfies them as well as an object with an `async def __call__`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..aio import AsyncWorkspace


@dataclass(frozen=True)
class Step:
    """One step of a plan. `action` is opaque to the loop (a shell command, a prompt, a tool
    call); `name` is what the event log shows."""

    action: Any
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            text = self.action if isinstance(self.action, str) else repr(self.action)
            object.__setattr__(self, "name", " ".join(text.split())[:80])


@dataclass(frozen=True)
class Verdict:
    """A verifier's answer. A verifier may also return a plain bool."""

    ok: bool
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


PlanReason = Literal["initial", "replan", "restart"]


@dataclass(frozen=True)
class PlanRequest:
    """What the planner is asked for.

    reason "initial": the first plan of a run, from the workspace as it was at the start.
    reason "replan": step `failed_step` (at position len(completed)) failed every retry; plan
        the rest of the task from `checkpoint_id`, the state after the verified steps
        `completed`, which the workspace holds right now.
    reason "restart": replanning failed too; the workspace is back at the start of the run.
    """

    goal: Any
    reason: PlanReason
    checkpoint_id: str
    completed: tuple[Step, ...] = ()
    failed_step: Step | None = None
    failure: str = ""
    replans: int = 0  # replans so far in this attempt
    restarts: int = 0  # full restarts so far in this run


@dataclass(frozen=True)
class StepContext:
    """Everything about one execution (or its verification) of a step.

    `before_id` is the snapshot taken just before the step ran. A verifier also gets
    `after_id`, the snapshot taken just after, and the executor's return value in `result`.
    When `overlapped` is true the next step may be changing the live workspace while the
    verifier runs: inspect the step's effect through `after_id` (read_file, list_tree,
    diff(before_id, after_id)), not through the live directory.
    """

    workspace: AsyncWorkspace
    path: str
    goal: Any
    index: int  # position in the plan, from 0
    attempt: int  # 0 for the first execution of this step, 1.. for retries
    plan_version: int  # 0 for the first plan, +1 per replan or restart
    before_id: str
    temperature: float | None = None  # None: the executor's default; set on retries
    feedback: str = ""  # on a retry: why the previous attempt failed
    after_id: str | None = None
    result: Any = None
    overlapped: bool = False

    @property
    def retry(self) -> bool:
        """True when this execution is a retry of a step that failed (run it deterministically)."""
        return self.attempt > 0


@runtime_checkable
class Planner(Protocol):
    def __call__(self, request: PlanRequest) -> Awaitable[Sequence[Any]]:
        """The steps still to do (Step objects, or actions that become Step(action))."""
        ...


@runtime_checkable
class Executor(Protocol):
    def __call__(self, step: Step, ctx: StepContext) -> Awaitable[Any]:
        """Carry out the step in ctx.path. Raising, or running past the step timeout, fails
        the step. When cancelled, stop changing the workspace before returning."""
        ...


@runtime_checkable
class Verifier(Protocol):
    def __call__(self, step: Step, ctx: StepContext) -> Awaitable[Verdict | bool]:
        """Judge the state after the step (snapshot ctx.after_id)."""
        ...


@dataclass
class PipelineResult:
    run_id: str
    steps: list[Step]  # the verified steps the final workspace holds, in order
    start_snapshot_id: str
    final_snapshot_id: str
    durable_snapshot_ids: list[str]  # the checkpoints persisted during the run
    executions: int  # executor calls, retries and abandoned ones included
    retries: int
    replans: int
    restarts: int
    duration_s: float
    events: list[dict[str, Any]]


class PipelineError(Exception):
    """The pipeline could not finish the task."""


class PipelineFailed(PipelineError):
    """Retries, replans and full restarts all ran out. The workspace is left at
    `checkpoint_id`, the last verified state of the final attempt."""

    def __init__(self, message: str, *, checkpoint_id: str, events: list[dict[str, Any]]):
        super().__init__(message)
        self.checkpoint_id = checkpoint_id
        self.events = events
