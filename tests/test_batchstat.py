"""snapd/batchstat.py and its C extension: the same answers as os.lstat, path by path.

The fast pass of a full walk trusts these keys to decide that a file is unchanged, so every
field must be exactly what os.lstat gives, in order, whatever the batch size or thread count.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys

import pytest
import treeutil

from snapd import batchstat

needs_c = pytest.mark.skipif(not batchstat.HAVE_C, reason="the C extension is not built")


def _os_keys(dirfd: int, paths: list[bytes]):
    return batchstat._py_lstat_keys(dirfd, paths)


def _tree(root) -> list[bytes]:
    """Files, directories, symlinks (dangling, to a directory, to outside), hard links,
    a non-UTF-8 name, times before 1970 and after 2262, a sparse 5 GB file, and paths that
    fail (missing, through a file, through a symlink loop)."""
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "a.txt").write_bytes(b"hello")
    (root / "d" / "exec").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "d" / "exec", 0o755)
    os.link(root / "d" / "a.txt", root / "d" / "hard")
    os.symlink("a.txt", root / "d" / "link")
    os.symlink("nowhere", root / "d" / "dangling")
    os.symlink("/etc", root / "out")
    os.symlink("loop", root / "loop")
    (root / "empty").mkdir()
    odd = os.fsencode(root) + b"/d/caf\xe9"
    with open(odd, "wb") as f:
        f.write(b"latin-1 name")
    old = root / "d" / "old"
    old.write_bytes(b"1969")
    os.utime(old, ns=(-123_456_789_012, -86_400_000_000_001))
    future = root / "d" / "future"
    future.write_bytes(b"2300")
    os.utime(future, ns=(10_500_000_000_000_000_123, 10_500_000_000_000_000_123))
    with open(root / "sparse", "wb") as f:
        f.truncate(5 * 1024**3)
    return [
        b"d",
        b"d/sub",
        b"d/a.txt",
        b"d/exec",
        b"d/hard",
        b"d/link",
        b"d/dangling",
        b"out",
        b"out/passwd",  # intermediate symlinks are followed (as os.lstat with dir_fd does)
        b"loop",
        b"loop/x",
        b"empty",
        b"d/caf\xe9",
        b"d/old",
        b"d/future",
        b"sparse",
        b"missing",
        b"d/a.txt/x",
        b".",
    ]


def test_the_extension_is_built_where_a_compiler_is(tmp_path):
    """CI and the benchmarks must measure the C path: a silent fallback would hide a build
    failure behind a slower walk."""
    if not sys.platform.startswith("linux") or shutil.which("cc") is None:
        pytest.skip("no C compiler here: the fallback is expected")
    assert batchstat.HAVE_C, "snapd._batchstat is not built although a C compiler is present"


class _Node:
    """Stands in for an index node: lstat_compare reads only its `key`."""

    def __init__(self, key) -> None:
        self.key = key


def _c_keys(fd: int, paths: list[bytes], threads: int):
    """Every path's key through the C extension (nodes without a key: nothing matches), and
    the indices of the paths with more than one link (nodes with the right key: all match)."""
    status, keys, _sizes, links = batchstat._c_lstat_compare(
        fd, paths, [_Node(None)] * len(paths), threads
    )
    assert set(status) <= {batchstat.LOOK, batchstat.FAILED}
    assert [k is None for k in keys] == [s == batchstat.FAILED for s in status]
    status2, _, _, links = batchstat._c_lstat_compare(fd, paths, [_Node(k) for k in keys], threads)
    assert [s == batchstat.MATCH for s in status2] == [k is not None for k in keys]
    return keys, links


def _os_links(nlinks: list[int]) -> list[int]:
    return [i for i, n in enumerate(nlinks) if n > 1]


@needs_c
@pytest.mark.parametrize("threads", [1, 2, 8])
def test_same_keys_as_os_lstat(tmp_path, threads):
    paths = _tree(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        want, nlinks = _os_keys(fd, paths)
        got, links = _c_keys(fd, paths, threads)
    finally:
        os.close(fd)
    assert got == want
    assert links == _os_links(nlinks)
    by = dict(zip(paths, zip(want, nlinks, strict=True), strict=True))
    assert by[b"d/hard"][1] == 2 and by[b"d/a.txt"][0] == by[b"d/hard"][0]
    assert by[b"missing"] == (None, -errno.ENOENT)
    assert by[b"d/a.txt/x"] == (None, -errno.ENOTDIR)
    assert by[b"loop/x"] == (None, -errno.ELOOP)
    assert by[b"d/old"][0][1] == -86_400_000_000_001
    assert by[b"d/future"][0][1] == 10_500_000_000_000_000_123
    assert by[b"sparse"][0][0] == 5 * 1024**3


@needs_c
def test_a_large_batch_split_over_threads_keeps_its_order(tmp_path):
    names = []
    for i in range(3000):
        d = tmp_path / f"d{i % 37}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}").write_bytes(b"x" * (i % 97))
        names.append(f"d{i % 37}/f{i}".encode())
        if i % 11 == 0:
            names.append(f"d{i % 37}/gone{i}".encode())
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        want, nlinks = _os_keys(fd, names)
        for threads in (1, 2, 3, 4):
            assert _c_keys(fd, names, threads) == (want, _os_links(nlinks))
        assert batchstat._c_lstat_compare(fd, [], [], 2) == (b"", [], b"", [])
    finally:
        os.close(fd)


@needs_c
def test_bad_arguments_are_errors_not_wrong_answers(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    none = _Node(None)
    try:
        with pytest.raises(TypeError, match=r"paths\[1\] is str"):
            batchstat._c_lstat_compare(fd, [b"a", "b"], [none, none], 1)
        with pytest.raises(ValueError, match="NUL"):
            batchstat._c_lstat_compare(fd, [b"a\0b"], [none], 1)
        with pytest.raises(ValueError, match="differ in length"):
            batchstat._c_lstat_compare(fd, [b"a"], [], 1)
        with pytest.raises(AttributeError):
            batchstat._c_lstat_compare(fd, [b"a"], [object()], 1)
        # A closed descriptor is an error per path, like os.lstat's.
        status, keys, _, _ = batchstat._c_lstat_compare(-1, [b"a"], [none], 1)
        assert (status, keys) == (bytes([batchstat.FAILED]), [None])
    finally:
        os.close(fd)


def _compare_cases(tmp_path) -> tuple[list[bytes], list[_Node]]:
    paths = _tree(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        keys, _ = _os_keys(fd, paths)
    finally:
        os.close(fd)
    nodes = []
    for i, key in enumerate(keys):
        if key is None or i % 5 == 4:
            nodes.append(_Node(None))  # no expectation: the caller looks
        elif i % 5 == 3:
            nodes.append(_Node((key[0] + 1, *key[1:])))  # a different size
        elif i % 5 == 2:
            nodes.append(_Node((*key[:2], key[2] + 1, *key[3:])))  # ctime moved by 1 ns
        else:
            nodes.append(_Node(key))  # as recorded
    nodes.append(_Node((1, 2**70, 3, 4, 5)))  # a key C cannot hold, for a missing path
    paths.append(b"missing-too")
    return paths, nodes


@pytest.mark.parametrize("impl", ["c", "os.lstat"])
def test_compare_tells_matching_paths_from_the_rest(tmp_path, impl, monkeypatch):
    if impl == "c" and not batchstat.HAVE_C:
        pytest.skip("the C extension is not built")
    if impl == "os.lstat":
        monkeypatch.setattr(batchstat, "_c_lstat_compare", None)
    paths, nodes = _compare_cases(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        keys, nlinks = _os_keys(fd, paths)
        status, got_keys, sizes, links = batchstat.lstat_compare(fd, paths, nodes)
    finally:
        os.close(fd)
    assert len(status) == len(got_keys) == len(sizes) == len(paths)
    for i, (key, node) in enumerate(zip(keys, nodes, strict=True)):
        if key is None:
            assert (status[i], got_keys[i], sizes[i]) == (batchstat.FAILED, None, 0), paths[i]
        elif node.key == key:
            assert (status[i], got_keys[i], sizes[i]) == (batchstat.MATCH, None, key[0]), paths[i]
        else:
            assert (status[i], got_keys[i], sizes[i]) == (batchstat.LOOK, key, 0), paths[i]
    assert links == [
        i
        for i, (k, n) in enumerate(zip(keys, nlinks, strict=True))
        if k and nodes[i].key == k and n > 1
    ]
    assert status.count(batchstat.MATCH) >= 5 and status.count(batchstat.LOOK) >= 5


@needs_c
def test_compare_of_a_key_past_the_fast_range(tmp_path):
    """A key whose times do not fit 64-bit nanoseconds is compared in Python, exactly."""
    (tmp_path / "f").write_bytes(b"x")
    os.utime(tmp_path / "f", ns=(10_500_000_000_000_000_123, 10_500_000_000_000_000_123))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (key,), _ = _os_keys(fd, [b"f"])
        same = batchstat._c_lstat_compare(fd, [b"f"], [_Node(key)], 1)
        other = batchstat._c_lstat_compare(fd, [b"f"], [_Node((*key[:1], key[1] + 1, *key[2:]))], 1)
    finally:
        os.close(fd)
    assert same[0] == bytes([batchstat.MATCH]) and same[1] == [None]
    assert other[0] == bytes([batchstat.LOOK]) and other[1] == [key]


@needs_c
def test_read_small_reads_what_the_scanner_would_and_leaves_the_rest(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"hello\n" * 1000)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "big").write_bytes(os.urandom(9000))
    os.symlink("a.txt", tmp_path / "d" / "link")
    os.symlink("d", tmp_path / "dirlink")
    os.mkfifo(tmp_path / "fifo")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"secret")
    names = [
        b"d/a.txt",
        b"empty",
        b"big",  # larger than max_size below
        b"d/link",  # a symlink: never followed
        b"dirlink/a.txt",  # through a symlinked directory: refused
        b"fifo",  # not a regular file (and never blocks)
        b"d",
        b"missing",
        b"",
        b"../" + outside.name.encode(),  # outside the root: refused
    ]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = batchstat._c_read_small(fd, names, 8192, 2)
        keys, nlinks = _os_keys(fd, names)
    finally:
        os.close(fd)
    assert got[0] is not None and got[1] is not None
    data, before, after, nlink = got[0]
    assert data == b"hello\n" * 1000 and before == after == keys[0] and nlink == nlinks[0] == 1
    assert got[1][0] == b"" and got[1][1] == keys[1]
    assert got[2:] == [None] * (len(names) - 2)
    outside.unlink()


def test_the_scanner_reads_ahead_the_same_content(tmp_path, monkeypatch):
    """A first snapshot with read-ahead (C) and without it both restore the tree exactly."""
    from snapd import scanner
    from snapd.store.store import Store
    from snapd.workspace import Workspace, WorkspaceSettings, fork

    ws_dir = tmp_path / "ws"
    for i in range(150):
        p = ws_dir / f"dir{i % 7}" / f"f{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes((f"line {i}\n" * (i * 13)).encode())
    (ws_dir / "large.bin").write_bytes(os.urandom(scanner.CHUNK_THRESHOLD + 5000))
    os.symlink("dir0/f0.txt", ws_dir / "link")
    os.mkfifo(ws_dir / "fifo")
    want = treeutil.without(treeutil.capture(ws_dir), [b"fifo"])
    for ahead in (True, False):
        if not ahead:
            monkeypatch.setattr(scanner, "read_small", lambda *a: None)
        store = Store.open(str(tmp_path / f"store-{ahead}"))
        try:
            ws = Workspace.open(store, str(ws_dir), WorkspaceSettings(watch=False))
            try:
                snap = ws.snapshot()
            finally:
                ws.close()
            assert snap.stats["read_files"] == 151 and snap.stats["skipped_special"] == 1
            copy, _ = fork(store, snap.id, str(tmp_path / f"copy-{ahead}"))
            copy.close()
        finally:
            store.close()
        treeutil.assert_same(treeutil.capture(tmp_path / f"copy-{ahead}"), want)
