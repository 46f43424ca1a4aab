"""The experiment of issue 6: a planner-executor-verifier pipeline with and without checkpoints.

Simulated agents drive a real daemon and really edit a copy of a real code tree (the Django 5.0
source by default). Three configurations run the same 1,000 tasks (fixed seed, the same random
draws for the same task in every configuration):

  naive          no checkpoints: a failed verification restarts the whole task
  checkpoints    CheckpointedPipeline, verification after each step (overlap=False)
  overlap        CheckpointedPipeline, step N verified while step N+1 executes (the default)

Time. Agent time (planning, executing, verifying, the cost of a full restart) is simulated on a
virtual clock: a simulated second costs no wall time. Daemon calls (snapshot, restore, persist,
pin, read) are real, and each is charged to the virtual clock at its measured wall time, 1:1.
So completion times are what the runs would take with agents as slow as modelled and this
machine's daemon; the whole experiment takes minutes of wall time.

The model (every number is a flag; the defaults are printed with the table):
  - a plan has 3-7 steps (mean 5); planning takes 2-4 s; a step executes in a lognormal time
    (median 5 s, sigma 0.4); its verification takes 40% of that (sigma 0.15 around it);
  - an execution fails with probability p, calibrated so that the naive loop restarts in 34%
    of runs (1 - E[(1-p)^steps] = 0.34). A failure is transient (a retry may pass), a step flaw
    (every retry of that step fails; replanning fixes it: 10% of failures), or a plan flaw
    (only a full restart fixes it: 12/340 of failures - the share of the article's naive
    restarts that its checkpointed loop still had to do);
  - a full restart costs 30-90 s of agent time before replanning;
  - compute cost is priced per simulated model-second (planner, executor and verifier time,
    partial executions and restart time included), at the price that makes the naive
    configuration cost the article's $47.20, unless --price is given.

Every execution really edits the tree: it inserts tagged lines into 1-6 Python files, adds up to
two new files and may delete one; a failing execution writes BROKEN lines and a junk file
instead. The verifier reads the step's result back (from the step's snapshot through the daemon
in the checkpointed configurations) and must agree with the simulation; after every run the
files it touched must equal pristine + the accepted steps, and every --full-check-every runs
the whole tree is compared.

Run:  .venv/bin/python -m benchmarks.bench_pipeline [--runs 1000] [--seed 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import heapq
import inspect
import itertools
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from snapd_client import AsyncClient, AsyncWorkspace
from snapd_client.pipeline import (
    CheckpointedPipeline,
    PlanRequest,
    Step,
    StepContext,
    Verdict,
)

from benchmarks.workloads import DjangoReleases, SyntheticEdits, tree_manifest
from snapd.server.testing import DaemonProcess, short_tempdir

ARTICLE = {
    "naive": {"mean": 45.0, "p95": 180.0, "restarts": 340, "cost": 47.20},
    "checkpointed": {"mean": 38.0, "p95": 52.0, "restarts": 12, "cost": 31.80},
}
ARTICLE_CHECKPOINT_MS = 200.0
CONFIGS = {
    "naive": "naive full restart",
    "checkpoints": "checkpoints, verify after each step",
    "overlap": "checkpoints + overlapped verification",
}
PLAN_LENGTHS = {3: 0.10, 4: 0.20, 5: 0.40, 6: 0.20, 7: 0.10}  # mean 5


class BenchError(Exception):
    """The experiment caught something wrong (a verdict disagreeing with the simulation, a
    workspace that does not hold what it should)."""


# --- the model --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Model:
    seed: int = 1
    naive_restart_share: float = 0.34  # the calibration target for p
    exec_median_s: float = 5.0
    exec_sigma: float = 0.4
    verify_ratio: float = 0.4
    verify_sigma: float = 0.15
    plan_s: tuple[float, float] = (2.0, 4.0)
    restart_s: tuple[float, float] = (30.0, 90.0)
    step_flaw_share: float = 0.10
    plan_flaw_share: float = 12 / 340
    retry_factor: float = 1.0  # failure probability of a retry relative to p (1: no help)
    p: float = 0.0  # per-execution failure probability; 0 = calibrate

    def calibrated(self) -> Model:
        return self if self.p > 0 else replace(self, p=calibrate_p(self.naive_restart_share))


def calibrate_p(share: float) -> float:
    """p such that a plan fails somewhere on its first try with probability `share`."""

    def miss(p: float) -> float:
        return 1 - sum(w * (1 - p) ** n for n, w in PLAN_LENGTHS.items()) - share

    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if miss(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def rng_for(*key: object) -> random.Random:
    """A generator per purpose: the same task draws the same numbers in every configuration."""
    return random.Random(":".join(map(str, key)))


# --- a virtual clock for agent time -----------------------------------------------------------
class VirtualClock:
    """Discrete-event time inside a running asyncio loop.

    sleep(d) wakes up when the clock reaches now + d; the clock jumps to the next wake-up time
    only when nothing else can run (no ready callbacks, no real operation in flight). charge()
    runs a real operation with the clock stopped, then lets its measured wall time pass on
    the clock. Quiescence is read from the loop's ready queue (CPython's BaseEventLoop._ready);
    without it the driver falls back to yielding a fixed number of times.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._busy = 0
        self._changed = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None

    async def __aenter__(self) -> VirtualClock:
        self._driver = asyncio.ensure_future(self._drive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._driver is not None
        self._driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._driver

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self.now + max(0.0, seconds), next(self._order), fut))
        self._changed.set()
        await fut

    async def charge(self, awaitable: Awaitable[Any]) -> tuple[Any, float]:
        """(result, wall seconds) of a real operation, which also pass on this clock."""
        self._busy += 1
        t0 = time.perf_counter()
        try:
            result = await awaitable
        finally:
            self._busy -= 1
            self._changed.set()
        took = time.perf_counter() - t0
        await self.sleep(took)
        return result, took

    async def _settle(self) -> None:
        ready = getattr(asyncio.get_running_loop(), "_ready", None)
        for _ in range(100 if ready is None else 100_000):
            await asyncio.sleep(0)
            if ready is not None and not ready:
                return

    async def _drive(self) -> None:
        while True:
            await self._settle()
            if self._busy:
                self._changed.clear()
                await self._changed.wait()
                continue
            while self._heap and self._heap[0][2].done():  # cancelled sleepers
                heapq.heappop(self._heap)
            if not self._heap:
                self._changed.clear()
                await self._changed.wait()
                continue
            self.now = max(self.now, self._heap[0][0])
            while self._heap and self._heap[0][0] <= self.now:
                fut = heapq.heappop(self._heap)[2]
                if not fut.done():
                    fut.set_result(None)


class ClockedClient:
    """An AsyncClient whose calls are charged to a virtual clock and timed, per method."""

    def __init__(self, client: AsyncClient, clock: VirtualClock, timings: dict[str, list[float]]):
        self._client = client
        self._clock = clock
        self._timings = timings

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kw: Any) -> Any:
            result, took = await self._clock.charge(attr(*args, **kw))
            self._timings[name].append(took * 1000)
            return result

        return call

    async def open_workspace(self, *args: Any, **kw: Any) -> AsyncWorkspace:
        ws = await self.__getattr__("open_workspace")(*args, **kw)
        return AsyncWorkspace(self, ws.info, created=ws.created)  # its calls come back here


# --- the simulated task -----------------------------------------------------------------------
@dataclass(frozen=True)
class SimStep:
    tag: str
    position: int
    plan_length: int
    fate: str  # ok | transient | step_flaw | plan_flaw


@dataclass
class Executed:
    failed: bool
    verify_s: float
    probe: str  # the file the verifier reads


class Tree:
    """The code tree the steps edit: its Python files, split into ones steps modify and ones
    they may delete, and the pristine bytes to compare with."""

    def __init__(self, pristine: Path) -> None:
        self.pristine = pristine
        files = sorted(str(p.relative_to(pristine)) for p in pristine.rglob("*.py") if p.is_file())
        if len(files) < 50:
            raise SystemExit(f"{pristine} has too few Python files for the experiment")
        self.deletable = files[::10]
        self.editable = [f for i, f in enumerate(files) if i % 10]
        self.dirs = sorted({os.path.dirname(f) for f in self.editable})

    def read_pristine(self, rel: str) -> bytes | None:
        try:
            return (self.pristine / rel).read_bytes()
        except FileNotFoundError:
            return None


class Files:
    """Edits go through read/write/delete, so the same edit code changes the real workspace
    and replays accepted steps onto the expected state."""

    def read(self, rel: str) -> bytes | None:
        raise NotImplementedError

    def write(self, rel: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, rel: str) -> None:
        raise NotImplementedError


class DiskFiles(Files):
    def __init__(self, root: str, touched: set[str]) -> None:
        self.root = root
        self.touched = touched

    def path(self, rel: str) -> str:
        if os.path.isabs(rel) or ".." in rel.split("/"):
            raise BenchError(f"{rel!r} is not a path inside the workspace")
        return os.path.join(self.root, rel)

    def read(self, rel: str) -> bytes | None:
        try:
            with open(self.path(rel), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        self.touched.add(rel)
        with open(self.path(rel), "wb") as f:
            f.write(data)

    def delete(self, rel: str) -> None:
        self.touched.add(rel)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(rel))


class OverlayFiles(Files):
    """Pristine tree + changes in memory."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.changes: dict[str, bytes | None] = {}

    def read(self, rel: str) -> bytes | None:
        if rel in self.changes:
            return self.changes[rel]
        return self.tree.read_pristine(rel)

    def write(self, rel: str, data: bytes) -> None:
        self.changes[rel] = data

    def delete(self, rel: str) -> None:
        self.changes[rel] = None


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _safe(tag: str) -> str:
    return tag.replace(":", "_").replace(".", "_")


def edit_plan(tree: Tree, tag: str) -> tuple[list[str], list[str], list[str]]:
    """(files to modify, files to add, files to delete) for a step: fixed by its tag."""
    r = rng_for("edits", tag)
    mods = r.sample(tree.editable, r.randint(1, 6))
    n_adds = r.randint(0, 2)
    adds = [_join(r.choice(tree.dirs), f"bench_{_safe(tag)}_{j}.py") for j in range(n_adds)]
    dels = [r.choice(tree.deletable)] if r.random() < 0.5 else []
    return mods, adds, dels


def apply_edits(files: Files, tree: Tree, tag: str, *, bad: bool, part: int) -> None:
    """Part 0 or 1 of a step's edits (an execution does part 0, thinks, then part 1). A bad
    execution marks its edits BROKEN and leaves a junk file."""
    mods, adds, dels = edit_plan(tree, tag)
    half = (len(mods) + 1) // 2
    for j, rel in enumerate(mods[:half] if part == 0 else mods[half:], 0 if part == 0 else half):
        data = files.read(rel)
        if data is None:
            continue
        lines = data.split(b"\n")
        at = int(hashlib.sha256(f"{tag}:{rel}".encode()).hexdigest(), 16) % (len(lines) + 1)
        mark = f"# {tag}: BROKEN" if bad else f"# {tag}: edit {j}"
        lines.insert(at, mark.encode())
        files.write(rel, b"\n".join(lines))
    if part == 0:
        return
    r = rng_for("content", tag)
    for rel in adds:
        body = "".join(f"def f{k}():\n    return {r.randint(0, 10**6)}\n" for k in range(20))
        files.write(rel, f"# {tag}\n{body}".encode())
    for rel in dels:
        files.delete(rel)
    if bad:
        files.write(_join(os.path.dirname(mods[0]), f"bench_{_safe(tag)}_junk.orig"), b"junk\n")


class SimTask:
    """One task's planner, executor and verifier. Every random draw is keyed by the task and
    the plan lineage, so each configuration meets the same plans, durations and failures."""

    def __init__(
        self, model: Model, tree: Tree, run: int, ws_path: str, clock: VirtualClock
    ) -> None:
        self.m = model
        self.tree = tree
        self.run = run
        self.ws_path = ws_path
        self.clock = clock
        self.model_s = 0.0  # simulated seconds of model time spent, partial work included
        self.executions: dict[str, int] = defaultdict(int)
        self.touched: set[str] = set()
        self.disk = DiskFiles(ws_path, self.touched)

    async def think(self, seconds: float) -> None:
        start = self.clock.now
        try:
            await self.clock.sleep(seconds)
        finally:
            self.model_s += self.clock.now - start

    # -- planner
    async def plan(self, request: PlanRequest) -> list[Step]:
        lineage = request.restarts
        version = 0 if request.reason != "replan" else request.replans + 1
        r = rng_for(self.m.seed, self.run, "plan", lineage, version)
        if request.reason == "restart":
            await self.think(r.uniform(*self.m.restart_s))
        await self.think(r.uniform(*self.m.plan_s))
        start = len(request.completed)
        if request.reason == "replan":
            failed: SimStep = request.failed_step.action  # type: ignore[union-attr]
            length = failed.plan_length
        else:
            failed = None  # type: ignore[assignment]
            length = r.choices(list(PLAN_LENGTHS), weights=list(PLAN_LENGTHS.values()))[0]
        steps = []
        for pos in range(start, length):
            tag = f"{self.run}.{lineage}.{version}.{pos}"
            fate = self._fate(rng_for(self.m.seed, "fate", tag))
            if failed is not None and pos == start and failed.fate == "plan_flaw":
                fate = "plan_flaw"  # replanning from the checkpoint cannot fix this
            steps.append(Step(SimStep(tag, pos, length, fate), f"step {tag}"))
        return steps

    def _fate(self, r: random.Random) -> str:
        u, p = r.random(), self.m.p
        if u < p * self.m.plan_flaw_share:
            return "plan_flaw"
        if u < p * (self.m.plan_flaw_share + self.m.step_flaw_share):
            return "step_flaw"
        return "transient" if u < p else "ok"

    # -- executor
    async def execute(self, step: Step, ctx: StepContext) -> Executed:
        s: SimStep = step.action
        n = self.executions[s.tag]
        self.executions[s.tag] += 1
        r = rng_for(self.m.seed, "exec", s.tag, n)
        if s.fate in ("plan_flaw", "step_flaw"):
            failed = True
        elif n == 0:
            failed = s.fate == "transient"
        else:
            factor = self.m.retry_factor if ctx.retry else 1.0
            failed = r.random() < self.m.p * factor
        took = r.lognormvariate(math.log(self.m.exec_median_s), self.m.exec_sigma)
        verify_s = took * self.m.verify_ratio * r.lognormvariate(0.0, self.m.verify_sigma)
        apply_edits(self.disk, self.tree, s.tag, bad=failed, part=0)
        await self.think(took)
        apply_edits(self.disk, self.tree, s.tag, bad=failed, part=1)
        return Executed(failed, verify_s, edit_plan(self.tree, s.tag)[0][0])

    # -- verifier
    async def verify(self, step: Step, ctx: StepContext) -> Verdict:
        s: SimStep = step.action
        done: Executed = ctx.result
        await self.think(done.verify_s)
        # Look at the step's result: its snapshot when there is one (the live tree may
        # already hold the next step), else the live file.
        if ctx.after_id is not None:
            data = await ctx.workspace.read_file(ctx.after_id, done.probe)
        else:
            data = self.disk.read(done.probe) or b""
        broken = f"# {s.tag}: BROKEN".encode() in data
        good = f"# {s.tag}: edit 0".encode() in data
        if broken == good or broken != done.failed:
            raise BenchError(
                f"run {self.run} step {s.tag}: the file says broken={broken} good={good}, "
                f"the simulation failed={done.failed}"
            )
        return Verdict(not broken, "BROKEN lines in the result" if broken else "")

    def reset_to_pristine(self) -> None:
        """Put back what this task touched (bytes, mode and mtime from the pristine tree):
        the harness's untimed reset between runs and the naive loop's re-clone. Steps never
        create or remove directories, so the parents are there."""
        for rel in sorted(self.touched):
            src = self.tree.pristine / rel
            dst = self.disk.path(rel)
            if src.exists():
                shutil.copy2(src, dst)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dst)

    def expected(self, steps: list[Step]) -> OverlayFiles:
        overlay = OverlayFiles(self.tree)
        for step in steps:
            for part in (0, 1):
                apply_edits(overlay, self.tree, step.action.tag, bad=False, part=part)
        return overlay


# --- the configurations -----------------------------------------------------------------------
@dataclass
class RunRecord:
    run: int
    completion_s: float
    restarts: int
    retries: int = 0
    replans: int = 0
    executions: int = 0
    model_s: float = 0.0
    daemon_s: float = 0.0  # daemon call time charged to the clock


async def naive_run(task: SimTask, ws: AsyncWorkspace) -> tuple[list[Step], int]:
    """The loop without checkpoints: any failed verification starts the task over."""
    restarts = 0
    ctx = StepContext(ws, ws.path, None, 0, 0, 0, before_id="")
    steps = await task.plan(PlanRequest(None, "initial", ""))
    while True:
        for i, step in enumerate(steps):
            here = replace(ctx, index=i, plan_version=restarts)
            result = await task.execute(step, here)
            verdict = await task.verify(step, replace(here, result=result))
            if not verdict.ok:
                break
        else:
            return steps, restarts
        restarts += 1
        if restarts > 100:
            raise BenchError(f"run {task.run}: the naive loop did not finish in 100 restarts")
        task.reset_to_pristine()  # re-creating the workspace is part of the restart's cost
        steps = await task.plan(PlanRequest(None, "restart", "", restarts=restarts))


@dataclass
class ConfigResult:
    name: str
    runs: list[RunRecord] = field(default_factory=list)
    timings: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    wall_s: float = 0.0
    full_checks: int = 0

    def completions(self) -> list[float]:
        return [r.completion_s for r in self.runs]


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class Experiment:
    def __init__(self, args: argparse.Namespace, log: Callable[[str], None]) -> None:
        self.args = args
        self.log = log
        self.model = Model(
            seed=args.seed,
            naive_restart_share=args.naive_restart_share,
            exec_median_s=args.exec_median,
            verify_ratio=args.verify_ratio,
            step_flaw_share=args.step_flaw_share,
            plan_flaw_share=args.plan_flaw_share,
            retry_factor=args.retry_factor,
            p=args.p or 0.0,
        ).calibrated()

    async def run_config(
        self, name: str, client: AsyncClient, tree: Tree, ws_path: str
    ) -> ConfigResult:
        out = ConfigResult(name)
        handle = await client.open_workspace(ws_path)
        event_log = None
        if self.args.event_log and name != "naive":
            os.makedirs(self.args.event_log, exist_ok=True)
            event_log = os.path.join(self.args.event_log, f"{name}.jsonl")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(event_log)

        started = time.perf_counter()
        previous: SimTask | None = None
        for run in range(self.args.runs):
            if previous is not None:
                previous.reset_to_pristine()
            async with VirtualClock() as clock:
                task = SimTask(self.model, tree, run, handle.path, clock)
                timings: dict[str, list[float]] = defaultdict(list)
                if name == "naive":
                    steps, restarts = await naive_run(task, handle)
                    rec = RunRecord(
                        run, clock.now, restarts, executions=sum(task.executions.values())
                    )
                else:
                    pipeline = CheckpointedPipeline(
                        task.plan,
                        task.execute,
                        task.verify,
                        handle.path,
                        client=ClockedClient(client, clock, timings),  # type: ignore[arg-type]
                        window=self.args.window,
                        persist_every=self.args.persist_every,
                        overlap=name == "overlap",
                        max_retries=self.args.max_retries,
                        max_replans=self.args.max_replans,
                        max_restarts=100,
                        event_log=event_log,
                        clock=clock.time,
                    )
                    result = await pipeline.run(run_id=f"{name}-{run}")
                    steps = result.steps
                    rec = RunRecord(
                        run,
                        clock.now,
                        result.restarts,
                        result.retries,
                        result.replans,
                        result.executions,
                    )
                rec.model_s = task.model_s
                rec.daemon_s = sum(sum(v) for v in timings.values()) / 1000
            for method, values in timings.items():
                out.timings[method].extend(values)
            full = self.args.full_check_every and (
                run % self.args.full_check_every == 0 or run == self.args.runs - 1
            )
            self.check(task, steps, full=bool(full))
            out.full_checks += bool(full)
            out.runs.append(rec)
            previous = task
            if (run + 1) % max(1, self.args.runs // 10) == 0:
                self.log(
                    f"  {name}: {run + 1}/{self.args.runs} runs, "
                    f"{time.perf_counter() - started:.0f} s"
                )
        if previous is not None:
            previous.reset_to_pristine()  # the next configuration starts from pristine too
        out.wall_s = time.perf_counter() - started
        return out

    def check(self, task: SimTask, steps: list[Step], *, full: bool) -> None:
        """The workspace must hold pristine + the accepted steps, nothing else."""
        expected = task.expected(steps)
        bad = []
        for rel in sorted(task.touched | set(expected.changes)):
            if task.disk.read(rel) != expected.read(rel):
                bad.append(rel)
        if full:
            want = tree_manifest(task.tree.pristine)
            have = tree_manifest(task.ws_path)
            for rel, data in expected.changes.items():
                want.pop(rel.encode(), None)
                if data is not None:
                    have.pop(rel.encode(), None)
            for path in sorted(want.keys() | have.keys()):
                w, h = want.get(path), have.get(path)
                if (w is None) != (h is None) or (
                    w is not None
                    and h is not None
                    and (w.kind, w.mode, w.content) != (h.kind, h.mode, h.content)
                ):
                    bad.append(os.fsdecode(path))
        if bad:
            raise BenchError(
                f"run {task.run}: the workspace differs from pristine + accepted steps in "
                f"{len(bad)} path(s): {bad[:10]}"
            )


# --- the tree, the daemon, the report ---------------------------------------------------------
def prepare_tree(
    args: argparse.Namespace, tmp: str, log: Callable[[str], None]
) -> tuple[Path, str]:
    """(pristine tree, description)."""
    if args.workload == "django":
        django = DjangoReleases(["5.0"])
        django.prepare(log)
        return django.tree_dir("5.0"), "Django 5.0 source (sdist)"
    pristine = Path(tmp) / "pristine"
    pristine.mkdir()
    synthetic = SyntheticEdits(files=args.synthetic_files, steps=1, seed=args.seed)
    synthetic.steps()[0].apply(pristine)
    return pristine, synthetic.describe()


def summarize(res: ConfigResult, price: float) -> dict[str, Any]:
    c = res.completions()
    return {
        "config": res.name,
        "runs": len(res.runs),
        "mean_s": statistics.fmean(c),
        "p95_s": p95(c),
        "restarts": sum(r.restarts for r in res.runs),
        "runs_restarted": sum(r.restarts > 0 for r in res.runs),
        "retries": sum(r.retries for r in res.runs),
        "replans": sum(r.replans for r in res.runs),
        "executions": sum(r.executions for r in res.runs),
        "model_s": sum(r.model_s for r in res.runs),
        "cost": price * sum(r.model_s for r in res.runs),
        "daemon_s_per_run": statistics.fmean(r.daemon_s for r in res.runs),
        "wall_s": res.wall_s,
        "full_checks": res.full_checks,
    }


def ms_stats(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"n={len(values)}, mean {statistics.fmean(values):.1f} ms, "
        f"median {statistics.median(values):.1f} ms, p95 {p95(values):.1f} ms"
    )


def paired_overhead(results: dict[str, ConfigResult]) -> list[str]:
    """On the tasks where no execution failed, every configuration did the same agent work, so
    the difference to the naive loop is what checkpointing itself adds (or overlap saves)."""
    naive = results.get("naive")
    if naive is None:
        return []
    lines = []
    for name in ("checkpoints", "overlap"):
        res = results.get(name)
        if res is None:
            continue
        clean = [
            (n.completion_s, r.completion_s)
            for n, r in zip(naive.runs, res.runs, strict=True)
            if n.restarts == 0 and r.retries == 0 and r.replans == 0 and r.restarts == 0
        ]
        if not clean:
            continue
        base = statistics.fmean(n for n, _ in clean)
        diff = statistics.fmean(r - n for n, r in clean)
        lines.append(
            f"On the {len(clean)} tasks in which no execution failed (identical agent work), "
            f"{CONFIGS[name]}: {diff:+.2f} s per run ({diff / base:+.1%} of the naive "
            f"{base:.1f} s)."
        )
    return [*lines, ""] if lines else []


def report(
    results: dict[str, ConfigResult],
    model: Model,
    args: argparse.Namespace,
    tree_desc: str,
    n_files: int,
    setup: dict[str, float],
) -> tuple[str, dict[str, Any]]:
    naive = results.get("naive")
    if args.price:
        price, priced = args.price, f"${args.price:g} per model-second (given)"
    elif naive is not None:
        price = ARTICLE["naive"]["cost"] / sum(r.model_s for r in naive.runs)
        priced = f"${price:.6f} per model-second (makes our naive row cost the article's $47.20)"
    else:
        price, priced = 0.001, "$0.001 per model-second (no naive run to calibrate on)"
    rows = {name: summarize(res, price) for name, res in results.items()}
    lines = [
        f"Pipeline experiment: {args.runs} runs per configuration, seed {args.seed}, "
        f"{tree_desc} ({n_files} Python files)",
        "Time: agent time on a virtual clock (1 simulated second = 0 s of wall time); daemon "
        "calls real, charged 1:1 at their measured wall time.",
        f"Per-execution failure probability p = {model.p:.4f} (naive: a restart in "
        f"{model.naive_restart_share:.0%} of runs by construction); failures: "
        f"{model.step_flaw_share:.1%} step flaws, {model.plan_flaw_share:.1%} plan flaws, "
        "the rest transient.",
        f"Cost: {priced}.",
        "",
        "Each cell: ours / the article's (the article has no row for checkpoints without overlap).",
        "",
        "| configuration | mean completion | p95 completion | full restarts | compute cost |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    theirs = {"naive": ARTICLE["naive"], "overlap": ARTICLE["checkpointed"]}
    for name, r in rows.items():
        t = theirs.get(name)
        cells = [
            f"{r['mean_s']:.1f} s / " + (f"{t['mean']:.0f} s" if t else "-"),
            f"{r['p95_s']:.1f} s / " + (f"{t['p95']:.0f} s" if t else "-"),
            f"{r['restarts']} / " + (f"{t['restarts']}" if t else "-"),
            f"${r['cost']:.2f} / " + (f"${t['cost']:.2f}" if t else "-"),
        ]
        lines.append(f"| {CONFIGS[name]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| configuration | runs restarted | retries | replans | executions | model-s/run "
        "| daemon ms/run | wall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {CONFIGS[name]} | {r['runs_restarted']} | {r['retries']} | {r['replans']} | "
            f"{r['executions']} | {r['model_s'] / r['runs']:.1f} | "
            f"{r['daemon_s_per_run'] * 1000:.1f} | {r['wall_s']:.0f} s |"
        )
    timings: dict[str, list[float]] = defaultdict(list)
    for name in ("checkpoints", "overlap"):
        if name in results:
            for method, values in results[name].timings.items():
                timings[method].extend(values)
    lines += [
        "",
        f"Measured through the client (gRPC + daemon), article's assumption "
        f"{ARTICLE_CHECKPOINT_MS:.0f} ms per checkpoint:",
        f"  checkpoint (snapshot):  {ms_stats(timings['snapshot'])}",
        f"  restore:                {ms_stats(timings['restore'])}",
        f"  persist (durable):      {ms_stats(timings['persist'])}",
        f"  unpin:                  {ms_stats(timings['unpin'])}",
        f"  read_file (verifier):   {ms_stats(timings['read_file'])}",
        f"  first snapshot of the tree (set-up, in no run): {setup['first_snapshot_ms']:.0f} ms",
        "",
        *paired_overhead(results),
        f"Model: plan {model.plan_s[0]:g}-{model.plan_s[1]:g} s; 3-7 steps (mean 5); execution "
        f"lognormal median {model.exec_median_s:g} s sigma {model.exec_sigma:g}; verification "
        f"{model.verify_ratio:.0%} of it; full restart {model.restart_s[0]:g}-"
        f"{model.restart_s[1]:g} s; retry failure x{model.retry_factor:g}. Pipeline: window "
        f"{args.window}, persist every {args.persist_every}, max_retries {args.max_retries}, "
        f"max_replans {args.max_replans}.",
        f"Checks: every run's touched files equal pristine + accepted steps; whole tree "
        f"compared in {sum(r['full_checks'] for r in rows.values())} runs.",
    ]
    data = {
        "runs": args.runs,
        "seed": args.seed,
        "tree": tree_desc,
        "model": asdict(model),
        "price_per_model_second": price,
        "rows": rows,
        "article": ARTICLE,
        "timings_ms": {k: v for k, v in timings.items()},
        "setup": setup,
    }
    return "\n".join(lines), data


async def experiment(args: argparse.Namespace, log: Callable[[str], None]) -> tuple[str, dict]:
    tmp = tempfile.mkdtemp(prefix="snapd-pipeline-", dir=args.tmp)
    sock_dir = short_tempdir("snapd-bp-")
    daemon = None
    try:
        pristine, tree_desc = prepare_tree(args, tmp, log)
        tree = Tree(pristine)
        ws_path = os.path.join(tmp, "workspace")
        log(f"copying {pristine} into {ws_path}")
        shutil.copytree(pristine, ws_path, symlinks=True)
        daemon = DaemonProcess(os.path.join(tmp, "store"), os.path.join(sock_dir, "snapd.sock"))
        daemon.start()
        exp = Experiment(args, log)
        results: dict[str, ConfigResult] = {}
        async with AsyncClient("unix://" + daemon.socket) as client:
            handle = await client.open_workspace(ws_path, keep_last=args.window)
            t0 = time.perf_counter()
            await handle.snapshot("pristine tree")
            setup = {"first_snapshot_ms": (time.perf_counter() - t0) * 1000}
            for name in args.configs:
                log(f"configuration {name}: {args.runs} runs")
                results[name] = await exp.run_config(name, client, tree, ws_path)
        text, data = report(
            results, exp.model, args, tree_desc, len(tree.editable) + len(tree.deletable), setup
        )
        return text, data
    finally:
        if daemon is not None:
            daemon.close()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_pipeline",
        description="Issue 6's experiment: naive vs checkpointed pipelines on a real daemon.",
    )
    ap.add_argument("--runs", type=int, default=1000, help="pipeline runs per configuration")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--configs",
        default="naive,checkpoints,overlap",
        help="comma-separated subset of: naive, checkpoints, overlap",
    )
    ap.add_argument("--workload", choices=["django", "synthetic"], default="django")
    ap.add_argument("--synthetic-files", type=int, default=300)
    ap.add_argument("--tmp", default="/tmp", help="where the workspace and store go")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--event-log", metavar="DIR", help="write each pipeline's JSON-lines log")
    ap.add_argument("--full-check-every", type=int, default=100, metavar="N")
    model = ap.add_argument_group("model")
    model.add_argument("--naive-restart-share", type=float, default=0.34)
    model.add_argument("--p", type=float, help="failure probability (default: calibrated)")
    model.add_argument("--exec-median", type=float, default=5.0, help="seconds")
    model.add_argument("--verify-ratio", type=float, default=0.4)
    model.add_argument("--step-flaw-share", type=float, default=0.10)
    model.add_argument("--plan-flaw-share", type=float, default=12 / 340)
    model.add_argument("--retry-factor", type=float, default=1.0)
    model.add_argument("--price", type=float, help="$ per model-second (default: calibrated)")
    pipe = ap.add_argument_group("pipeline")
    pipe.add_argument("--window", type=int, default=5)
    pipe.add_argument("--persist-every", type=int, default=3)
    pipe.add_argument("--max-retries", type=int, default=2)
    pipe.add_argument("--max-replans", type=int, default=2)
    args = ap.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        ap.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    try:
        text, data = asyncio.run(experiment(args, log))
    except BenchError as e:
        print(f"CHECK FAILED: {e}", file=sys.stderr)
        return 2
    print(text)
    print(f"\n(total wall time {time.perf_counter() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
