"""Each model's realized revenue and replica cost over a rolling window: what the
incremental decision weighs (`decide(..., windows=...)`), kept by the caller.

Revenue is what was billed (SLA credits off) for requests that ended within the last
`window_s` seconds on the model; cost is the model's replica-seconds in those seconds
(every replica paid for, starting, idle or draining) times its price. Both are exact
up to the micro-USD: revenue is a step function (the running total at each bill),
cost a piecewise-linear one (the running replica-seconds at each change of the
replica count), and the window is their difference between `now − window_s` and
`now`. Amortised O(1) a call: points older than the window are dropped as time moves.
"""

from __future__ import annotations

from collections import deque

from serve_app.pricing.window import WindowMargin


class _ModelWindow:
    __slots__ = (
        "cost",
        "replicas",
        "revenue",
        "revenue_total",
        "seconds_total",
        "since_s",
        "usd_per_s",
    )

    def __init__(self, usd_per_s: float, now: float) -> None:
        self.usd_per_s = usd_per_s
        self.revenue: deque[tuple[float, int]] = deque([(now, 0)])
        """(time, revenue billed up to and including then), micro-USD."""
        self.cost: deque[tuple[float, float, int]] = deque([(now, 0.0, 0)])
        """(time, replica-seconds up to then, replicas paid from then on)."""
        self.revenue_total = 0
        self.seconds_total = 0.0
        self.replicas = 0
        self.since_s = now


class RollingWindows:
    """Per model: revenue and replica cost over the last `window_s` seconds."""

    def __init__(self, usd_per_s: dict[str, float], window_s: float = 300.0, now: float = 0.0):
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = window_s
        self._models = {m: _ModelWindow(rate, now) for m, rate in usd_per_s.items()}

    def billed(self, model_id: str, now: float, revenue_micro: int) -> None:
        """A request on `model_id` was billed `revenue_micro` at `now`."""
        w = self._models[model_id]
        w.revenue_total += revenue_micro
        w.revenue.append((now, w.revenue_total))

    def replicas(self, model_id: str, now: float, count: int) -> None:
        """`model_id` pays for `count` replicas from `now` on."""
        w = self._models[model_id]
        if count == w.replicas:
            return
        w.seconds_total += w.replicas * (now - w.since_s)
        w.since_s, w.replicas = now, count
        w.cost.append((now, w.seconds_total, count))

    def margin(self, model_id: str, now: float) -> tuple[int, int]:
        """(revenue, cost) in micro-USD over (now − window_s, now]."""
        w = self._models[model_id]
        start = now - self.window_s
        revenue = w.revenue
        while len(revenue) > 1 and revenue[1][0] <= start:
            revenue.popleft()
        cost = w.cost
        while len(cost) > 1 and cost[1][0] <= start:
            cost.popleft()
        revenue_before = revenue[0][1] if revenue[0][0] <= start else 0
        t0, seconds0, n0 = cost[0]
        seconds_at_start = seconds0 + n0 * (start - t0) if t0 <= start else 0.0
        seconds_now = w.seconds_total + w.replicas * (now - w.since_s)
        return (
            w.revenue_total - revenue_before,
            round((seconds_now - seconds_at_start) * w.usd_per_s * 1_000_000),
        )

    def all(self, now: float) -> dict[str, tuple[int, int]]:
        return {m: self.margin(m, now) for m in self._models}

    def window_margins(self, now: float) -> dict[str, WindowMargin]:
        """Every model's window as the pricing core takes it."""
        return {m: WindowMargin(*self.margin(m, now)) for m in self._models}
