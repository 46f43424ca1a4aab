"""Wide directories: a directory of more than format.SPLIT_MIN_ENTRIES entries is stored as an
index of parts (content-defined runs of its sorted entries), so that a change stores one part.

What must hold: snapshots and restores of wide directories are exact (also when a directory
crosses the threshold either way), an edit or an insertion changes only the parts around it,
reference counts stay exact through GC, and a damaged part is reported by verify with the
snapshot and path and refused by restore. The property test runs with tiny thresholds, so
that random trees split, merge and shift their boundaries all the time.
"""

from __future__ import annotations

import os
import shutil

import crashloop_child
import pytest
import treeutil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapd import index
from snapd.errors import DataLoss
from snapd.store import format as fmt
from snapd.store import gc
from snapd.store.store import Store
from snapd.store.verify import verify
from snapd.workspace import Workspace, WorkspaceSettings

WIDE = fmt.SPLIT_MIN_ENTRIES + 3000


def _fill(root: str, n: int, tag: str = "v1") -> None:
    for i in range(n):
        treeutil.write(root, f"wide/f{i:05}.js", f"{tag} {i}\n")


def _parts(store: Store, tree_id: bytes) -> list[bytes]:
    raw = store.read(tree_id, fmt.KIND_TREE)
    assert fmt.is_tree_index(raw), "the wide directory should be stored as an index of parts"
    return [pid for _, pid in fmt.decode_tree_index(raw)]


def _wide_tree(store: Store, snap) -> bytes:
    (entry,) = [e for e in store.read_tree(snap.root_tree) if e.name == b"wide"]
    return entry.ref


def test_wide_directory_is_split_and_round_trips(ws, store):
    _fill(ws.path, WIDE)
    first = ws.snapshot()
    expected = treeutil.capture(ws.path)
    parts = _parts(store, _wide_tree(store, first))
    assert len(parts) >= 3
    sizes = [n for n, _ in fmt.decode_tree_index(store.read(_wide_tree(store, first)))]
    assert sum(sizes) == WIDE and max(sizes) <= fmt.PART_MAX_ENTRIES
    assert [e.name for e in store.read_tree(_wide_tree(store, first))] == sorted(
        os.fsencode(n) for n in os.listdir(os.path.join(ws.path, "wide"))
    )
    shutil.rmtree(os.path.join(ws.path, "wide"))
    treeutil.write(ws.path, "other.txt", "x")
    ws.snapshot()
    ws.restore(first.id)
    treeutil.assert_same(treeutil.capture(ws.path), expected, "restored wide directory")
    assert verify(store).ok


def test_an_edit_or_an_insertion_changes_only_the_parts_around_it(ws, store):
    _fill(ws.path, WIDE)
    a = ws.snapshot()
    treeutil.write(ws.path, "wide/f02500.js", "edited\n")
    b = ws.snapshot()
    treeutil.write(ws.path, "wide/f02500b.js", "inserted\n")
    c = ws.snapshot()
    pa, pb, pc = (_parts(store, _wide_tree(store, s)) for s in (a, b, c))
    assert len(pa) == len(pb) and sum(x != y for x, y in zip(pa, pb, strict=True)) == 1
    assert len(set(pc) - set(pb)) <= 2  # its own part (and one more if a boundary moved)
    # The edit stored the file, one part, the index and the root: nothing else.
    assert b.stats["new_objects"] <= 4
    # A restore leaves the directory's parts cached (the next restore compares parts, not
    # 5k entries), and they are the target's.
    ws.restore(a.id)
    parts = ws.root.entries[b"wide"].current_parts()
    assert parts is not None and [p.oid for p in parts] == pa


@pytest.mark.parametrize("direction", ["grow", "shrink"])
def test_crossing_the_split_threshold_both_ways(ws, store, direction):
    small, big = fmt.SPLIT_MIN_ENTRIES - 10, fmt.SPLIT_MIN_ENTRIES + 10
    start, end = (small, big) if direction == "grow" else (big, small)
    _fill(ws.path, start)
    s1 = ws.snapshot()
    want1 = treeutil.capture(ws.path)
    shutil.rmtree(os.path.join(ws.path, "wide"))
    _fill(ws.path, end, "v2")
    s2 = ws.snapshot()
    want2 = treeutil.capture(ws.path)
    raw1, raw2 = (store.read(_wide_tree(store, s), fmt.KIND_TREE) for s in (s1, s2))
    assert fmt.is_tree_index(raw1) == (start > fmt.SPLIT_MIN_ENTRIES)
    assert fmt.is_tree_index(raw2) == (end > fmt.SPLIT_MIN_ENTRIES)
    ws.restore(s1.id)
    treeutil.assert_same(treeutil.capture(ws.path), want1, "restore to the first version")
    ws.restore(s2.id)
    treeutil.assert_same(treeutil.capture(ws.path), want2, "restore to the second version")


def test_gc_collects_dropped_parts_and_counts_stay_exact(ws, store):
    _fill(ws.path, WIDE)
    old = ws.snapshot()
    for i in range(3):
        treeutil.write(ws.path, f"wide/f{i * 1000:05}.js", f"edit {i}\n")
        ws.snapshot()
    old_parts = set(_parts(store, _wide_tree(store, old)))
    ws.delete_snapshot(old.id, force=True)
    stats = gc.collect(store, max_unused=0.0)
    assert stats["complete"]
    assert crashloop_child.refcount_errors(store) == []
    kept = {pid for s in ws.snapshots() for pid in _parts(store, _wide_tree(store, s))}
    for pid in old_parts - kept:
        assert not store.has(pid), "a part no snapshot refers to should have been collected"
    assert verify(store).ok


def test_a_damaged_part_is_reported_and_refused(ws, store):
    """(A snapshot that holds the same entries again stores a fresh copy of a damaged part, as
    for any object; so the restore below starts from a workspace whose part 0 differs.)"""
    _fill(ws.path, WIDE)
    snap = ws.snapshot()
    victim = _parts(store, _wide_tree(store, snap))[0]  # holds f00000, f00001, ...
    info = store.object_info(victim)
    with open(os.path.join(store.packs_dir, info.pack_name + ".pack"), "r+b") as f:
        f.seek(info.offset + info.length - 3)
        f.write(b"\xff\xff\xff")
    store._tree_cache.clear()
    report = verify(store)
    assert snap.id in report.damaged_snapshots
    assert any(p.path == "wide" and p.object_id == victim.hex() for p in report.problems)
    treeutil.write(ws.path, "wide/f00001.js", "after\n")
    with pytest.raises(DataLoss):
        ws.restore(snap.id)


def _assert_parts_canonical(store: Store, ws: Workspace) -> None:
    """The incrementally cut parts of the stored tree are the parts a fresh, full encoding of
    the directory gives (what makes equal directories equal objects)."""
    node = ws.root.entries.get(b"d")
    if node is None or len(node.entries) <= fmt.SPLIT_MIN_ENTRIES:
        return
    fresh = index._cut(sorted(node.entries), node.entries, [])
    want = [(p.count, store.keys.object_id(fmt.KIND_TREE, p.raw)) for p in fresh]
    assert fmt.decode_tree_index(store.read(node.tree_id, fmt.KIND_TREE)) == want


# --- property: tiny thresholds, random edits --------------------------------------------------
NAMES = [f"n{i:02}" for i in range(40)]
OPS = st.lists(
    st.tuples(st.sampled_from(["write", "remove", "touch"]), st.sampled_from(NAMES), st.binary()),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=int(os.environ.get("SNAPD_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(OPS, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_property_split_trees_round_trip(tmp_path_factory, monkeypatch, steps, rnd):
    monkeypatch.setattr(fmt, "SPLIT_MIN_ENTRIES", 6)
    monkeypatch.setattr(fmt, "PART_MIN_ENTRIES", 2)
    monkeypatch.setattr(fmt, "PART_MAX_ENTRIES", 5)
    monkeypatch.setattr(fmt, "PART_BOUNDARY_MASK", 3)
    base = tmp_path_factory.mktemp("split")
    root = str(base / "ws")
    os.mkdir(root)
    store = Store.open(str(base / "store"))
    ws = Workspace.open(store, root, WorkspaceSettings(watch=False, keep_last=100))
    try:
        taken = []
        for ops in steps:
            for op, name, data in ops:
                path = os.path.join(root, "d", name)
                if op == "write":
                    treeutil.write(root, f"d/{name}", data)
                elif op == "remove" and os.path.exists(path):
                    os.unlink(path)
                elif op == "touch":
                    treeutil.write(root, f"d/{name}", data, mtime_ns=1_000_000_000 * len(data))
            snap = ws.snapshot()
            cap = treeutil.capture(root)
            taken.append((snap, cap))
            files = [item for item in cap.values() if item.kind == "file"]
            assert snap.stats["total_files"] == len(files)
            assert snap.stats["logical_bytes"] == sum(item.size for item in files)
            _assert_parts_canonical(store, ws)
        for snap, want in rnd.sample(taken, len(taken)):
            ws.restore(snap.id)
            treeutil.assert_same(treeutil.capture(root), want, f"restore of {snap.id}")
        assert verify(store).ok
        assert crashloop_child.refcount_errors(store) == []
    finally:
        ws.close()
        store.close()


def test_an_index_whose_parts_do_not_fit_is_malformed(ws, store):
    """Parts out of order, or a count that is not the part's: read_tree refuses the tree."""
    _fill(ws.path, WIDE)
    snap = ws.snapshot()
    wide = _wide_tree(store, snap)
    parts = fmt.decode_tree_index(store.read(wide, fmt.KIND_TREE))
    swapped = [parts[1], parts[0], *parts[2:]]
    miscounted = [(parts[0][0] + 1, parts[0][1]), *parts[1:]]
    with store.writer() as w:
        bad = [
            w.put(fmt.KIND_TREE, fmt.encode_tree_index(p), children=[pid for _, pid in p])
            for p in (swapped, miscounted)
        ]
        w.flush()
    for oid in bad:
        with pytest.raises(DataLoss, match="does not fit"):
            store.read_tree(oid)
