"""Ready-made roles: run shell commands as steps, check steps with a command, and wrap an
existing agent framework's step function.

    executor = ShellExecutor()        # Step("sed -i s/foo/bar/ app.py") runs in the workspace
    verifier = CommandVerifier("python -m pytest -q")   # exit status 0 passes
    executor = FunctionExecutor(lambda step, ctx: agent.run_step(step.action, cwd=ctx.path))
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from .types import Step, StepContext, Verdict

Command = str | list[str]


@dataclass(frozen=True)
class CommandResult:
    command: Command
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(Exception):
    """A step's command exited with a non-zero status (the pipeline counts it as a failure)."""

    def __init__(self, result: CommandResult) -> None:
        tail = (result.stderr or result.stdout).strip()[-500:]
        super().__init__(f"`{_show(result.command)}` exited with {result.returncode}: {tail}")
        self.result = result


def _show(command: Command) -> str:
    return command if isinstance(command, str) else " ".join(command)


async def run_command(
    command: Command,
    *,
    cwd: str,
    env: Mapping[str, str] | None = None,
    kill_grace: float = 2.0,
    max_output: int = 1 << 20,
) -> CommandResult:
    """Run a command (a string goes through /bin/sh) in its own process group.

    The step is over when the command exits: whatever it left running in its process group is
    killed then, so nothing keeps writing into the workspace behind the pipeline's back. If the
    caller is cancelled, the group gets SIGTERM, then SIGKILL after kill_grace seconds, and the
    cancellation goes on only once the command is gone. Output goes to unnamed temporary files
    rather than pipes: asyncio reports a process's exit only once its pipes close, and a
    leftover background child holding them would hide the exit. The first max_output bytes
    of each are returned.
    """
    full_env = dict(os.environ if env is None else env)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        kw: dict[str, Any] = {
            "cwd": cwd,
            "env": full_env,
            "stdin": asyncio.subprocess.DEVNULL,
            "stdout": out,
            "stderr": err,
            "start_new_session": True,  # a process group of its own, to stop it as a whole
        }
        if isinstance(command, str):
            proc = await asyncio.create_subprocess_shell(command, **kw)
        else:
            proc = await asyncio.create_subprocess_exec(*command, **kw)
        try:
            returncode = await proc.wait()
        except asyncio.CancelledError:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), kill_grace)
            except (TimeoutError, asyncio.CancelledError):
                pass
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(BaseException):
                await proc.wait()
            raise
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers of the finished step
        return CommandResult(command, returncode, _head(out, max_output), _head(err, max_output))


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _head(f: IO[bytes], limit: int) -> str:
    f.seek(0)
    return f.read(limit).decode(errors="replace")


class ShellExecutor:
    """Executor that runs each step's action (a shell string, or an argv list) in the workspace
    directory. A non-zero exit status fails the step.

    The command sees SNAPD_WORKSPACE, SNAPD_STEP (from 1), SNAPD_ATTEMPT (from 0),
    SNAPD_RETRY (1 on retries), SNAPD_TEMPERATURE (empty unless set, "0" on retries) and
    SNAPD_FEEDBACK (why the previous attempt failed), so a command that calls a model can run
    a retry deterministically.
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        kill_grace: float = 2.0,
        max_output: int = 1 << 20,
    ) -> None:
        self.env = dict(env or {})
        self.kill_grace = kill_grace
        self.max_output = max_output

    async def __call__(self, step: Step, ctx: StepContext) -> CommandResult:
        if not isinstance(step.action, str | list):
            raise TypeError("ShellExecutor steps need a command string or argv list as action")
        env = {**os.environ, **self.env}
        env.update(
            SNAPD_WORKSPACE=ctx.path,
            SNAPD_STEP=str(ctx.index + 1),
            SNAPD_ATTEMPT=str(ctx.attempt),
            SNAPD_RETRY="1" if ctx.retry else "0",
            SNAPD_TEMPERATURE="" if ctx.temperature is None else f"{ctx.temperature:g}",
            SNAPD_FEEDBACK=ctx.feedback[:4000],
        )
        result = await run_command(
            step.action,
            cwd=ctx.path,
            env=env,
            kill_grace=self.kill_grace,
            max_output=self.max_output,
        )
        if result.returncode != 0:
            raise CommandFailed(result)
        return result


class CommandVerifier:
    """Verifier that runs a check command (a test suite, a linter): exit status 0 passes.

    where="snapshot" runs it in a fresh copy of the step's result (the snapshot after_id,
    forked by the daemon into a scratch directory that is deleted afterwards), which is what
    an overlapped verification needs: the live workspace already holds part of the next step.
    where="live" runs it in the workspace itself (right only with overlap=False).
    where="auto" (the default) forks only when the verification is overlapped.
    scratch_dir: where forks go (default: the workspace's parent directory; it must be outside
    every workspace and writable by the daemon).
    """

    def __init__(
        self,
        command: Command,
        *,
        where: str = "auto",
        scratch_dir: str | None = None,
        env: Mapping[str, str] | None = None,
        kill_grace: float = 2.0,
    ) -> None:
        if where not in ("auto", "snapshot", "live"):
            raise ValueError("where must be 'auto', 'snapshot' or 'live'")
        self.command = command
        self.where = where
        self.scratch_dir = scratch_dir
        self.env = dict(env or {})
        self.kill_grace = kill_grace

    async def __call__(self, step: Step, ctx: StepContext) -> Verdict:
        fork = self.where == "snapshot" or (self.where == "auto" and ctx.overlapped)
        env = {**os.environ, **self.env, "SNAPD_STEP": str(ctx.index + 1)}
        if not fork:
            result = await run_command(
                self.command, cwd=ctx.path, env=env, kill_grace=self.kill_grace
            )
            return self._verdict(result, where=ctx.path)
        if ctx.after_id is None:
            raise ValueError("no snapshot of the step's result to verify")
        base = self.scratch_dir or os.path.dirname(ctx.path.rstrip("/"))
        target = os.path.join(base, f".snapd-verify-{uuid.uuid4().hex[:12]}")
        client = ctx.workspace.client
        copy, _ = await client.fork(ctx.after_id, target, keep_last=1)
        try:
            result = await run_command(
                self.command, cwd=target, env=env, kill_grace=self.kill_grace
            )
        finally:
            with contextlib.suppress(Exception):
                await client.close_workspace(copy.id, forget=True)
            await asyncio.to_thread(shutil.rmtree, target, True)
        return self._verdict(result, where=f"snapshot {ctx.after_id}")

    def _verdict(self, result: CommandResult, *, where: str) -> Verdict:
        ok = result.returncode == 0
        tail = (result.stderr or result.stdout).strip()[-500:]
        reason = "" if ok else f"`{_show(self.command)}` exited with {result.returncode}: {tail}"
        return Verdict(ok, reason, {"returncode": result.returncode, "where": where})


class FunctionExecutor:
    """Executor around an existing agent framework's step function `fn(step, ctx)`.

    An async fn is awaited. A sync fn runs in a worker thread; a thread cannot be interrupted,
    so when the step is cancelled (a timeout, the previous step failing verification, the run
    being cancelled) this waits for fn to return before the cancellation goes on - the loop
    then restores the checkpoint knowing nothing is still writing into the workspace.
    """

    def __init__(self, fn: Callable[[Step, StepContext], Any]) -> None:
        self.fn = fn

    async def __call__(self, step: Step, ctx: StepContext) -> Any:
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(step, ctx)
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(None, functools.partial(self.fn, step, ctx))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await call
            raise
