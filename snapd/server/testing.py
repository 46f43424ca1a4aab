"""Run a real daemon subprocess for tests and benchmarks.

    with DaemonProcess(store_dir, socket_path) as d:    # waits for READY=1
        client = d.client()
        ...
    # leaving the block sends SIGTERM and waits for a clean exit

Readiness comes through systemd's notify protocol: the helper listens on its own datagram
socket passed as $NOTIFY_SOCKET, exactly as systemd would with Type=notify, and records every
message (READY=1, STATUS=..., WATCHDOG=1, STOPPING=1).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def short_tempdir(prefix: str = "snapd-") -> str:
    """A fresh 0700 directory with a short path (Unix socket paths are limited to 107 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


class DaemonProcess:
    def __init__(
        self,
        store: str,
        socket_path: str,
        *,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_path: str | None = None,
    ) -> None:
        self.store = store
        self.socket = socket_path
        self.args = list(args or [])
        self.extra_env = dict(env or {})
        self._notify_dir = short_tempdir("snapd-notify-")
        self.notify_path = os.path.join(self._notify_dir, "notify")
        self.log_path = log_path or os.path.join(self._notify_dir, "daemon.log")
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self.proc: subprocess.Popen | None = None

    # --- notify socket ------------------------------------------------------------------------
    def _listen(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(self.notify_path)
        s.settimeout(0.2)
        self._sock = s

        def read() -> None:
            while self._sock is not None:
                try:
                    data = s.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                with self._cond:
                    self.messages.extend(data.decode(errors="replace").splitlines())
                    self._cond.notify_all()

        self._reader = threading.Thread(target=read, name="notify-reader", daemon=True)
        self._reader.start()

    def wait_for_message(self, prefix: str, timeout: float = 30.0, start: int = 0) -> str:
        """The first notify message (from index `start`) beginning with prefix."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[start:]:
                    if m.startswith(prefix):
                        return m
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"daemon exited with {self.proc.returncode} before {prefix!r}:\n"
                        + self.log()
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {prefix!r} from the daemon:\n" + self.log())
                self._cond.wait(min(left, 0.2))

    # --- process ------------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "snapd.cli",
            "serve",
            "--store",
            self.store,
            "--socket",
            self.socket,
            *self.args,
        ]

    def spawn(self) -> subprocess.Popen:
        """Start the process without waiting for readiness."""
        if self._sock is None:
            self._listen()
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "SNAPD_CONFIG")
        }
        env["NOTIFY_SOCKET"] = self.notify_path
        env["SNAPD_CONFIG"] = os.devnull  # never pick up the user's own config file
        env.update(self.extra_env)
        with self._cond:
            self.messages.clear()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self.command(), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        finally:
            log.close()
        return self.proc

    def start(self, timeout: float = 60.0) -> DaemonProcess:
        self.spawn()
        self.wait_for_message("READY=1", timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, **kw):
        from snapd_client import Client

        return Client("unix://" + self.socket, **kw)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(30)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.kill()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._reader is not None:
            self._reader.join(2)
        shutil.rmtree(self._notify_dir, ignore_errors=True)

    def __enter__(self) -> DaemonProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
