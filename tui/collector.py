"""Keeps Python's full garbage collections out of refreshes and key presses.

A big cluster's view is a few hundred thousand objects that live for minutes. Python's
collector walks all of them in a full collection, which it starts by itself every few
refreshes, in the middle of one: 100-200 ms on a busy login node, the worst refresh and
the worst key press of the session. After each refresh is on screen the young garbage
is collected (cheap) and what survived is frozen out of the collector's walks; every
few minutes, while nothing is waiting, one full collection clears old cycles.
"""

from __future__ import annotations

import gc
import time

FULL_EVERY_S = 300.0


class Collector:
    """Call `settle()` when a refresh has been drawn."""

    def __init__(self, full_every_s: float = FULL_EVERY_S) -> None:
        self.full_every_s = full_every_s
        self._last_full = time.monotonic()
        self.full_collections = 0

    def settle(self) -> None:
        now = time.monotonic()
        if now - self._last_full >= self.full_every_s:
            gc.unfreeze()
            gc.collect()
            self._last_full = now
            self.full_collections += 1
        else:
            gc.collect(1)
        gc.freeze()
