"""When the interpreter's cyclic garbage collector may run: full collections wait for idle time.

A full (generation 2) collection visits every object the collector tracks, and a daemon holds
the index of each open workspace (about 1.5 tracked objects per file: 60 ms for a 100k-file
workspace here). Left automatic, it lands inside whichever call happens to allocate when its
threshold is crossed: in the engine benchmark a 14-file snapshot took 230 ms instead of ~50
because a 156 ms full collection ran inside it.

So full collections are not automatic here. The young generations stay automatic (they visit
only the objects allocated since the last one, and collect most cyclic garbage). When the
process has been idle for a moment (IdleCollector.tick, from the daemon's main loop) a full
collection runs and then freezes what survived (gc.freeze), so the next ones visit only what
was allocated since (right after a freeze, one took 0.0 ms against 60 before it). Every
DEEP_SECONDS a deep collection unfreezes everything first, so cyclic garbage among frozen
objects (a closed workspace's, say) is freed within that time; under sustained load, with no
idle moment, it runs anyway after twice that, so the heap cannot grow without bound.
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
DEEP_SECONDS = 600.0  # between deep ones (frozen objects too); forced after twice as long


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
        deep_every: float = DEEP_SECONDS,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.min_interval = min_interval
        self.deep_every = deep_every
        self._last = self._last_deep = time.monotonic()
        self.collections = 0
        self.deep_collections = 0
        self.last_ms = 0.0
        self.last_collected = 0

    def tick(self, idle_for: float) -> bool:
        """Collect if one is due: the process has been idle for `idle_for` seconds (0 while a
        call runs). Returns whether it collected."""
        now = time.monotonic()
        idle = idle_for >= self.idle_seconds
        since_deep = now - self._last_deep
        # A deep one when due and idle, or regardless once twice overdue (sustained load).
        deep = since_deep >= self.deep_every and (idle or since_deep >= 2 * self.deep_every)
        if not deep and (now - self._last < self.min_interval or not idle):
            return False
        self._last = now
        if deep:
            self._last_deep = now
            gc.unfreeze()
        elif gc.get_count()[2] == 0:
            return False  # nothing reached the old generation since the last one
        t0 = time.perf_counter()
        self.last_collected = gc.collect()
        gc.freeze()  # the survivors: the next collection visits only what comes after them
        self.last_ms = (time.perf_counter() - t0) * 1000
        self.collections += 1
        self.deep_collections += deep
        log.debug(
            "%s garbage collection: %.1f ms, %d objects freed",
            "deep" if deep else "idle",
            self.last_ms,
            self.last_collected,
        )
        return True
