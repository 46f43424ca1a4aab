"""The daemon's lifecycle: claim the socket, open the store, serve, shut down cleanly.

Start-up order, and why:
1. The socket's directory is created 0700 (or must already be owned by us and not writable by
   anyone else), so no other user can reach or replace the socket.
2. `<socket>.lock` is flock'ed without blocking: a second daemon on the same socket refuses to
   start instead of unlinking the first one's socket (grpcio would). The kernel drops the lock
   when a daemon dies, even by kill -9, so the next start needs no clean-up: a socket file left
   behind is stale exactly when its lock is free.
3. The store is opened (SQLite recovers its WAL by itself; the store recovers unsynced pack
   tails after a reboot) and `<store>/daemon.lock` is flock'ed so that two daemons never manage
   the same store (each keeps per-workspace state in memory).
4. The socket is bound with umask 0177, so it is created 0600 with no window in which it is
   more open; then the server starts, and READY=1 goes to systemd.

Shutdown on SIGTERM/SIGINT: STOPPING=1, health NOT_SERVING, new calls get UNAVAILABLE, calls in
flight get `grace_seconds` to finish, then workspaces and the store are closed and the socket
and lock are removed. The watchdog (WATCHDOG=1 every WATCHDOG_USEC/2) is sent only after a
self-check: a catalog query answers and the socket file is still ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import stat
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from snapd_client._proto import snapd_pb2 as pb

from .. import gcpolicy
from ..admission import AdmissionGate
from ..errors import FailedPrecondition, PermissionDenied, SnapdError
from ..store.store import Store
from .config import ServeConfig
from .notify import sd_notify, watchdog_interval
from .service import CallState, Service, generic_handler
from .workspaces import Registry

log = logging.getLogger("snapd.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SnapdService"].full_name
STORE_DAEMON_LOCK = "daemon.lock"
# After the grace period grpc cancels the calls, but their threads may still be inside the
# engine; wait this much longer for them before closing the store under them.
HARD_STOP_EXTRA_SECONDS = 30.0
SIGNAL_POLL_SECONDS = 0.2


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("snapd")
    except Exception:
        return "0.0.0+unknown"


def prepare_socket_dir(path: str) -> None:
    """Create the socket's directory 0700, or check that an existing one is safe."""
    parent = os.path.dirname(path)
    try:
        os.makedirs(os.path.dirname(parent), exist_ok=True)
        os.mkdir(parent, 0o700)
        os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask
        return
    except FileExistsError:
        pass
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"socket directory {parent} is not a directory")
    if st.st_uid != os.geteuid():
        raise StartupError(
            f"socket directory {parent} is owned by uid {st.st_uid}, not by this daemon's user "
            f"({os.geteuid()}); another user could replace the socket. Use a directory you own"
        )
    if st.st_mode & 0o022:
        raise StartupError(
            f"socket directory {parent} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):o}); they could replace the socket. chmod 700 it or "
            "choose another --socket"
        )


@dataclass
class Lock:
    fd: int
    path: str

    def release(self, *, unlink: bool = False) -> None:
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)


def acquire_lock(path: str, what: str) -> Lock:
    """flock(path) without blocking; the holder's pid is written into it for the message."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(
            f"another snapd daemon (pid {holder}) is already serving {what}; stop it first, "
            "or choose another --socket/--store"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return Lock(fd, path)


class Daemon:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.state = CallState()
        self.stop_requested = threading.Event()
        self.server: grpc.Server | None = None
        self.store: Store | None = None
        self.registry: Registry | None = None
        self.service: Service | None = None
        self.health = health.HealthServicer()
        self.collector = None
        # The interpreter's full garbage collections, run while no call is in flight.
        self.heap_collector = gcpolicy.IdleCollector()
        self._socket_lock: Lock | None = None
        self._store_lock: Lock | None = None
        self._socket_ino: int | None = None
        self.tcp_port: int | None = None

    # --- start --------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        prepare_socket_dir(cfg.socket)
        self._socket_lock = acquire_lock(cfg.socket + ".lock", cfg.socket)
        try:
            self._open_store()
            self._serve()
        except BaseException:
            self._release()
            raise

    def _open_store(self) -> None:
        cfg = self.config
        try:
            self.store = Store.open(cfg.store)
        except SnapdError as e:
            raise StartupError(f"cannot open the store: {e}") from None
        except OSError as e:
            raise StartupError(f"cannot open the store at {cfg.store}: {e.strerror}") from None
        self._store_lock = acquire_lock(
            os.path.join(self.store.root, STORE_DAEMON_LOCK), f"the store {self.store.root}"
        )
        self.registry = Registry(self.store, AdmissionGate())
        if cfg.background_gc:
            from ..store.gc import BackgroundCollector

            self.collector = BackgroundCollector(
                self.store, interval=cfg.gc_interval_seconds
            ).start()
            # Wide trees' reference counts are settled in the background, soon after the
            # snapshot that deferred them.
            self.store.on_deferred_refs = self.collector.poke
        self.service = Service(
            self.store,
            self.registry,
            self.state,
            version=_version(),
            on_garbage=self.collector.poke if self.collector else None,
        )

    def _serve(self) -> None:
        cfg = self.config
        opts = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="snapd-rpc"),
            options=opts,
            maximum_concurrent_rpcs=max(64, cfg.max_workers * 8),
        )
        server.add_generic_rpc_handlers((generic_handler(self.service),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        # Our lock is held, so a socket file here was left by a daemon that died.
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(cfg.socket).st_mode):
                os.unlink(cfg.socket)
        old = os.umask(0o177)
        try:
            bound = server.add_insecure_port("unix:" + cfg.socket)
        except RuntimeError:  # grpcio raises instead of returning 0 for some bind failures
            bound = 0
        finally:
            os.umask(old)
        if not bound:
            raise StartupError(f"cannot listen on {cfg.socket}")
        st = os.lstat(cfg.socket)
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise StartupError(f"socket {cfg.socket} was created with mode {st.st_mode:o}")
        self._socket_ino = st.st_ino
        if cfg.tcp_listen:
            self.tcp_port = self._add_tcp(server)
        self.server = server
        server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        where = f"unix:{cfg.socket}"
        if cfg.tcp_listen:
            where += f" tcp:{self._tcp_host()}:{self.tcp_port}"
        log.info("serving %s (store %s, pid %d)", where, self.store.root, os.getpid())
        sd_notify(f"READY=1\nSTATUS=serving {where}\nMAINPID={os.getpid()}")

    def _tcp_host(self) -> str:
        return self.config.tcp_listen.rsplit(":", 1)[0]

    def _add_tcp(self, server: grpc.Server) -> int:
        cfg = self.config

        def read(path: str, what: str) -> bytes:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise StartupError(f"cannot read the TLS {what} {path}: {e.strerror}") from None

        key, cert = read(cfg.tls_key, "key"), read(cfg.tls_cert, "certificate")
        ca = read(cfg.tls_client_ca, "client CA") if cfg.tls_client_ca else None
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )
        if ca is None:
            log.warning(
                "TCP listener without client certificates: anyone who can reach %s can use "
                "this daemon with its user's rights; set tcp.client_ca to require mutual TLS",
                cfg.tcp_listen,
            )
        try:
            port = server.add_secure_port(cfg.tcp_listen, creds)
        except RuntimeError as e:
            raise StartupError(f"cannot listen on {cfg.tcp_listen}: {e}") from None
        if not port:
            raise StartupError(f"cannot listen on {cfg.tcp_listen}")
        return port

    # --- run ----------------------------------------------------------------------------------
    def self_check(self) -> str | None:
        """None if the daemon is healthy enough to tell systemd so, else what is wrong: the
        catalog must answer a query and the socket file must still be the one we bound."""
        try:
            assert self.store is not None
            self.store.query("SELECT 1 FROM meta LIMIT 1")
        except Exception as e:
            return f"the store's catalog does not answer: {e}"
        try:
            st = os.lstat(self.config.socket)
        except FileNotFoundError:
            return f"the socket {self.config.socket} was removed"
        except OSError as e:
            return f"the socket {self.config.socket} cannot be checked: {e.strerror}"
        if not stat.S_ISSOCK(st.st_mode) or st.st_ino != self._socket_ino:
            return f"the socket {self.config.socket} was replaced"
        return None

    def run(self) -> None:
        """Serve until stop() or a signal; then shut down."""
        interval = watchdog_interval()
        if interval:
            log.info("systemd watchdog: pinging every %.3f s after a self-check", interval)
        # Wake up often even without a watchdog: a signal may be delivered to one of gRPC's
        # threads, and Python runs its handler only when the main thread executes bytecode,
        # which an untimed wait would never do.
        tick = min(interval, SIGNAL_POLL_SECONDS) if interval else SIGNAL_POLL_SECONDS
        next_ping = time.monotonic()
        last_problem = None
        while not self.stop_requested.wait(tick):
            self.heap_collector.tick(self.state.idle_for())
            if not interval or time.monotonic() < next_ping:
                continue
            next_ping = time.monotonic() + interval
            problem = self.self_check()
            if problem != last_problem:  # log changes only, not every interval
                if problem:
                    log.error("watchdog: %s; withholding WATCHDOG=1", problem)
                else:
                    log.info("watchdog: self-check passes again")
                last_problem = problem
            if problem is None:
                sd_notify("WATCHDOG=1")
        self.shutdown()

    def stop(self) -> None:
        self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        def handle(signum, frame) -> None:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def shutdown(self) -> None:
        cfg = self.config
        sd_notify("STOPPING=1")
        self.health.enter_graceful_shutdown()
        # Refuse new calls ourselves, with UNAVAILABLE (clients retry idempotent calls, and so
        # reach the next daemon), while the server keeps running for the calls in flight:
        # grpcio's own stop() would answer new calls with CANCELLED instead.
        self.state.stop_accepting()
        t0 = time.monotonic()
        if not self.state.wait_idle(cfg.grace_seconds):
            log.warning(
                "%d calls still running after the %.1f s grace period; cancelling them",
                self.state.in_flight,
                cfg.grace_seconds,
            )
        if self.server is not None:
            self.server.stop(0).wait()
        busy = self.state.in_flight
        if busy and not self.state.wait_idle(HARD_STOP_EXTRA_SECONDS):
            log.error("%d calls still inside the engine; closing the store anyway", busy)
        if self.service is not None:
            self.service.join_workers(5.0)
        self._release()
        log.info("stopped after %.3f s", time.monotonic() - t0)

    def _release(self) -> None:
        if self.collector is not None:
            self.collector.stop()
            self.collector = None
        if self.registry is not None:
            self.registry.close_all()
        if self.store is not None:
            self.store.close()
        if self._store_lock is not None:
            self._store_lock.release()
            self._store_lock = None
        if self._socket_lock is not None:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(self.config.socket)
                if st.st_ino == self._socket_ino:
                    os.unlink(self.config.socket)
            self._socket_lock.release()
            self._socket_lock = None


MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (M_ARENA_MAX) before the server starts its threads.

    glibc gives threads arenas of their own, up to 8 per core, and memory freed in one stays
    there. Measured in process, 20 workspaces snapshotted by 20 threads: +130 MiB RSS with
    the default, +45 MiB with 2 arenas, at the same throughput (the interpreter lock
    serialises most allocation anyway). MALLOC_ARENA_MAX in the environment wins. False
    where there is no glibc mallopt (nothing to do then).
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_arena_max = -8  # from glibc's malloc.h
    return bool(mallopt(ctypes.c_int(m_arena_max), ctypes.c_int(arenas)))


def serve(config: ServeConfig) -> int:
    """Run the daemon in the foreground; returns the process exit status."""
    limit_malloc_arenas()
    gcpolicy.defer_full_collections()
    log.info("full garbage collections run only while no call is in flight (see snapd/gcpolicy.py)")
    daemon = Daemon(config)
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except StartupError as e:
        log.error("%s", e)
        sd_notify(f"STATUS=failed to start: {e}")
        return 1
    except (FailedPrecondition, PermissionDenied) as e:
        log.error("%s", e)
        return 1
    daemon.run()
    return 0
