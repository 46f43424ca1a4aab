"""Checkpointed planner-executor-verifier pipeline on top of the snapd client.

    from snapd_client.pipeline import CheckpointedPipeline, ShellExecutor, CommandVerifier

    async def planner(request):            # -> the steps still to do
        return ["./scripts/codegen", "sed -i 's/TODO/done/' src/app.py"]

    pipeline = CheckpointedPipeline(planner, ShellExecutor(), CommandVerifier("make test"),
                                    "/abs/path/to/workspace", event_log="run.jsonl")
    result = await pipeline.run(goal="generate and fix")

See docs/orchestrator.md for the loop, its guarantees and the event log.
"""

from .adapters import (
    CommandFailed,
    CommandResult,
    CommandVerifier,
    FunctionExecutor,
    ShellExecutor,
    run_command,
)
from .core import CheckpointedPipeline
from .events import EventLog, format_events, read_events
from .types import (
    Executor,
    PipelineError,
    PipelineFailed,
    PipelineResult,
    Planner,
    PlanRequest,
    Step,
    StepContext,
    Verdict,
    Verifier,
)

__all__ = [
    "CheckpointedPipeline",
    "CommandFailed",
    "CommandResult",
    "CommandVerifier",
    "EventLog",
    "Executor",
    "FunctionExecutor",
    "PipelineError",
    "PipelineFailed",
    "PipelineResult",
    "PlanRequest",
    "Planner",
    "ShellExecutor",
    "Step",
    "StepContext",
    "Verdict",
    "Verifier",
    "format_events",
    "read_events",
    "run_command",
]
