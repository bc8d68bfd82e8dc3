"""A one-line progress bar for long replays, redrawn in place (carriage return) on a
stream, at most every `interval_s` of the injected clock, and always at 100%."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


class ProgressBar:
    def __init__(
        self,
        stream: TextIO,
        *,
        width: int = 30,
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._width = width
        self._interval_s = interval_s
        self._clock = clock
        self._began = clock()
        self._drawn_at: float | None = None
        self._drawn = False

    def __call__(self, label: str, done: int, total: int) -> None:
        now = self._clock()
        finished = done >= total
        if not finished and self._drawn_at is not None and now - self._drawn_at < self._interval_s:
            return
        self._drawn_at = now
        share = done / total if total else 1.0
        filled = round(share * self._width)
        elapsed = now - self._began
        rate = done / elapsed if elapsed > 0 else 0.0
        self._stream.write(
            f"\rbacktest [{'#' * filled}{'.' * (self._width - filled)}] {share * 100:5.1f}% "
            f"{done:,}/{total:,} requests, {rate:,.0f}/s  {label:<12}"
        )
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the line (only if something was drawn)."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
