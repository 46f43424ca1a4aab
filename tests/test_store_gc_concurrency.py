"""GC under load: snapshots from several threads and a second process while GC runs.

Three threads snapshot their own workspaces in one Store (window of 2, so every snapshot evicts
and makes garbage), writing contents drawn partly from a small shared pool, so the same objects keep
turning into garbage in one workspace while another reuses them (exactly the race GC must not
lose), and partly unique, so packs fill with garbage and get compacted during the run. A second
process (tests/crashloop_child.py, plain mode) snapshots, restores and collects
in its own workspace of the same store. Meanwhile this process runs gc.collect passes back to
back and a BackgroundCollector, and a checker thread runs verify.

After each snapshot its thread verifies that snapshot at once (every object it refers to exists
and matches its address) and sometimes restores an earlier one and compares the tree exactly. At
the end: verify ok, reference counts exact, and after a complete GC recount_refs fixes nothing.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import treeutil
from crashloop_child import WRONG_LOG, read_log, refcount_errors

from snapd.errors import SnapdError
from snapd.store import gc
from snapd.store.store import Store
from snapd.store.verify import recount_refs, verify
from snapd.workspace import Workspace, WorkspaceSettings

CHILD = os.path.join(os.path.dirname(__file__), "crashloop_child.py")
RUN_SECONDS = float(os.environ.get("SNAPD_GC_RACE_SECONDS", "8"))
THREADS = 3
CHECKER_PAUSE = float(os.environ.get("SNAPD_GC_RACE_CHECK_PAUSE", "0.1"))


def _pool(rng: random.Random) -> list[bytes]:
    """Shared contents: small text, medium incompressible, and a few over the chunk threshold."""
    return (
        [f"shared text {i}\n".encode() * 40 for i in range(12)]
        + [rng.randbytes(30_000) for _ in range(8)]
        + [rng.randbytes(1_100_000) for _ in range(2)]
    )


def test_snapshots_and_gc_race_without_losing_objects(tmp_path, monkeypatch):
    store_dir = str(tmp_path / "store")
    store = Store.open(store_dir)
    rng = random.Random(11)
    pool = _pool(rng)
    stop = threading.Event()
    errors: list[str] = []
    counts = {"snapshots": 0, "verified": 0, "restores": 0, "verify_runs": 0, "gc_passes": 0}
    gc_totals = {
        "deleted_objects": 0,
        "packs_compacted": 0,
        "packs_deleted": 0,
        "lock_waits": 0,
        "complete": 0,
    }
    lock = threading.Lock()

    def snapshotter(n: int) -> None:
        r = random.Random(100 + n)
        ws_dir = tmp_path / f"ws{n}"
        ws_dir.mkdir()
        ws = Workspace.open(store, str(ws_dir), WorkspaceSettings(watch=False, keep_last=2))
        trees: dict[str, treeutil.Capture] = {}
        try:
            while not stop.is_set():
                for _ in range(r.randint(1, 4)):
                    name = f"d{r.randrange(3)}/f{r.randrange(8)}"
                    if r.random() < 0.15 and os.path.exists(ws_dir / name):
                        os.unlink(ws_dir / name)
                    elif r.random() < 0.5:
                        treeutil.write(ws_dir, name, r.choice(pool))
                    else:  # unique: dies with the window, so packs fill with garbage to compact
                        treeutil.write(ws_dir, name, r.randbytes(r.randint(20_000, 60_000)))
                tree = treeutil.capture(ws_dir)
                rec = ws.snapshot()
                report = verify(store, snapshot_ids=[rec.id])
                if not report.ok:
                    errors.append(f"ws{n}: snapshot {rec.id} broken at once: {report.problems}")
                    return
                trees[rec.id] = tree
                with lock:
                    counts["snapshots"] += 1
                    counts["verified"] += 1
                if r.random() < 0.25:
                    window = [s.id for s in ws.snapshots() if s.id in trees]
                    target = r.choice(window)
                    ws.restore(target)
                    treeutil.assert_same(treeutil.capture(ws_dir), trees[target], f"ws{n}")
                    with lock:
                        counts["restores"] += 1
        except (SnapdError, AssertionError, OSError) as e:
            errors.append(f"ws{n}: {type(e).__name__}: {e}")
        finally:
            ws.close()

    def checker() -> None:
        while not stop.is_set():
            if CHECKER_PAUSE:
                time.sleep(CHECKER_PAUSE)
            report = verify(store, sample=0.3)
            if not report.ok:
                errors.append(f"verify during the run: {report.problems[:3]}")
                return
            with lock:
                counts["verify_runs"] += 1

    # A second process writing to the same store.
    other_ws = tmp_path / "other-ws"
    other_log = tmp_path / "other-log"
    other_ws.mkdir()
    other_log.mkdir()
    other = subprocess.Popen(
        [
            *(sys.executable, CHILD, "--store", store_dir, "--workspace", str(other_ws)),
            *("--log-dir", str(other_log), "--seed", "5", "--iterations", "1000000"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Sum what every pass did, the BackgroundCollector's included: a wrapper around the real
    # gc.collect (the collector calls the module's `collect`), which it leaves unchanged.
    real_collect = gc.collect

    def counting_collect(*args, **kwargs) -> dict:
        result = real_collect(*args, **kwargs)
        with lock:
            counts["gc_passes"] += 1
            for k in gc_totals:
                gc_totals[k] += int(result[k])
        return result

    monkeypatch.setattr(gc, "collect", counting_collect)
    background = gc.BackgroundCollector(
        store, interval=0.05, pass_seconds=0.1, min_garbage_bytes=0
    ).start()
    threads = [threading.Thread(target=snapshotter, args=(n,)) for n in range(THREADS)]
    threads.append(threading.Thread(target=checker))
    for t in threads:
        t.start()
    r_gc = random.Random(3)
    deadline = time.monotonic() + RUN_SECONDS
    # Run on (up to 3x as long) until a pack was compacted while snapshots were running: on a
    # busy machine GC gets the exclusive lock less often.
    hard_deadline = time.monotonic() + 3 * RUN_SECONDS

    def keep_running() -> bool:
        now = time.monotonic()
        with lock:
            compacted = gc_totals["packs_compacted"]
        return not errors and (now < deadline or (not compacted and now < hard_deadline))

    try:
        while keep_running():
            gc.collect(store, max_seconds=r_gc.choice([0.2, 2.0]))  # short and long passes
            background.poke()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        background.stop()
        other.terminate()  # SIGTERM: it may stop anywhere, like a crash
        _, other_err = other.communicate(timeout=60)
    monkeypatch.undo()
    try:
        assert not errors, "\n".join(errors[:5])
        assert other.returncode in (0, -15), other_err.decode()[-3000:]
        wrong = read_log(str(other_log / WRONG_LOG))
        assert not wrong, wrong[:2]
        other_snapshots = len(read_log(str(other_log / "snapshots.jsonl")))
        print(f"\n{counts}, GC {gc_totals}, second process: {other_snapshots} snapshots")
        assert counts["snapshots"] >= 3 * THREADS and counts["gc_passes"] > 1
        assert gc_totals["deleted_objects"] > 0, "GC never deleted anything"
        assert gc_totals["packs_compacted"] > 0, "GC never compacted a pack during the run"

        report = verify(store)
        assert report.ok, report.problems[:5]
        assert not refcount_errors(store)
        final = gc.collect(store)
        assert final["complete"]
        assert store.stats()["garbage_objects"] == 0
        fixed = recount_refs(store)
        assert fixed["objects_fixed"] == 0, fixed
        assert verify(store).ok
    finally:
        store.close()


def test_compaction_keeps_objects_committed_after_its_listing(tmp_path, monkeypatch):
    """The race the load test above found, made deterministic.

    A snapshot appends its objects to the active pack, then pauses before its commit. GC seals
    that pack, lists the pack's objects (the paused ones are not in the catalog yet), and waits
    for the exclusive lock; the snapshot commits and lets go. Compaction must copy the objects
    committed after its listing too, or the snapshot refers to a deleted pack.
    """
    store = Store.open(str(tmp_path / "store"))
    ws_dir = tmp_path / "ws"
    ws_dir.mkdir()
    ws = Workspace.open(store, str(ws_dir), WorkspaceSettings(watch=False, keep_last=1))
    rng = random.Random(5)
    try:
        treeutil.write(ws_dir, "a", rng.randbytes(200_000))
        ws.snapshot()
        treeutil.write(ws_dir, "a", rng.randbytes(200_000))
        ws.snapshot()  # evicts the first: half of the active pack is garbage
        assert gc.collect(store, max_unused=1.0)["deleted_objects"] > 0  # delete, no compaction

        appended, go = threading.Event(), threading.Event()
        real_append = store._writer.append
        paused = threading.current_thread()  # replaced by the snapshot thread below

        def pausing_append(records):
            out = real_append(records)
            if threading.current_thread() is paused:
                appended.set()
                go.wait(10)
            return out

        monkeypatch.setattr(store._writer, "append", pausing_append)
        real_exclusive = gc._exclusive

        def signalling_exclusive(*args):
            go.set()  # the listing is done: let the snapshot commit now
            return real_exclusive(*args)

        monkeypatch.setattr(gc, "_exclusive", signalling_exclusive)
        treeutil.write(ws_dir, "b", rng.randbytes(100_000))
        result: list = []
        paused = threading.Thread(target=lambda: result.append(ws.snapshot()))
        paused.start()
        assert appended.wait(10)
        stats = dict.fromkeys(("packs_compacted", "packs_deleted", "bytes_copied", "lock_waits"), 0)
        gc._compact(store, stats, None, 0.05, lambda _: None)
        paused.join(10)
        monkeypatch.undo()
        report = verify(store, snapshot_ids=[result[0].id])
        assert report.ok, report.problems
        assert stats["packs_compacted"] == 1 and stats.get("packs_relisted") == 1, stats
        assert not refcount_errors(store)
    finally:
        ws.close()
        store.close()
