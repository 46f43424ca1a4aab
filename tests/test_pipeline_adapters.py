"""The pipeline's adapters with real processes against a real daemon: shell commands as steps,
a check command as the verifier (in a fork of the step's snapshot when verification overlaps
the next step), and a synchronous framework step function."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import treeutil
from snapd_client import AsyncClient
from snapd_client.pipeline import (
    CheckpointedPipeline,
    CommandVerifier,
    FunctionExecutor,
    PlanRequest,
    ShellExecutor,
    Step,
    StepContext,
)


def run(daemon, ws: str, steps: list, executor, verifier, **kw):
    async def planner(request: PlanRequest) -> list:
        return steps[len(request.completed) :]

    async def go():
        async with AsyncClient("unix://" + daemon.socket) as c:
            p = CheckpointedPipeline(planner, executor, verifier, ws, client=c, **kw)
            return await p.run()

    return asyncio.run(go())


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (nobody may reap orphans here)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def read_pid(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def wait_dead(pid: int, limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# Each step writes state/stepN.txt; the first attempt of step 2 writes the wrong thing (and
# exits 0, so only the verifier can tell), the first attempt of step 3 fails outright after
# changing files. SNAPD_RETRY comes from ShellExecutor.
SHELL_STEPS = [
    "mkdir -p src state && printf 'print(1)\\n' > src/app.py && echo ok > state/step1.txt",
    'if [ "$SNAPD_RETRY" = 0 ]; then echo wrong > state/step2.txt; echo junk > junk.txt; '
    "else echo ok > state/step2.txt; fi; printf 'print(2)\\n' > src/app.py",
    'if [ "$SNAPD_RETRY" = 0 ]; then rm -rf src; echo half > half.txt; exit 3; fi; '
    "chmod 700 run.sh && ln -s src/app.py link && echo ok > state/step3.txt",
    "rm README.md && mkdir -p docs && echo guide > docs/guide.md && echo ok > state/step4.txt",
]
CHECK = 'test "$(cat state/step$SNAPD_STEP.txt)" = ok && pwd >> "$WHERE_LOG"'


def base(root: str) -> None:
    treeutil.write(root, "README.md", "# readme\n")
    treeutil.write(root, "run.sh", "#!/bin/sh\n", mode=0o755)


def test_shell_steps_verified_in_forks_of_their_snapshots(daemon, tmp_path) -> None:
    ws = str(tmp_path / "ws")
    ref = str(tmp_path / "ref")
    for d in (ws, ref):
        os.mkdir(d)
        base(d)
    for cmd in SHELL_STEPS:
        subprocess.run(["/bin/sh", "-c", cmd], cwd=ref, check=True, env={"SNAPD_RETRY": "1"})
    where_log = str(tmp_path / "where.log")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    verifier = CommandVerifier(CHECK, scratch_dir=str(scratch), env={"WHERE_LOG": where_log})
    result = run(daemon, ws, SHELL_STEPS, ShellExecutor(), verifier)

    treeutil.assert_same(treeutil.capture(ws), treeutil.capture(ref), "shell steps", mtimes=False)
    failed = [e for e in result.events if e["event"] == "failed"]
    assert [(e["step"], e["phase"]) for e in failed] == [(1, "verify"), (2, "execute")]
    assert "exited with 3" in failed[1]["reason"]
    # Overlapped verifications ran in forks (fresh copies of the snapshot) under scratch/,
    # the last step's (nothing runs after it) in the workspace itself.
    with open(where_log) as f:
        places = f.read().split()
    assert places[-1] == os.path.realpath(ws)
    assert len(places) == 4 and all(p.startswith(str(scratch)) for p in places[:-1])
    assert list(scratch.iterdir()) == []  # forks removed
    with daemon.client() as c:
        assert [w.path for w in c.workspaces() if w.path.startswith(str(scratch))] == []


def test_argv_steps_and_a_live_verifier(daemon, tmp_path) -> None:
    ws = str(tmp_path / "ws")
    os.mkdir(ws)
    steps = [Step(["/bin/sh", "-c", "echo one > one.txt"]), Step(["mkdir", "two"])]
    verifier = CommandVerifier(["/bin/sh", "-c", "test -e one.txt"], where="live")
    result = run(daemon, ws, steps, ShellExecutor(), verifier, overlap=False)
    assert result.retries == 0
    assert treeutil.read(ws, "one.txt") == b"one\n" and os.path.isdir(os.path.join(ws, "two"))


def test_step_timeout_kills_the_command_and_its_children(daemon, tmp_path) -> None:
    ws = str(tmp_path / "ws")
    os.mkdir(ws)
    pidfile = str(tmp_path / "bg.pid")
    step = (
        f'if [ "$SNAPD_RETRY" = 0 ]; then sleep 60 & echo $! > {pidfile}; echo half > half.txt;'
        " wait; fi; echo ok > done.txt"
    )
    result = run(
        daemon,
        ws,
        [step],
        ShellExecutor(kill_grace=0.5),
        CommandVerifier("test -e done.txt"),
        step_timeout=3.0,  # generous: the retry must finish within it on a loaded machine
    )
    assert result.retries == 1
    assert sorted(os.listdir(ws)) == ["done.txt"]  # the half-done attempt rolled back
    assert wait_dead(read_pid(pidfile))


def test_leftovers_of_a_finished_command_are_stopped(daemon, tmp_path) -> None:
    ws = str(tmp_path / "ws")
    os.mkdir(ws)
    pidfile = str(tmp_path / "bg.pid")
    step = f"(sleep 2; echo late > late.txt) & echo $! > {pidfile}; echo ok > ok.txt"
    run(daemon, ws, [step], ShellExecutor(), CommandVerifier("test -e ok.txt"))
    assert wait_dead(read_pid(pidfile))
    assert sorted(os.listdir(ws)) == ["ok.txt"]


def test_sync_step_function_is_waited_for_before_the_rollback(daemon, tmp_path) -> None:
    """A thread cannot be cancelled: after a timeout the loop must wait for the framework's
    step function to return, or its late write would survive the restore."""
    ws = str(tmp_path / "ws")
    os.mkdir(ws)
    calls: list[tuple[str, int, float | None]] = []

    def framework_step(instruction: str, cwd: str, temperature: float) -> str:
        """Stands in for an agent framework's synchronous step function."""
        if instruction == "write b" and temperature > 0:
            time.sleep(2.0)  # slower than the step timeout
            treeutil.write(cwd, "late-junk.txt", "written after the timeout\n")
        treeutil.write(cwd, instruction.split()[-1] + ".txt", instruction + "\n")
        return "done"

    def step_fn(step: Step, ctx: StepContext) -> str:
        calls.append((step.action, ctx.attempt, ctx.temperature))
        temperature = 0.7 if ctx.temperature is None else ctx.temperature
        return framework_step(step.action, ctx.path, temperature)

    async def verifier(step: Step, ctx: StepContext) -> bool:
        return ctx.result == "done"

    result = run(
        daemon,
        ws,
        ["write a", "write b", "write c"],
        FunctionExecutor(step_fn),
        verifier,
        step_timeout=1.0,
    )
    assert sorted(os.listdir(ws)) == ["a.txt", "b.txt", "c.txt"]
    assert calls == [
        ("write a", 0, None),
        ("write b", 0, None),
        ("write b", 1, 0.0),
        ("write c", 0, None),
    ]
    assert result.retries == 1


def test_async_step_function(daemon, tmp_path) -> None:
    ws = str(tmp_path / "ws")
    os.mkdir(ws)

    async def step_fn(step: Step, ctx: StepContext) -> str:
        await asyncio.sleep(0)
        treeutil.write(ctx.path, "out.txt", step.action)
        return "done"

    async def verifier(step: Step, ctx: StepContext) -> bool:
        return await ctx.workspace.read_file(ctx.after_id, "out.txt") == b"x"

    result = run(daemon, ws, ["x"], FunctionExecutor(step_fn), verifier)
    assert result.retries == 0 and treeutil.read(ws, "out.txt") == b"x"
