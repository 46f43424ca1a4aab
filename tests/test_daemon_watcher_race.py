"""A writer process races watcher-driven snapshots taken through a real daemon.

The writer rewrites files in the workspace, version after version:
- atomic/a*: a temporary file in the same directory, written whole, renamed over the old file
  (how editors and most tools save);
- inplace/p*: one pwrite() of a whole version at offset 0, same size every time (4 KiB);
- trunc/t*: open(O_TRUNC) then one write() of a version of varying size;
- append/l*: one line appended per version.
Every version names its file and its number, so a stored file that mixes two versions, is cut
off, or holds another file's content is recognised. Meanwhile the test snapshots in a loop
through the client (no sleeps) and checks every file of every snapshot (ReadFile, once per
content address). Real states that are not versions: an O_TRUNC file between its truncation and
its write is empty, and a temporary may be caught empty or part-written (a prefix of its
version): those are accepted for those files only. After the writer stops, one more snapshot
must equal the directory exactly (and a full walk), holding every file's final version.

Longer: SNAPD_DAEMON_RACE_SNAPSHOTS=2000 .venv/bin/pytest tests/test_daemon_watcher_race.py -s
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
from snapd_client import AbortedError
from test_daemon_watcher_support import (
    SnapshotChecker,
    assert_same_as_full_walk,
    running_daemon,
    snapshot_until_hinted,
)
from treeutil import capture

MIN_ROUNDS = 300
MIN_SNAPSHOTS = int(os.environ.get("SNAPD_DAEMON_RACE_SNAPSHOTS", "30"))
INPLACE_SIZE = 4096

# Shared by the writer (sent as source) and the checks.
VERSIONS = textwrap.dedent(
    """
    def version(name, v):
        if name.startswith("inplace/"):
            unit = b"%s@%08d|" % (name.encode(), v)
            return (unit * (4096 // len(unit) + 1))[:4096]
        if name.startswith("append/"):
            return b"%s line %08d\\n" % (name.encode(), v)
        return b"%s@%08d\\n" % (name.encode(), v) * (1 + v % 9) * 20
    """
)
namespace: dict = {}
exec(VERSIONS, namespace)
version = namespace["version"]

WRITER = VERSIONS + textwrap.dedent(
    """
    import os, sys
    root, stop, min_rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    atomic = [f"atomic/a{i}" for i in range(4)]
    inplace = [f"inplace/p{i}" for i in range(4)]
    trunc = [f"trunc/t{i}" for i in range(3)]
    append = [f"append/l{i}" for i in range(2)]
    for d in ("atomic", "inplace", "trunc", "append"):
        os.makedirs(os.path.join(root, d), exist_ok=True)

    def atomic_write(name, v):
        tmp = os.path.join(root, os.path.dirname(name), ".tmp-" + os.path.basename(name))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, version(name, v))
        os.close(fd)
        os.rename(tmp, os.path.join(root, name))

    fds = {}
    for name in inplace:
        fds[name] = os.open(os.path.join(root, name), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(fds[name], version(name, 0), 0)
    for name in atomic + trunc:
        atomic_write(name, 0)
    for name in append:
        with open(os.path.join(root, name), "wb") as f:
            f.write(version(name, 0))
    print("ready", flush=True)
    sys.stdin.readline()
    v = 0
    while v < min_rounds or not os.path.exists(stop):
        v += 1
        atomic_write(atomic[v % 4], v)
        os.pwrite(fds[inplace[v % 4]], version(inplace[v % 4], v), 0)
        t = trunc[v % 3]
        fd = os.open(os.path.join(root, t), os.O_WRONLY | os.O_TRUNC)
        os.write(fd, version(t, v))
        os.close(fd)
        fd = os.open(os.path.join(root, append[v % 2]), os.O_WRONLY | os.O_APPEND)
        os.write(fd, version(append[v % 2], v))
        os.close(fd)
        if v > 100_000:
            break
    for fd in fds.values():
        os.close(fd)
    print("done", v, flush=True)
    """
)

VERSION_RE = re.compile(rb"^([a-z]+/[a-z]\d)@(\d{8})")


def check_content(path: str, data: bytes) -> None:
    """`data` stored at `path` is a version the writer fully wrote (or an accepted real state)."""
    top, base = path.split("/", 1)[0], path.rsplit("/", 1)[-1]
    if base.startswith(".tmp-"):
        # A temporary being filled: empty, or a prefix of the version it names.
        name = f"{top}/{base[len('.tmp-') :]}"
        if data:
            m = VERSION_RE.match(data)
            assert m and m[1].decode() == name, f"{path}: foreign content {data[:40]!r}"
            assert version(name, int(m[2])).startswith(data), f"{path}: not a prefix"
        return
    if top == "append":
        lines = data.splitlines(keepends=True)
        numbers = [int(line.rsplit(b" ", 1)[1]) for line in lines]
        assert numbers[:1] == [0], f"{path}: the first line is gone"
        assert numbers == sorted(set(numbers)), f"{path}: lines {numbers[-5:]} out of order"
        assert b"".join(version(path, n) for n in numbers) == data, f"{path}: torn line"
        return
    if top == "trunc" and data == b"":
        return  # between open(O_TRUNC) and write(): a real state
    m = VERSION_RE.match(data)
    assert m and m[1].decode() == path, f"{path}: foreign or torn content {data[:40]!r}"
    assert data == version(path, int(m[2])), f"{path}: torn or cut-off version {int(m[2])}"


class ContentChecker:
    """Checks each stored content once (by content address) for every path holding it."""

    def __init__(self, client) -> None:
        self.client = client
        self.seen: set[tuple[str, str]] = set()  # (path, object_id)
        self.files = 0

    def check(self, snap_id: str) -> None:
        for e in self.client.list_tree(snap_id, recursive=True):
            if e.kind != "file" or (e.path, e.object_id) in self.seen:
                continue
            check_content(e.path, self.client.read_file(snap_id, e.path))
            self.seen.add((e.path, e.object_id))
            self.files += 1


@pytest.fixture(scope="module")
def daemon():
    with running_daemon() as d:
        yield d


@pytest.fixture(scope="module")
def client(daemon):
    with daemon.client() as c:
        yield c


def test_racing_writer_through_the_daemon(client, tmp_path) -> None:
    root = str(tmp_path / "ws")
    os.mkdir(root)
    stop = tmp_path / "stop"  # outside the workspace
    ws = client.open_workspace(root, keep_last=10_000)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, root, str(stop), str(MIN_ROUNDS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    contents = ContentChecker(client)
    snapshots = aborted = hinted = 0
    try:
        assert writer.stdout.readline().strip() == "ready"
        contents.check(snapshot_until_hinted(ws).id)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        while writer.poll() is None:
            try:
                snap = ws.snapshot(label="race")
            except AbortedError:
                aborted += 1  # a file kept changing through every re-read: nothing stored
                continue
            snapshots += 1
            hinted += snap.stats["scan"] == "hinted"
            contents.check(snap.id)
            if snapshots == MIN_SNAPSHOTS:
                stop.touch()
        assert writer.wait(60) == 0
        done, rounds = writer.stdout.read().split()
        assert done == "done"
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()

    # The writer has exited: the very next snapshot holds the final state, exactly.
    final = ws.snapshot(label="after the writer")
    cap = capture(root)
    SnapshotChecker(client).assert_matches(final, cap, "snapshot after the writer stopped")
    assert_same_as_full_walk(ws, final, "snapshot after the writer stopped")
    contents.check(final.id)
    last = int(rounds)
    # The writer's last versions (a sanity check that the capture is the writer's final state).
    for name, v in (
        (f"atomic/a{last % 4}", last),
        (f"inplace/p{last % 4}", last),
        (f"trunc/t{last % 3}", last),
    ):
        assert client.read_file(final.id, name) == version(name, v), name
    appended = client.read_file(final.id, f"append/l{last % 2}")
    assert appended.endswith(version(f"append/l{last % 2}", last))
    assert not [p for p in cap if b".~snapd-" in p], "internal files left in the workspace"
    counters = ws.stats().watcher
    print(
        f"\n[race] {snapshots} snapshots ({hinted} hinted, {aborted} aborted and retried) during "
        f"{last} writer rounds; {contents.files} stored contents checked; watcher {counters}"
    )
    assert snapshots >= MIN_SNAPSHOTS
    assert counters["overflows"] == 0 and counters["restarts"] == 0, counters
    ws.close(forget=True)


def test_the_checks_recognise_torn_and_foreign_contents() -> None:
    """The race test's checks would see a mixed, cut-off or misplaced version."""
    check_content("inplace/p1", version("inplace/p1", 7))
    check_content("trunc/t0", b"")
    check_content("atomic/.tmp-a2", version("atomic/a2", 9)[:100])
    check_content("append/l1", version("append/l1", 0) + version("append/l1", 3))
    mixed = version("inplace/p1", 8)[:2048] + version("inplace/p1", 7)[2048:]
    bad = [
        ("inplace/p1", mixed),
        ("atomic/a0", version("atomic/a0", 5)[:-1]),
        ("atomic/a0", version("atomic/a1", 5)),
        ("atomic/a0", b""),
        ("append/l0", version("append/l0", 0) + version("append/l0", 4)[:-3]),
        ("append/l0", version("append/l0", 0) + version("append/l0", 4) + version("append/l0", 2)),
        ("atomic/.tmp-a0", version("atomic/a0", 5)[:50] + b"x"),
    ]
    for path, data in bad:
        with pytest.raises(AssertionError):
            check_content(path, data)
