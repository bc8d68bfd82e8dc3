"""Realized margin of each model over a rolling window, as one ingress replica sees it.

The incremental decision guards the realized gross margin of each model (revenue
against replica-hours, idle included) over `WINDOW_S` (pricing/window.py). This keeps
the two sums in buckets of `BUCKET_S`:

- revenue: what this replica billed on the model (`revenue()`, from the settlement);
- replica cost: the model's replicas (warm and starting) times its $/s, integrated
  between two live-state refreshes (`replicas()`), times `share`: with N ingress
  replicas behind Serve's balancing, each takes about 1/N of the traffic, so it weighs
  its revenue against 1/N of the replica-hours.

Running totals are kept beside the buckets (a bucket leaving the window is subtracted),
so `margins()`, which `decide()` takes on every request, is rebuilt only after a change.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

from serve_app.pricing import ClusterSnapshot, WindowMargin
from serve_app.pricing.window import WINDOW_S

BUCKET_S = 10.0


class MarginWindows:
    def __init__(
        self,
        usd_per_s: Mapping[str, float],
        *,
        share: float = 1.0,
        window_s: float = WINDOW_S,
        bucket_s: float = BUCKET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._usd_per_s = dict(usd_per_s)
        self._share = share
        self._buckets_kept = max(1, round(window_s / bucket_s))
        self._bucket_s = bucket_s
        self._clock = clock
        self._buckets: deque[tuple[int, dict[str, list[float]]]] = deque()
        """(bucket number, {model: [revenue micro, cost micro]}), oldest first."""
        self._totals: dict[str, list[float]] = {}
        self._last_replicas: tuple[float, dict[str, int]] | None = None
        self._cached: dict[str, WindowMargin] | None = None

    def _bucket(self, now: float) -> dict[str, list[float]]:
        number = int(now // self._bucket_s)
        if not self._buckets or self._buckets[-1][0] != number:
            self._buckets.append((number, {}))
            while self._buckets and self._buckets[0][0] <= number - self._buckets_kept:
                for model, (revenue, cost) in self._buckets.popleft()[1].items():
                    totals = self._totals[model]
                    totals[0] -= revenue
                    totals[1] -= cost
                self._cached = None
        return self._buckets[-1][1]

    def _add(self, now: float, model_id: str, revenue: float, cost: float) -> None:
        bucket = self._bucket(now).setdefault(model_id, [0.0, 0.0])
        totals = self._totals.setdefault(model_id, [0.0, 0.0])
        bucket[0] += revenue
        bucket[1] += cost
        totals[0] += revenue
        totals[1] += cost
        self._cached = None

    def revenue(self, model_id: str, billed_micro: int) -> None:
        """A request on `model_id` was billed `billed_micro`."""
        self._add(self._clock(), model_id, billed_micro, 0.0)

    def replicas(self, snapshot: ClusterSnapshot) -> None:
        """The live state's replicas now: the time since the last call is paid at the
        replica count then (warm and starting alike: a loading GPU is paid too)."""
        now = self._clock()
        counts = {model: len(load.replicas) for model, load in snapshot.models.items()}
        if self._last_replicas is not None:
            then, before = self._last_replicas
            elapsed = max(0.0, now - then)
            for model, count in before.items():
                rate = self._usd_per_s.get(model)
                if rate and count:
                    self._add(now, model, 0.0, count * rate * elapsed * 1e6 * self._share)
        self._last_replicas = (now, counts)

    def history(self) -> dict[int, dict[str, WindowMargin]]:
        """Per bucket of the window (its start on the clock, whole seconds), per model,
        the revenue and replica cost recorded in it (micro-USD); for the dashboard."""
        self._bucket(self._clock())
        return {
            round(number * self._bucket_s): {
                m: WindowMargin(round(r), round(c)) for m, (r, c) in bucket.items()
            }
            for number, bucket in self._buckets
        }

    def margins(self) -> dict[str, WindowMargin]:
        """Per model, the window's revenue and replica cost (micro-USD)."""
        self._bucket(self._clock())  # drops the buckets that left the window
        if self._cached is None:
            self._cached = {
                m: WindowMargin(round(r), round(c)) for m, (r, c) in self._totals.items()
            }
        return self._cached
