"""snapd/gcpolicy.py: full garbage collections wait for idle time, and still happen."""

from __future__ import annotations

import gc
import os
import shutil
import weakref

import pytest

from snapd import gcpolicy
from snapd.server.testing import DaemonProcess, short_tempdir


@pytest.fixture
def deferred():
    saved = gc.get_threshold()
    gcpolicy.defer_full_collections()
    yield
    gc.set_threshold(*saved)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _old_cyclic_garbage() -> weakref.ref:
    """A reference cycle promoted to the old generation, then dropped."""
    obj = _Cycle()
    ref = weakref.ref(obj)
    gc.collect(1)  # survivors of generation 1 move to generation 2
    del obj
    return ref


def test_young_collections_stay_automatic_and_full_ones_do_not(deferred) -> None:
    young, middle, old = gc.get_threshold()
    assert young > 0 and middle > 0 and old == gcpolicy.NEVER
    ref = _old_cyclic_garbage()
    # Plenty of allocation, enough for many automatic young collections...
    junk = [[i] for i in range(200_000)]
    del junk
    assert ref() is not None  # ...which leave the old generation alone


def test_the_idle_collector_frees_old_garbage_when_idle_or_overdue(deferred) -> None:
    collector = gcpolicy.IdleCollector(idle_seconds=0.05, min_interval=0.0, force_after=3600)
    ref = _old_cyclic_garbage()
    assert not collector.tick(idle_for=0.0)  # a call is running: not now
    assert ref() is not None
    assert collector.tick(idle_for=0.5)
    assert ref() is None and collector.collections == 1 and collector.last_collected >= 1

    collector = gcpolicy.IdleCollector(idle_seconds=0.05, min_interval=0.0, force_after=0.0)
    ref = _old_cyclic_garbage()
    assert collector.tick(idle_for=0.0)  # busy, but overdue: collect anyway
    assert ref() is None

    collector = gcpolicy.IdleCollector(idle_seconds=0.0, min_interval=3600, force_after=0.0)
    ref = _old_cyclic_garbage()
    assert not collector.tick(idle_for=10.0)  # the last one was too recent
    assert ref() is not None
    gc.collect()


def test_the_daemon_runs_with_full_collections_deferred() -> None:
    root = short_tempdir()
    try:
        log = os.path.join(root, "daemon.log")
        d = DaemonProcess(
            os.path.join(root, "store"), os.path.join(root, "s.sock"), log_path=log
        ).start()
        try:
            with d.client() as c:
                c.ping()
        finally:
            d.terminate()
        with open(log) as f:
            text = f.read()
        assert "full garbage collections run only while no call is in flight" in text, text
    finally:
        shutil.rmtree(root, ignore_errors=True)
