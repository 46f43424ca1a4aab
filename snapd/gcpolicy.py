"""When the interpreter's cyclic garbage collector may run: full collections wait for idle time.

A full (generation 2) collection visits every object the collector tracks, and a daemon holds
the index of each open workspace (about two tracked objects per file). Left automatic, it lands
inside whichever call happens to allocate when its threshold is crossed: in the engine
benchmark a 14-file snapshot took 230 ms instead of ~50 because a 156 ms full collection ran
inside it, and those collections grew from 14 to 205 ms over the run as the heap grew.

So full collections are not automatic here. The young generations stay automatic (they visit
only the objects allocated since the last one, and collect most cyclic garbage); a full
collection runs when the process has been idle for a moment (IdleCollector.tick, from the
daemon's main loop), or regardless once FORCE_SECONDS have passed, so that sustained load
cannot grow the heap without bound.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("snapd.gc")

# Generation 2 collects after this many generation 1 collections: never, in practice.
NEVER = 1_000_000_000
IDLE_SECONDS = 1.0  # no call in flight for this long
MIN_INTERVAL_SECONDS = 30.0  # between full collections
FORCE_SECONDS = 600.0  # a full collection even under load, after this long without one


def defer_full_collections() -> None:
    """Keep the young generations automatic; full collections only through IdleCollector
    (or an explicit gc.collect())."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)


class IdleCollector:
    """Runs full collections at quiet moments. Not thread-safe: one caller (a main loop)."""

    def __init__(
        self,
        *,
        idle_seconds: float = IDLE_SECONDS,
        min_interval: float = MIN_INTERVAL_SECONDS,
        force_after: float = FORCE_SECONDS,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.min_interval = min_interval
        self.force_after = force_after
        self._last = time.monotonic()
        self.collections = 0
        self.last_ms = 0.0
        self.last_collected = 0

    def tick(self, idle_for: float) -> bool:
        """Collect if one is due: the process has been idle for `idle_for` seconds (0 while a
        call runs). Returns whether it collected."""
        now = time.monotonic()
        since = now - self._last
        if since < self.min_interval:
            return False
        if idle_for < self.idle_seconds and since < self.force_after:
            return False
        self._last = now
        if gc.get_count()[2] == 0:
            return False  # nothing reached the old generation since the last one
        t0 = time.perf_counter()
        self.last_collected = gc.collect()
        self.last_ms = (time.perf_counter() - t0) * 1000
        self.collections += 1
        log.debug(
            "full garbage collection (%s): %.1f ms, %d objects freed",
            "idle" if idle_for >= self.idle_seconds else "forced",
            self.last_ms,
            self.last_collected,
        )
        return True
