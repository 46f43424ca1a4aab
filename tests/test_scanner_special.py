"""Unreadable paths, files that vanish during the walk, and special files (FIFOs, sockets,
devices).

Documented behaviour (README design section / scanner): a snapshot that cannot read a path
fails with PermissionDenied naming every such path, and commits nothing; files that vanish
during the walk are simply absent (counted in stats["vanished"]); special files are skipped
(counted in stats["skipped_special"], listed in stats["special_paths"]), never opened, never
stored, and a restore leaves them alone.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap

import pytest
from treeutil import capture, read, write

from snapd import browse
from snapd.workspace import Hints

NOBODY = 65534

# Runs as root until it has imported everything, then drops to an unprivileged user: root
# reads through any permission bits, and the venv's interpreter is not reachable for nobody.
UNPRIVILEGED = textwrap.dedent(
    """
    import json, os, sys
    from snapd.errors import SnapdError
    from snapd.store.store import Store
    from snapd.workspace import Workspace, WorkspaceSettings
    import snapd.scanner, snapd.restore, snapd.browse  # noqa: F401 (before dropping privileges)

    base, uid = sys.argv[1], int(sys.argv[2])
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    ws_dir = os.path.join(base, "ws")
    store = Store.open(os.path.join(base, "store"))
    ws = Workspace.open(store, ws_dir, WorkspaceSettings(watch=False))
    out = {}

    def attempt(name):
        try:
            rec = ws.snapshot(label=name)
            out[name] = {"ok": rec.id, "read_files": rec.stats["read_files"]}
        except SnapdError as e:
            out[name] = {"code": e.code, "message": str(e), "paths": e.details.get("paths")}
        except Exception as e:  # anything else is a bug: report it, do not crash the test
            out[name] = {"code": "UNEXPECTED " + type(e).__name__, "message": str(e)}
        out[name]["snapshots"] = len(store.list_snapshots(ws.id))

    for step in json.loads(sys.argv[3]):
        if step[0] == "snapshot":
            attempt(step[1])
        elif step[0] == "chmod":
            os.chmod(os.path.join(ws_dir, step[1]), int(step[2], 8))
        elif step[0] == "write":
            with open(os.path.join(ws_dir, step[1]), "w") as f:
                f.write(step[2])
    print(json.dumps(out))
    """
)


def run_unprivileged(base, steps: list) -> dict:
    """Run snapshot/chmod/write steps as `nobody` on base/ws with store base/store."""
    for dirpath, dirnames, filenames in os.walk(base):
        for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
            os.lchown(n, NOBODY, NOBODY)
    os.chmod(base, 0o755)
    proc = subprocess.run(
        [sys.executable, "-c", UNPRIVILEGED, str(base), str(NOBODY), json.dumps(steps)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def unpriv_base(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to create files for another user")  # pragma: no cover
    base = tmp_path / "unpriv"
    (base / "ws").mkdir(parents=True)
    # pytest's tmp_path parents are 0700 root: let nobody through to base.
    p = base.parent
    while str(p) != "/":
        os.chmod(p, os.stat(p).st_mode | 0o011)
        if str(p) == "/tmp":
            break
        p = p.parent
    return base


def test_unreadable_paths_fail_the_snapshot_naming_them(unpriv_base) -> None:
    ws = unpriv_base / "ws"
    write(ws, "ok.txt", "fine\n")
    write(ws, "secret.txt", "no\n", mode=0o000)
    write(ws, "locked/inner.txt", "hidden\n")
    write(ws, "no-search/inner.txt", "listable, not searchable\n")
    write(ws, "deep/er/private.key", "k\n", mode=0o200)
    os.chmod(ws / "locked", 0o000)
    os.chmod(ws / "no-search", 0o644)  # can list names, cannot stat or open them

    out = run_unprivileged(
        unpriv_base,
        [
            ["snapshot", "first"],
            ["chmod", "secret.txt", "600"],
            ["chmod", "locked", "700"],
            ["chmod", "no-search", "755"],
            ["chmod", "deep/er/private.key", "600"],
            ["snapshot", "fixed"],
            ["chmod", "secret.txt", "000"],
            ["write", "ok.txt", "changed\n"],
            ["snapshot", "again"],
            ["chmod", "secret.txt", "600"],
            ["snapshot", "last"],
        ],
    )
    first = out["first"]
    assert first["code"] == "PERMISSION_DENIED", first
    assert sorted(first["paths"]) == [
        "deep/er/private.key",
        "locked",
        "no-search/inner.txt",
        "secret.txt",
    ], first
    for p in first["paths"]:
        assert p in first["message"]
    assert "exclude" in first["message"]  # says what to do
    assert first["snapshots"] == 0  # nothing committed

    assert "ok" in out["fixed"], out["fixed"]
    assert out["again"]["code"] == "PERMISSION_DENIED"
    assert out["again"]["paths"] == ["secret.txt"]
    assert out["again"]["snapshots"] == 1
    # The failed attempt left the stat cache consistent: the change to ok.txt is still seen.
    last = out["last"]
    assert "ok" in last and last["snapshots"] == 2, last


def test_files_vanishing_during_the_walk_are_absent(ws, ws_dir, store, tmp_path) -> None:
    names = [f"d{i % 5}/f{i}.txt" for i in range(400)]
    deleter = textwrap.dedent(
        """
        import os, random, sys, time
        root, names = sys.argv[1], sys.argv[2:]
        random.Random(1).shuffle(names)
        print("ready", flush=True)
        sys.stdin.readline()
        for i, n in enumerate(names):
            os.unlink(os.path.join(root, n))
            if i % 20 == 0:
                time.sleep(0.0002)
        """
    )
    vanished = 0
    for _attempt in range(20):
        for i, n in enumerate(names):
            write(ws_dir, n, f"file {i}\n")
        proc = subprocess.Popen(
            [sys.executable, "-c", deleter, ws_dir, *names],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline() == "ready\n"
        proc.stdin.write("go\n")
        proc.stdin.flush()  # the deletions start now, racing the walk below
        snaps = [ws.snapshot()]
        while proc.poll() is None:
            snaps.append(ws.snapshot())
        proc.wait()
        snaps.append(ws.snapshot())
        for snap in snaps:
            vanished += snap.stats["vanished"]
            for e in browse.list_dir(store, snap.root_tree, recursive=True):
                if e.kind == "file":
                    _, pieces = browse.read_file(store, snap.root_tree, e.path)
                    i = int(e.path.rsplit("/f", 1)[1].split(".")[0])
                    assert b"".join(pieces) == f"file {i}\n".encode()
        final = sorted(e.path for e in browse.list_dir(store, snaps[-1].root_tree, recursive=True))
        assert final == [f"d{i}" for i in range(5)]  # the emptied directories
        if vanished:
            break
    assert vanished > 0, "no file vanished mid-walk in 20 attempts"


def test_hinted_path_that_vanished_is_simply_absent(ws, ws_dir, store) -> None:
    write(ws_dir, "a/b.txt", "x")
    ws.snapshot()
    os.unlink(os.path.join(ws_dir, "a/b.txt"))
    os.rmdir(os.path.join(ws_dir, "a"))
    snap = ws.snapshot(hints=Hints(paths={b"a/b.txt", b"missing/entirely"}))
    assert list(browse.list_dir(store, snap.root_tree, recursive=True)) == []


def make_specials(root: str) -> list[str]:
    """A FIFO, a socket and (if permitted) a character device; returns their paths."""
    made = []
    os.makedirs(os.path.join(root, "dev"), exist_ok=True)
    os.mkfifo(os.path.join(root, "pipe"))
    made.append("pipe")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(root, "dev/sock"))
    sock.close()  # the socket file stays
    made.append("dev/sock")
    try:
        os.mknod(os.path.join(root, "dev/null-copy"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        made.append("dev/null-copy")
    except PermissionError:
        pass  # no CAP_MKNOD in this container
    return made


@pytest.mark.timeout(120)  # a walk that opened the FIFO would block here forever
def test_special_files_are_skipped_and_left_alone_by_restores(ws, ws_dir, store) -> None:
    write(ws_dir, "a.txt", "v1\n")
    before_dev = ws.snapshot()
    write(ws_dir, "dev/readme", "devices here\n")
    specials = make_specials(ws_dir)
    first = ws.snapshot()
    assert first.stats["skipped_special"] == len(specials)
    assert sorted(first.stats["special_paths"]) == sorted(specials)
    stored = sorted(e.path for e in browse.list_dir(store, first.root_tree, recursive=True))
    assert stored == ["a.txt", "dev", "dev/readme"]
    inodes = {p: os.lstat(os.path.join(ws_dir, p)).st_ino for p in specials}

    write(ws_dir, "a.txt", "v2\n")
    os.unlink(os.path.join(ws_dir, "dev/readme"))
    ws.restore(first.id)
    assert read(ws_dir, "a.txt") == b"v1\n"
    assert read(ws_dir, "dev/readme") == b"devices here\n"
    for p in specials:
        assert os.lstat(os.path.join(ws_dir, p)).st_ino == inodes[p], p

    # The older snapshot has no dev/: what the index knows there goes, the directory stays
    # because of the special files in it, and the restore says so.
    res = ws.restore(before_dev.id)
    assert not os.path.exists(os.path.join(ws_dir, "dev/readme"))
    assert res.stats.conflicts == ["dev"]
    for p in specials:
        assert os.lstat(os.path.join(ws_dir, p)).st_ino == inodes[p], p
    ws.restore(first.id)
    assert read(ws_dir, "dev/readme") == b"devices here\n"


def test_walk_is_not_blocked_by_a_fifo_swapped_in_for_a_file(ws, ws_dir, store) -> None:
    write(ws_dir, "x", "regular\n")
    ws.snapshot()
    os.unlink(os.path.join(ws_dir, "x"))
    os.mkfifo(os.path.join(ws_dir, "x"))
    for hints in (None, Hints(paths={b"x"})):
        snap = ws.snapshot(hints=hints)
        assert [e.path for e in browse.list_dir(store, snap.root_tree, recursive=True)] == []
    assert stat.S_ISFIFO(os.lstat(os.path.join(ws_dir, "x")).st_mode)
    assert capture(ws_dir)[b"x"].kind == "fifo"
