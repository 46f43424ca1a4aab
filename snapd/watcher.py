"""Watcher-driven change tracking: which paths may have changed since the last snapshot.

Built on watchdog's inotify layer (watchdog.observers.inotify_c.InotifyFD), below its move-event
grouper: a dirty set needs no move pairing, and the grouper holds an unmatched IN_MOVED_FROM for
half a second, delaying every later event (the sync cookie included). The watcher is only a hint:
the snapshot still stat-checks every candidate, and whenever events may have been lost the
affected subtree, or the whole workspace, is rescanned:

- kernel queue overflow (IN_Q_OVERFLOW reaches us through InotifyFD's on_queue_overflow hook):
  full rescan, and every watch is re-added;
- watch limit reached (ENOSPC from inotify_add_watch): the unwatched subtrees are rescanned at
  every snapshot, counted and logged;
- a directory created (or moved in) and filled before its watch existed: its watch is added when
  its creation event arrives and the whole new subtree is rescanned;
- the watcher thread died, or the workspace root itself was moved or deleted: full rescan.

Consistency barrier (Watchman's sync cookie): before a snapshot uses the dirty set it creates a
uniquely named file in the root and waits until that file's creation event has come through; the
kernel queues events in order, so every change made before the call is then in the dirty set.
Cookies are internal names: never stored, always removed.

Limits (as for Watchman): a write through a name outside the workspace of a hard-linked file,
and a write through a shared mmap, produce no event for the workspace path; a full scan
(snapshot(full=True), `snapd snapshot --full`, or a workspace with watch=false) catches them.
Writes through another name inside the workspace are handled by the scanner, which re-checks
every name of an inode it sees change. A directory moved out of the tree keeps its watches until
it is deleted (they only cause spurious hints).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import secrets
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from watchdog.observers.inotify_c import CallbackId, InotifyConstants, InotifyEvent, InotifyFD

from .errors import DeadlineExceeded
from .fsutil import join
from .ignore import INTERNAL_PREFIX

log = logging.getLogger("snapd.watcher")
# Re-adding a watch we already hold is how a moved directory's watches get their new paths;
# watchdog warns about the repeated callback registration, which is expected here.
warnings.filterwarnings(
    "ignore", message="Callback with id", category=RuntimeWarning, module=__name__
)

COOKIE_PREFIX = INTERNAL_PREFIX + b"cookie-"
IC = InotifyConstants
WATCH_MASK = (
    IC.IN_CREATE
    | IC.IN_DELETE
    | IC.IN_MODIFY
    | IC.IN_ATTRIB
    | IC.IN_MOVED_FROM
    | IC.IN_MOVED_TO
    | IC.IN_DELETE_SELF
    | IC.IN_MOVE_SELF
    | IC.IN_DONT_FOLLOW
    | IC.IN_ONLYDIR
    | IC.IN_EXCL_UNLINK
)
_IN_ISDIR = IC.IN_ISDIR


@dataclass
class DirtySet:
    paths: set[bytes] = field(default_factory=set)
    subtrees: set[bytes] = field(default_factory=set)
    full: bool = False

    def merge(self, other: DirtySet) -> None:
        self.paths |= other.paths
        self.subtrees |= other.subtrees
        self.full = self.full or other.full


class _InotifyFD(InotifyFD):
    """watchdog's inotify layer, without the wait it adds before handing events on, and
    knowing whether its descriptors are still open (see _stop_instance).

    watchdog 7.1.1 reads on one thread and handles events on another; when a read comes less
    than 1 ms after the previous one, it polls up to 1 ms more for further events before
    handing them on. A snapshot's sync cookie follows the step's own writes by well under a
    millisecond, so every barrier paid that wait (median 1.9 ms against 0.3-0.5 ms with 7.1.0,
    in process). Events are handed on as soon as they are read; the reader thread and its
    unbounded queue stay. (7.1.0 never calls this method.)
    """

    def _coalesce_event_buffer(self, first_chunk: bytes, deadline: float) -> bytes:
        return first_chunk

    # watchdog starts with _is_reading = True, so close() before the reader thread's first
    # read leaves closing the descriptors to that thread, which then sees it is closed and
    # exits without closing them: the instance leaked. Track them (see _stop_instance).
    resources_open = True

    def _close_resources(self) -> None:
        self.resources_open = False
        super()._close_resources()


class TreeWatcher:
    """Watches one workspace tree. Thread-safe; implements watchdog's WatchCallback protocol."""

    def __init__(
        self,
        root: str,
        excluded: Callable[[bytes, bool], bool],
        *,
        inotify: InotifyFD | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        self._on_ready = on_ready  # called once, on the setup thread, when ready is set
        self._root_b = os.fsencode(root)
        self._excluded = excluded
        self._lock = threading.Lock()
        self._dirty = DirtySet(full=True)  # nothing is known until the first full scan
        self._wd_path: dict[int, bytes] = {}
        self._unwatched: set[bytes] = set()
        self._cookies: dict[bytes, threading.Event] = {}
        self._cookie_seq = itertools.count()
        self._rewatching = 0  # re-watch requests not yet served (snapshots scan fully meanwhile)
        self._rewatch_running = False
        self._id = CallbackId(id(self))
        self.ready = threading.Event()
        self.closed = False
        self.counters = {
            "events": 0,
            "overflows": 0,
            "watch_limit_errors": 0,
            "unwatched_dirs": 0,
            "rescans_full": 0,
            "rescans_subtree": 0,
            "watches": 0,
            "restarts": 0,
            "no_inotify": 0,  # no inotify instance could be created: every snapshot scans fully
        }
        self._fd: InotifyFD | None = inotify or self._new_inotify()
        self._setup = threading.Thread(
            target=self._initial_watches, name="snapd-watch-setup", daemon=True
        )
        self._setup.start()

    def _new_inotify(self) -> InotifyFD | None:
        try:
            fd = _InotifyFD()
        except OSError as e:  # EMFILE: fs.inotify.max_user_instances reached
            log.error(
                "cannot create an inotify instance for %s (%s): every snapshot of it will scan "
                "the whole tree. Raise fs.inotify.max_user_instances (see systemd/).",
                self.root,
                e,
            )
            with self._lock:
                self.counters["no_inotify"] += 1
                self._unwatched.add(b"")
                self.counters["unwatched_dirs"] = len(self._unwatched)
            return None
        fd.start()
        return fd

    # --- watches --------------------------------------------------------------------------------
    def _initial_watches(self) -> None:
        try:
            self._watch_tree(b"")
        except Exception:
            log.exception("watcher setup failed for %s; snapshots will scan fully", self.root)
            with self._lock:
                # Some directories may be unwatched: rescan the whole tree at every snapshot.
                self._unwatched.add(b"")
                self._dirty.full = True
        finally:
            self.ready.set()
            if self._on_ready is not None and not self.closed:
                try:
                    self._on_ready()
                except Exception:
                    log.exception("watcher ready callback failed for %s", self.root)

    def _watch_tree(self, rel: bytes, *, mark_new: bool = False) -> None:
        """Add watches for `rel` and every directory below it (not following symlinks).

        mark_new: directories that had no watch (or one under another path) are marked for a
        rescan, since changes made in them before their watch existed raised no event.
        """
        stack = [rel]
        while stack:
            d = stack.pop()
            if not self._add_watch(d, mark_new=mark_new):
                continue
            try:
                it = os.scandir(os.path.join(self._root_b, d) if d else self._root_b)
            except OSError:
                continue
            with it:
                for de in it:
                    if de.name.startswith(INTERNAL_PREFIX):
                        continue
                    try:
                        if not de.is_dir(follow_symlinks=False):
                            continue
                    except OSError:
                        continue
                    child = join(d, de.name)
                    if not self._is_excluded(child):
                        stack.append(child)

    def _is_excluded(self, rel: bytes) -> bool:
        try:
            return self._excluded(rel, True)
        except Exception:  # a rule that cannot judge a name: watching too much is harmless
            log.warning("exclude rules failed on %r; watching it", rel, exc_info=True)
            return False

    def _add_watch(self, rel: bytes, *, mark_new: bool = False) -> bool:
        path = os.path.join(self._root_b, rel) if rel else self._root_b
        # The lock spans the system call: the inotify thread re-maps a moved directory's watch
        # under this lock too, so a path read before a rename can never overwrite a newer one.
        with self._lock:
            if self._fd is None:
                self._unwatched.add(b"")
                return False
            try:
                wd = self._fd.add_callback(path, WATCH_MASK, self, self._id)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    return False  # gone, or not a directory any more
                wd = None
            if wd is None or wd < 0:  # ENOSPC; watchdog turns EACCES into wd -1
                self._unwatched.add(rel)
                self.counters["unwatched_dirs"] = len(self._unwatched)
                if wd is None:
                    self.counters["watch_limit_errors"] += 1
            else:
                if mark_new and self._wd_path.get(wd) != rel:
                    self._mark_subtree(rel)
                self._wd_path[wd] = rel
                self._unwatched.discard(rel)
                self.counters["watches"] = len(self._wd_path)
                return True
        if wd is None:
            log.error(
                "inotify watch limit reached in %s at %r: that subtree will be rescanned at "
                "every snapshot. Raise fs.inotify.max_user_watches (see systemd/).",
                self.root,
                os.fsdecode(rel),
            )
        else:
            log.warning(
                "cannot watch %r in %s (permission denied): that subtree will be rescanned at "
                "every snapshot",
                os.fsdecode(rel),
                self.root,
            )
        return False

    def _mark_subtree(self, rel: bytes) -> None:
        """Mark rel for a recursive rescan unless an ancestor already is (lock held)."""
        subtrees = self._dirty.subtrees
        p = rel
        while True:
            if p in subtrees:
                return
            if not p:
                break
            i = p.rfind(b"/")
            p = p[:i] if i >= 0 else b""
        subtrees.add(rel)

    # --- WatchCallback protocol (called on the inotify thread) -----------------------------------
    def on_event(self, event: InotifyEvent) -> None:
        try:
            self._handle(event)
        except Exception:  # never let the inotify thread die; lose precision, not correctness
            log.exception("watcher event handling failed; next snapshot scans fully")
            with self._lock:
                self._dirty.full = True
            self.rewatch()  # a watch the failed handler should have added may be missing

    def on_watch_deleted(self, wd) -> None:
        with self._lock:
            self._wd_path.pop(wd, None)
            self.counters["watches"] = len(self._wd_path)

    def on_queue_overflow(self) -> None:
        with self._lock:
            self.counters["overflows"] += 1
            self._dirty.full = True
            # A sync cookie created while the queue was full was dropped with the other events;
            # its waiter would time out. The full rescan now due makes waiting pointless.
            waiting = list(self._cookies.values())
        for ev in waiting:
            ev.set()
        log.warning(
            "inotify queue overflow in %s: events lost, next snapshot rescans fully", self.root
        )
        # Re-add watches off the inotify thread so it keeps draining the queue.
        self.rewatch()

    def on_events_lost(self) -> None:
        # watchdog >= 7.1.1 calls this after every callback's on_queue_overflow; without it
        # its dispatcher thread raised AttributeError and the whole instance stopped. The loss
        # is already handled by on_queue_overflow above.
        pass

    def _rewatch_all(self) -> None:
        # One thread serves every request: requests made during a walk get one more walk.
        while True:
            with self._lock:
                serving = self._rewatching
            try:
                self._watch_tree(b"", mark_new=True)
            except Exception:
                log.exception("re-watching %s failed; snapshots will scan fully", self.root)
                with self._lock:
                    self._unwatched.add(b"")
            with self._lock:
                self._rewatching -= serving
                if not self._rewatching:
                    self._rewatch_running = False
                    return

    def _handle(self, event: InotifyEvent) -> None:
        mask = event.mask
        with self._lock:
            base = self._wd_path.get(event.wd)
            self.counters["events"] += 1
        if base is None:
            return
        name = event.name
        if not name:
            if mask & (IC.IN_DELETE_SELF | IC.IN_MOVE_SELF) and base == b"":
                log.warning("workspace root %s was moved or deleted", self.root)
                with self._lock:
                    self._dirty.full = True
            elif base:
                with self._lock:
                    self._dirty.paths.add(base)
            return
        if name.startswith(INTERNAL_PREFIX):
            if base == b"" and name.startswith(COOKIE_PREFIX) and mask & IC.IN_CREATE:
                with self._lock:
                    ev = self._cookies.get(name)
                if ev is not None:
                    ev.set()
            return
        path = join(base, name)
        is_dir = bool(mask & _IN_ISDIR)
        if is_dir and mask & (IC.IN_CREATE | IC.IN_MOVED_TO):
            # Watch it first, then let the snapshot rescan it: files that appeared before the
            # watch existed are found by the scan, later ones by events.
            if not self._is_excluded(path):
                self._watch_tree(path)
            with self._lock:
                self._dirty.subtrees.add(path)
            return
        with self._lock:
            self._dirty.paths.add(path)

    # --- the snapshot side ----------------------------------------------------------------------
    def healthy(self) -> bool:
        fd = self._fd
        # stop() closes the inotify instance at once; the thread exits a little later.
        return not self.closed and fd is not None and fd.is_alive() and fd.should_keep_running()

    def barrier(self, timeout: float = 10.0) -> None:
        """Return once every change made before this call is in the dirty set."""
        with self._lock:
            if b"" in self._unwatched:
                return  # no watch on the root, no cookie: take() asks for a full walk
        if not self.healthy():
            self._restart()
            return
        name = COOKIE_PREFIX + f"{next(self._cookie_seq)}-{secrets.token_hex(4)}".encode()
        ev = threading.Event()
        with self._lock:
            self._cookies[name] = ev
        path = os.path.join(self._root_b, name)
        deadline = time.monotonic() + timeout
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError as e:
                log.warning(
                    "cannot create the sync cookie in %s (%s): rescanning fully", self.root, e
                )
                self.mark_full()
                return
            os.close(fd)
            # Wait in slices: a watcher thread that dies meanwhile will never deliver it.
            while not ev.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                if not self.healthy():
                    self._restart()
                    return
                if time.monotonic() >= deadline:
                    raise DeadlineExceeded(
                        f"the file watcher of {self.root} did not deliver its sync cookie within "
                        f"{timeout:.0f} s (system overloaded?); retry, or disable watching for "
                        "this workspace"
                    )
        finally:
            with self._lock:
                self._cookies.pop(name, None)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:  # left in the tree (never stored; removed at the next open)
                log.warning("cannot remove the sync cookie %s: %s", os.fsdecode(path), e)

    def take(self) -> DirtySet:
        """Swap out the dirty set (unwatched subtrees are always included)."""
        with self._lock:
            d, self._dirty = self._dirty, DirtySet()
            d.subtrees |= self._unwatched
            if self._rewatching:
                # Directories the re-watch has not reached raise no events yet.
                d.full = True
            if d.full:
                self.counters["rescans_full"] += 1
            elif d.subtrees:
                self.counters["rescans_subtree"] += len(d.subtrees)
        return d

    def put_back(self, d: DirtySet) -> None:
        """Return a taken dirty set after a failed snapshot, so nothing is forgotten."""
        with self._lock:
            self._dirty.merge(d)

    def mark_full(self) -> None:
        with self._lock:
            self._dirty.full = True

    def rewatch(self) -> None:
        """Watch directories that may have become watchable (e.g. after exclude rules changed).

        Until it is done, take() asks for full scans; then the directories it newly watched are
        rescanned once.
        """
        with self._lock:
            self._rewatching += 1
            if self._rewatch_running:
                return  # the running re-watch walks again for this request
            self._rewatch_running = True
        try:
            threading.Thread(target=self._rewatch_all, name="snapd-rewatch", daemon=True).start()
        except BaseException:
            with self._lock:  # no re-watch: scan fully from now on
                self._rewatching = 0
                self._rewatch_running = False
                self._unwatched.add(b"")
            raise

    def _restart(self) -> None:
        """The inotify thread is gone: start a new one, re-add every watch, rescan fully."""
        log.error("the file watcher of %s stopped; restarting it (full rescan)", self.root)
        # Close the old instance first: it still holds its watches against the user's limit,
        # and its last callbacks (on_watch_deleted) must come before the new watches exist.
        if self._fd is not None:
            _stop_instance(self._fd)
        with self._lock:
            self.counters["restarts"] += 1
            self._dirty.full = True
            self._wd_path.clear()
        self._fd = self._new_inotify()
        self._watch_tree(b"")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self._lock:
            wds = list(self._wd_path)
            self._wd_path.clear()
        fd = self._fd
        if fd is None:
            return
        with contextlib.suppress(Exception):
            fd.remove_callbacks([(wd, self._id) for wd in wds])
        _stop_instance(fd)


def _stop_instance(fd: InotifyFD) -> None:
    """Stop an inotify instance and wait until it is closed. watchdog closes the descriptor on
    its reader thread, after waking it; until then the instance counts against the user's
    fs.inotify.max_user_instances (128 by default), so a workspace closed and another opened
    right after could fail to get one (seen under CPU load: CloseWorkspace had returned with
    the instance still open)."""
    with contextlib.suppress(Exception):
        fd.stop()
    if fd is threading.current_thread():
        return
    if fd.is_alive():
        fd.join(timeout=5)
    if not fd.is_alive() and getattr(fd, "resources_open", False):
        # Stopped before its first read: nobody else will close them.
        with contextlib.suppress(OSError), fd._lock:
            fd._close_resources()


def wait_ready(watcher: TreeWatcher, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    return watcher.ready.wait(max(0.0, deadline - time.monotonic()))
