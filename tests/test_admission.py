"""snapd/admission.py: short snapshots go in a few at a time, first come first served, and a
holder that stays long stops holding the others up.

Timing here is only ever "eventually" (generous timeouts on events), never a duration bound.
"""

from __future__ import annotations

import threading
import time

import pytest

from snapd.admission import AdmissionGate

WAIT = 10.0  # seconds: how long "eventually" may take on a loaded CI machine


def _enter_in_thread(gate: AdmissionGate, entered: list, release: threading.Event, name):
    def run():
        with gate.admit():
            entered.append(name)
            release.wait(WAIT)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _until(cond) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_one_slot_admits_one_at_a_time_in_arrival_order():
    gate = AdmissionGate(slots=1, long_hold=3600)
    entered: list = []
    releases = [threading.Event() for _ in range(5)]
    threads = []
    for i in range(5):
        threads.append(_enter_in_thread(gate, entered, releases[i], i))
        _until(lambda i=i: len(entered) == 1 if i == 0 else gate.waiting() == i)
    for i in range(5):
        _until(lambda i=i: len(entered) == i + 1)
        time.sleep(0.01)  # nobody else slips in while the holder holds
        assert entered == list(range(i + 1))
        releases[i].set()
    for t in threads:
        t.join(WAIT)
    assert entered == [0, 1, 2, 3, 4] and gate.waiting() == 0


def test_two_slots_admit_two():
    gate = AdmissionGate(slots=2, long_hold=3600)
    entered: list = []
    release = threading.Event()
    threads = [_enter_in_thread(gate, entered, release, i) for i in range(3)]
    _until(lambda: len(entered) == 2 and gate.waiting() == 1)
    release.set()
    for t in threads:
        t.join(WAIT)
    assert sorted(entered) == [0, 1, 2]


def test_a_long_holder_stops_counting_and_the_next_goes_in():
    gate = AdmissionGate(slots=1, long_hold=0.05)
    entered: list = []
    hold = threading.Event()
    first = _enter_in_thread(gate, entered, hold, "long")
    _until(lambda: entered == ["long"])
    second_done = threading.Event()
    second = _enter_in_thread(gate, entered, second_done, "next")
    _until(lambda: entered == ["long", "next"])  # while "long" still holds its slot
    assert first.is_alive()
    hold.set()
    second_done.set()
    first.join(WAIT)
    second.join(WAIT)


def test_an_exception_inside_releases_the_slot():
    gate = AdmissionGate(slots=1, long_hold=3600)
    with pytest.raises(RuntimeError), gate.admit():
        raise RuntimeError("boom")
    done = threading.Event()
    entered: list = []
    t = _enter_in_thread(gate, entered, done, "after")
    _until(lambda: entered == ["after"])
    done.set()
    t.join(WAIT)


def test_a_waiter_that_gives_up_leaves_the_queue_and_passes_its_turn_on(monkeypatch):
    """An exception while waiting (here from the head's check) must not leave a ghost at the
    head of the queue, which would shut the gate for good."""
    gate = AdmissionGate(slots=1, long_hold=3600)
    release = threading.Event()
    entered: list = []
    holder = _enter_in_thread(gate, entered, release, "holder")
    _until(lambda: entered == ["holder"])

    class GiveUp(Exception):
        pass

    def check(now):
        raise GiveUp

    monkeypatch.setattr(gate, "_wait_for", check)  # only a waiting head calls it
    with pytest.raises(GiveUp), gate.admit():
        pass
    assert gate.waiting() == 0
    monkeypatch.undo()
    release.set()
    holder.join(WAIT)
    later = threading.Event()
    t = _enter_in_thread(gate, entered, later, "later")
    _until(lambda: entered == ["holder", "later"])
    later.set()
    t.join(WAIT)


def test_no_slots_is_an_error():
    with pytest.raises(ValueError):
        AdmissionGate(slots=0)
