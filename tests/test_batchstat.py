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


@needs_c
@pytest.mark.parametrize("threads", [1, 2, 8])
def test_same_keys_as_os_lstat(tmp_path, threads):
    paths = _tree(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        want = _os_keys(fd, paths)
        got = batchstat._c_lstat_keys(fd, paths, threads)
    finally:
        os.close(fd)
    assert got == want
    keys, nlinks = got
    by = dict(zip(paths, zip(keys, nlinks, strict=True), strict=True))
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
        want = _os_keys(fd, names)
        for threads in (1, 2, 3, 4):
            assert batchstat._c_lstat_keys(fd, names, threads) == want
        assert batchstat.lstat_keys(fd, names) == want
        assert batchstat._c_lstat_keys(fd, [], 2) == ([], [])
    finally:
        os.close(fd)


@needs_c
def test_bad_arguments_are_errors_not_wrong_answers(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(TypeError, match=r"paths\[1\] is str"):
            batchstat._c_lstat_keys(fd, [b"a", "b"], 1)
        with pytest.raises(ValueError, match="NUL"):
            batchstat._c_lstat_keys(fd, [b"a\0b"], 1)
        # A closed descriptor is an error per path, like os.lstat's.
        assert batchstat._c_lstat_keys(-1, [b"a"], 1) == ([None], [-errno.EBADF])
    finally:
        os.close(fd)
