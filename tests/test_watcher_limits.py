"""What the watcher cannot watch is rescanned: inotify watch and instance limits, permissions.

Each scenario runs in a child process (this file run as a script), so that a lowered limit or
dropped privileges touch nothing else on the machine:

- watch limit: the child runs in a new user namespace (`unshare -U -r`) and lowers
  /proc/sys/user/max_inotify_watches there; that limit binds only processes of the namespace,
  so other inotify users on the machine are unaffected. Without user namespaces the test falls
  back to lowering the global fs.inotify.max_user_watches to (this user's watches in use + a
  few) for the short time it takes to open the workspace, and puts it back at once.
- instance limit: the same, with /proc/sys/user/max_inotify_instances: a workspace opened
  when no inotify instance is left works without a watcher (full scans) instead of failing.
- permissions: the child drops to uid/gid 65534 (setpriv), since root may watch and create
  anything; a directory without read permission cannot be watched (EACCES), and a read-only
  workspace root has no room for a sync cookie.

The child prints one JSON line with what it saw; assertions of exactness run in the child.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

PY = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))
NOBODY = 65534


def _run_child(prefix: list[str], *args: str, timeout: float = 120) -> dict:
    cmd = [*prefix, PY, os.path.abspath(__file__), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, (
        f"child {cmd} failed ({proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return json.loads(lines[-1])


def _userns_prefix() -> list[str] | None:
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    probe = subprocess.run(
        [unshare, "-U", "-r", "sh", "-c", "echo 1 > /proc/sys/user/max_inotify_watches"],
        capture_output=True,
    )
    return [unshare, "-U", "-r"] if probe.returncode == 0 else None


def _watch_limit_mode() -> tuple[list[str], str]:
    prefix = _userns_prefix()
    if prefix is not None:
        return prefix, "userns"
    path = "/proc/sys/fs/inotify/max_user_watches"
    try:
        with open(path) as f:
            value = f.read()
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        pytest.skip(f"no user namespaces and {path} is not writable ({e.strerror})")
    return [], "global"


@pytest.mark.parametrize("budget", [12, 0], ids=["some-dirs-unwatched", "root-unwatched"])
def test_watch_limit_unwatched_subtrees_are_rescanned(budget: int, tmp_path) -> None:
    prefix, mode = _watch_limit_mode()
    out = _run_child(prefix, "watch-limit", str(tmp_path), mode, str(budget))
    print(f"watch limit ({mode}, budget {budget}): {out}")
    assert out["watch_limit_errors"] > 0
    assert out["unwatched_dirs"] > 0
    assert out["watches"] <= budget
    if budget == 0:
        assert out["root_unwatched"]


def test_no_inotify_instance_left_means_full_scans_not_failure(tmp_path) -> None:
    """fs.inotify.max_user_instances (128 by default) counts one instance per workspace."""
    prefix = _userns_prefix()
    if prefix is None:
        pytest.skip("needs a user namespace to lower max_inotify_instances for itself only")
    out = _run_child(prefix, "instances", str(tmp_path))
    print(f"instance limit: {out}")
    assert out["no_inotify"] == 1
    assert out["opened"] == 3


def test_unreadable_directory_and_read_only_root() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the scenario as an unprivileged user")
    base = tempfile.mkdtemp(prefix="snapd-watch-nobody-")  # /tmp itself, reachable by nobody
    try:
        os.chown(base, NOBODY, NOBODY)
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        out = _run_child(prefix, "permissions", base)
        print(f"permissions: {out}")
        assert out["unwatched_dirs"] >= 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- the child side -----------------------------------------------------------------------------
def _child_watch_limit(base: str, mode: str, budget: int) -> dict:
    from test_watcher_support import snap_exact

    from snapd.store.store import Store
    from snapd.workspace import Workspace, WorkspaceSettings

    ws_dir = os.path.join(base, "ws")
    for i in range(10):
        for j in range(3):
            os.makedirs(os.path.join(ws_dir, f"top{i}", f"mid{j}", "leaf"))
            _write(os.path.join(ws_dir, f"top{i}", f"mid{j}", "leaf", "f"), b"%d.%d" % (i, j))
    store = Store.open(os.path.join(base, "store"))
    if mode == "userns":
        with open("/proc/sys/user/max_inotify_watches", "w") as f:
            f.write(str(budget))
        ws = Workspace.open(store, ws_dir, WorkspaceSettings(keep_last=100))
        assert ws.watcher.ready.wait(60)
    else:
        path = "/proc/sys/fs/inotify/max_user_watches"
        with open(path) as f:
            old = f.read()
        try:
            with open(path, "w") as f:
                f.write(str(_watches_in_use(os.geteuid()) + budget))
            ws = Workspace.open(store, ws_dir, WorkspaceSettings(keep_last=100))
            assert ws.watcher.ready.wait(60)
        finally:
            with open(path, "w") as f:
                f.write(old)
    w = ws.watcher
    unwatched = sorted(w._unwatched)
    assert unwatched, "the limit was not reached"
    snap_exact(ws, "first snapshot")
    # Changes below unwatched directories raise no events: they are rescanned anyway. (With
    # the root unwatched, every directory is.)
    targets = [rel for rel in unwatched if rel] or [b"top%d" % i for i in range(5)]
    for k, rel in enumerate(targets[:5]):
        d = os.path.join(ws_dir, os.fsdecode(rel))
        for dirpath, _dirs, files in os.walk(d):
            for name in files:
                _write(os.path.join(dirpath, name), b"changed %d" % k)
        os.makedirs(os.path.join(d, "new", "deeper"))
        _write(os.path.join(d, "new", "deeper", "g"), b"new")
        snap_exact(ws, f"changes below unwatched {rel!r}")
    os.rename(
        os.path.join(ws_dir, os.fsdecode(targets[0])),
        os.path.join(ws_dir, "renamed-unwatched"),
    )
    _write(os.path.join(ws_dir, "renamed-unwatched", "new", "deeper", "h"), b"h")
    snap_exact(ws, "renamed unwatched directory")
    _write(os.path.join(ws_dir, "renamed-unwatched", "new", "deeper", "i"), b"i")
    snap_exact(ws, "changes in it afterwards")
    out = dict(w.counters)
    out["root_unwatched"] = b"" in w._unwatched
    ws.close()
    store.close()
    return out


def _watches_in_use(uid: int) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    n += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            continue
    return n


def _child_instances(base: str) -> dict:
    from test_watcher_support import snap_exact

    from snapd.store.store import Store
    from snapd.workspace import Workspace, WorkspaceSettings

    with open("/proc/sys/user/max_inotify_instances", "w") as f:
        f.write("2")  # the store may use none; the first two workspaces get one each
    store = Store.open(os.path.join(base, "store"))
    spaces = []
    for i in range(3):
        d = os.path.join(base, f"ws{i}")
        os.makedirs(os.path.join(d, "src", "deep"))
        _write(os.path.join(d, "src", "deep", "f"), b"%d" % i)
        ws = Workspace.open(store, d, WorkspaceSettings(keep_last=100))
        assert ws.watcher.ready.wait(60)
        spaces.append(ws)
    last = spaces[-1]
    for ws in spaces:
        snap_exact(ws, f"first snapshot of {ws.path}")
    for k in range(3):
        for ws in spaces:
            _write(os.path.join(ws.path, "src", "deep", "f"), b"changed %d" % k)
            os.makedirs(os.path.join(ws.path, f"new{k}", "x"))
            _write(os.path.join(ws.path, f"new{k}", "x", "g"), b"g")
            snap_exact(ws, f"change {k} in {ws.path}")
    out = dict(last.watcher.counters)
    out["opened"] = len(spaces)
    for ws in spaces:
        ws.close()
    store.close()
    return out


def _child_permissions(base: str) -> dict:
    from test_watcher_support import no_internal_files, snap_exact

    from snapd.errors import PermissionDenied
    from snapd.store.store import Store
    from snapd.workspace import Workspace, WorkspaceSettings

    assert os.geteuid() == NOBODY
    ws_dir = os.path.join(base, "ws")
    os.makedirs(os.path.join(ws_dir, "src"))
    _write(os.path.join(ws_dir, "src", "a"), b"a")
    store = Store.open(os.path.join(base, "store"))
    ws = Workspace.open(store, ws_dir, WorkspaceSettings(keep_last=100))
    assert ws.watcher.ready.wait(60)
    snap_exact(ws, "first snapshot")
    # A directory created without read permission cannot be watched (inotify needs read).
    locked = os.path.join(ws_dir, "locked")
    os.mkdir(locked, 0o300)
    try:
        ws.snapshot()
        raise AssertionError("a snapshot of an unreadable directory succeeded")
    except PermissionDenied:
        pass  # expected: the scanner cannot list it either
    os.chmod(locked, 0o755)
    _write(os.path.join(locked, "early"), b"written once readable")
    snap_exact(ws, "directory readable again")
    _write(os.path.join(locked, "later"), b"no inotify watch on it")
    snap_exact(ws, "changes in the directory that has no watch")
    unwatched = ws.watcher.counters["unwatched_dirs"]
    # A read-only root: no sync cookie can be created there; snapshots scan instead of failing.
    os.chmod(ws_dir, 0o555)
    try:
        _write(os.path.join(ws_dir, "src", "a"), b"changed under a read-only root")
        snap_exact(ws, "read-only root")
        _write(os.path.join(ws_dir, "src", "b"), b"b")
        snap_exact(ws, "read-only root, again")
    finally:
        os.chmod(ws_dir, 0o755)
    assert no_internal_files(ws_dir) == []
    out = dict(ws.watcher.counters)
    out["unwatched_dirs"] = unwatched
    ws.close()
    store.close()
    return out


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


if __name__ == "__main__":
    import warnings

    sys.path.insert(0, HERE)
    warnings.filterwarnings("ignore", "Callback with id")
    what = sys.argv[1]
    if what == "watch-limit":
        result = _child_watch_limit(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif what == "instances":
        result = _child_instances(sys.argv[2])
    elif what == "permissions":
        result = _child_permissions(sys.argv[2])
    else:
        raise SystemExit(f"unknown scenario {what}")
    print(json.dumps(result))
