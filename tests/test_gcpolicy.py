"""snapd/gcpolicy.py: full garbage collections wait for idle time, and still happen."""

from __future__ import annotations

import gc
import os
import shutil
import time
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
    gc.unfreeze()


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


def test_idle_collections_free_old_garbage_and_freeze_the_survivors(deferred) -> None:
    collector = gcpolicy.IdleCollector(idle_seconds=0.05, min_interval=0.0, deep_every=3600)
    ref = _old_cyclic_garbage()
    assert not collector.tick(idle_for=0.0)  # a call is running: not now
    assert ref() is not None
    assert collector.tick(idle_for=0.5)
    assert ref() is None and collector.last_collected >= 1
    assert gc.get_freeze_count() > 0  # the survivors are frozen: later ones skip them

    # Garbage among frozen objects waits for a deep collection.
    frozen = _Cycle()
    frozen_ref = weakref.ref(frozen)
    gc.freeze()
    del frozen
    young = _old_cyclic_garbage()
    assert collector.tick(idle_for=0.5)  # an idle one: only what came after the freeze
    assert young() is None and frozen_ref() is not None
    collector.deep_every = 0.0
    assert collector.tick(idle_for=0.5)
    assert frozen_ref() is None and collector.deep_collections == 1


def test_collections_wait_for_idle_time_until_a_deep_one_is_overdue(deferred) -> None:
    collector = gcpolicy.IdleCollector(idle_seconds=0.05, min_interval=3600, deep_every=3600)
    ref = _old_cyclic_garbage()
    assert not collector.tick(idle_for=10.0)  # the last one was too recent
    assert ref() is not None
    collector.deep_every = 100.0
    collector._last_deep = time.monotonic() - 150  # due: runs when idle...
    assert not collector.tick(idle_for=0.0)
    collector._last_deep = time.monotonic() - 250  # ...or regardless, once twice overdue
    assert collector.tick(idle_for=0.0)
    assert ref() is None and collector.deep_collections == 1


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
