"""Every inspection command of the `snapd` CLI, end to end: `python -m snapd.cli` subprocesses
talking to a real daemon subprocess on a temporary socket and store. Checks the --json
documents, the readable output people see, and the exit codes of bad input.

Each CLI run is a fresh interpreter that imports grpc (about half a second of CPU), so tests
prepare their workspaces and snapshots through the client library and run the CLI only for
the behaviour under test.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import pty
import random
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass
from typing import Any

import pytest
import treeutil
from snapd_client import FailedPreconditionError

from snapd import cli as snapd_cli
from snapd.cli_commands import REGISTER
from snapd.server.testing import DaemonProcess, short_tempdir

ENV = {k: v for k, v in os.environ.items() if k not in ("SNAPD_SOCKET", "COLUMNS")}


@dataclass
class Run:
    rc: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()

    def json(self) -> Any:
        """The one JSON document on stdout (json.loads fails on zero or several)."""
        return json.loads(self.out)


def run_cli(socket: str, *args: str, cwd: str | None = None, expect: int | None = 0) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "snapd.cli", "--socket", socket, *args],
        cwd=cwd,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=ENV,
        timeout=120,
    )
    r = Run(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))
    if expect is not None:
        assert r.rc == expect, f"snapd {' '.join(args)} -> {r.rc}\n{r.err}\n{r.text}"
    return r


@pytest.fixture(scope="module")
def cli(daemon):
    def run(*args: str, cwd: str | None = None, expect: int | None = 0) -> Run:
        return run_cli(daemon.socket, *args, cwd=cwd, expect=expect)

    return run


def make_tree(root: str) -> None:
    treeutil.write(root, "README.md", "# project\n")
    treeutil.write(root, "src/app.py", "print('hello')\nx = 1\n")
    treeutil.write(root, "src/lib/util.py", "def f():\n    return 1\n")
    treeutil.write(root, "data.bin", b"\x00\x01\x02binary\xff" * 10)
    os.symlink("src/app.py", os.path.join(root, "link"))


@pytest.fixture
def ws(client, tmp_path):
    """A workspace with a small tree, opened through the client library."""
    d = str(tmp_path / "ws")
    make_tree(d)
    w = client.open_workspace(d)
    yield w
    w.close(forget=True)


# --- workspaces -------------------------------------------------------------------------------
def test_workspaces_open_list_close_forget(cli, client, tmp_path) -> None:
    d = tmp_path / "proj"
    treeutil.write(d, "a.txt", "a\n")
    real = os.path.realpath(d)
    # A relative path is resolved against the current directory.
    opened = cli(
        "workspaces", "open", "proj", "--keep-last", "3", "--exclude", "*.log", "--json",
        cwd=str(tmp_path),
    ).json()  # fmt: skip
    assert opened["created"] is True
    w = opened["workspace"]
    assert w["path"] == real and w["settings"]["keep_last"] == 3
    assert w["settings"]["exclude"] == ["*.log"] and w["open"] is True

    table = cli("workspaces").text  # the default action is list, as a table
    assert re.search(
        rf"{w['id']}\s+{re.escape(real)}\s+open\s+-\s+last 3, durable 20\s+\*\.log", table
    )

    # close: the daemon lets go; the workspace, its settings and snapshots stay.
    client.snapshot(w["id"])
    cli("workspaces", "close", "-w", str(d / "a.txt"))  # any path inside names it
    listed = {x.id: x for x in client.workspaces()}
    assert listed[w["id"]].open is False and listed[w["id"]].settings.keep_last == 3

    # forget deletes its snapshots; without a terminal it needs --yes.
    refused = cli("workspaces", "forget", cwd=str(d), expect=2)
    assert "--yes" in refused.err
    gone = cli("workspaces", "forget", "--yes", "--json", cwd=str(d)).json()
    assert gone["forgotten"] is True and gone["deleted_snapshots"] == 1
    assert w["id"] not in [x.id for x in client.workspaces()]
    assert (d / "a.txt").exists()  # the directory itself is untouched


def test_workspace_errors(cli, ws, tmp_path) -> None:
    missing = cli("workspaces", "open", str(tmp_path / "missing"), "--json", expect=3).json()
    assert missing["error"]["code"] == "NOT_FOUND" and missing["error"]["exit_code"] == 3
    nested = cli("workspaces", "open", os.path.join(ws.path, "src"), expect=4)
    assert "overlaps" in nested.err
    outside = tmp_path / "outside"
    outside.mkdir()
    r = cli("log", cwd=str(outside), expect=3)
    assert "no workspace contains" in r.err and "--workspace" in r.err


# --- snapshot, log, show ----------------------------------------------------------------------
def test_snapshot_log_show(cli, client, ws) -> None:
    # From a subdirectory: the workspace enclosing the cwd is the one used.
    first = cli(
        "snapshot", "step 1", "-m", "step=1", "-m", "agent=a=b", "--json", cwd=f"{ws.path}/src/lib"
    ).json()["snapshot"]
    assert first["label"] == "step 1" and first["metadata"] == {"step": "1", "agent": "a=b"}
    assert first["origin"] == "user" and not first["durable"] and first["stats"]["total_files"] == 4

    treeutil.write(ws.path, "src/app.py", "print('changed')\n")
    plain = cli("snapshot", "step 2", "--durable", "--pin", "-w", ws.path).text
    second = client.get_snapshot(plain.split()[0])  # readable output: id, path, summary
    assert ws.path in plain and second.durable and second.pinned
    assert second.parent_id == first["id"] and second.label == "step 2"
    third = ws.snapshot("step 3")

    page = cli("log", "-n", "2", "--json", "-w", ws.path).json()
    assert [s["id"] for s in page["snapshots"]] == [third.id, second.id]  # newest first
    assert page["more"] is True and page["workspace"]["path"] == ws.path
    rest = cli("log", "-n", "2", "--skip", "2", "--json", cwd=ws.path).json()
    assert [s["id"] for s in rest["snapshots"]] == [first["id"]] and rest["more"] is False
    table = cli("log", "-n", "2", cwd=ws.path)
    assert re.search(rf"{second.id}\s+\S+ \S+\s+step 2\s+durable,pinned\s+4\s", table.text)
    assert first["id"] not in table.text and "--skip 2" in table.err

    shown = cli("show", first["id"][:6], "--json", "-w", ws.path).json()  # a unique prefix
    assert shown["snapshot"]["id"] == first["id"] and shown["workspace_path"] == ws.path
    assert shown["snapshot"]["metadata"] == {"step": "1", "agent": "a=b"}
    text = cli("show", "latest~2", cwd=ws.path).text
    assert re.search(rf"id\s+{first['id']}", text) and re.search(r"label\s+step 1", text)
    assert re.search(r"agent\s+a=b", text) and re.search(r"total_files\s+4", text)


def test_snapshot_full_walks_the_whole_tree(cli, client, ws) -> None:
    ws.snapshot()
    full = cli("snapshot", "--full", "--json", "-w", ws.path).json()["snapshot"]
    assert full["stats"]["scan"] == "full"
    # show flattens the nested watcher counters into dotted names.
    text = cli("show", full["id"]).text
    assert re.search(r"scan\s+full", text) and re.search(r"watcher\.events\s+\d+", text)
    assert "{" not in text


def test_unknown_and_malformed_snapshot_ids(cli, ws) -> None:
    ws.snapshot()
    r = cli("show", "abcdef012345", "--json", cwd=ws.path, expect=3)
    assert r.json() == {
        "error": {
            "code": "NOT_FOUND",
            "message": "snapshot 'abcdef012345' does not exist (it may have been evicted)",
            "exit_code": 3,
        }
    }
    assert "not a snapshot id" in cli("show", "not-hex", cwd=ws.path, expect=2).err


# --- diff -------------------------------------------------------------------------------------
def test_diff_names_kinds_and_patch(cli, ws) -> None:
    s1 = ws.snapshot().id
    treeutil.write(ws.path, "src/app.py", "print('hello')\nx = 2\n")
    treeutil.write(ws.path, "new.txt", "new")  # no newline at the end
    os.unlink(os.path.join(ws.path, "README.md"))
    treeutil.write(ws.path, "data.bin", b"\x00\x01\x02changed\xff" * 10)
    expected = {
        ("src/app.py", "modified", "file"),
        ("new.txt", "added", "file"),
        ("README.md", "deleted", "file"),
        ("data.bin", "modified", "file"),
    }

    # Against the live workspace (of the snapshot), with patches read from the directory.
    live = cli("diff", "-p", s1, "--json").json()
    assert live["from"] == s1 and live["to"] is None
    assert {(c["path"], c["change"], c["kind"]) for c in live["changes"]} == expected
    by_path = {c["path"]: c for c in live["changes"]}
    app = by_path["src/app.py"]
    assert app["old_size"] == 21 and app["new_size"] == 21
    assert app["patch"].endswith("@@ -1,2 +1,2 @@\n print('hello')\n-x = 1\n+x = 2\n")
    assert by_path["new.txt"]["patch"].endswith("+new\n\\ No newline at end of file\n")
    assert by_path["data.bin"]["binary"] is True and by_path["data.bin"]["patch"] is None

    s2 = ws.snapshot().id
    names = cli("diff", s1, s2).text  # two snapshots: no workspace needed
    assert re.search(r"modified\s+file\s+src/app\.py\s+21 B -> 21 B", names)
    assert re.search(r"deleted\s+file\s+README\.md", names)
    assert "4 changes: " in names

    patch = cli("diff", "-p", s1, s2).text
    assert (
        "diff a/src/app.py b/src/app.py (file modified)\n"
        "--- a/src/app.py\n"
        "+++ b/src/app.py\n"
        "@@ -1,2 +1,2 @@\n"
        " print('hello')\n"
        "-x = 1\n"
        "+x = 2\n"
    ) in patch
    assert "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+new\n\\ No newline" in patch
    assert "--- a/README.md\n+++ /dev/null\n@@ -1 +0,0 @@\n-# project\n" in patch
    assert "diff a/data.bin b/data.bin (file modified)\n# binary files differ\n" in patch

    nothing = cli("diff", cwd=ws.path)  # latest vs live: nothing changed since s2
    assert nothing.out == b"" and "no changes" in nothing.err


# --- cat, ls ----------------------------------------------------------------------------------
def test_cat_is_binary_safe(cli, ws) -> None:
    blob = random.Random(7).randbytes(1536 * 1024) + bytes(range(256))  # > one 1 MiB message
    treeutil.write(ws.path, "bin/blob.dat", blob)
    s = ws.snapshot().id
    os.unlink(os.path.join(ws.path, "bin/blob.dat"))  # it comes from the snapshot

    assert cli("cat", s, "bin/blob.dat").out == blob
    doc = cli("cat", "latest", "data.bin", "--json", cwd=ws.path).json()
    assert doc["encoding"] == "base64" and doc["entry"]["size"] == 100
    assert base64.b64decode(doc["content"]) == b"\x00\x01\x02binary\xff" * 10
    assert doc["snapshot_id"] == s

    assert "is a directory" in cli("cat", s, "src", expect=2).err
    cli("cat", s, "no/such/file", expect=3)
    escape = cli("cat", s, "../outside", "--json", expect=2).json()
    assert escape["error"]["code"] == "INVALID_ARGUMENT" and ".." in escape["error"]["message"]


def test_ls(cli, ws) -> None:
    s = ws.snapshot().id
    tree = cli("ls", "-R", s, "--json").json()
    assert tree["snapshot_id"] == s
    assert {e["path"]: e["kind"] for e in tree["entries"]} == {
        "README.md": "file",
        "data.bin": "file",
        "link": "symlink",
        "src": "dir",
        "src/app.py": "file",
        "src/lib": "dir",
        "src/lib/util.py": "file",
    }
    text = cli("ls", "latest", "src", cwd=ws.path).text  # one level
    assert re.search(r"-rw-r--r--\s+21\s+\S+ \S+\s+src/app\.py\n", text)
    assert re.search(r"drwxr-xr-x\s+-\s+\S+ \S+\s+src/lib/\n", text)
    assert "util.py" not in text


# --- restore, fork ----------------------------------------------------------------------------
def test_restore_dry_run_changes_nothing_then_restore(cli, ws) -> None:
    s1 = ws.snapshot().id
    at_s1 = treeutil.capture(ws.path)
    treeutil.write(ws.path, "src/app.py", "broken\n")
    treeutil.write(ws.path, "junk.txt", "junk\n")
    shutil.rmtree(os.path.join(ws.path, "src/lib"))
    before = treeutil.capture(ws.path)
    count = len(ws.snapshots())

    dry = cli("restore", "--dry-run", s1[:8], "--json", cwd=ws.path).json()["result"]
    assert dry["dry_run"] is True and dry["safety_snapshot_id"] is None
    changes = {(c["path"], c["change"]) for c in dry["changes"]}
    assert {("src/app.py", "modified"), ("junk.txt", "deleted"), ("src/lib", "added")} <= changes
    treeutil.assert_same(treeutil.capture(ws.path), before, "after --dry-run")
    assert len(ws.snapshots()) == count  # not even a safety snapshot

    done = cli("restore", s1, cwd=ws.path).text
    assert re.search(r"deleted\s+file\s+junk\.txt", done)
    safety = re.search(r"undo: snapd restore ([0-9a-f]{12})", done).group(1)
    treeutil.assert_same(treeutil.capture(ws.path), at_s1, "after restore", dir_mtimes=False)

    # Only some paths: from the safety snapshot, put back just the broken app.py.
    only = cli("restore", safety, "src/app.py", "--json", cwd=ws.path).json()["result"]
    assert [c["path"] for c in only["changes"]] == ["src/app.py"]
    assert treeutil.read(ws.path, "src/app.py") == b"broken\n"
    assert not os.path.exists(os.path.join(ws.path, "junk.txt"))  # not among the paths

    bad = cli("restore", s1, "../etc", "--json", cwd=ws.path, expect=2).json()
    assert bad["error"]["code"] == "INVALID_ARGUMENT"


def test_restore_refuses_another_workspaces_snapshot(cli, client, ws, tmp_path) -> None:
    other = tmp_path / "other"
    treeutil.write(other, "x", "x")
    w = client.open_workspace(str(other))
    try:
        foreign = w.snapshot().id
        r = cli("restore", foreign, "--json", cwd=ws.path, expect=4)
        assert r.json()["error"]["code"] == "FAILED_PRECONDITION"
    finally:
        w.close(forget=True)


def test_fork(cli, client, ws, tmp_path) -> None:
    s = ws.snapshot().id
    target = tmp_path / "forked"
    doc = cli("fork", s, str(target), "--keep-last", "2", "--json").json()
    try:
        assert doc["workspace"]["path"] == os.path.realpath(target)
        assert doc["workspace"]["settings"]["keep_last"] == 2
        assert doc["snapshot"]["origin"] == "fork"
        treeutil.assert_same(
            treeutil.capture(target), treeutil.capture(ws.path), "fork", dir_mtimes=False
        )
        assert "overlaps" in cli("fork", s, os.path.join(ws.path, "inner"), expect=4).err
    finally:
        client.close_workspace(doc["workspace"]["id"], forget=True)


# --- persist, pin, unpin, rm ------------------------------------------------------------------
def test_persist_pin_unpin_rm(cli, client, ws) -> None:
    s = ws.snapshot().id
    assert cli("persist", s, "--json").json()["snapshot"]["durable"] is True
    assert "pinned " + s in cli("pin", s[:5]).text
    assert client.get_snapshot(s).pinned and client.get_snapshot(s).durable

    refused = cli("rm", s, "--json", expect=4).json()["error"]
    assert refused["code"] == "FAILED_PRECONDITION"
    assert refused["message"] == f"snapshot {s} is pinned; unpin it first or delete it with --force"
    # The daemon applies the same rule to callers that skip the CLI's own check.
    with pytest.raises(FailedPreconditionError):
        client.delete_snapshot(s)
    assert cli("unpin", s, "--json").json()["snapshot"]["pinned"] is False

    # Several at once, a pinned one with --force; an unknown id among them deletes nothing.
    pinned = ws.snapshot(pinned=True).id
    cli("rm", pinned, "abcdef012345", expect=3)
    assert client.get_snapshot(pinned).pinned
    assert cli("rm", "--force", s, pinned, "--json").json() == {"deleted": [s, pinned]}
    assert all(x.id not in (s, pinned) for x in ws.snapshots())


# --- gc, verify, stats ------------------------------------------------------------------------
def test_gc_verify_stats(cli, ws) -> None:
    s = ws.snapshot().id
    gc = cli("gc", "--json").json()["result"]
    assert gc["complete"] is True and gc["deleted_objects"] >= 0

    report = cli("verify", "--sample", "0.5", "--snapshot", s, "--json").json()["report"]
    assert report["ok"] is True and report["problem_count"] == 0
    assert report["sample"] == 0.5 and report["snapshots_checked"] == 1

    stats = cli("stats", "--json").json()
    assert stats["store"]["snapshots"] >= 1 and stats["store"]["logical_bytes"] > 0
    assert ws.path in [w["path"] for w in stats["workspaces"]] and stats["daemon"]["version"]
    text = cli("stats", "--no-store", "-w", ws.path).text  # one workspace, no store walk
    assert re.search(rf"{ws.id}\s+{re.escape(ws.path)}\s+1\s+0\s+0\s+{s}", text)
    assert "dedup_ratio" not in text and "version" in text
    # The watcher counters of the open workspace: a table row, and a dict in --json.
    assert re.search(r"file watchers", text) and re.search(r"ID\s+WATCHES\s+EVENTS", text)
    assert re.search(rf"(?m)^{ws.id}\s+\d+\s+\d+", text.split("file watchers", 1)[1])
    (mine,) = [w for w in stats["workspaces"] if w["workspace_id"] == ws.id]
    assert mine["watcher"]["watches"] >= 1 and "rescans_full" in mine["watcher"]

    repaired = cli("verify", "--repair", "--json").json()["report"]
    assert repaired["ok"] and repaired["repair"]["objects_fixed"] == 0
    assert repaired["repair"]["objects"] > 0
    assert cli("verify", "--json").json()["report"]["repair"] is None


def run_with_terminal_stderr(socket: str, *args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal, where progress bars are drawn."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "snapd.cli", "--socket", socket, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            env={**ENV, "TERM": "xterm", "COLUMNS": "200"},
            timeout=120,
        )
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the writer is gone and everything is read
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    terminal = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    return proc.returncode, proc.stdout.decode(), terminal


def test_progress_bars_come_from_the_daemons_progress_stream(daemon, client, ws) -> None:
    ws.snapshot()
    ws.snapshot(durable=True)
    total = len(client.snapshots())

    rc, out, terminal = run_with_terminal_stderr(daemon.socket, "verify")
    assert rc == 0 and "objects checked" in out
    # The bar ends at every snapshot checked, with the final figures.
    assert re.search(rf"verify .*\b{total}/{total}\b.*objects checked, 0 problems", terminal)

    rc, out, terminal = run_with_terminal_stderr(daemon.socket, "gc")
    assert rc == 0 and re.search(r"gc .*objects \(.*\) deleted, \d+ packs compacted", terminal)

    # --json: exactly one document on stdout, and no bar.
    rc, out, terminal = run_with_terminal_stderr(daemon.socket, "verify", "--json")
    assert rc == 0 and json.loads(out)["report"]["ok"] and terminal.strip() == ""


def test_damaged_store_exits_6() -> None:
    """Damage is DATA_LOSS, exit 6, from verify and from cat. A daemon of its own: its store
    is corrupted on purpose."""
    root = short_tempdir()
    d = DaemonProcess(os.path.join(root, "store"), os.path.join(root, "snapd.sock"))
    d.start()
    try:
        w = os.path.join(root, "ws")
        treeutil.write(w, "big.bin", random.Random(3).randbytes(200_000))
        with d.client() as c:
            s = c.open_workspace(w).snapshot().id
        packs = os.path.join(root, "store", "packs")
        (pack,) = os.listdir(packs)
        path = os.path.join(packs, pack)
        with open(path, "r+b") as f:  # flip one byte in the middle of the compressed content
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))

        text = run_cli(d.socket, "verify", expect=6).text
        assert re.search(rf"{s}\s+big\.bin\s+[0-9a-f]+\s+.*corrupt", text)
        # --repair does not change the verdict (nor its exit code), and says what it did.
        repaired = run_cli(d.socket, "verify", "--repair", expect=6).text
        assert re.search(r"damaged snapshots\s+" + s, repaired)
        assert re.search(r"reference counts fixed\s+0 of \d+ objects", repaired)
        assert re.search(r"damaged snapshots\s+" + s, text)
        damaged = run_cli(d.socket, "cat", s, "big.bin", "--json", expect=6).json()
        assert damaged["error"]["code"] == "DATA_LOSS" and damaged["error"]["exit_code"] == 6
    finally:
        d.terminate()
        d.close()
        shutil.rmtree(root, ignore_errors=True)


def test_verify_repair_prints_what_it_fixed() -> None:
    """A reference count made wrong in the catalog while the daemon is stopped: `verify
    --repair` fixes it and says so, exit 0 (the data itself is fine). A daemon of its own."""
    from snapd.store.store import Store

    root = short_tempdir()
    store_dir = os.path.join(root, "store")
    sock = os.path.join(root, "snapd.sock")
    args = ["--no-background-gc"]
    try:
        w = os.path.join(root, "ws")
        treeutil.write(w, "a.txt", "a\n")
        with DaemonProcess(store_dir, sock, args=args) as d, d.client() as c:
            s = c.open_workspace(w).snapshot().id
        store = Store.open(store_dir, create=False)
        try:
            with store.transaction() as conn:
                cur = conn.execute(
                    "UPDATE objects SET refs = refs + 5 "
                    "WHERE id = (SELECT root_tree FROM snapshots WHERE id = ?)",
                    (s,),
                )
                assert cur.rowcount == 1
        finally:
            store.close()
        with DaemonProcess(store_dir, sock, args=args) as d:
            text = run_cli(d.socket, "verify", "--repair").text
            assert re.search(r"result\s+ok", text)
            assert re.search(r"reference counts fixed\s+1 of \d+ objects", text)
            again = run_cli(d.socket, "verify", "--repair", "--json").json()["report"]
            assert again["repair"]["objects_fixed"] == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- --json everywhere ------------------------------------------------------------------------
def registered_commands() -> set[str]:
    sub = argparse.ArgumentParser().add_subparsers()
    for register in REGISTER:
        register(sub)
    return set(sub.choices)


def test_every_command_prints_exactly_one_json_document(daemon, client, ws, tmp_path) -> None:
    """Each command's --json output parses as one document. The tests above run every command
    as a subprocess; this sweep runs snapd.cli.main in this process to cover them all at once
    cheaply (a subprocess costs a fresh grpc import)."""
    # The sweep takes snapshots of its own; a window of the default 5 could evict s2 before
    # `rm s2` runs.
    client.open_workspace(ws.path, keep_last=1000)
    s1 = ws.snapshot().id
    treeutil.write(ws.path, "src/app.py", "v2\n")
    s2 = ws.snapshot().id
    fork_dir = str(tmp_path / "f")
    runs = {
        "workspaces": ["workspaces"],
        "log": ["log", "-w", ws.path],
        "show": ["show", s1],
        "diff": ["diff", "-p", s1, s2],
        "cat": ["cat", s2, "src/app.py"],
        "ls": ["ls", "-R", s2],
        "snapshot": ["snapshot", "-w", ws.path],
        "restore": ["restore", "-n", s1, "-w", ws.path],
        "persist": ["persist", s1],
        "pin": ["pin", s1],
        "unpin": ["unpin", s1],
        "rm": ["rm", s2],
        "fork": ["fork", s1, fork_dir],
        "gc": ["gc"],
        "verify": ["verify"],
        "stats": ["stats"],
    }
    assert set(runs) == registered_commands()  # a new command needs a line here
    try:
        for name, args in runs.items():
            for argv in (["--json", *args], [*args, "--json"]):  # before or after the name
                out = io.StringIO()
                with redirect_stdout(out):
                    rc = snapd_cli.main(["--socket", daemon.socket, *argv])
                assert rc == 0, (name, out.getvalue())
                doc = json.loads(out.getvalue())
                assert isinstance(doc, dict) and doc and "error" not in doc, name
                if name in ("snapshot", "fork", "rm"):
                    break  # once is enough (and rm cannot delete twice)
    finally:
        for w in client.workspaces():
            if w.path == os.path.realpath(fork_dir):
                client.close_workspace(w.id, forget=True)

    # The console script, with the socket from $SNAPD_SOCKET.
    script = os.path.join(os.path.dirname(sys.executable), "snapd")
    proc = subprocess.run(
        [script, "log", "-w", ws.path, "-n", "1", "--json"],
        capture_output=True,
        env={**ENV, "SNAPD_SOCKET": daemon.socket},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["snapshots"]) == 1
