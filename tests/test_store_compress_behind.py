"""Background compression (ObjectWriter.compress_behind): a large ingest compresses what it
read on a helper thread while it reads the next files. Every object must still be stored with
its real payload, exactly once, whatever thread put it and whenever the writer flushes.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import crashloop_child
import pytest
import treeutil

from snapd.store import store as store_mod
from snapd.store.format import CODEC_ZSTD, CODEC_ZSTD_DELTA, CODEC_ZSTD_DICT, KIND_DATA
from snapd.store.store import ObjectWriter
from snapd.store.verify import verify


def _contents(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"import", b"return", b"self", b"\n"]
    return [b" ".join(rng.choice(words) for _ in range(rng.randint(20, 3000))) for _ in range(n)]


def _helpers() -> list[threading.Thread]:
    """Workspace helper threads still running."""
    return [t for t in threading.enumerate() if t.name.startswith("snapd-compress")]


@pytest.fixture
def helper():
    pool = ThreadPoolExecutor(1, thread_name_prefix="test-compress")
    yield pool
    pool.shutdown(wait=True)


def _idle(w: ObjectWriter, helper: ThreadPoolExecutor) -> bool:
    """The writer has nothing in flight and the helper is free to run new work at once."""
    return not w._inflight and not w._batch and helper.submit(lambda: True).result(timeout=5)


def test_objects_compressed_behind_are_stored_exactly(store, tmp_path, monkeypatch, helper) -> None:
    # Small flush thresholds: the writer flushes to the packs several times mid-ingest.
    monkeypatch.setattr(store_mod, "FLUSH_OBJECTS", 50)
    monkeypatch.setattr(store_mod, "BEHIND_BATCH_OBJECTS", 7)
    datas = _contents(300)
    datas += datas[:20]  # repeats dedup against objects still being compressed
    ws_id = store.ensure_workspace(str(tmp_path / "w"), {}).id
    with store.writer() as w:
        w.compress_behind(helper)
        ids = [w.put(KIND_DATA, d) for d in datas]
        w.hand_over()
        assert w.new_objects == 300 and w.reused == 20
        stored = w.new_bytes
        w.commit(workspace_id=ws_id)
    assert _idle(w, helper)
    for oid, d in zip(ids, datas, strict=True):
        assert store.read(oid) == d
        assert store.object_info(oid).codec in (CODEC_ZSTD, CODEC_ZSTD_DICT)
    assert 0 < stored < sum(map(len, datas[:300]))  # compressed sizes, counted by the helper
    assert verify(store).ok


def test_commit_waits_for_objects_still_being_compressed(store, tmp_path, helper) -> None:
    """The commit waits for the helper, and never writes an object without its payload."""
    datas = _contents(100, seed=3)
    ws_id = store.ensure_workspace(str(tmp_path / "w"), {}).id
    with store.writer() as w:
        w.compress_behind(helper)
        ids = [w.put(KIND_DATA, d) for d in datas]
        w.commit(workspace_id=ws_id)
    assert _idle(w, helper)
    for oid, d in zip(ids, datas, strict=True):
        assert store.object_info(oid).codec in (CODEC_ZSTD, CODEC_ZSTD_DICT)
        assert store.read(oid) == d


def test_threads_putting_at_once_lose_nothing(store, tmp_path, helper) -> None:
    datas = _contents(400, seed=11)
    ws_id = store.ensure_workspace(str(tmp_path / "w"), {}).id
    ids: dict[int, bytes] = {}
    with store.writer() as w:
        w.compress_behind(helper)

        def put(k: int) -> None:
            for i in range(k, len(datas), 4):
                ids[i] = w.put(KIND_DATA, datas[i])

        threads = [threading.Thread(target=put, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        w.commit(workspace_id=ws_id)
    for i, d in enumerate(datas):
        assert store.read(ids[i]) == d


def test_a_failure_on_the_helper_fails_the_commit_and_stores_nothing(
    store, tmp_path, monkeypatch, helper
) -> None:
    datas = _contents(80, seed=5)
    poison = datas[40]
    real = ObjectWriter._plain

    def failing(self, kind, raw):
        if raw == poison:
            raise MemoryError("injected: the helper could not compress")
        return real(self, kind, raw)

    monkeypatch.setattr(ObjectWriter, "_plain", failing)
    ws_id = store.ensure_workspace(str(tmp_path / "w"), {}).id
    with pytest.raises(MemoryError, match="injected"), store.writer() as w:
        w.compress_behind(helper)
        ids = [w.put(KIND_DATA, d) for d in datas]
        w.commit(workspace_id=ws_id)
    assert _idle(w, helper)
    assert store.object_infos(ids) == {}  # nothing of the failed commit reached the catalog
    assert verify(store).ok


def test_a_writer_dropped_without_commit_leaves_nothing_running(store, helper, monkeypatch) -> None:
    """Batches still queued when the writer is dropped are cancelled, the running one ends
    before the writer lets go of the store, and nothing is stored."""
    real = ObjectWriter._compress_batch
    done: list[int] = []

    def slow(self, batch):
        time.sleep(0.05)
        real(self, batch)
        done.append(len(batch))

    monkeypatch.setattr(ObjectWriter, "_compress_batch", slow)
    with store.writer() as w:
        w.compress_behind(helper)
        ids = [w.put(KIND_DATA, d) for d in _contents(400, seed=9)]  # 6 batches handed over
    finished = len(done)
    assert finished < 6  # the queued ones were cancelled
    assert _idle(w, helper)
    time.sleep(0.2)
    assert len(done) == finished  # and none ran later
    assert store.object_infos(ids) == {}


def test_snapshots_compress_behind_on_the_workspace_helper_and_restore_exactly(
    open_ws, ws_dir, store, monkeypatch
) -> None:
    """A workspace's large ingests hand compression to its own helper thread: new files,
    chunks of a large file and changed files (deltas against their previous version) all come
    back exactly, and closing the workspace ends the helper."""
    helpers: list = []
    real = ObjectWriter.compress_behind

    def spy(self, helper=None):
        helpers.append(helper)
        return real(self, helper)

    monkeypatch.setattr(ObjectWriter, "compress_behind", spy)
    datas = _contents(150, seed=21)
    for i, d in enumerate(datas):
        treeutil.write(ws_dir, f"pkg{i % 7}/mod{i}.py", d)
    treeutil.write(ws_dir, "big.bin", os.urandom(3 << 20))  # chunked: chunks go behind too
    ws = open_ws(ws_dir, watch=False)  # no background walk after open: snapshot() ingests
    before = treeutil.capture(ws_dir)
    first = ws.snapshot()
    assert helpers and all(h is helpers[0] and h is not None for h in helpers)
    for i in range(0, 150, 2):  # 75 small edits: deltas, compressed on the helper
        treeutil.write(ws_dir, f"pkg{i % 7}/mod{i}.py", datas[i] + b"# edited\n")
    edited = treeutil.capture(ws_dir)
    second = ws.snapshot()
    deltas = store.query("SELECT count(*) FROM objects WHERE codec=?", (CODEC_ZSTD_DELTA,))
    assert deltas[0][0] >= 60
    assert len(helpers) >= 2  # the first snapshot and the edits both used it
    for i in range(0, 150, 3):
        os.unlink(os.path.join(ws_dir, f"pkg{i % 7}/mod{i}.py"))
    treeutil.write(ws_dir, "big.bin", b"smaller now")
    ws.restore(first.id)
    treeutil.assert_same(treeutil.capture(ws_dir), before)
    ws.restore(second.id)
    treeutil.assert_same(treeutil.capture(ws_dir), edited)
    assert crashloop_child.refcount_errors(store) == []
    assert verify(store).ok
    ws.close()
    assert not _helpers()


def test_an_object_still_being_compressed_is_no_delta_base(store, helper) -> None:
    """Whether it ends up a delta is not known yet, and a delta's base must be a full object
    (chains are one deep): a later version of it is compressed without it."""
    gate = threading.Event()
    real = ObjectWriter._compress

    def slow(self, kind, raw, found):
        gate.wait(10)
        return real(self, kind, raw, found)

    with store.writer() as w:
        w.compress_behind(helper)
        w._compress = slow.__get__(w)
        first = w.put(KIND_DATA, b"version one " * 100)
        w.hand_over()
        assert w._delta_base(KIND_DATA, first) is None
        gate.set()
        w._drain()
        assert w._delta_base(KIND_DATA, first) == (first, b"version one " * 100)


def test_the_dictionary_is_trained_on_the_helper_and_used_for_small_files(
    open_ws, ws_dir, store, tmp_path, monkeypatch
) -> None:
    """A first ingest of 500+ files trains the store's dictionary on the helper thread, ahead
    of the batches that compress with it; the files read back exactly, after a reopen too."""
    from snapd import browse
    from snapd.store.store import Store

    threads: list[str] = []
    real = Store.install_dictionary

    def spy(self, samples):
        threads.append(threading.current_thread().name)
        return real(self, samples)

    monkeypatch.setattr(Store, "install_dictionary", spy)
    datas = _contents(600, seed=33)
    for i, d in enumerate(datas):
        treeutil.write(ws_dir, f"src/m{i % 20}/f{i}.py", d[:12000])
    ws = open_ws(ws_dir, watch=False)  # no background walk after open: snapshot() ingests
    snap = ws.snapshot()
    assert len(threads) == 1 and threads[0].startswith("snapd-compress")
    dict_id = store.dictionary()[0]
    used = store.query(
        "SELECT count(*) FROM objects WHERE codec=? AND base=?", (CODEC_ZSTD_DICT, dict_id)
    )
    assert used[0][0] > 300
    ws.close()
    store.close()
    again = Store.open(store.root)
    try:
        for i in range(0, 600, 37):
            _, chunks = browse.read_file(again, snap.root_tree, f"src/m{i % 20}/f{i}.py")
            assert b"".join(chunks) == datas[i][:12000]
        assert verify(again).ok
    finally:
        again.close()


def test_a_snapshot_counts_the_bytes_its_helper_stored(open_ws, ws_dir, monkeypatch) -> None:
    """new_bytes in a snapshot's stats includes what the helper was still compressing when
    the walk ended (the helper is slowed down here to make that certain)."""
    import time

    real = ObjectWriter._compress_batch

    def slow(self, batch):
        time.sleep(0.2)
        return real(self, batch)

    monkeypatch.setattr(ObjectWriter, "_compress_batch", slow)
    treeutil.write(ws_dir, "random.bin", os.urandom(300_000))  # incompressible: stored raw
    for i in range(70):  # enough files for the helper to be used
        treeutil.write(ws_dir, f"small/f{i}", b"%d" % i)
    snap = open_ws(ws_dir, watch=False).snapshot()  # the ingest (no background walk)
    assert snap.stats["new_objects"] >= 72 and snap.stats["new_bytes"] >= 300_000


def test_after_a_failure_on_the_helper_the_writer_refuses_everything(
    store, monkeypatch, helper
) -> None:
    """A failed batch fails the writer for good: a later put, flush or commit raises the same
    error, and no object without its payload ever reaches a pack (even when the caller goes on
    after the first error, as a scan does with per-file errors)."""
    real = ObjectWriter._compress_batch
    calls: list[int] = []

    def fail_first(self, batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise OSError(5, "Input/output error (injected)")
        return real(self, batch)

    monkeypatch.setattr(ObjectWriter, "_compress_batch", fail_first)
    monkeypatch.setattr(store_mod, "BEHIND_BATCH_OBJECTS", 4)
    datas = _contents(40, seed=41)
    packs_before = store.query("SELECT count(*), coalesce(sum(size), 0) FROM packs")
    with store.writer() as w:
        w.compress_behind(helper)
        for d in datas[:8]:  # two batches handed over; the first fails on the helper
            w.put(KIND_DATA, d)
        with pytest.raises(OSError, match="injected"):
            w.flush()
        for call in (lambda: w.put(KIND_DATA, datas[20]), w.flush, w.wait):
            with pytest.raises(OSError, match="injected"):
                call()
    assert _idle(w, helper)
    assert store.query("SELECT count(*), coalesce(sum(size), 0) FROM packs") == packs_before
    assert store.query("SELECT count(*) FROM objects") == [(0,)]
