"""References of delta-compressed trees: a new version of a directory counts only the children
its delta base does not name (store.delta_edges), and holds its base.

What must hold: the documented invariant (crashloop_child.refcount_errors checks it
independently of the store's code) after snapshots, evictions, GC and restores; a one-file
change takes a handful of references instead of one per entry; GC frees a base only with its
last delta; and a store counted under the old rule (every child) is recounted once on open.
"""

from __future__ import annotations

import random

import crashloop_child
import treeutil
from hypothesis import given
from hypothesis import strategies as st

from snapd.store import gc
from snapd.store.format import CODEC_ZSTD_DELTA, CODEC_ZSTD_DICT, KIND_TREE
from snapd.store.store import Store, _rebase, delta_edges
from snapd.store.verify import recount_refs, verify

ENTRIES = 60


def _fill(root: str, tag: str = "v1") -> None:
    for i in range(ENTRIES):
        treeutil.write(root, f"dir/f{i:03}.txt", f"{tag} file {i}\n" * 10)


def _refs(store: Store, oid: bytes) -> int:
    return store.query("SELECT refs FROM objects WHERE id=?", (oid,))[0][0]


def _entry_id(store: Store, tree: bytes, name: bytes) -> bytes:
    return next(e.ref for e in store.read_tree(tree) if e.name == name)


def test_delta_edges_is_an_ordered_multiset_difference():
    a, b, c = b"a" * 16, b"b" * 16, b"c" * 16
    assert delta_edges([a, b, c], []) == [a, b, c]
    assert delta_edges([a, b, a, c], [a, c]) == [b, a]
    assert delta_edges([a, a], [a, a, a]) == []
    assert delta_edges([c, b], [a]) == [c, b]


def _one_file_change(ws, store, name: str) -> tuple[bytes, bytes]:
    """Snapshot `dir` (after _fill), change one file, snapshot again: (old tree, new tree),
    the new one stored as a delta against the old one."""
    first = ws.snapshot()
    treeutil.write(ws.path, f"dir/{name}", "changed\n")
    second = ws.snapshot()
    old_dir = _entry_id(store, first.root_tree, b"dir")
    new_dir = _entry_id(store, second.root_tree, b"dir")
    info = store.object_info(new_dir)
    assert info.codec == CODEC_ZSTD_DELTA and info.base == old_dir
    return old_dir, new_dir


def test_a_one_file_change_counts_only_the_new_file(ws, store):
    _fill(ws.path)
    old_dir, new_dir = _one_file_change(ws, store, "f007.txt")
    # The new tree holds its base and the changed file, nothing else.
    assert store.children(new_dir, KIND_TREE) == [_entry_id(store, new_dir, b"f007.txt")]
    store.settle_refs()  # the first tree (60 children) counted them after its commit
    kept = store.read_tree(new_dir)
    unchanged = next(e.ref for e in kept if e.name == b"f001.txt")
    assert _refs(store, unchanged) == 1  # through the old tree only
    assert _refs(store, old_dir) == 2  # the first root tree and its delta
    assert crashloop_child.refcount_errors(store) == []
    assert recount_refs(store)["objects_fixed"] == 0


def test_gc_keeps_a_base_while_a_delta_needs_it(ws, store):
    _fill(ws.path, "v1")
    first = ws.snapshot()
    treeutil.write(ws.path, "dir/f003.txt", "changed\n")
    second = ws.snapshot()
    expected = treeutil.capture(ws.path)
    ws.delete_snapshot(first.id, force=True)
    gc.collect(store, max_unused=0.0)
    assert crashloop_child.refcount_errors(store) == []
    assert verify(store, snapshot_ids=[second.id]).ok
    treeutil.write(ws.path, "dir/f004.txt", "scribble\n")
    ws.restore(second.id)
    treeutil.assert_same(treeutil.capture(ws.path), expected, "restored after GC")
    # Once no delta needs them, the old tree and the old file go.
    _fill(ws.path, "v2")
    ws.snapshot()
    for rec in ws.snapshots():
        ws.delete_snapshot(rec.id, force=True)
    ws.snapshot()
    gc.collect(store, max_unused=0.0)
    assert crashloop_child.refcount_errors(store) == []
    assert recount_refs(store)["objects_fixed"] == 0
    live = {e.name for e in store.read_tree(ws.snapshots()[0].root_tree)}
    assert b"dir" in live
    assert verify(store).ok


def test_many_versions_of_a_directory_keep_exact_counts(ws, store):
    _fill(ws.path)
    snaps = [ws.snapshot()]
    for i in range(12):
        treeutil.write(ws.path, f"dir/f{i * 5:03}.txt", f"edit {i}\n")
        treeutil.write(ws.path, f"dir/new{i}.txt", f"added {i}\n")
        snaps.append(ws.snapshot())
        assert crashloop_child.refcount_errors(store) == []
    for rec in snaps[1:-1:2]:
        ws.delete_snapshot(rec.id, force=True)
    gc.collect(store, max_unused=0.0)
    assert crashloop_child.refcount_errors(store) == []
    assert recount_refs(store)["objects_fixed"] == 0
    assert verify(store).ok


def test_a_store_counted_under_the_old_rule_is_recounted_on_open(tmp_path):
    root = str(tmp_path / "store")
    ws_dir = tmp_path / "ws"
    ws_dir.mkdir()
    store = Store.open(root)
    from snapd.workspace import Workspace, WorkspaceSettings

    ws = Workspace.open(store, str(ws_dir), WorkspaceSettings(watch=False))
    _fill(str(ws_dir))
    ws.snapshot()
    treeutil.write(str(ws_dir), "dir/f001.txt", "changed\n")
    ws.snapshot()
    ws.close()
    # As an older snapd left it: no refs_rule mark, and every child counted by every tree.
    with store.transaction() as conn:
        conn.execute("DELETE FROM meta WHERE key='refs_rule'")
        conn.execute("UPDATE objects SET refs = refs + 1 WHERE kind != ?", (KIND_TREE,))
    store.close()
    store = Store.open(root)
    try:
        assert crashloop_child.refcount_errors(store) == []
        assert store.query("SELECT value FROM meta WHERE key='refs_rule'") == [("2",)]
    finally:
        store.close()


def test_delta_contexts_are_reused_per_base_and_decode_exactly():
    """compress_delta keeps a context per base id: the same base gives the same frames as a
    fresh context, a large base is not cached, and every frame decodes with its base."""
    from snapd.store import codec

    base = b"".join(b"entry %05d " % i + bytes([i % 251]) * 40 for i in range(200))
    versions = [base.replace(b"entry 00%03d" % i, b"ENTRY 00%03d" % i) for i in range(5)]
    bid = b"\x01" * 16
    fresh = [codec.compress_delta(v, base) for v in versions]
    cached = [codec.compress_delta(v, base, base_id=bid) for v in versions]
    assert (bid, codec.DEFAULT_LEVEL) in codec._delta_cctx
    for v, a, b in zip(versions, fresh, cached, strict=True):
        assert len(b) < len(v) // 8
        for frame in (a, b):
            assert codec.decompress(codec.CODEC_ZSTD_DELTA, frame, len(v), base, bid) == v
    big = base * 200  # above DELTA_CONTEXT_MAX_BASE
    big_id = b"\x02" * 16
    z = codec.compress_delta(big + b"tail", big, base_id=big_id)
    assert (big_id, codec.DEFAULT_LEVEL) not in codec._delta_cctx
    assert codec.decompress(codec.CODEC_ZSTD_DELTA, z, len(big) + 4, big, big_id) == big + b"tail"


def test_objects_another_writer_stored_first_count_their_references_once(store, tmp_path):
    """New objects are inserted with the references the other new objects give them. When
    another writer stored the same objects first, this writer's copies are dead bytes and
    their references must not count a second time."""
    from snapd.store.format import ENTRY_DIR, ENTRY_FILE, KIND_DATA, TreeEntry, encode_tree

    def put_tree(w, tag: bytes) -> bytes:
        files = [w.put(KIND_DATA, tag + b" file %d\n" % i * 50) for i in range(3)]
        shared = w.put(KIND_DATA, b"the same in both trees\n" * 50)
        sub = w.put(
            KIND_TREE,
            encode_tree(
                [TreeEntry(b"f%d" % i, ENTRY_FILE, 0o644, 1, 1, f) for i, f in enumerate(files)]
                + [TreeEntry(b"s", ENTRY_FILE, 0o644, 1, 1, shared)]
            ),
            children=[*files, shared],
        )
        return w.put(
            KIND_TREE,
            encode_tree([TreeEntry(b"sub", ENTRY_DIR, 0o755, 1, 0, sub)]),
            children=[sub],
        )

    ws_a = store.ensure_workspace(str(tmp_path / "a"), {}).id
    ws_b = store.ensure_workspace(str(tmp_path / "b"), {}).id
    with store.writer() as w1, store.writer() as w2:
        root1 = put_tree(w1, b"same")
        root2 = put_tree(w2, b"same")  # the same objects, decided before either commits
        root3 = put_tree(w2, b"other")  # and new ones that share a file with them
        w1.commit(workspace_id=ws_a, head=root1)
        w2.commit(workspace_id=ws_b, head=root3)
    assert root1 == root2
    assert crashloop_child.refcount_errors(store) == []
    assert recount_refs(store)["objects_fixed"] == 0
    gc.collect(store, max_unused=0.0)  # root2's copies are garbage-free: nothing is lost
    assert verify(store).ok


def test_catalog_rows_of_many_objects_in_one_lookup(ws, store):
    """object_infos answers as object_info does, leaves absent ids out, and spans batches;
    a writer's prefetched bases are the rows its deltas then use."""
    _fill(ws.path)
    old_dir, _ = _one_file_change(ws, store, "f011.txt")
    ids = [e.ref for e in store.read_tree(old_dir)]
    absent = [bytes([i]) * 16 for i in range(3)]
    many = (ids + absent) * 9  # 567 ids with repeats: two batches
    infos = store.object_infos(many)
    assert set(infos) == set(ids)
    for oid in ids:
        assert infos[oid] == store.object_info(oid)

    with store.writer() as w:
        w.prefetch_bases([old_dir, *absent])
        assert w._base_infos == {old_dir: store.object_info(old_dir)}  # one row, no absent ids
        assert w._delta_base(KIND_TREE, old_dir) == (old_dir, store.read(old_dir))
        assert w._delta_base(KIND_TREE, absent[0]) is None


def test_a_directory_that_drifts_from_its_base_is_stored_whole_again(ws, store):
    """Each version of `dir` changes another file. Every version is a delta against the same
    full tree, so the children it names that its base does not grow by one per version; once
    they are many (store._rebase) the version is stored whole and becomes the next base. No
    version takes more than that bound of references in its commit, and every one reads back."""
    _fill(ws.path)
    snaps = [ws.snapshot()]
    edges, whole = [], 0
    for i in range(ENTRIES // 2):
        treeutil.write(ws.path, f"dir/f{i:03}.txt", f"edit {i}\n")
        snaps.append(ws.snapshot())
        tree = _entry_id(store, snaps[-1].root_tree, b"dir")
        info = store.object_info(tree)
        if info.codec == CODEC_ZSTD_DELTA:
            edges.append(len(store.children(tree, KIND_TREE)))
        else:
            whole += 1
    # sqrt(2 * 60) ~ 11: re-based after ~11 drifted entries, so 30 versions make 2 whole ones.
    assert whole >= 2
    assert max(edges) <= 11
    assert not _rebase(1, ENTRIES) and _rebase(11, ENTRIES)
    assert crashloop_child.refcount_errors(store) == []
    for rec in snaps[::3]:
        assert verify(store, snapshot_ids=[rec.id]).ok
    for rec in snaps[1:-1]:
        ws.delete_snapshot(rec.id, force=True)
    gc.collect(store, max_unused=0.0)
    assert crashloop_child.refcount_errors(store) == []
    assert verify(store).ok


def test_reading_a_dictionary_compressed_object_asks_the_catalog_nothing(ws, store):
    """A small file's previous version is read as the delta base of its next one: with the
    dictionary in memory, that read costs no catalog query for the dictionary's row."""
    rng = random.Random(5)
    words = [f"{w}_{i}" for i in range(40) for w in ("self", "value", "item", "count", "node")]
    for i in range(600):  # enough varied small files for a first snapshot to train one
        lines = [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(40)]
        treeutil.write(ws.path, f"src/m{i % 20}/f{i}.py", "\n".join(lines) + "\n")
    ws.snapshot()
    d = store.dictionary()
    assert d is not None
    rows = store.query("SELECT id FROM objects WHERE codec=? LIMIT 5", (CODEC_ZSTD_DICT,))
    assert rows
    asked: list[str] = []
    query = store.query

    def counting(sql: str, args: tuple = ()):
        asked.append(sql)
        return query(sql, args)

    store.query = counting  # every catalog read of the store goes through it
    try:
        for (oid,) in rows:
            info = store.object_info(oid)
            asked.clear()
            raw = store._read_info(info)
            assert store.keys.object_id(info.kind, raw) == oid
            assert asked == []
    finally:
        del store.query


_few_ids = st.lists(st.sampled_from([bytes([i]) * 32 for i in range(6)]), max_size=12)


@given(_few_ids, _few_ids)
def test_delta_edges_is_the_multiset_difference_in_the_objects_order(kids, base_kids):
    """The fast path (no repeated id) and the counting loop give what a plain multiset
    difference gives: each id of kids beyond as many copies as base_kids has, in order."""
    left = list(base_kids)
    expected = []
    for k in kids:
        if k in left:
            left.remove(k)
        else:
            expected.append(k)
    assert delta_edges(kids, base_kids) == expected
