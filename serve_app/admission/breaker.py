"""A circuit breaker: after `failures_to_open` failures in a row, skip Redis for
`open_s`, then let one probe through.

So a dead Redis costs one timeout per `open_s`, not one per request; and one slow
answer under a burst (the event loop busy, not Redis down) does not switch a whole
replica to the fallback.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self,
        open_s: float = 1.0,
        failures_to_open: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_s = open_s
        self._failures_to_open = failures_to_open
        self._clock = clock
        self._opened_at: float | None = None
        self._probing = False
        self._failures = 0

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
        self._failures = 0
        return recovered

    def failure(self) -> bool:
        """Record a failure; True when this opens a closed breaker (outage starts)."""
        self._failures += 1
        self._probing = False
        if self._opened_at is not None:
            self._opened_at = self._clock()  # a failed probe: stay open
            return False
        if self._failures >= self._failures_to_open:
            self._opened_at = self._clock()
            return True
        return False
