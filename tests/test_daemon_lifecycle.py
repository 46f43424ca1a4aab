"""Daemon lifecycle against real subprocesses: socket and lock rules, systemd notify and watchdog,
SIGTERM during a snapshot, kill -9 and restart, configuration, TCP with mutual TLS."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import random
import shutil
import signal
import stat
import subprocess
import threading
import time

import pytest
import treeutil
from snapd_client import Client, RetryPolicy, UnavailableError

from snapd.errors import InvalidArgument
from snapd.server import config as server_config
from snapd.server.testing import DaemonProcess, short_tempdir

NO_RETRY = RetryPolicy(max_attempts=1)


@pytest.fixture
def root():
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def paths(root: str) -> tuple[str, str]:
    return os.path.join(root, "store"), os.path.join(root, "run", "snapd.sock")


def packs_size(store: str) -> int:
    d = os.path.join(store, "packs")
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def test_socket_and_directory_permissions(root) -> None:
    store, sock = paths(root)
    with DaemonProcess(store, sock) as d:
        assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
        st = os.lstat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sock + ".lock").st_mode) == 0o600
        assert d.client().ping().version
        assert d.terminate() == 0
    assert not os.path.exists(sock)  # removed on a clean stop


def test_unsafe_socket_directories_are_refused(root) -> None:
    store = os.path.join(root, "store")
    loose = os.path.join(root, "loose")
    os.mkdir(loose)
    os.chmod(loose, 0o777)
    d = DaemonProcess(store, os.path.join(loose, "s.sock"))
    try:
        d.spawn()
        assert d.proc.wait(60) == 1
        assert "writable by other users" in d.log()
    finally:
        d.close()
    if os.geteuid() == 0:
        theirs = os.path.join(root, "theirs")
        os.mkdir(theirs, 0o700)
        os.chown(theirs, 65534, 65534)
        d = DaemonProcess(store, os.path.join(theirs, "s.sock"))
        try:
            d.spawn()
            assert d.proc.wait(60) == 1
            assert "owned by uid 65534" in d.log()
        finally:
            d.close()


def test_second_daemon_refuses_to_start(root) -> None:
    store, sock = paths(root)
    with DaemonProcess(store, sock) as first:
        ino = os.lstat(sock).st_ino
        second = DaemonProcess(os.path.join(root, "store2"), sock)
        try:
            second.spawn()
            assert second.proc.wait(60) == 1
            assert f"another snapd daemon (pid {first.pid}) is already serving" in second.log()
        finally:
            second.close()
        # Same store, other socket: refused too (each daemon keeps per-workspace state).
        third = DaemonProcess(store, os.path.join(root, "run2", "s.sock"))
        try:
            third.spawn()
            assert third.proc.wait(60) == 1
            assert "already serving the store" in third.log()
        finally:
            third.close()
        assert os.lstat(sock).st_ino == ino  # the first daemon's socket was not touched
        assert first.client().ping().version
        assert first.terminate() == 0


def test_systemd_notify_ready_watchdog_stopping(root) -> None:
    store, sock = paths(root)
    d = DaemonProcess(store, sock, env={"WATCHDOG_USEC": "100000"})  # ping every 50 ms
    try:
        d.start()
        ready = d.messages.index("READY=1")
        assert any(m.startswith("STATUS=serving unix:" + sock) for m in d.messages)
        d.wait_for_message("WATCHDOG=1", 30, start=ready)
        # A removed socket fails the self-check: the pings stop (systemd would restart us).
        os.unlink(sock)
        deadline = time.monotonic() + 30
        while "the socket" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "watchdog: the socket" in d.log()
        time.sleep(0.3)  # a ping already on its way may still arrive
        n = len(d.messages)
        time.sleep(1.0)  # twenty watchdog intervals
        assert "WATCHDOG=1" not in d.messages[n:]
        assert d.terminate() == 0
        assert "STOPPING=1" in d.messages
    finally:
        d.close()


TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())


@pytest.mark.skipif(TGKILL is None, reason="tgkill syscall number unknown on this machine")
def test_sigterm_delivered_to_a_grpc_thread_still_stops_the_daemon(root) -> None:
    # The kernel may deliver a process-directed signal to any thread. Python runs the handler
    # only on the main thread, so the main thread must not sleep in an untimed wait.
    store, sock = paths(root)
    with DaemonProcess(store, sock) as d:
        d.client().ping()
        tids = [int(t) for t in os.listdir(f"/proc/{d.pid}/task") if int(t) != d.pid]
        assert tids
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(TGKILL, d.pid, tids[-1], signal.SIGTERM) == 0
        assert d.proc.wait(30) == 0
        assert "received SIGTERM" in d.log()


def test_sigterm_during_snapshot_finishes_it_and_refuses_new_calls(root, tmp_path) -> None:
    store, sock = paths(root)
    ws_dir = tmp_path / "ws"
    treeutil.write(ws_dir, "big.bin", random.Random(7).randbytes(64 * 1024 * 1024))
    treeutil.write(ws_dir, "small.txt", "small")
    d = DaemonProcess(store, sock, args=["--grace", "60"])
    try:
        d.start()
        client = d.client()
        ws = client.open_workspace(str(ws_dir))
        before = packs_size(store)
        result: dict = {}

        def snap() -> None:
            try:
                result["snap"] = ws.snapshot(label="in flight")
            except Exception as e:  # reported below
                result["error"] = e

        t = threading.Thread(target=snap)
        t.start()
        deadline = time.monotonic() + 60
        while packs_size(store) <= before + 1024 * 1024 and time.monotonic() < deadline:
            time.sleep(0.01)  # wait until the snapshot is writing packs
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for_message("STOPPING=1", 30)
        with pytest.raises(UnavailableError):
            Client("unix://" + sock, retry=NO_RETRY).workspaces()
        t.join(120)
        assert "error" not in result, result
        assert d.proc.wait(60) == 0
        log = d.log()
        assert log.index("received SIGTERM") < log.index("CreateSnapshot workspace=1 code=OK")
        client.close()
    finally:
        d.close()
    snap = result["snap"]
    with DaemonProcess(store, sock) as again:
        c = again.client()
        assert [s.id for s in c.snapshots()] == [snap.id]
        assert c.verify().ok
        assert c.read_file(snap.id, "big.bin") == treeutil.read(ws_dir, "big.bin")


def test_kill_9_then_restart_needs_no_repair(root, tmp_path) -> None:
    store, sock = paths(root)
    ws_dir = tmp_path / "ws"
    treeutil.write(ws_dir, "keep.txt", "committed")
    d = DaemonProcess(store, sock)
    try:
        d.start()
        ws = d.client().open_workspace(str(ws_dir))
        committed = ws.snapshot(label="committed")
        treeutil.write(ws_dir, "big.bin", random.Random(9).randbytes(48 * 1024 * 1024))
        before = packs_size(store)
        outcome: dict = {}

        def snap() -> None:
            try:
                ws.snapshot()
            except UnavailableError as e:  # the daemon died under the call
                outcome["error"] = e

        t = threading.Thread(target=snap, daemon=True)
        t.start()
        deadline = time.monotonic() + 60
        while packs_size(store) <= before + 1024 * 1024 and time.monotonic() < deadline:
            time.sleep(0.01)
        d.kill()
        t.join(30)
        assert "error" in outcome
    finally:
        d.close()
    assert os.path.exists(sock)  # left behind by the killed daemon
    with DaemonProcess(store, sock) as again:  # starts without any manual step
        c = again.client()
        assert [s.id for s in c.snapshots()] == [committed.id]
        assert c.verify().ok
        ws = c.open_workspace(str(ws_dir))
        expected = treeutil.capture(ws_dir)
        s = ws.snapshot(label="after restart")
        treeutil.write(ws_dir, "keep.txt", "changed")
        ws.restore(s.id)
        treeutil.assert_same(treeutil.capture(ws_dir), expected, "restore after kill -9")
        c.collect_garbage()
        assert c.verify().ok


def test_defaults_need_no_flags(root, tmp_path, monkeypatch) -> None:
    runtime = os.path.join(root, "xdg-run")
    os.mkdir(runtime, 0o700)
    env = {"XDG_RUNTIME_DIR": runtime, "XDG_DATA_HOME": str(tmp_path / "data")}
    for name in ("SNAPD_SOCKET", "SNAPD_STORE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sock = os.path.join(runtime, "snapd-workspace", "snapd.sock")
    d = DaemonProcess("", sock, env=env)
    d.command = lambda: DaemonProcess.command(d)[:4]  # plain `snapd serve`
    with d:
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        assert os.path.isdir(tmp_path / "data" / "snapd-workspace" / "store" / "packs")
        with Client() as client:  # finds the default socket the same way
            assert client.ping().version
        assert d.terminate() == 0


def test_config_file_env_and_flags(root, tmp_path) -> None:
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(
        'store = "/from/file/store"\nsocket = "/from/file/s.sock"\n'
        '[server]\nmax_workers = 4\ngrace_seconds = 2.5\n[log]\nformat = "json"\n'
        "[gc]\nbackground = false\n"
    )
    c = server_config.load({}, config_file=str(cfg_path), env={})
    assert (c.store, c.socket, c.max_workers, c.grace_seconds) == (
        "/from/file/store",
        "/from/file/s.sock",
        4,
        2.5,
    )
    assert c.log_format == "json" and c.background_gc is False
    c = server_config.load(
        {}, config_file=str(cfg_path), env={"SNAPD_SOCKET": "unix:///env/s.sock"}
    )
    assert c.socket == "/env/s.sock" and c.store == "/from/file/store"
    c = server_config.load(
        {"socket": "/flag/s.sock", "store": None},
        config_file=str(cfg_path),
        env={"SNAPD_SOCKET": "/env/s.sock", "SNAPD_STORE": "/env/store"},
    )
    assert c.socket == "/flag/s.sock" and c.store == "/env/store"
    home = tmp_path / "home"
    c = server_config.load({}, env={"HOME": str(home)}, config_file=os.devnull)
    assert c.socket.endswith("/snapd.sock") and c.store.endswith("snapd-workspace/store")

    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nmax_wrokers = 3\n")
    with pytest.raises(InvalidArgument, match=r"unknown setting server\.max_wrokers"):
        server_config.load({}, config_file=str(bad), env={})
    bad.write_text('[server]\nmax_workers = "many"\n')
    with pytest.raises(InvalidArgument, match=r"must be a int"):
        server_config.load({}, config_file=str(bad), env={})
    with pytest.raises(InvalidArgument, match=r"needs tcp\.cert"):
        server_config.load({"tcp_listen": "127.0.0.1:0"}, config_file=os.devnull, env={})

    # A real start from a config file, with JSON logs: one JSON document per call.
    store, sock = paths(root)
    live = tmp_path / "live.toml"
    live.write_text(f'store = "{store}"\nsocket = "{sock}"\n[log]\nformat = "json"\n')
    d = DaemonProcess("/ignored", "/ignored", args=["--config", str(live)])
    d.command = (
        lambda: [  # no --store/--socket flags: everything from the file
            *DaemonProcess.command(d)[:4],
            "--config",
            str(live),
        ]
    )
    d.socket = sock
    with d:
        d.client().ping()
        assert d.terminate() == 0
        log = d.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    calls = [x for x in lines if x["logger"] == "snapd.call"]
    assert calls and calls[0]["msg"] == "GetStats" and calls[0]["code"] == "OK"
    assert isinstance(calls[0]["ms"], float)


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tcp_with_mutual_tls(root, tmp_path) -> None:
    pki = str(tmp_path)
    ext = os.path.join(pki, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=pki)  # fmt: skip
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=pki)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", f"{name}.crt",
                 cwd=pki)  # fmt: skip

    def read(name: str) -> bytes:
        with open(os.path.join(pki, name), "rb") as f:
            return f.read()

    store, sock = paths(root)
    args = ["--tcp", "127.0.0.1:0", "--tls-cert", os.path.join(pki, "server.crt"),
            "--tls-key", os.path.join(pki, "server.key"),
            "--tls-client-ca", os.path.join(pki, "ca.crt")]  # fmt: skip
    with DaemonProcess(store, sock, args=args) as d:
        status = d.wait_for_message("STATUS=serving")
        port = int(status.rsplit(":", 1)[1])
        ws_dir = tmp_path / "ws"
        treeutil.write(ws_dir, "f.txt", "over tls")
        with Client(
            f"127.0.0.1:{port}",
            root_certificates=read("ca.crt"),
            private_key=read("client.key"),
            certificate_chain=read("client.crt"),
        ) as c:
            s = c.open_workspace(str(ws_dir)).snapshot()
            assert c.read_file(s.id, "f.txt") == b"over tls"
        with (
            Client(  # no client certificate: the handshake fails
                f"127.0.0.1:{port}", root_certificates=read("ca.crt"), retry=NO_RETRY, timeout=5
            ) as anonymous,
            pytest.raises(UnavailableError),
        ):
            anonymous.workspaces()
        assert d.terminate() == 0


def _catalog_descriptors(pid: int, store: str) -> int:
    """Open descriptors of the daemon on its catalog file (one per SQLite connection)."""
    fd_dir = f"/proc/{pid}/fd"
    target = os.path.join(store, "catalog.db")
    n = 0
    for fd in os.listdir(fd_dir):
        try:
            n += os.readlink(os.path.join(fd_dir, fd)) == target
        except OSError:
            pass
    return n


def test_reopening_workspaces_and_many_clients_keep_the_connections_bounded(root, tmp_path) -> None:
    """Every open starts a background walk on a thread of its own, and each concurrent call
    runs on a server thread: catalog connections must not pile up with those threads."""
    from snapd.store.store import IDLE_CONNECTIONS

    store, sock = paths(root)
    dirs = []
    for k in range(6):
        d = tmp_path / f"ws{k}"
        treeutil.write(d, "src/a.py", f"print({k})\n")
        dirs.append(str(d))
    with DaemonProcess(store, sock) as d:
        assert os.path.exists(os.path.join(store, "catalog.db"))
        c = d.client()
        for _ in range(3):
            for path in dirs:
                ws = c.open_workspace(path)
                ws.snapshot()
                ws.close()

        def client_loop(path: str) -> None:
            with d.client() as own:
                ws = own.open_workspace(path)
                for i in range(5):
                    treeutil.write(path, "src/a.py", f"print({i})\n")
                    ws.snapshot()

        threads = [threading.Thread(target=client_loop, args=(p,)) for p in dirs * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # The pool's idle connections, plus at most a few in use by background work.
        assert _catalog_descriptors(d.pid, store) <= IDLE_CONNECTIONS + 3


def test_malloc_arenas_are_capped_unless_the_environment_says(monkeypatch) -> None:
    from snapd.server.daemon import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the operator's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    if platform.libc_ver()[0] == "glibc":
        assert limit_malloc_arenas() is True
