"""Snapshots taken while another process rewrites files store only versions it fully wrote.

The writer (a separate process) rewrites each file with versions v = 1, 2, ...; version v's
content is one line, "v" as 8 digits, repeated lines(v) times, so any mix of two versions or a
cut-off version is visible. Files are rewritten three ways: in place with O_TRUNC, in place
without truncation at the same size (a torn read mixes old and new lines), and by writing a
temporary file outside the workspace and renaming it over the old one. Two are larger than the
chunking threshold, so the chunked read path is raced too.

One state is real and not torn: between open(O_TRUNC) and write() an in-place file is empty,
and a reader at that instant sees an empty file. That is accepted (and counted) for the O_TRUNC
files only.

Known limit (test_big_in_place_rewrites_are_not_torn, xfail): a write() of a large file is
copied into the page cache page by page, and the kernel may pause the writer inside that one
call (dirty-page throttling, preemption). The file's size and mtime then stay put for as long
as the pause lasts, so a reader that stats, reads, stats and reads again during it sees a
stable prefix that no stat check can tell from a finished file.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import time

import pytest

from snapd import browse
from snapd.errors import Aborted
from snapd.scanner import CHUNK_THRESHOLD

SNAPSHOTS = 40
MIN_VERSIONS = 10
# On a slow disk the writer (and each snapshot of the big files) can crawl: keep snapshotting
# past SNAPSHOTS until it has written MIN_VERSIONS versions, but never longer than this (a CI
# run once spent the whole 600 s test timeout here).
RACE_SECONDS = 60


def versions_written(tmpdir) -> int:
    try:
        return int((tmpdir / "progress").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


# Shared by the writer (its source is sent along) and the checks: how many lines version v
# of a file has. "same" files keep one size, so a torn in-place write would mix old and new
# lines; the others vary in size.
def lines_for(name: str, v: int, big: int) -> int:
    base = name.rsplit("/", 1)[-1]
    first = big // 9 if base.startswith("big") else 20
    if "same" in base:
        return first + 280
    return first + (v % 7) * (4000 if base.startswith("big") else 40)


WRITER = inspect.getsource(lines_for) + textwrap.dedent(
    """
    import os, sys
    ws, tmpdir, stop, big = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    files = dict(arg.split("=") for arg in sys.argv[5:])  # path -> trunc | same | rename

    def content(name, v):
        return (b"%08d\\n" % v) * lines_for(name, v, big)

    os.makedirs(os.path.join(ws, "sub"), exist_ok=True)
    v = 0
    while True:
        v += 1
        for name, how in files.items():
            path = os.path.join(ws, name)
            data = content(name, v)
            if how == "rename" or v == 1:
                tmp = os.path.join(tmpdir, name.replace("/", "_"))
                with open(tmp, "wb") as f:
                    f.write(data)
                os.rename(tmp, path)
            elif how == "trunc":
                fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
                os.write(fd, data)
                os.close(fd)
            else:
                fd = os.open(path, os.O_WRONLY)
                os.pwrite(fd, data, 0)
                os.close(fd)
        with open(os.path.join(tmpdir, "progress"), "w") as f:
            f.write(str(v))
        if v == 1:
            print("ready", flush=True)
        if os.path.exists(stop):
            break
    print(v, flush=True)
    """
)


def parse_version(name: str, data: bytes, big: int) -> int:
    """The version this content is a complete copy of; raises AssertionError if torn."""
    assert data, f"{name}: empty"
    assert len(data) % 9 == 0, f"{name}: {len(data)} bytes is not whole lines (cut off)"
    line = data[:9]
    assert line[8:] == b"\n" and line[:8].isdigit(), f"{name}: starts with {line!r}"
    v = int(line[:8])
    n = len(data) // 9
    assert data == line * n, f"{name}: lines of different versions mixed (torn)"
    assert n == lines_for(name, v, big), f"{name}: version {v} with {n} lines is cut off"
    return v


BIG = CHUNK_THRESHOLD + 400_000
SMALL_FILES = {
    "trunc-0": "trunc",
    "trunc-1": "trunc",
    "sub/trunc-2": "trunc",
    "same-0": "same",
    "sub/same-1": "same",
    "rename-0": "rename",
    "sub/rename-1": "rename",
    "big-rename": "rename",  # large, but replaced whole by rename
}


def race(ws, ws_dir, store, tmp_path, files: dict[str, str]) -> str:
    """Snapshot SNAPSHOTS times while the writer runs; check every stored file."""
    tmpdir = tmp_path / "writer-tmp"
    tmpdir.mkdir()
    stop = tmp_path / "stop"
    args = [f"{k}={v}" for k, v in files.items()]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, ws_dir, str(tmpdir), str(stop), str(BIG), *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    snaps = []
    aborted = 0
    try:
        assert writer.stdout.readline().strip() == "ready"
        # At least SNAPSHOTS snapshots, spread over at least MIN_VERSIONS versions (on a
        # loaded machine the writer can be much slower than the snapshots).
        deadline = time.monotonic() + RACE_SECONDS
        while (len(snaps) + aborted < SNAPSHOTS or versions_written(tmpdir) < MIN_VERSIONS) and (
            time.monotonic() < deadline and len(snaps) + aborted < 20 * SNAPSHOTS
        ):
            try:
                snaps.append(ws.snapshot())
            except Aborted:
                aborted += 1  # a file kept changing through every read attempt: no snapshot
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    last_version = int(out.strip())
    assert last_version >= MIN_VERSIONS, (
        f"the writer barely ran: {last_version} versions in {RACE_SECONDS} s "
        f"({len(snaps) + aborted} snapshots)"
    )
    assert len(snaps) >= aborted, f"{aborted} of {len(snaps) + aborted} snapshots aborted"

    empty_in_place = 0
    newest: dict[str, int] = {}
    retried = sum(s.stats["retried_reads"] for s in snaps)
    previous = None
    for snap in snaps:
        if snap.root_tree == previous:
            continue  # the same tree as the snapshot before: the same versions
        previous = snap.root_tree
        entries = [e for e in browse.list_dir(store, snap.root_tree, recursive=True)]
        assert sorted(e.path for e in entries if e.kind == "file") == sorted(files)
        for entry in entries:
            if entry.kind != "file":
                continue
            _, pieces = browse.read_file(store, snap.root_tree, entry.path)
            data = b"".join(pieces)
            if not data and files[entry.path] == "trunc":
                empty_in_place += 1  # the instant between O_TRUNC and write()
                continue
            v = parse_version(entry.path, data, BIG)
            assert 1 <= v <= last_version
            assert v >= newest.get(entry.path, 0), f"{entry.path} went back in time"
            newest[entry.path] = v
    return (
        f"versions up to {last_version}; retried reads {retried}; empty {empty_in_place}; "
        f"aborted {aborted}"
    )


def test_snapshots_during_rewrites_store_only_whole_versions(ws, ws_dir, store, tmp_path) -> None:
    print(race(ws, ws_dir, store, tmp_path, SMALL_FILES))


@pytest.mark.xfail(
    strict=False,
    reason="known limit (reported): a large write() paused by the kernel mid-copy leaves a "
    "stable prefix that stat checks cannot detect",
)
def test_big_in_place_rewrites_are_not_torn(ws, ws_dir, store, tmp_path) -> None:
    print(race(ws, ws_dir, store, tmp_path, {"big-trunc": "trunc", "big-same": "same"}))
