"""When the watcher loses events, the next snapshot is still exact.

Real inotify throughout. Where a test needs the kernel to lose events it makes it happen: a tiny
inotify queue (fs.inotify.max_queued_events, set only while the watcher's inotify instance is
created, put back at once) and an inotify thread that cannot drain it (the test holds
watchdog's InotifyFD lock, which its reader takes before handling what it read). Where a test
needs a background thread to be slow at a precise point, it passes the watcher an `excluded`
callback or an InotifyFD subclass that waits at a gate: the real calls still happen.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import pytest
from test_watcher_support import (
    join_threads,
    no_internal_files,
    snap_exact,
    sysctl_set,
    sysctl_writable,
    threads_named,
    wait_until,
)
from watchdog.observers.inotify_c import CallbackId, InotifyFD

from snapd.errors import DeadlineExceeded
from snapd.watcher import WATCH_MASK, TreeWatcher, _InotifyFD, _stop_instance
from snapd.workspace import Workspace

pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

TINY_QUEUE = 16


def _write(path, data: bytes = b"x") -> None:
    with open(path, "wb") as f:
        f.write(data)


def _inotify_fds() -> int:
    """inotify instances this process holds open."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                n += 1
        except OSError:
            pass
    return n


@pytest.fixture
def wws(open_ws, ws_dir) -> Workspace:
    ws = open_ws(ws_dir, keep_last=1000)
    for i in range(5):
        os.makedirs(os.path.join(ws_dir, f"d{i}", "sub"))
        _write(os.path.join(ws_dir, f"d{i}", "sub", "f"), b"%d" % i)
    assert ws.watcher is not None and ws.watcher.ready.wait(30)
    # The walk the workspace runs in the background once watched must be over: a barrier of
    # its own would leave a cookie behind in tests that stop the watcher's thread.
    assert ws.settled.wait(60)
    snap_exact(ws, "first snapshot")
    return ws


def _watch_with(ws: Workspace, excluded=None, *, queue: int | None = None) -> TreeWatcher:
    """Give ws a watcher made here (optionally with a tiny kernel queue or a gated callback)."""
    ws.stop_watcher()
    excluded = excluded or ws._watch_excluded
    if queue is None:
        ws.watcher = TreeWatcher(ws.path, excluded)
    else:
        # The queue limit is read when the inotify instance is created: keep the window short.
        with sysctl_set("max_queued_events", queue):
            ws.watcher = TreeWatcher(ws.path, excluded)
    assert ws.watcher.ready.wait(30)
    return ws.watcher


def _needs_queue_sysctl() -> None:
    reason = sysctl_writable("max_queued_events")
    if reason:
        pytest.skip(reason)


def test_the_watcher_implements_watchdogs_whole_callback_protocol() -> None:
    """InotifyFD calls every method of its WatchCallback protocol on its own threads; one we
    lack raises there and stops the instance (watchdog 7.1.1 added on_events_lost)."""
    from watchdog.observers.inotify_c import WatchCallback

    wanted = {n for n in vars(WatchCallback) if n.startswith("on_")}
    assert wanted >= {"on_event", "on_watch_deleted", "on_queue_overflow"}
    missing = {n for n in wanted if not callable(getattr(TreeWatcher, n, None))}
    assert not missing, f"TreeWatcher lacks {sorted(missing)} of watchdog's WatchCallback"


def test_events_are_handed_on_as_soon_as_they_are_read(wws, tmp_path) -> None:
    """watchdog 7.1.1 polls for more events (up to 1 ms) before handing a read on, which every
    sync cookie paid. The watcher's inotify layer hands each read on as it is: with more
    events waiting in the kernel queue, it returns the first read alone."""
    if not hasattr(InotifyFD, "_coalesce_event_buffer"):
        pytest.skip("this watchdog hands every read on at once (7.1.0)")
    assert type(wws.watcher._fd) is _InotifyFD

    class Ignore:
        def __getattr__(self, name):
            return lambda *a: None

    fd = _InotifyFD()  # not started: nothing reads its queue but the calls below
    try:
        fd.add_callback(os.fsencode(tmp_path), WATCH_MASK, Ignore(), CallbackId(1))
        for i in range(20):
            _write(os.path.join(tmp_path, f"f{i}"))
        far = time.perf_counter() + 10
        assert fd._coalesce_event_buffer(b"first", far) == b"first"
        # What watchdog's own method does with the same queue: it reads the waiting events.
        assert len(InotifyFD._coalesce_event_buffer(fd, b"first", far)) > len(b"first")
    finally:
        fd.close()


# --- queue overflow ---------------------------------------------------------------------------
def test_kernel_queue_overflow_reaches_the_watcher(wws) -> None:
    _needs_queue_sysctl()
    watcher = _watch_with(wws, queue=TINY_QUEUE)
    snap_exact(wws, "after the new watcher")
    with watcher._fd._lock:  # the inotify thread cannot drain its 16-event queue meanwhile
        for i in range(300):
            _write(os.path.join(wws.path, f"d{i % 5}", f"burst{i}"), b"%d" % i)
        os.makedirs(os.path.join(wws.path, "lost", "deep"))
        _write(os.path.join(wws.path, "lost", "deep", "f"), b"made while events were lost")
        os.rename(os.path.join(wws.path, "d1"), os.path.join(wws.path, "d1-renamed"))
    rec = snap_exact(wws, "snapshot after the overflow")
    # The overflow came through InotifyFD's on_queue_overflow hook, before the sync cookie.
    assert watcher.counters["overflows"] >= 1
    assert watcher.counters["rescans_full"] >= 1
    assert rec.stats["total_files"] == 5 + 300 + 1
    join_threads("snapd-rewatch")
    _write(os.path.join(wws.path, "lost", "deep", "g"), b"after the re-watch")
    _write(os.path.join(wws.path, "d1-renamed", "sub", "f"), b"renamed dir still watched")
    snap_exact(wws, "events flow again after the re-watch")


def test_directory_made_during_an_overflow_is_tracked_while_rewatching(wws) -> None:
    """After an overflow every watch is re-added in the background. Until that has reached a
    directory whose creation event was lost, changes in it raise no event: snapshots taken
    meanwhile must not trust the dirty set."""
    _needs_queue_sysctl()
    gate = threading.Event()

    def slow_rewatch_excluded(rel: bytes, is_dir: bool) -> bool:
        if threading.current_thread().name.startswith("snapd-rewatch"):
            gate.wait(30)
        return wws._watch_excluded(rel, is_dir)

    watcher = _watch_with(wws, slow_rewatch_excluded, queue=TINY_QUEUE)
    try:
        with watcher._fd._lock:
            for i in range(100):
                _write(os.path.join(wws.path, "d0", f"burst{i}"))
            os.makedirs(os.path.join(wws.path, "new", "deeper"))
        snap_exact(wws, "snapshot after the overflow (full rescan)")
        assert watcher.counters["overflows"] >= 1
        # The re-watch is still waiting at the gate: "new" has no watch yet.
        _write(os.path.join(wws.path, "new", "deeper", "unseen-by-inotify"), b"1")
        _write(os.path.join(wws.path, "new", "top"), b"2")
        snap_exact(wws, "snapshot while the re-watch is in progress")
    finally:
        gate.set()
        join_threads("snapd-rewatch")
    snap_exact(wws, "snapshot after the re-watch")
    _write(os.path.join(wws.path, "new", "deeper", "after"), b"3")
    snap_exact(wws, "the re-added watches deliver events")


def test_sync_cookie_dropped_by_a_full_queue_does_not_time_out(wws) -> None:
    """A cookie created while the kernel queue is full is dropped like any other event; the
    overflow that follows says so, and the snapshot must then rescan rather than wait."""
    _needs_queue_sysctl()
    watcher = _watch_with(wws, queue=TINY_QUEUE)
    outcome: list[BaseException | None] = []

    def barrier() -> None:
        try:
            watcher.barrier(timeout=5)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    with watcher._fd._lock:
        for i in range(100):
            _write(os.path.join(wws.path, "d0", f"fill{i}"))  # the queue is full now
        t = threading.Thread(target=barrier)
        t.start()
        assert wait_until(lambda: no_internal_files(wws.path) != [], timeout=10)
    t.join(30)
    assert outcome == [None], f"the barrier failed: {outcome}"
    assert watcher.counters["overflows"] >= 1
    snap_exact(wws, "snapshot after the dropped cookie")
    assert no_internal_files(wws.path) == []


def test_injected_overflow_forces_a_full_rescan(wws) -> None:
    watcher = wws.watcher
    before = watcher.counters["rescans_full"]
    _write(os.path.join(wws.path, "d2", "sub", "f"), b"changed")
    os.makedirs(os.path.join(wws.path, "x", "y"))
    _write(os.path.join(wws.path, "x", "y", "z"), b"z")
    watcher.on_queue_overflow()
    snap_exact(wws, "snapshot after an injected overflow")
    assert watcher.counters["overflows"] == 1
    assert watcher.counters["rescans_full"] == before + 1
    join_threads("snapd-rewatch")
    _write(os.path.join(wws.path, "x", "y", "w"), b"w")
    rec = snap_exact(wws, "next snapshot")
    assert rec.stats["files"] < rec.stats["total_files"], "no full rescan without a reason"


def test_rewatch_requests_are_served_by_one_thread(wws) -> None:
    """An overflow storm (or failing handler) asks for many re-watches: one walker serves all,
    walking once more for requests made while it walked; snapshots stay full until then."""
    gate = threading.Event()

    def slow_rewatch_excluded(rel: bytes, is_dir: bool) -> bool:
        if threading.current_thread().name.startswith("snapd-rewatch"):
            gate.wait(30)
        return wws._watch_excluded(rel, is_dir)

    watcher = _watch_with(wws, slow_rewatch_excluded)
    snap_exact(wws, "before")
    try:
        for _ in range(50):
            watcher.on_queue_overflow()
        assert len(threads_named("snapd-rewatch")) == 1
        os.makedirs(os.path.join(wws.path, "made-meanwhile"))
        _write(os.path.join(wws.path, "made-meanwhile", "f"))
        snap_exact(wws, "during the re-watch")
        _write(os.path.join(wws.path, "made-meanwhile", "g"))
        full = watcher.counters["rescans_full"]
        snap_exact(wws, "still during the re-watch")
        assert watcher.counters["rescans_full"] == full + 1
    finally:
        gate.set()
        join_threads("snapd-rewatch")
    assert watcher._rewatching == 0 and not watcher._rewatch_running
    _write(os.path.join(wws.path, "made-meanwhile", "h"))
    rec = snap_exact(wws, "after the re-watch")
    assert rec.stats["files"] < rec.stats["total_files"]


def test_rename_during_a_rewatch_keeps_watch_paths_current(wws) -> None:
    """A background re-watch that reads a directory's watch descriptor just before the
    directory is renamed must not record the old path over the new one."""

    class GatedInotifyFD(InotifyFD):
        """Real inotify; the re-watch's call for one path pauses after the kernel answered."""

        def __init__(self, path: bytes) -> None:
            super().__init__()
            self.path = path
            self.reached = threading.Event()
            self.gate = threading.Event()

        def add_callback(self, path, mask, callback, id_):
            wd = super().add_callback(path, mask, callback, id_)
            if path == self.path and threading.current_thread().name.startswith("snapd-rewatch"):
                self.reached.set()
                self.gate.wait(30)
            return wd

    fd = GatedInotifyFD(os.fsencode(os.path.join(wws.path, "d3")))
    fd.start()
    wws.stop_watcher()
    wws.watcher = watcher = TreeWatcher(wws.path, wws._watch_excluded, inotify=fd)
    assert watcher.ready.wait(30)
    snap_exact(wws, "with the gated inotify")
    try:
        watcher.rewatch()
        assert fd.reached.wait(30)
        os.rename(os.path.join(wws.path, "d3"), os.path.join(wws.path, "moved"))
        # Let the inotify thread handle the rename if it can (it cannot while the re-watch
        # holds the watcher's lock, which is the fix).
        wait_until(
            lambda: b"moved" in watcher._wd_path.values() or watcher._lock.locked(), timeout=5
        )
    finally:
        fd.gate.set()
        join_threads("snapd-rewatch")
    snap_exact(wws, "after the rename")
    _write(os.path.join(wws.path, "moved", "new-file"), b"seen through the moved watch")
    _write(os.path.join(wws.path, "moved", "sub", "f"), b"changed deeper")
    snap_exact(wws, "changes inside the renamed directory")


# --- a watcher thread that stops or dies ------------------------------------------------------
def test_stopped_watcher_thread_restarts_with_a_full_rescan(wws) -> None:
    watcher = wws.watcher
    old = watcher._fd
    old.stop()
    old.join(10)
    assert not old.is_alive()
    _write(os.path.join(wws.path, "d0", "sub", "f"), b"changed while nobody watched")
    os.makedirs(os.path.join(wws.path, "while-dead", "deep"))
    _write(os.path.join(wws.path, "while-dead", "deep", "f"))
    full_before = watcher.counters["rescans_full"]
    snap_exact(wws, "first snapshot after the thread stopped")
    assert watcher.counters["restarts"] == 1
    assert watcher.counters["rescans_full"] == full_before + 1
    assert watcher._fd is not old and watcher._fd.is_alive()
    _write(os.path.join(wws.path, "while-dead", "deep", "g"), b"seen by the new thread")
    rec = snap_exact(wws, "events flow through the new inotify instance")
    assert watcher.counters["restarts"] == 1
    assert rec.stats["files"] < rec.stats["total_files"]


def test_snapshot_right_after_the_thread_was_told_to_stop(wws) -> None:
    """stop() returns before the thread has exited: the barrier must not wait for a cookie
    that a closed inotify instance will never deliver (it would wait its whole timeout)."""
    watcher = wws.watcher
    watcher._fd.stop()
    _write(os.path.join(wws.path, "d0", "late"), b"late")
    snap_exact(wws, "snapshot at once")
    assert watcher.counters["restarts"] == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_thread_killed_by_an_exception_is_replaced_and_closed(wws) -> None:
    watcher = wws.watcher
    old = watcher._fd
    fds_before = _inotify_fds()

    def broken_read(*a, **kw):
        raise RuntimeError("simulated failure in the inotify reader")

    # The one read call of every watchdog 7.1.x reader loop (7.1.1 no longer calls
    # read_events); takes effect at the reader's next loop.
    old._read_event_buffer = broken_read
    _write(os.path.join(wws.path, "d0", "wake-the-reader"))
    old.join(10)
    assert not old.is_alive()
    _write(os.path.join(wws.path, "d1", "sub", "f"), b"changed after the death")
    snap_exact(wws, "snapshot after the thread died")
    assert watcher.counters["restarts"] == 1
    # The dead instance is closed, not leaked (each pins watches against the user's limit).
    assert _inotify_fds() == fds_before
    _write(os.path.join(wws.path, "d1", "sub", "g"))
    snap_exact(wws, "events flow again")


def test_a_stopped_inotify_instance_is_closed_before_stop_returns() -> None:
    """watchdog closes the descriptor on its reader thread, after close() wakes it from its
    poll. On a busy machine that ran after CloseWorkspace had returned, and the daemon still
    held the instance (one of fs.inotify.max_user_instances) when the next workspace opened.
    The reader is parked in its poll here, and its close made late, as a loaded machine does."""
    before = _inotify_fds()
    fd = _InotifyFD()
    polling = threading.Event()
    real_check, real_close = fd._check_inotify_fd, fd._close_resources
    closed_on: list[str] = []

    def check(*args):
        polling.set()
        return real_check(*args)

    def late_close() -> None:
        time.sleep(0.3)  # the reader thread gets the CPU late
        closed_on.append(threading.current_thread().name)
        real_close()

    fd._check_inotify_fd, fd._close_resources = check, late_close
    fd.start()
    assert polling.wait(10)
    assert _inotify_fds() == before + 1
    _stop_instance(fd)
    assert closed_on == [fd.name], closed_on  # the reader thread closed it...
    assert _inotify_fds() == before  # ...before _stop_instance returned
    assert not fd.is_alive()


def test_an_inotify_instance_stopped_before_its_first_read_is_not_leaked() -> None:
    """watchdog starts "reading", so a close() before the reader thread's first read leaves the
    descriptors to that thread, which then sees it is closed and exits without closing them:
    a workspace closed right after it was opened leaked its instance."""
    before = _inotify_fds()
    fd = _InotifyFD()
    go = threading.Event()
    real_run = fd.run

    def late_run() -> None:
        go.wait(10)  # the new thread is not scheduled before the close
        real_run()

    fd.run = late_run
    fd.start()
    threading.Timer(0.1, go.set).start()  # once _stop_instance waits for the thread
    _stop_instance(fd)
    assert not fd.is_alive()
    assert _inotify_fds() == before


# --- the barrier ------------------------------------------------------------------------------
def test_barrier_times_out_with_a_clear_error_and_loses_nothing(wws) -> None:
    watcher = wws.watcher
    with watcher._fd._lock:  # the inotify thread is stuck: no cookie can come back
        _write(os.path.join(wws.path, "d4", "sub", "f"), b"changed while stuck")
        with pytest.raises(DeadlineExceeded, match="sync cookie"):
            watcher.barrier(timeout=0.3)
        assert no_internal_files(wws.path) == []
    snap_exact(wws, "snapshot once the watcher is unstuck")
    assert no_internal_files(wws.path) == []


def test_cookie_round_trip_after_a_move_out_of_the_tree(wws, tmp_path) -> None:
    """watchdog's move grouper would hold an unmatched IN_MOVED_FROM for 0.5 s and every later
    event (the cookie too) behind it; the watcher reads below the grouper."""
    watcher = wws.watcher
    times = []
    for i in range(3):
        _write(os.path.join(wws.path, f"leaving{i}"), b"bye")
        snap_exact(wws, "before the move")
        os.rename(os.path.join(wws.path, f"leaving{i}"), tmp_path / f"gone{i}")
        t0 = time.perf_counter()
        watcher.barrier()
        times.append(time.perf_counter() - t0)
        snap_exact(wws, "after the move out")
    print(f"cookie round trip after a move out: {[round(t * 1000, 2) for t in times]} ms")
    assert min(times) < 0.25, f"the sync cookie waited behind the move: {times}"
    assert statistics.median(times) < 0.25, times


# --- the barrier's cookie cannot be made -------------------------------------------------------
def test_snapshot_before_the_watches_are_ready_is_a_full_scan(open_ws, ws_dir) -> None:
    for i in range(50):
        os.makedirs(os.path.join(ws_dir, f"d{i}"))
        _write(os.path.join(ws_dir, f"d{i}", "f"), b"%d" % i)
    ws = open_ws(ws_dir)
    snap_exact(ws, "snapshot at once, watches maybe not ready")
    assert ws.watcher.ready.wait(30)
    _write(os.path.join(ws_dir, "d7", "f"), b"changed")
    snap_exact(ws, "snapshot when ready")
    assert wait_until(lambda: no_internal_files(ws_dir) == [], timeout=1)


def test_watches_ready_before_the_watcher_is_assigned_still_settle_the_workspace(
    open_ws, ws_dir, monkeypatch
) -> None:
    """The watcher's setup thread may finish (and start the walk that settles the workspace)
    before its constructor has returned and the workspace holds it (7 of 30 daemon opens of a
    small tree, under CPU and file-copy load). That walk must still take the watcher's dirty
    set, or the first snapshot after "settled" walks the whole tree again."""
    import snapd.workspace as workspace_mod

    class SlowToReturn(TreeWatcher):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            assert self.ready.wait(30)
            time.sleep(0.2)  # the settling walk, started on ready, runs meanwhile if it can

    monkeypatch.setattr(workspace_mod, "TreeWatcher", SlowToReturn)
    for i in range(4):
        os.makedirs(os.path.join(ws_dir, f"pkg{i}"))
        _write(os.path.join(ws_dir, f"pkg{i}", "mod.py"), b"%d" % i)
    ws = open_ws(ws_dir)
    assert ws.settled.wait(30)
    _write(os.path.join(ws_dir, "pkg1", "mod.py"), b"changed")
    snap = snap_exact(ws, "first snapshot after settling")
    assert snap.stats["scan"] == "hinted", snap.stats
    assert snap.stats["read_files"] == 1, snap.stats
