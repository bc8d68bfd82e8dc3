"""What one replay earned and spent, minute by minute (the accounting of a backtest).

- **Revenue** is what was billed (SLA credits already off), counted in the minute the
  request ended; a failed request is not billed. Money is integer micro-USD.
- **GPU cost** is replica-seconds times the model's price, idle, starting and draining
  replicas included, split exactly across the minutes each replica lived.
- **Realized margin** = (revenue − cost) / revenue (None for a minute without revenue).
- **Decisions** (served, rerouted, throttled, surcharged, accepted below the floor,
  rejected) count in the minute the request arrived; served counts every request that
  went to a model, whatever the action.
- **Unbilled exposure** at a moment is revenue earned but not yet synced to Stripe. A
  sync schedule `(period_s, lag_s)` sends, at `k·period_s + lag_s`, everything that
  ended before `k·period_s`: rtcts's aggregator closes a window `window_s` long
  `grace_s` after its end (60 s and 10 s by default); a nightly cron job (the static
  card) sends the day at midnight. The table samples it at each minute's end; the
  peak also looks at the moment just before each sync.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ACTIONS = ("allow", "reroute", "surcharge", "accept_below_floor", "throttle", "rejected")


@dataclass(frozen=True, slots=True)
class SyncSchedule:
    period_s: float
    lag_s: float

    def synced_before(self, t: float) -> float:
        """Revenue that ended before this time has been synced at `t`."""
        return math.floor((t - self.lag_s) / self.period_s) * self.period_s


@dataclass(frozen=True, slots=True)
class ModelTotals:
    served: int
    revenue_micro: int
    gpu_cost_micro: int
    replica_hours: float
    peak_replicas: int
    tokens: int

    @property
    def cost_per_1m_tokens_usd(self) -> float | None:
        return self.gpu_cost_micro / self.tokens if self.tokens else None


@dataclass(frozen=True, slots=True)
class MinuteRow:
    minute: int
    revenue_micro: int
    gpu_cost_micro: int
    sla_credits_micro: int
    unbilled_micro: int
    """Unbilled exposure at the minute's end."""
    actions: Mapping[str, int]
    served: int
    failed: int
    sla_missed: int
    fallback: int
    cost_by_model: Mapping[str, int]
    tokens_by_model: Mapping[str, int]
    replicas_by_model: Mapping[str, float]
    """Mean replicas paid for during the minute."""

    @property
    def margin(self) -> float | None:
        return margin(self.revenue_micro, self.gpu_cost_micro)


def margin(revenue_micro: int, cost_micro: int) -> float | None:
    return (revenue_micro - cost_micro) / revenue_micro if revenue_micro > 0 else None


@dataclass
class Ledger:
    """Collects one replay's events; `rows()` turns them into the minute table. Events
    before time 0 (the warm-up) are not counted, nor replica time before it."""

    models: Sequence[str]
    usd_per_s: Mapping[str, float]
    _actions: dict[str, list[int]] = field(default_factory=dict)
    _served: list[int] = field(default_factory=list)
    _fallback: list[int] = field(default_factory=list)
    _failed: list[int] = field(default_factory=list)
    _missed: list[int] = field(default_factory=list)
    _revenue: list[int] = field(default_factory=list)
    _credits: list[int] = field(default_factory=list)
    _tokens: dict[str, list[int]] = field(default_factory=dict)
    _revenue_by_model: dict[str, int] = field(default_factory=dict)
    _served_by_model: dict[str, int] = field(default_factory=dict)
    ended_at: list[float] = field(default_factory=list)
    revenue_to_date: list[int] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._actions = {a: [] for a in ACTIONS}
        self._tokens = {m: [] for m in self.models}
        self._revenue_by_model = dict.fromkeys(self.models, 0)
        self._served_by_model = dict.fromkeys(self.models, 0)

    def _grow(self, minute: int) -> None:
        """Every minute column long enough to hold `minute` (they grow together)."""
        more = [0] * (minute + 1 - len(self._served))
        for column in (
            *self._actions.values(),
            *self._tokens.values(),
            self._served,
            self._fallback,
            self._failed,
            self._missed,
            self._revenue,
            self._credits,
        ):
            column.extend(more)

    def decided(self, now: float, action: str, model_id: str | None, fallback: bool) -> None:
        if now < 0:  # the warm-up
            return
        minute = int(now // 60)
        if minute >= len(self._served):
            self._grow(minute)
        self._actions[action][minute] += 1
        if model_id is not None:
            self._served[minute] += 1
            self._served_by_model[model_id] += 1
            if fallback:
                self._fallback[minute] += 1

    def ended(
        self,
        now: float,
        model_id: str,
        billed_micro: int,
        credit_micro: int,
        tokens: int,
        failed: bool,
        sla_met: bool,
        ttft_s: float | None,
    ) -> None:
        """A request ended: `billed_micro` after `credit_micro` (0 when it failed)."""
        if now < 0:  # the warm-up
            return
        minute = int(now // 60)
        if minute >= len(self._served):
            self._grow(minute)
        self._tokens[model_id][minute] += tokens
        if failed:
            self._failed[minute] += 1
            return
        if ttft_s is not None:
            self.ttft_s.append(ttft_s)
        if not sla_met:
            self._missed[minute] += 1
        if billed_micro or credit_micro:
            self._revenue[minute] += billed_micro
            self._credits[minute] += credit_micro
            self._revenue_by_model[model_id] += billed_micro
            revenue_to_date = self.revenue_to_date
            total = (revenue_to_date[-1] if revenue_to_date else 0) + billed_micro
            self.ended_at.append(now)
            revenue_to_date.append(total)

    def revenue_before(self, t: float) -> int:
        """Revenue of the requests that ended before `t`."""
        i = bisect.bisect_left(self.ended_at, t)
        return self.revenue_to_date[i - 1] if i else 0

    def unbilled(self, t: float, sync: SyncSchedule) -> int:
        return self.revenue_before(t) - self.revenue_before(sync.synced_before(t))

    def peak_unbilled(self, end_s: float, sync: SyncSchedule) -> int:
        """The most revenue ever waiting for a sync, up to `end_s`."""
        moments = [60.0 * m for m in range(1, math.ceil(end_s / 60) + 1)]
        k = 1
        while k * sync.period_s + sync.lag_s < end_s:
            moments.append(k * sync.period_s + sync.lag_s - 1e-6)
            k += 1
        moments.append(end_s)
        return max(self.unbilled(t, sync) for t in moments)

    def rows(
        self,
        intervals: Mapping[str, Sequence[tuple[float, float]]],
        end_s: float,
        sync: SyncSchedule,
    ) -> list[MinuteRow]:
        """The minute table, from minute 0 to the one holding `end_s`."""
        minutes = max(1, math.ceil(end_s / 60))
        seconds = {m: [0.0] * minutes for m in self.models}
        for model_id, spans in intervals.items():
            column = seconds[model_id]
            for start, stop in spans:
                _spread(column, max(0.0, start), min(stop, end_s))

        def at(column: list[int], minute: int) -> int:
            return column[minute] if minute < len(column) else 0

        rows = []
        for minute in range(minutes):
            cost = {
                m: round(seconds[m][minute] * self.usd_per_s[m] * 1_000_000) for m in self.models
            }
            rows.append(
                MinuteRow(
                    minute=minute,
                    revenue_micro=at(self._revenue, minute),
                    gpu_cost_micro=sum(cost.values()),
                    sla_credits_micro=at(self._credits, minute),
                    unbilled_micro=self.unbilled(min(60.0 * (minute + 1), end_s), sync),
                    actions={a: at(self._actions[a], minute) for a in ACTIONS},
                    served=at(self._served, minute),
                    failed=at(self._failed, minute),
                    sla_missed=at(self._missed, minute),
                    fallback=at(self._fallback, minute),
                    cost_by_model=cost,
                    tokens_by_model={m: at(self._tokens[m], minute) for m in self.models},
                    replicas_by_model={m: seconds[m][minute] / 60.0 for m in self.models},
                )
            )
        return rows

    def model_totals(
        self, rows: Sequence[MinuteRow], peak_replicas: Mapping[str, int]
    ) -> dict[str, ModelTotals]:
        return {
            m: ModelTotals(
                served=self._served_by_model[m],
                revenue_micro=self._revenue_by_model[m],
                gpu_cost_micro=sum(r.cost_by_model[m] for r in rows),
                replica_hours=sum(r.replicas_by_model[m] for r in rows) / 60.0,
                peak_replicas=peak_replicas.get(m, 0),
                tokens=sum(r.tokens_by_model[m] for r in rows),
            )
            for m in self.models
        }


def _spread(column: list[float], start: float, stop: float) -> None:
    """Add the seconds of [start, stop) to the minutes they fall in."""
    t = start
    while t < stop:
        minute = int(t // 60)
        if minute >= len(column):
            return
        edge = min(stop, 60.0 * (minute + 1))
        column[minute] += edge - t
        t = edge
