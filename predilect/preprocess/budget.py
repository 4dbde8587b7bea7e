"""``PixelBudget``: a bound on the pixels a process holds decoded at once, across its threads.

A small payload may declare a huge frame (a PNG of a few hundred KB declaring 6300 x 6300): every
decode thread holding one at the same time is what took the serving stubs past 3 GB. A decode
takes its frame's pixels from the budget before it starts and gives them back when its squares
are cut; one frame larger than the whole budget waits for it to be free and runs alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PixelBudget:
    """At most ``capacity_pixels`` decoded at once by the threads that share this budget."""

    def __init__(self, capacity_pixels: int) -> None:
        if capacity_pixels < 1:
            raise ValueError(f"capacity_pixels must be >= 1, got {capacity_pixels}")
        self.capacity_pixels = capacity_pixels
        self._held = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` (at most the whole budget) while the block runs; waits until they fit."""
        need = max(0, min(pixels, self.capacity_pixels))
        with self._changed:
            self._changed.wait_for(lambda: self._held + need <= self.capacity_pixels)
            self._held += need
        try:
            yield
        finally:
            with self._changed:
                self._held -= need
                self._changed.notify_all()
