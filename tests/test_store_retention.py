"""Retention: which snapshots survive eviction, and that GC gives the space of the rest back.

Eviction runs inside each snapshot's commit (snapd.store.store._evict). The rules under test (the
issue's): the newest `keep_last` snapshots of any origin form the window (safety snapshots taken by
restores count in it); durable snapshots are also kept while they are among the newest
`keep_durable` durable ones or younger than `durable_max_age`; pinned ones are never evicted.
`expected_kept` below restates those rules independently; the tests compare the store with it.
"""

from __future__ import annotations

import os
import random
import shutil
import time

import pytest
import treeutil

from snapd.store import gc
from snapd.store.catalog import SnapshotRecord
from snapd.store.store import Store
from snapd.store.verify import verify
from snapd.workspace import Workspace, WorkspaceSettings, fork


def expected_kept(
    snaps: list[SnapshotRecord],
    *,
    keep_last: int,
    keep_durable: int,
    durable_max_age: float | None = None,
    now: float | None = None,
) -> set[str]:
    """The ids the rules keep, given every snapshot ever taken, oldest first (as it is now)."""
    now = time.time() if now is None else now
    newest_first = list(reversed(snaps))
    window = {s.id for s in newest_first[:keep_last]}
    pinned = {s.id for s in snaps if s.pinned}
    durable = [s for s in newest_first if s.durable]
    by_count = {s.id for s in durable[:keep_durable]}
    by_age = (
        {s.id for s in durable if now - s.created_at <= durable_max_age}
        if durable_max_age is not None
        else set()
    )
    return window | pinned | by_count | by_age


def _ids(ws: Workspace) -> set[str]:
    return {s.id for s in ws.snapshots()}


def _labels(ws: Workspace) -> list[str]:
    return [s.label for s in reversed(ws.snapshots())]  # oldest first


@pytest.fixture
def make_ws(tmp_path):
    """make_ws(**settings) -> (store, workspace) on a fresh store; closed after the test."""
    opened: list = []

    def _make(**settings) -> tuple[Store, Workspace]:
        n = len(opened)
        store = Store.open(str(tmp_path / f"store{n}"))
        ws_dir = tmp_path / f"ws{n}"
        ws_dir.mkdir()
        ws = Workspace.open(store, str(ws_dir), WorkspaceSettings(watch=False, **settings))
        opened.append((store, ws))
        return store, ws

    yield _make
    for store, ws in opened:
        ws.close()
        store.close()


def _step(ws: Workspace, i: int, **kw) -> SnapshotRecord:
    treeutil.write(ws.path, f"f{i % 7}.txt", f"step {i}\n" * 20)
    return ws.snapshot(label=f"s{i}", **kw)


def test_window_keeps_the_newest_n(make_ws):
    _, ws = make_ws(keep_last=5, keep_durable=20)
    for i in range(5 + 7):
        _step(ws, i)
    assert _labels(ws) == [f"s{i}" for i in range(7, 12)]


def test_window_of_one_keeps_only_the_latest(make_ws):
    _, ws = make_ws(keep_last=1, keep_durable=0)
    for i in range(4):
        rec = _step(ws, i)
    assert [s.id for s in ws.snapshots()] == [rec.id]


def test_durable_snapshots_are_kept_by_their_own_count(make_ws):
    _, ws = make_ws(keep_last=3, keep_durable=2)
    for i in range(12):
        if i in (1, 6):
            _step(ws, i, durable=True)  # durable in one step
        else:
            rec = _step(ws, i)
            if i in (4, 9):
                ws.persist(rec.id)  # made durable afterwards
    # s9 and s6 are the two newest durable ones; s4 and s1 fell out of the count.
    assert _labels(ws) == ["s6", "s9", "s10", "s11"]
    assert {s.label for s in ws.snapshots() if s.durable} == {"s6", "s9"}


def test_persisting_a_snapshot_in_the_window_keeps_it_beyond_the_window(make_ws):
    _, ws = make_ws(keep_last=2, keep_durable=5)
    first = _step(ws, 0)
    _step(ws, 1)
    ws.persist(first.id)
    for i in range(2, 8):
        _step(ws, i)
    assert _labels(ws) == ["s0", "s6", "s7"]


def test_durable_snapshots_are_kept_by_age(make_ws):
    store, ws = make_ws(keep_last=2, keep_durable=1, durable_max_age=3600)
    for i in range(4):
        _step(ws, i, durable=True)
    # Age the first two by rewriting their creation time: the catalog is the only clock eviction
    # reads, and this keeps the test free of sleeps.
    now = time.time()
    ages = {"s0": 7200, "s1": 5400, "s2": 600, "s3": 60}
    with store.transaction() as conn:
        for label, age in ages.items():
            conn.execute("UPDATE snapshots SET created_at=? WHERE label=?", (now - age, label))
    for i in range(4, 8):
        _step(ws, i)
    # s3 is the newest durable one (count), s2 is young enough (age), s0 and s1 are too old.
    assert _labels(ws) == ["s2", "s3", "s6", "s7"]


def test_pinned_snapshots_are_never_evicted(make_ws):
    _, ws = make_ws(keep_last=1, keep_durable=0)
    a = _step(ws, 0, pinned=True)
    b = _step(ws, 1)
    ws.pin(b.id)
    for i in range(2, 6):
        _step(ws, i)
    assert _labels(ws) == ["s0", "s1", "s5"]
    ws.pin(a.id, False)
    _step(ws, 6)
    assert _labels(ws) == ["s1", "s6"]


def test_safety_snapshots_count_in_the_window(make_ws):
    _, ws = make_ws(keep_last=3, keep_durable=0)
    s = [_step(ws, i) for i in range(3)]
    treeutil.write(ws.path, "unsaved.txt", "edit not snapshotted yet\n")
    res = ws.restore(s[1].id)
    assert res.safety_snapshot_id is not None
    safety = ws.get_snapshot(res.safety_snapshot_id)
    assert safety.origin == "safety"
    # The window is now [safety, s2, s1]: the safety snapshot pushed s0 out.
    assert [x.id for x in ws.snapshots()] == [safety.id, s[2].id, s[1].id]
    _step(ws, 3)
    assert [x.id for x in ws.snapshots()][1:] == [safety.id, s[2].id]


def test_random_histories_follow_the_rules(make_ws):
    rng = random.Random(7)
    for trial in range(6):
        keep_last, keep_durable = rng.randint(1, 6), rng.randint(0, 4)
        _, ws = make_ws(keep_last=keep_last, keep_durable=keep_durable)
        history: list[SnapshotRecord] = []
        for i in range(rng.randint(5, 25)):
            if history and rng.random() < 0.2:  # change flags; eviction runs at the next commit
                victim = rng.choice(ws.snapshots())
                if rng.random() < 0.5:
                    ws.persist(victim.id)
                else:
                    ws.pin(victim.id, not victim.pinned)
            history.append(_step(ws, i, durable=rng.random() < 0.3, pinned=rng.random() < 0.1))
            present = ws.snapshots()
            assert _ids(ws) == expected_kept(
                list(reversed(present)), keep_last=keep_last, keep_durable=keep_durable
            ), f"trial {trial} step {i}"
            # Nothing evicted ever comes back, and nothing kept was ever evicted before.
            assert {s.id for s in present} <= {h.id for h in history}


# --- space comes back ---------------------------------------------------------------------------
def du(path: str) -> int:
    """Bytes allocated on disk below `path`, as `du` counts them."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def _edit_stream(ws_dir: str, rng: random.Random, step: int) -> None:
    """Incompressible content, so disk usage measures what is kept, not how well it packs."""
    if step == 0:
        for i in range(20):
            treeutil.write(ws_dir, f"d{i % 4}/f{i}.bin", rng.randbytes(100_000))
        return
    for _ in range(5):
        i = rng.randrange(20)
        treeutil.write(ws_dir, f"d{i % 4}/f{i}.bin", rng.randbytes(100_000))


def _materialize(src: str, dst: str) -> None:
    """Make dst an exact copy of src (content, modes, mtimes, symlinks)."""
    for name in os.listdir(dst):
        p = os.path.join(dst, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s) and not os.path.islink(s):
            shutil.copytree(s, d, symlinks=True)
        else:
            shutil.copy2(s, d, follow_symlinks=False)


def rebuild_fresh(store: Store, snap_ids: list[str], base: str) -> str:
    """A new store holding only `snap_ids` (oldest first), taken in that order from one workspace
    the way the originals were (so deltas and dedup have the same chances). Returns its path."""
    fresh_dir, work, scratch = (os.path.join(base, n) for n in ("fresh", "rebuild", "scratch"))
    os.mkdir(work)
    os.mkdir(scratch)
    with Store.open(fresh_dir) as fresh:
        ws = Workspace.open(fresh, work, WorkspaceSettings(watch=False, keep_last=1_000_000))
        for sid in snap_ids:
            tmp = os.path.join(scratch, sid)
            forked, _ = fork(store, sid, tmp, WorkspaceSettings(watch=False))
            forked.close()
            store.remove_workspace(forked.id)
            _materialize(tmp, work)
            shutil.rmtree(tmp)
            ws.snapshot(label=sid)
        ws.close()
        assert len(fresh.list_snapshots()) == len(snap_ids)
        gc.collect(fresh)
    return fresh_dir


@pytest.mark.parametrize(
    ("keep_durable", "extra"),
    [
        (2, 15),
        (0, 6),
    ],
)
def test_after_gc_disk_usage_is_within_10_percent_of_a_fresh_store(tmp_path, keep_durable, extra):
    keep_last = 5
    rng = random.Random(extra)
    store_dir, ws_dir = str(tmp_path / "store"), str(tmp_path / "ws")
    os.mkdir(ws_dir)
    with Store.open(store_dir) as store:
        settings = WorkspaceSettings(watch=False, keep_last=keep_last, keep_durable=keep_durable)
        ws = Workspace.open(store, ws_dir, settings)
        for step in range(keep_last + extra):
            _edit_stream(ws_dir, rng, step)
            ws.snapshot(label=f"s{step}", durable=keep_durable > 0 and step % 4 == 1)
        ws.close()
        kept_records = list(reversed(store.list_snapshots(ws.id)))
        kept = [s.id for s in kept_records]
        assert set(kept) == expected_kept(
            kept_records, keep_last=keep_last, keep_durable=keep_durable
        )
        assert len(kept) == keep_last + (1 if keep_durable else 0)  # + durable beyond it
        before = du(store_dir)
        result = gc.collect(store)
        assert result["complete"]
        assert verify(store).ok
        fresh_dir = rebuild_fresh(store, kept, str(tmp_path))
        # The rebuild forked into scratch workspaces (since removed): collect their leftovers
        # so that only the kept snapshots' data is measured.
        gc.collect(store)
        after = du(store_dir)
    fresh = du(fresh_dir)
    print(
        f"\nextra={extra}: before GC {before / 1e6:.2f} MB, after GC {after / 1e6:.2f} MB, "
        f"fresh store {fresh / 1e6:.2f} MB, ratio {after / fresh:.3f}"
    )
    assert abs(after - fresh) <= 0.10 * fresh
