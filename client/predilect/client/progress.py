"""A dependency-free progress line on stderr (redrawn on a terminal, throttled lines otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``done/total`` with a bar and a rate; ``advance()`` per finished input, ``finish()`` at the end."""

    def __init__(
        self, total: int, *, already_done: int = 0, stream: TextIO | None = None, every_s: float = 2.0, width: int = 30
    ) -> None:
        self.total, self.done, self._start_done = total, already_done, already_done
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._every_s, self._width = every_s, width
        self._start = self._last = time.monotonic()

    def line(self) -> str:
        filled = int(self._width * self.done / self.total) if self.total else self._width
        rate = (self.done - self._start_done) / max(time.monotonic() - self._start, 1e-9)
        return f"[{'#' * filled}{'.' * (self._width - filled)}] {self.done}/{self.total} images, {rate:.1f}/s"

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self._tty or now - self._last >= self._every_s:
            self._last = now
            self._stream.write(("\r" if self._tty else "") + self.line() + ("" if self._tty else "\n"))
            self._stream.flush()

    def finish(self) -> None:
        self._stream.write(("\r" if self._tty else "") + self.line() + "\n")
        self._stream.flush()
