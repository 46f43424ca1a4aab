"""Crash consistency with real processes: SIGKILL loops and simulated power losses.

The long runs (module fixtures, shared by the slow tests) start tests/crashloop_child.py, a real
Python process that snapshots a workspace it keeps editing, persists some snapshots, restores,
deletes and collects garbage, and SIGKILL it at random moments, with a fixed seed. After every
kill the store is reopened: verify must pass, every snapshot the child recorded as durable must
still be there, and reference counts must be exact (crashloop_child.refcount_errors). At the end
every recorded snapshot still in the store is restored (forked into an empty directory) and
compared with its manifest.

- sigkill_run: KILLS process crashes, nothing else.
- power_loss_run: POWER_LOSS_KILLS crashes, and every POWER_LOSS_EVERY kills a power loss: the
  bytes of each pack beyond its `synced` length (written, never fsynced) are lost - zeroed,
  truncated, or with a never-synced pack the whole file gone, in turn (lose_unsynced_tails) -
  and the store is reopened in a new boot (SNAPD_BOOT_ID), so recovery runs; it may drop only
  non-durable snapshots, verify must pass, and every durable one must restore exactly.

Snapshots the child found wrong when it took them (a change-detection bug, not the store's;
logged in wrong.jsonl) are left out of the store's figures and fail their own test.

Knobs (environment): SNAPD_CRASH_KILLS (default 200), SNAPD_POWER_LOSS_KILLS (default 40),
SNAPD_CRASH_SEED (default 20240603).
Run: .venv/bin/pytest tests/test_store_crash.py -s -rxX  (prints the figures)
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import crashloop_child as child_mod
import pytest
import treeutil

from snapd import browse
from snapd.errors import DataLoss
from snapd.store import gc
from snapd.store.store import Store
from snapd.store.verify import recount_refs, verify
from snapd.workspace import Workspace, WorkspaceSettings, fork

CHILD = os.path.join(os.path.dirname(__file__), "crashloop_child.py")
KILLS = int(os.environ.get("SNAPD_CRASH_KILLS", "200"))
SEED = int(os.environ.get("SNAPD_CRASH_SEED", "20240603"))
POWER_LOSS_KILLS = int(os.environ.get("SNAPD_POWER_LOSS_KILLS", "40"))
POWER_LOSS_EVERY = 8
# Whole-store checks (verify of every snapshot, reference counts from every object) cost O(store)
# and the store grows through the loop (0.6 s each near the end of the SIGKILL run): they run
# after each of the first FULL_CHECKS_FIRST kills, then after every FULL_CHECK_EVERY-th kill and
# the last. The kills between still get verify of the snapshots taken since the previous check,
# the catalog and pack checks, and the durable snapshots' presence.
FULL_CHECKS_FIRST = 25
FULL_CHECK_EVERY = 4


# --- helpers ------------------------------------------------------------------------------------
class Zygote:
    """crashloop_child.py --zygote: forks a crash child on demand (see its docstring)."""

    def __init__(self, store_dir: str, ws_dir: str, log_dir: str) -> None:
        self.err_path = os.path.join(log_dir, "children.err")
        self.err = open(self.err_path, "ab")  # noqa: SIM115 (closed in close)
        self.proc = subprocess.Popen(
            [
                *(sys.executable, CHILD, "--zygote", "--store", store_dir),
                *("--workspace", ws_dir, "--log-dir", log_dir),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
        )
        self._expect("imported")

    def _line(self) -> list[str]:
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"crash zygote died: {self.stderr()}")
        return line.decode().split()

    def _expect(self, word: str) -> list[str]:
        parts = self._line()
        if not parts or parts[0] != word:
            raise AssertionError(f"crash zygote said {parts}, expected {word}: {self.stderr()}")
        return parts

    def stderr(self) -> str:
        self.err.flush()
        with open(self.err_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def go(self, boot_id: str, seed: int) -> int:
        self.proc.stdin.write(f"go {boot_id} {seed}\n".encode())
        self.proc.stdin.flush()
        return int(self._expect("pid")[1])

    def kill(self, pid: int) -> bool:
        """SIGKILL the child; returns whether it had opened the store ('ready')."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it already ended by itself: its exit line below says how
        ready = False
        while True:
            parts = self._line()
            if parts[0] == "ready":
                ready = True
            elif parts[0] == "exit":
                code = int(parts[2])
                if code != -signal.SIGKILL:
                    raise AssertionError(
                        f"crash child exited by itself ({code}) before the kill: {self.stderr()}"
                    )
                return ready

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.err.close()


POWER_LOSS_MODES = ("zero", "truncate", "drop")


def lose_unsynced_tails(store_dir: str, mode: str = "zero") -> tuple[int, int]:
    """Simulate a power loss: the pack bytes beyond each pack's synced length are lost.

    zero: they read back as zeros (the file size reached the disk, the data did not);
    truncate: the file ends at its synced length (neither did);
    drop: like truncate, and a pack never synced at all is gone (its directory entry was lost).
    Returns (bytes lost, pack files removed)."""
    with Store.open(store_dir) as store:
        packs = store.query("SELECT name, synced FROM packs")
        packs_dir = store.packs_dir
    lost = dropped = 0
    for name, synced in packs:
        path = os.path.join(packs_dir, f"{name}.pack")
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            continue
        if size <= synced:
            continue
        lost += size - synced
        if mode == "zero":
            with open(path, "r+b") as f:
                f.seek(synced)
                f.write(b"\0" * (size - synced))
        elif mode == "drop" and synced <= 16:  # nothing but (at most) the header was synced
            os.unlink(path)
            dropped += 1
        else:
            os.truncate(path, synced)
    return lost, dropped


def unsynced_bytes(store_dir: str) -> int:
    with Store.open(store_dir) as store:
        packs = store.query("SELECT name, synced FROM packs")
        packs_dir = store.packs_dir
    total = 0
    for name, synced in packs:
        try:
            total += max(0, os.path.getsize(os.path.join(packs_dir, f"{name}.pack")) - synced)
        except FileNotFoundError:
            pass
    return total


def fork_and_compare(
    store: Store, entries: dict[str, child_mod.Manifest], scratch: str
) -> list[str]:
    """Restore each snapshot into a new empty directory (fork) and compare it with its manifest.

    Fork, not restore-in-place: a restore first rescans the workspace, so an engine bug in change
    detection could be mistaken for lost data. Returns one line per snapshot that is missing or
    differs (empty: all exact)."""
    failures = []
    for snap_id, manifest in entries.items():
        target = os.path.join(scratch, f"fork-{snap_id}")
        try:
            ws, _ = fork(store, snap_id, target, WorkspaceSettings(watch=False))
        except Exception as e:
            failures.append(f"{snap_id}: restore failed: {type(e).__name__}: {e}")
            shutil.rmtree(target, ignore_errors=True)
            continue
        try:
            diff = child_mod.manifest_diff(child_mod.manifest_of(target), manifest)
            if diff:
                failures.append(f"{snap_id}: differs:\n  " + "\n  ".join(diff))
        finally:
            ws.close()
            store.remove_workspace(ws.id)
            shutil.rmtree(target)
    return failures


def check_after_kill(
    store: Store, durable: dict[str, child_mod.Manifest], *, seen: set[str] | None = None
) -> int:
    """The invariants that must hold after any crash. Returns how many snapshots verify checked.

    seen=None: the whole store (verify, reference counts). Otherwise verify covers only the
    snapshots not in `seen` (those taken since the last check; the catalog and pack checks
    run either way); `seen` is updated with the snapshots present now."""
    present = {s.id: s for s in store.list_snapshots()}
    new = None if seen is None else [sid for sid in present if sid not in seen]
    report = verify(store) if new is None else verify(store, snapshot_ids=new) if new else None
    if report is not None:
        assert report.ok, f"verify failed after a crash: {report.problems[:5]}"
    lost = [sid for sid in durable if sid not in present or not present[sid].durable]
    assert not lost, f"durable snapshots lost after a crash: {lost}"
    if seen is None:
        bad = child_mod.refcount_errors(store)
        assert not bad, "reference counts are not exact after a crash:\n" + "\n".join(bad)
    else:
        seen.update(present)
    return 0 if report is None else report.snapshots_checked


def wrong_snapshot_ids(log_dir: str) -> set[str]:
    return {
        e["snapshot"]
        for e in child_mod.read_log(f"{log_dir}/{child_mod.WRONG_LOG}")
        if "snapshot" in e
    }


# --- the long runs -------------------------------------------------------------------------------
def _durable(log_dir: str) -> dict[str, child_mod.Manifest]:
    return {e["id"]: e["manifest"] for e in child_mod.read_log(f"{log_dir}/durable.jsonl")}


def _power_loss(store_dir: str, boot: int, log_dir: str, scratch: str, figures: dict) -> None:
    """Zero the unsynced pack tails, reopen in boot `boot`, check what recovery did."""
    with Store.open(store_dir) as store:
        durable_before = {s.id for s in store.list_snapshots() if s.durable}
    mode = POWER_LOSS_MODES[figures["power_losses"] % len(POWER_LOSS_MODES)]
    lost, dropped = lose_unsynced_tails(store_dir, mode)
    figures["power_loss_lost_bytes"] += lost
    figures["power_loss_packs_removed"] += dropped
    os.environ["SNAPD_BOOT_ID"] = f"crashloop-boot-{boot}"
    durable = _durable(log_dir)
    with Store.open(store_dir) as store:
        rec = store.last_recovery
        assert rec is not None, "a store opened in a new boot must run recovery"
        dropped = set(rec["dropped_snapshots"])
        assert not dropped & durable_before, "recovery dropped durable snapshots"
        figures["power_losses"] += 1
        figures["recovery_lost_objects"] += rec["lost_objects"]
        figures["recovery_dropped_snapshots"] += len(dropped)
        report = verify(store)
        figures["verify_runs"] += 1
        assert report.ok, f"verify failed after a power loss: {report.problems[:5]}"
        bad = child_mod.refcount_errors(store)
        assert not bad, "reference counts are not exact after recovery:\n" + "\n".join(bad)
        wrong = wrong_snapshot_ids(log_dir)
        check = {sid: m for sid, m in durable.items() if sid not in wrong}
        failures = fork_and_compare(store, check, scratch)
        assert not failures, "after a power loss:\n" + "\n".join(failures[:10])
        figures["durable_restored_after_power_loss"] += len(check)


def run_crash_loop(base, *, kills: int, seed: int, power_loss_every: int | None) -> dict:
    """SIGKILL the child `kills` times; every `power_loss_every` kills also simulate a power loss.

    An invariant that breaks stops the loop and is returned as result["error"] (the final checks
    still run), so each test can assert on its own part."""
    store_dir, ws_dir, log_dir, scratch = (str(base / n) for n in ("store", "ws", "log", "forks"))
    for d in (ws_dir, log_dir, scratch):
        os.mkdir(d)
    rng = random.Random(seed)
    boot = 0
    saved_boot = os.environ.get("SNAPD_BOOT_ID")
    os.environ["SNAPD_BOOT_ID"] = f"crashloop-boot-{boot}"
    figures = dict.fromkeys(
        (
            "kills",
            "kills_before_ready",
            "verify_runs",
            "partial_verify_runs",
            "snapshots_verified_after_kills",
            "power_losses",
            "power_loss_lost_bytes",
            "power_loss_packs_removed",
            "recovery_lost_objects",
            "recovery_dropped_snapshots",
            "durable_restored_after_power_loss",
        ),
        0,
    )
    check_seconds = 0.0
    wait_seconds = 0.0
    error = None
    t0 = time.monotonic()
    power_loss_due = False
    seen: set[str] = set()  # snapshots present at the last check
    zygote = Zygote(store_dir, ws_dir, log_dir)
    try:
        try:
            for k in range(kills):
                t1 = time.monotonic()
                pid = zygote.go(f"crashloop-boot-{boot}", seed + k)
                wait_seconds += time.monotonic() - t1
                # Mostly kill mid-loop; sometimes at once (while it opens or recovers the store).
                delay = rng.uniform(0, 0.05) if rng.random() < 0.15 else rng.uniform(0.05, 0.5)
                time.sleep(delay)
                if not zygote.kill(pid):
                    figures["kills_before_ready"] += 1
                figures["kills"] += 1
                t1 = time.monotonic()
                whole = k < FULL_CHECKS_FIRST or (k + 1) % FULL_CHECK_EVERY == 0 or k == kills - 1
                with Store.open(store_dir) as store:
                    figures["snapshots_verified_after_kills"] += check_after_kill(
                        store, _durable(log_dir), seen=None if whole else seen
                    )
                    figures["verify_runs" if whole else "partial_verify_runs"] += 1
                    if whole:
                        seen = {s.id for s in store.list_snapshots()}
                if power_loss_every and (k + 1) % power_loss_every == 0:
                    power_loss_due = True
                if power_loss_due and unsynced_bytes(store_dir) > 0:
                    power_loss_due = False
                    boot += 1
                    _power_loss(store_dir, boot, log_dir, scratch, figures)
                check_seconds += time.monotonic() - t1
        except AssertionError as e:
            error = f"after kill {figures['kills']}: {e}"
        # Final: every recorded snapshot still in the store restores exactly.
        t_final = time.monotonic()
        durable = _durable(log_dir)
        recorded = {
            e["id"]: e["manifest"] for e in child_mod.read_log(f"{log_dir}/snapshots.jsonl")
        }
        wrong_log = child_mod.read_log(f"{log_dir}/{child_mod.WRONG_LOG}")
        wrong = wrong_snapshot_ids(log_dir)
        with Store.open(store_dir) as store:
            present = {s.id for s in store.list_snapshots()}
            to_check = {sid: m for sid, m in recorded.items() if sid in present}
            to_check.update(durable)
            to_check = {sid: m for sid, m in to_check.items() if sid not in wrong}
            failures = fork_and_compare(store, to_check, scratch)
            report = verify(store)
            refcounts = child_mod.refcount_errors(store)
    finally:
        zygote.close()
        if saved_boot is None:
            os.environ.pop("SNAPD_BOOT_ID", None)
        else:
            os.environ["SNAPD_BOOT_ID"] = saved_boot
    leftovers = [
        os.path.join(d, n)
        for d, _, names in os.walk(ws_dir)
        for n in names
        if n.encode().startswith(b".~snapd-")
    ]
    failed_ids = {f.split(":")[0] for f in failures}
    losses = [
        sid for sid in durable if sid in failed_ids or (sid not in wrong and sid not in present)
    ]
    figures.update(
        snapshots_recorded=len(recorded),
        durable_recorded=len(durable),
        snapshots_verified=len(to_check) - len(failures),
        durable_verified=len([sid for sid in durable if sid not in wrong]) - len(losses),
        losses=len(losses),
        mismatches=len(failures),
        wrong_snapshots=len(wrong),
        wrong_restores=len([e for e in wrong_log if "restore" in e]),
        leftover_temp_files=len(leftovers),
        check_seconds=round(check_seconds, 1),
        start_wait_seconds=round(wait_seconds, 1),
        final_seconds=round(time.monotonic() - t_final, 1),
        seconds=round(time.monotonic() - t0, 1),
    )
    print(f"\ncrash-loop figures (power_loss_every={power_loss_every}): {figures}")
    if error:
        print(f"crash-loop stopped early: {error[:2000]}")
    return {
        "figures": figures,
        "error": error,
        "failures": failures,
        "verify": report,
        "refcounts": refcounts,
        "wrong_log": wrong_log,
        "leftovers": leftovers,
    }


@pytest.fixture(scope="module")
def sigkill_run(tmp_path_factory) -> dict:
    return run_crash_loop(
        tmp_path_factory.mktemp("crashloop"), kills=KILLS, seed=SEED, power_loss_every=None
    )


@pytest.fixture(scope="module")
def power_loss_run(tmp_path_factory) -> dict:
    return run_crash_loop(
        tmp_path_factory.mktemp("powerloss"),
        kills=POWER_LOSS_KILLS,
        seed=SEED + 100_000,
        power_loss_every=POWER_LOSS_EVERY,
    )


def _assert_store_survived(run: dict, kills: int) -> None:
    fig = run["figures"]
    assert run["error"] is None, run["error"]
    assert run["verify"].ok, run["verify"].problems[:5]
    assert not run["refcounts"], run["refcounts"]
    assert not run["failures"], "\n".join(run["failures"][:10])
    assert fig["losses"] == 0
    assert fig["kills"] >= kills
    assert fig["durable_verified"] > 0 and fig["snapshots_verified"] > 0


@pytest.mark.slow
def test_sigkill_loop_loses_no_durable_snapshot(sigkill_run):
    _assert_store_survived(sigkill_run, KILLS)


@pytest.mark.slow
def test_power_loss_loop_loses_no_durable_snapshot(power_loss_run):
    _assert_store_survived(power_loss_run, POWER_LOSS_KILLS)
    fig = power_loss_run["figures"]
    assert fig["power_losses"] >= 1
    assert fig["recovery_lost_objects"] > 0, "the power losses never hit indexed data"


@pytest.mark.slow
def test_sigkill_loop_snapshots_match_the_tree_they_were_taken_of(sigkill_run):
    wrong = sigkill_run["wrong_log"]
    assert not wrong, f"{len(wrong)} wrong snapshots/restores, first: {wrong[:3]}"


def test_full_scan_forgets_a_deleted_file_when_another_appears(tmp_path):
    ws_dir = tmp_path / "ws"
    ws_dir.mkdir()
    treeutil.write(ws_dir, "a", b"a")
    with Store.open(str(tmp_path / "store")) as store:
        ws = Workspace.open(store, str(ws_dir), WorkspaceSettings(watch=False))
        ws.snapshot()
        os.unlink(ws_dir / "a")
        treeutil.write(ws_dir, "b", b"b")
        snap = ws.snapshot()  # hints=None, no watcher: a full scan
        names = [e.path for e in browse.list_dir(store, snap.root_tree)]
        ws.close()
    assert names == ["b"]


# --- power loss, deterministic ------------------------------------------------------------------
def _edit(ws_dir: str, name: str, size: int = 6000) -> None:
    treeutil.write(ws_dir, name, os.urandom(size))


@pytest.mark.parametrize("mode", POWER_LOSS_MODES)
def test_power_loss_drops_only_non_durable_snapshots(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("SNAPD_BOOT_ID", "power-boot-1")
    store_dir, ws_dir = str(tmp_path / "store"), str(tmp_path / "ws")
    os.mkdir(ws_dir)
    scratch = tmp_path / "forks"
    scratch.mkdir()
    settings = WorkspaceSettings(keep_last=50)
    manifests = {}
    with Store.open(store_dir) as store:
        ws = Workspace.open(store, ws_dir, settings)
        _edit(ws_dir, "a/one.bin")
        treeutil.write(ws_dir, "big.bin", os.urandom(1_300_000))  # chunked
        d1 = ws.snapshot(label="d1")
        manifests[d1.id] = child_mod.manifest_of(ws_dir)
        ws.persist(d1.id)
        _edit(ws_dir, "a/two.bin")
        d2 = ws.snapshot(label="d2", durable=True)  # durable in one step
        manifests[d2.id] = child_mod.manifest_of(ws_dir)
        _edit(ws_dir, "a/three.bin")
        n0 = ws.snapshot(label="n0")  # not durable, in the synced pack's tail
        ws.close()
    # A new process writes to a pack of its own, which is never synced.
    with Store.open(store_dir) as store:
        ws = Workspace.open(store, ws_dir, settings)
        _edit(ws_dir, "a/three.bin")
        with open(os.path.join(ws_dir, "big.bin"), "ab") as f:
            f.write(os.urandom(200_000))
        n1 = ws.snapshot(label="n1")
        _edit(ws_dir, "b/four.bin")
        n2 = ws.snapshot(label="n2")
        ws.close()
    assert unsynced_bytes(store_dir) > 0
    _, removed = lose_unsynced_tails(store_dir, mode)
    assert removed == (1 if mode == "drop" else 0)
    monkeypatch.setenv("SNAPD_BOOT_ID", "power-boot-2")
    with Store.open(store_dir) as store:
        rec = store.last_recovery
        assert rec is not None and rec["lost_objects"] > 0
        assert set(rec["dropped_snapshots"]) == {n0.id, n1.id, n2.id}
        assert {s.id for s in store.list_snapshots()} == {d1.id, d2.id}
        assert verify(store).ok
        assert not fork_and_compare(store, manifests, str(scratch))
        # The store keeps working: the workspace head was reset, the next snapshot rescans.
        ws = Workspace.open(store, ws_dir, settings)
        _edit(ws_dir, "c/five.bin")
        s = ws.snapshot()
        manifest = child_mod.manifest_of(ws_dir)
        ws.close()
        assert verify(store).ok
        assert not fork_and_compare(store, {s.id: manifest}, str(scratch))
    # Reopening in the same boot does not recover again.
    with Store.open(store_dir) as store:
        assert store.last_recovery is None


def test_power_loss_without_unsynced_data_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPD_BOOT_ID", "quiet-boot-1")
    store_dir, ws_dir = str(tmp_path / "store"), str(tmp_path / "ws")
    os.mkdir(ws_dir)
    with Store.open(store_dir) as store:
        ws = Workspace.open(store, ws_dir, WorkspaceSettings())
        _edit(ws_dir, "x.bin")
        snap = ws.snapshot(durable=True)
        ws.close()
    assert unsynced_bytes(store_dir) == 0
    monkeypatch.setenv("SNAPD_BOOT_ID", "quiet-boot-2")
    with Store.open(store_dir) as store:
        assert store.last_recovery is not None
        assert store.last_recovery["lost_objects"] == 0
        assert [s.id for s in store.list_snapshots()] == [snap.id]
        assert verify(store).ok


def test_power_loss_truncated_pack_tail_recovers_to_a_clean_verify(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPD_BOOT_ID", "trunc-boot-1")
    store_dir, ws_dir = str(tmp_path / "store"), str(tmp_path / "ws")
    os.mkdir(ws_dir)
    with Store.open(store_dir) as store:
        ws = Workspace.open(store, ws_dir, WorkspaceSettings())
        _edit(ws_dir, "a.bin")
        durable = ws.snapshot(durable=True)
        _edit(ws_dir, "b.bin")
        ws.snapshot()  # not durable: its new objects lie beyond the synced length
        ws.close()
        packs = store.query("SELECT name, synced FROM packs")
        packs_dir = store.packs_dir
    for name, synced in packs:  # the file system lost the unsynced tail (size not persisted)
        os.truncate(os.path.join(packs_dir, f"{name}.pack"), synced)
    monkeypatch.setenv("SNAPD_BOOT_ID", "trunc-boot-2")
    with Store.open(store_dir) as store:
        assert store.last_recovery["lost_objects"] > 0
        assert [s.id for s in store.list_snapshots()] == [durable.id]
        report = verify(store)
        assert report.ok, report.problems


def test_damaged_durable_snapshot_is_reported_not_dropped(tmp_path, monkeypatch):
    """If a durable snapshot's data is lost anyway (disk lied about fsync), recovery keeps its
    record and verify names it, and restoring it fails with DataLoss."""
    monkeypatch.setenv("SNAPD_BOOT_ID", "lie-boot-1")
    store_dir, ws_dir = str(tmp_path / "store"), str(tmp_path / "ws")
    os.mkdir(ws_dir)
    with Store.open(store_dir) as store:
        ws = Workspace.open(store, ws_dir, WorkspaceSettings())
        _edit(ws_dir, "a.bin")
        snap = ws.snapshot(durable=True)
        oid = next(e for e in store.read_tree(snap.root_tree) if e.name == b"a.bin").ref
        info = store.object_info(oid)
        ws.close()
        # The disk "forgets" the synced region: pretend nothing was synced, then zero it.
        with store.transaction() as conn:
            conn.execute("UPDATE packs SET synced = 16")
    with open(os.path.join(store_dir, "packs", f"{info.pack_name}.pack"), "r+b") as f:
        f.seek(info.offset)
        f.write(b"\0" * info.length)
    monkeypatch.setenv("SNAPD_BOOT_ID", "lie-boot-2")
    with Store.open(store_dir) as store:
        assert store.last_recovery["dropped_snapshots"] == []
        report = verify(store)
        assert not report.ok and report.damaged_snapshots == [snap.id]
        ws = Workspace.open(store, ws_dir, WorkspaceSettings())
        treeutil.write(ws_dir, "a.bin", b"changed")
        before = treeutil.capture(ws_dir)
        with pytest.raises(DataLoss):
            ws.restore(snap.id)
        treeutil.assert_same(treeutil.capture(ws_dir), before, "workspace after refused restore")
        ws.close()


def test_recount_refs_keeps_objects_that_garbage_also_refers_to(tmp_path):
    ws_dir = tmp_path / "ws"
    ws_dir.mkdir()
    with Store.open(str(tmp_path / "store")) as store:
        ws = Workspace.open(store, str(ws_dir), WorkspaceSettings(watch=False))
        treeutil.write(ws_dir, "a", os.urandom(5000))
        first = ws.snapshot()
        treeutil.write(ws_dir, "b", os.urandom(5000))
        ws.snapshot()  # its root tree refers to a's object, as first's root tree does
        ws.delete_snapshot(first.id)  # first's root tree is garbage, still counting on a
        ws.close()
        recount_refs(store)
        gc.collect(store)
        report = verify(store)
        assert report.ok, report.problems
