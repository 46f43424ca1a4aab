"""Admission of short snapshots to the interpreter, a few at a time, in arrival order.

A watched snapshot is ~10 ms of mostly Python work, and Python threads share one interpreter
lock. With 20 clients snapshotting at once, 20 threads trade that lock at every system call and
SQLite statement: each snapshot then cost 25-27 ms of daemon CPU instead of 16-21 (context
switches and cache misses), and the daemon finished 15-30% fewer snapshots per second.
Letting one short snapshot compute at a time, first come first served, keeps the work the same
as with one client; the others wait their turn without spending CPU.

A slot is not a lock: a holder that has kept its slot for `long_hold` seconds stops counting
against the limit, and the next waiter goes in. So a snapshot that turns out large (one huge
file in a small dirty set) delays the queue by at most `long_hold`, and work that is not
admitted at all (full walks, restores) is never held up by it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator

SLOTS = 1
LONG_HOLD = 0.1  # seconds


class AdmissionGate:
    def __init__(self, slots: int = SLOTS, long_hold: float = LONG_HOLD) -> None:
        if slots < 1:
            raise ValueError("an admission gate needs at least one slot")
        self.slots = slots
        self.long_hold = long_hold
        self._lock = threading.Lock()
        # One condition per waiter, in arrival order: a release wakes only the head, and the
        # head going in wakes only the next (no herd of threads waking to find the gate shut).
        self._queue: deque[threading.Condition] = deque()
        self._holders: list[float] = []  # when each admitted holder went in (monotonic)

    def _wait_for(self, now: float) -> float:
        """0 if the head may go in now, else how long until a holder turns long."""
        short = [t for t in self._holders if now - t < self.long_hold]
        if len(short) < self.slots:
            return 0.0
        return min(short) + self.long_hold - now

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        with self._lock:
            me = threading.Condition(self._lock)
            self._queue.append(me)
            try:
                while True:
                    if self._queue[0] is me:
                        wait = self._wait_for(time.monotonic())
                        if wait <= 0:
                            break
                        me.wait(wait)  # a holder leaving, or turning long
                    else:
                        me.wait()  # the one ahead going in
            except BaseException:
                head = self._queue[0] is me
                self._queue.remove(me)
                if head and self._queue:
                    self._queue[0].notify()
                raise
            self._queue.popleft()
            started = time.monotonic()
            self._holders.append(started)
            if self._queue:
                self._queue[0].notify()  # the new head times its own wait
        try:
            yield
        finally:
            with self._lock:
                self._holders.remove(started)
                if self._queue:
                    self._queue[0].notify()

    def waiting(self) -> int:
        with self._lock:
            return len(self._queue)
