"""A circuit breaker: after a failure, skip Redis for `open_s`, then let one probe through.

So a dead Redis costs one timeout per `open_s`, not one per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, open_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._open_s = open_s
        self._clock = clock
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """Whether to try Redis now (closed, or open long enough for one probe)."""
        if self._opened_at is None:
            return True
        if not self._probing and self._clock() - self._opened_at >= self._open_s:
            self._probing = True
            return True
        return False

    def success(self) -> bool:
        """Record a success; True when this closes an open breaker (recovery)."""
        recovered = self._opened_at is not None
        self._opened_at = None
        self._probing = False
        return recovered

    def failure(self) -> bool:
        """Record a failure; True when this opens a closed breaker (outage starts)."""
        opened = self._opened_at is None
        self._opened_at = self._clock()
        self._probing = False
        return opened
