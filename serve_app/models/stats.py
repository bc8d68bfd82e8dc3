"""Recent service time and failure rate of one replica, for its load reports."""

from __future__ import annotations

from collections import deque


class ServiceStats:
    """The last `window` outcomes: mean duration of successes, share of failures."""

    def __init__(self, window: int = 200) -> None:
        self._outcomes: deque[tuple[bool, float]] = deque(maxlen=window)

    def record(self, ok: bool, duration_s: float) -> None:
        self._outcomes.append((ok, duration_s))

    @property
    def failure_rate(self) -> float:
        if not self._outcomes:
            return 0.0
        return sum(1 for ok, _ in self._outcomes if not ok) / len(self._outcomes)

    @property
    def mean_service_s(self) -> float | None:
        durations = [d for ok, d in self._outcomes if ok]
        return sum(durations) / len(durations) if durations else None
