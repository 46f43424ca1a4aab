"""Corruption: damaged pack bytes are found by verify (by snapshot and path) and refused by restore.

Each test builds real snapshots in a real store, closes it, damages the pack files on disk (a
flipped byte in a file's data, in a tree object, a truncated pack), reopens the store (no cached
trees), and checks:
- verify names each damaged snapshot and the path where the damage is, and nothing else;
- restoring a damaged snapshot fails with DataLoss before the workspace changes (the tree is
  captured before and after, mtimes included);
- restoring an intact snapshot still works exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import treeutil

from snapd.errors import DataLoss
from snapd.store.format import CODEC_ZSTD_DELTA, record_header_size
from snapd.store.store import Store
from snapd.store.verify import verify
from snapd.workspace import Workspace, WorkspaceSettings


@dataclass
class Scene:
    store_dir: str
    ws_dir: str
    old: str  # snapshot id: the first state
    new: str  # snapshot id: src/b.py, big.bin and a new file changed; objects in a later pack
    old_tree: treeutil.Capture
    new_tree: treeutil.Capture

    def open(self) -> tuple[Store, Workspace]:
        store = Store.open(self.store_dir)
        return store, Workspace.open(store, self.ws_dir, WorkspaceSettings(watch=False))


def _locate(store: Store, snap_id: str, path: str) -> tuple[bytes, str, int, int, int]:
    """(object id, pack file, offset, length, header size) of the entry at `path` of a snapshot;
    path '' is the root tree."""
    oid = store.get_snapshot(snap_id).root_tree
    for part in [p for p in path.split("/") if p]:
        oid = next(e.ref for e in store.read_tree(oid) if e.name == part.encode())
    info = store.object_info(oid)
    assert info is not None
    pack = os.path.join(store.packs_dir, f"{info.pack_name}.pack")
    header = record_header_size(info.codec)
    return oid, pack, info.offset, info.length, header


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture
def scene(tmp_path) -> Scene:
    store_dir, ws_dir = str(tmp_path / "store"), str(tmp_path / "ws")
    os.mkdir(ws_dir)
    treeutil.write(ws_dir, "src/a.py", "print('a')\n" * 50)
    treeutil.write(ws_dir, "src/b.py", "def b():\n    return 1\n" * 40)
    treeutil.write(ws_dir, "docs/readme.md", "# read me\n" * 30)
    treeutil.write(ws_dir, "big.bin", os.urandom(1_300_000))  # chunked (over 1 MiB)
    os.symlink("src/a.py", os.path.join(ws_dir, "link"))
    with Store.open(store_dir) as store:
        ws = Workspace.open(store, ws_dir, WorkspaceSettings(watch=False, keep_last=10))
        old = ws.snapshot(label="old").id
        old_tree = treeutil.capture(ws_dir)
        ws.close()
    # A second store instance writes to a pack of its own: truncating it spares `old`.
    with Store.open(store_dir) as store:
        ws = Workspace.open(store, ws_dir, WorkspaceSettings(watch=False, keep_last=10))
        treeutil.write(ws_dir, "src/b.py", "def b():\n    return 2  # new\n" * 40)
        with open(os.path.join(ws_dir, "big.bin"), "r+b") as f:
            f.seek(700_000)
            f.write(os.urandom(300_000))
        treeutil.write(ws_dir, "src/new.txt", os.urandom(3000))
        new = ws.snapshot(label="new").id
        new_tree = treeutil.capture(ws_dir)
        ws.close()
    return Scene(store_dir, ws_dir, old, new, old_tree, new_tree)


def _assert_restore_refused(scene: Scene, snap_id: str, edit: str) -> None:
    """Restoring `snap_id` fails with DataLoss and leaves the workspace exactly as it was.

    `edit` (a file path) is changed first, so that the restore must read the damaged objects:
    a restore only reads what differs from the workspace."""
    store, ws = scene.open()
    try:
        treeutil.write(scene.ws_dir, edit, "edited locally\n")
        treeutil.write(scene.ws_dir, "docs/scratch.txt", "work in progress\n")
        before = treeutil.capture(scene.ws_dir)
        with pytest.raises(DataLoss):
            ws.restore(snap_id)
        treeutil.assert_same(treeutil.capture(scene.ws_dir), before, "workspace after refusal")
    finally:
        ws.close()
        store.close()


def _assert_restores_exactly(scene: Scene, snap_id: str, expected: treeutil.Capture) -> None:
    store, ws = scene.open()
    try:
        ws.restore(snap_id)
        treeutil.assert_same(treeutil.capture(scene.ws_dir), expected, f"restore of {snap_id}")
    finally:
        ws.close()
        store.close()


def _verify(scene: Scene):
    with Store.open(scene.store_dir) as store:
        return verify(store)


def test_intact_store_verifies_clean(scene):
    report = _verify(scene)
    assert report.ok and not report.problems and report.snapshots_checked == 2
    _assert_restores_exactly(scene, scene.old, scene.old_tree)
    _assert_restores_exactly(scene, scene.new, scene.new_tree)


def test_flipped_byte_in_file_data(scene):
    with Store.open(scene.store_dir) as store:
        oid, pack, off, length, header = _locate(store, scene.new, "src/b.py")
    _flip(pack, off + header + (length - header) // 2)

    report = _verify(scene)
    assert not report.ok
    assert report.damaged_snapshots == [scene.new]
    assert [(p.snapshot_id, p.path, p.object_id) for p in report.problems] == [
        (scene.new, "src/b.py", oid.hex())
    ]
    _assert_restore_refused(scene, scene.new, "src/b.py")
    _assert_restores_exactly(scene, scene.old, scene.old_tree)


def test_flipped_byte_in_a_chunk_of_a_large_file(scene):
    with Store.open(scene.store_dir) as store:
        chunklist = _locate(store, scene.new, "big.bin")[0]
        old_chunks = {c for c, _ in store.read_chunklist(_locate(store, scene.old, "big.bin")[0])}
        fresh = [c for c, _ in store.read_chunklist(chunklist) if c not in old_chunks]
        assert fresh, "the edit must have produced new chunks"
        info = store.object_info(fresh[0])
        pack = os.path.join(store.packs_dir, f"{info.pack_name}.pack")
        header = record_header_size(info.codec)
    _flip(pack, info.offset + header + 10)

    report = _verify(scene)
    assert report.damaged_snapshots == [scene.new]
    assert {(p.snapshot_id, p.path) for p in report.problems} == {(scene.new, "big.bin")}
    _assert_restore_refused(scene, scene.new, "big.bin")
    _assert_restores_exactly(scene, scene.old, scene.old_tree)


def test_flipped_byte_in_a_tree_object(scene):
    with Store.open(scene.store_dir) as store:
        oid, pack, off, length, header = _locate(store, scene.new, "src")
        assert oid != _locate(store, scene.old, "src")[0]
    _flip(pack, off + header + (length - header) // 2)

    report = _verify(scene)
    assert report.damaged_snapshots == [scene.new]
    assert [(p.snapshot_id, p.path, p.object_id) for p in report.problems] == [
        (scene.new, "src", oid.hex())
    ]
    _assert_restore_refused(scene, scene.new, "src/a.py")
    _assert_restores_exactly(scene, scene.old, scene.old_tree)


def test_flipped_byte_in_a_shared_object_damages_every_snapshot_using_it(scene):
    with Store.open(scene.store_dir) as store:
        oid, pack, off, length, header = _locate(store, scene.old, "docs/readme.md")
        assert oid == _locate(store, scene.new, "docs/readme.md")[0]  # unchanged: shared
    _flip(pack, off + header + (length - header) // 2)

    report = _verify(scene)
    assert sorted(report.damaged_snapshots) == sorted([scene.old, scene.new])
    assert {(p.snapshot_id, p.path) for p in report.problems} == {
        (scene.old, "docs/readme.md"),
        (scene.new, "docs/readme.md"),
    }
    _assert_restore_refused(scene, scene.old, "docs/readme.md")
    _assert_restore_refused(scene, scene.new, "docs/readme.md")


def test_flipped_byte_in_a_record_header(scene):
    """Damage to the object id in a record header: the record no longer matches the index."""
    with Store.open(scene.store_dir) as store:
        oid, pack, off, _length, _header = _locate(store, scene.new, "src/new.txt")
    _flip(pack, off + 5)  # inside the 16-byte object id

    report = _verify(scene)
    assert report.damaged_snapshots == [scene.new]
    assert [(p.path, p.object_id) for p in report.problems] == [("src/new.txt", oid.hex())]


def test_truncated_pack(scene):
    with Store.open(scene.store_dir) as store:
        _, pack, _off, _length, _header = _locate(store, scene.new, "src/b.py")
        old_packs = {
            store.object_info(store.get_snapshot(scene.old).root_tree).pack_name,
            store.object_info(_locate(store, scene.old, "src/b.py")[0]).pack_name,
        }
        assert os.path.basename(pack)[:-5] not in old_packs  # `new` wrote a pack of its own
        size = os.path.getsize(pack)
    os.truncate(pack, size // 2)

    report = _verify(scene)
    assert not report.ok
    assert report.damaged_snapshots == [scene.new]
    pack_problems = [p for p in report.problems if not p.snapshot_id]
    assert len(pack_problems) == 1 and "truncated" in pack_problems[0].error
    # Every problem of the damaged snapshot names a path inside it.
    paths = {p.path for p in report.problems if p.snapshot_id}
    assert paths and paths <= {"/", "src", "src/b.py", "src/new.txt", "big.bin"}
    _assert_restore_refused(scene, scene.new, "src/b.py")
    _assert_restores_exactly(scene, scene.old, scene.old_tree)


def test_restore_of_the_intact_part_of_a_damaged_snapshot(scene):
    """Only the objects a restore needs are checked: the undamaged paths can be restored."""
    with Store.open(scene.store_dir) as store:
        _, pack, off, length, header = _locate(store, scene.new, "src/b.py")
    _flip(pack, off + header + (length - header) // 2)
    _assert_restores_exactly(scene, scene.old, scene.old_tree)
    store, ws = scene.open()
    try:
        ws.restore(scene.new, paths=["src/new.txt", "big.bin"])
        now = treeutil.capture(scene.ws_dir)
    finally:
        ws.close()
        store.close()
    assert now[b"src/new.txt"] == scene.new_tree[b"src/new.txt"]
    assert now[b"big.bin"] == scene.new_tree[b"big.bin"]
    assert now[b"src/b.py"] == scene.old_tree[b"src/b.py"]


def test_sampled_verify_checks_trees_and_a_fraction_of_the_data(scene):
    with Store.open(scene.store_dir) as store:
        full = verify(store)
        none = verify(store, sample=0.0)
    assert full.ok and none.ok
    # Trees are always checked (the walk needs them); data objects only when sampled.
    assert 0 < none.objects_checked < full.objects_checked


def test_delta_object_with_a_damaged_base(tmp_path):
    """A file stored as a delta depends on its base: damaging the base damages both versions."""
    store_dir, ws_dir = str(tmp_path / "store"), str(tmp_path / "ws")
    os.mkdir(ws_dir)
    text = "".join(f"line {i}: some text that repeats with small changes\n" for i in range(400))
    treeutil.write(ws_dir, "doc.txt", text)
    with Store.open(store_dir) as store:
        ws = Workspace.open(store, ws_dir, WorkspaceSettings(watch=False))
        first = ws.snapshot().id
        treeutil.write(ws_dir, "doc.txt", text.replace("line 200:", "LINE 200:"))
        second = ws.snapshot().id
        second_oid = _locate(store, second, "doc.txt")[0]
        info = store.object_info(second_oid)
        if info.codec != CODEC_ZSTD_DELTA:
            ws.close()
            pytest.skip("the engine stored the second version whole; no delta to test")
        base = store.object_info(info.base)
        pack = os.path.join(store.packs_dir, f"{base.pack_name}.pack")
        header = record_header_size(base.codec)
        ws.close()
    _flip(pack, base.offset + header + (base.length - header) // 2)
    with Store.open(store_dir) as store:
        report = verify(store)
    assert sorted(report.damaged_snapshots) == sorted([first, second])
    assert {p.path for p in report.problems} == {"doc.txt"}
