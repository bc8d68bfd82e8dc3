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


def service_time_estimate(
    completed_mean_s: float | None, running_ages_s: list[float]
) -> float | None:
    """Mean request duration to expect on a replica now.

    Completed requests say what was; requests still running say what is: in a steady
    state their ages are spread evenly over their durations, so twice their mean age
    estimates the mean duration. The larger of the two wins, so a batch of long
    requests shows up within a fraction of a second, before any of them completes.
    """
    running_s = running_service_estimate(running_ages_s)
    if completed_mean_s is None:
        return running_s
    if running_s is None:
        return completed_mean_s
    return max(completed_mean_s, running_s)


def running_service_estimate(running_ages_s: list[float]) -> float | None:
    """Twice the mean age of the running requests (None when none runs)."""
    return 2 * sum(running_ages_s) / len(running_ages_s) if running_ages_s else None
