"""lstat of many paths relative to a directory descriptor, compared with index nodes' keys.

With the optional C extension (snapd/_batchstat.c) the calls and the comparisons run without
the GIL, split over threads; without it, one os.lstat per path (the same results, slower).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence

from .fsutil import has_openat2

try:
    from snapd._batchstat import lstat_compare as _c_lstat_compare
    from snapd._batchstat import read_small as _c_read_small
except ImportError:  # not built (no C compiler at install time, or not Linux)
    _c_lstat_compare = _c_read_small = None

Key = tuple[int, int, int, int, int]  # (st_size, st_mtime_ns, st_ctime_ns, st_ino, st_mode)

HAVE_C = _c_lstat_compare is not None
MATCH, LOOK, FAILED = 0, 1, 2  # lstat_compare's status codes
# Threads for one batch: the kernel's share of an lstat dominates on the VMs we measure on, and
# it runs in parallel (10k names: 24 ms on one thread, 13 ms on two). More than four buys little.
THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def _py_lstat_keys(dirfd: int, paths: Sequence[bytes]) -> tuple[list[Key | None], list[int]]:
    """For each path: its key and st_nlink, or None and -errno if lstat failed."""
    keys: list[Key | None] = []
    nlinks: list[int] = []
    lstat = os.lstat
    for p in paths:
        try:
            st = lstat(p, dir_fd=dirfd)
        except OSError as e:
            keys.append(None)
            nlinks.append(-(e.errno or 0) or -1)
            continue
        keys.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode))
        nlinks.append(st.st_nlink)
    return keys, nlinks


def lstat_compare(
    dirfd: int, paths: Sequence[bytes], nodes: Sequence
) -> tuple[bytes, list[Key | None], memoryview, list[int]]:
    """lstat each path and compare it with nodes[i].key (None or a Key).

    Returns (status, keys, sizes, links): status[i] is MATCH (the stat data equals the key),
    LOOK (it differs, or the node has no key: keys[i] is the path's key) or FAILED (lstat
    failed); keys[i] is None unless status[i] is LOOK; sizes[i] is st_size where status[i] is
    MATCH, else 0; links lists the indices that MATCH with st_nlink > 1. The caller's Python
    then runs only for the paths that did not match.
    """
    if _c_lstat_compare is not None:
        status, keys, sizes, links = _c_lstat_compare(dirfd, paths, nodes, THREADS)
        return status, keys, memoryview(sizes).cast("q"), links
    return _py_lstat_compare(dirfd, paths, nodes)


def _py_lstat_compare(
    dirfd: int, paths: Sequence[bytes], nodes: Sequence
) -> tuple[bytes, list[Key | None], memoryview, list[int]]:
    keys, nlinks = _py_lstat_keys(dirfd, paths)
    n = len(keys)
    status = bytearray(n)
    sizes = array("q", bytes(8 * n))
    links: list[int] = []
    for i, (key, node) in enumerate(zip(keys, nodes, strict=True)):
        if key is None:
            status[i] = FAILED
        elif node.key == key:
            keys[i] = None
            sizes[i] = key[0]
            if nlinks[i] > 1:
                links.append(i)
        else:
            status[i] = LOOK
    return bytes(status), keys, memoryview(sizes), links


Read = tuple[bytes, Key, Key, int]  # data, key before, key after, st_nlink after


def read_small(rootfd: int, paths: Sequence[bytes], max_size: int) -> list[Read | None] | None:
    """Read these files beneath rootfd as the scanner does (openat2 without following
    symlinks, fstat, read, fstat), without the GIL, if the C extension is built (else None).

    Each item is (data, key before, key after, st_nlink after), or None where the caller must
    read the file its own way (any error, not a regular file, larger than max_size, grew while
    it was read). Nothing is decided here: the caller compares the keys."""
    if _c_read_small is None or not has_openat2():
        return None
    return _c_read_small(rootfd, paths, max_size, THREADS)
