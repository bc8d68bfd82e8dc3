"""Drive a backtest replica or deployment by hand: arrivals and events in time order."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

from serve_app.backtest.replica import (
    DECODE_DUE,
    PREFILL_DONE,
    REPLICA_WARM,
    EventQueue,
    Job,
    Replica,
)


class Timing:
    """When each job began, produced its first token and ended."""

    def __init__(self) -> None:
        self.ended: dict[int, float] = {}
        self.jobs: dict[int, Job] = {}

    def done(self, job: Job, now: float) -> None:
        self.ended[job.index] = now
        self.jobs[job.index] = job

    def ttft(self, index: int) -> float:
        job = self.jobs[index]
        return job.first_token_s - job.arrival_s

    def total(self, index: int) -> float:
        return self.ended[index] - self.jobs[index].arrival_s


def drive(
    events: EventQueue,
    arrivals: Sequence[tuple[float, Job]],
    route: Callable[[Job, float], None],
    on_warm: Callable[[Replica, float], None] | None = None,
    on_other: Callable[[int, Any, float], None] | None = None,
    until: float = float("inf"),
) -> float:
    """Process arrivals (routed with `route`) and events until both run out (or `until`);
    returns the last event's time."""
    heap = events.heap
    pending = sorted(arrivals, key=lambda a: a[0])
    i, now = 0, 0.0
    while True:
        if i < len(pending) and (not heap or pending[i][0] < heap[0][0]):
            now = pending[i][0]
            route(pending[i][1], now)
            i += 1
            continue
        if not heap or heap[0][0] > until:
            return now
        now, _, kind, subject, version = heapq.heappop(heap)
        if kind == DECODE_DUE:
            subject.decode_due(version, now)
        elif kind == PREFILL_DONE:
            subject.replica.prefill_done(subject, now)
        elif kind == REPLICA_WARM:
            if on_warm is not None:
                on_warm(subject, now)
            else:
                subject.became_warm()
        elif on_other is not None:
            on_other(kind, subject, now)


def job(index: int, arrival_s: float, input_tokens: int, output_tokens: int, **kw: Any) -> Job:
    return Job(index, arrival_s, "m", input_tokens, output_tokens, kw.get("fail_at"), None)
