"""A writer process races watcher-driven snapshots: no torn file is stored, no final version is
missed.

The writer (a separate process) rewrites files in place with one pwrite() of a whole version,
replaces files by rename, appends lines, and creates, fills, renames and deletes directories,
for at least ROUNDS rounds and until the test has taken MIN_SNAPSHOTS snapshots while it wrote
(so that a loaded machine cannot let the writer finish before the race begins). Every version
of every file is self-describing, so a stored file that mixes two versions (a torn read) is
recognised. Meanwhile this process snapshots in a loop through the watcher. After the writer
has finished, one more snapshot must equal a full walk and hold every file's final version.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
from test_watcher_support import full_walk_root, no_internal_files

from snapd import browse
from snapd.errors import Aborted
from snapd.workspace import Workspace

pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

ROUNDS = 400  # at least
MIN_SNAPSHOTS = 20
INPLACE_SIZE = 16 * 1024  # four pages: a torn read would mix versions page by page

WRITER = textwrap.dedent(
    """
    import os, shutil, sys
    root, min_rounds, size, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    def inplace(v):
        unit = b"v%08d|" % v
        return (unit * (size // len(unit) + 1))[:size]

    def replaced(v):
        return b"r%08d\\n" % v * (1 + v % 13)

    for d in ("inplace", "replaced", "appended", "churn"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    fds = []
    for i in range(8):
        fd = os.open(os.path.join(root, "inplace", f"p{i}"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(fd, inplace(0), 0)
        fds.append(fd)
    print("ready", flush=True)
    sys.stdin.readline()  # the test has taken its first snapshot
    v = 0
    while v < min_rounds or not os.path.exists(stop):
        v += 1
        if v > 200_000:
            break
        os.pwrite(fds[v % 8], inplace(v), 0)  # one system call per version
        tmp = os.path.join(root, "replaced", f".tmp{v % 8}")
        with open(tmp, "wb") as f:
            f.write(replaced(v))
        os.rename(tmp, os.path.join(root, "replaced", f"r{v % 8}"))
        with open(os.path.join(root, "appended", f"a{v % 4}"), "ab") as f:
            f.write(b"line %08d\\n" % v)
        d = os.path.join(root, "churn", f"d{v % 5}")
        if v % 3 == 0 and os.path.isdir(d):
            shutil.rmtree(d)
        else:
            os.makedirs(os.path.join(d, "x"), exist_ok=True)
            with open(os.path.join(d, "x", f"f{v % 7}"), "wb") as f:
                f.write(replaced(v))
        if v % 11 == 0 and os.path.isdir(d):
            os.rename(d, os.path.join(root, "churn", f"moved{v}"))
        if v % 17 == 0:
            for n in os.listdir(os.path.join(root, "churn")):
                if n.startswith("moved"):
                    shutil.rmtree(os.path.join(root, "churn", n))
    rounds = v
    for i, fd in enumerate(fds):
        os.pwrite(fd, inplace(rounds + 1 + i), 0)  # each in-place file's final version
        os.close(fd)
    print("done", rounds, flush=True)
    """
)

INPLACE_RE = re.compile(rb"v(\d{8})\|")
REPLACED_RE = re.compile(rb"r(\d{8})\n")
LINE_RE = re.compile(rb"line (\d{8})\n")


def _inplace(v: int) -> bytes:
    unit = b"v%08d|" % v
    return (unit * (INPLACE_SIZE // len(unit) + 1))[:INPLACE_SIZE]


def _replaced(v: int) -> bytes:
    return b"r%08d\n" % v * (1 + v % 13)


def _check_file(path: str, data: bytes) -> None:
    """Every stored file is one complete version the writer wrote."""
    top, name = path.split("/", 1)[0], path.rsplit("/", 1)[-1]
    if top == "inplace":
        m = INPLACE_RE.match(data)
        assert m and data == _inplace(int(m[1])), f"torn in-place file {path}: {data[:40]!r}..."
    elif top == "replaced" and name.startswith(".tmp"):
        return  # a temporary the writer was filling: any prefix of a version is a real state
    elif top == "churn" and data == b"":
        return  # created by open(..., "wb") and not written yet: a real state
    elif top in ("replaced", "churn"):
        m = REPLACED_RE.match(data)
        assert m and data == _replaced(int(m[1])), f"torn file {path}: {data[:40]!r}..."
    elif top == "appended":
        lines = LINE_RE.findall(data)
        assert b"".join(b"line %s\n" % n for n in lines) == data, f"torn lines in {path}"
        assert [int(n) for n in lines] == sorted(int(n) for n in lines), path
    else:
        raise AssertionError(f"unexpected path {path}")


def _check_snapshot(ws: Workspace, root_tree: bytes) -> int:
    n = 0
    for entry in browse.list_dir(ws.store, root_tree, recursive=True):
        if entry.kind == "file":
            _, pieces = browse.read_file(ws.store, root_tree, entry.path)
            _check_file(entry.path, b"".join(pieces))
            n += 1
    return n


def test_racing_writer_process(open_ws, ws_dir, tmp_path) -> None:
    ws = open_ws(ws_dir, keep_last=10_000)
    stop = tmp_path / "stop-writing"  # outside the workspace
    assert ws.watcher is not None and ws.watcher.ready.wait(30)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, ws_dir, str(ROUNDS), str(INPLACE_SIZE), str(stop)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        _check_snapshot(ws, ws.snapshot().root_tree)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        snapshots = aborted = 0
        while writer.poll() is None:
            try:
                rec = ws.snapshot()
            except Aborted:
                aborted += 1  # a file kept changing through every re-read: retry, never store it
                continue
            snapshots += 1
            _check_snapshot(ws, rec.root_tree)
            if snapshots == MIN_SNAPSHOTS:
                stop.touch()
        assert writer.wait(60) == 0
        last = writer.stdout.read().split()
        assert last[0] == "done"
        rounds = int(last[1])
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    final = ws.snapshot()
    assert final.root_tree == full_walk_root(ws), "the snapshot after the writer stopped is stale"
    files = _check_snapshot(ws, final.root_tree)
    # The final versions, byte for byte, from the snapshot.
    for i in range(8):
        _, pieces = browse.read_file(ws.store, final.root_tree, f"inplace/p{i}")
        assert b"".join(pieces) == _inplace(rounds + 1 + i)
    for dirpath, _dirs, names in os.walk(ws_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), ws_dir)
            with open(os.path.join(dirpath, name), "rb") as f:
                on_disk = f.read()
            _, pieces = browse.read_file(ws.store, final.root_tree, rel)
            assert b"".join(pieces) == on_disk, f"{rel}: the final version is not in the snapshot"
    assert no_internal_files(ws_dir) == []
    print(
        f"racing writer: {snapshots} snapshots ({aborted} aborted and retried) during "
        f"{rounds} writer rounds; {files} files in the final snapshot; counters "
        f"{ws.watcher.counters}"
    )
    assert snapshots >= MIN_SNAPSHOTS
