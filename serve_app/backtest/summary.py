"""One policy's replay in a few figures: decisions, money, margins, exposure.

Realized margins are over tumbling windows of `WINDOW_MINUTES` (aligned on the start,
whole windows within the workload only: the drain after the last arrival is in the
totals, not in a window). The spike's margins are over its whole minutes; "before" and
"after" over the whole minutes outside it (after: up to the end of the workload).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from serve_app.backtest.ledger import MinuteRow, ModelTotals, margin
from serve_app.backtest.replay import ReplayResult
from serve_app.backtest.workload import SpikeSpec

WINDOW_MINUTES = 5


@dataclass(frozen=True, slots=True)
class Window:
    start_minute: int
    revenue_micro: int
    gpu_cost_micro: int

    @property
    def margin(self) -> float | None:
        return margin(self.revenue_micro, self.gpu_cost_micro)

    def below(self, floor: float) -> bool:
        m = self.margin
        return self.gpu_cost_micro > 0 if m is None else m < floor


@dataclass(frozen=True, slots=True)
class PolicySummary:
    policy: str
    requests: int
    actions: Mapping[str, int]
    served: int
    failed: int
    sla_missed: int
    fallback: int
    """Requests served on a pricier model than their card's."""
    fallback_in_spike: int
    revenue_micro: int
    sla_credits_micro: int
    gpu_cost_micro: int
    margin_before_spike: float | None
    margin_in_spike: float | None
    margin_after_spike: float | None
    windows: tuple[Window, ...]
    floor: float
    unbilled_peak_micro: int
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    models: Mapping[str, ModelTotals]

    @property
    def margin(self) -> float | None:
        return margin(self.revenue_micro, self.gpu_cost_micro)

    @property
    def throttled(self) -> int:
        return self.actions.get("throttle", 0)

    @property
    def windows_below_floor(self) -> int:
        return sum(1 for w in self.windows if w.below(self.floor))

    @property
    def worst_window(self) -> Window | None:
        def key(w: Window) -> float:
            m = w.margin
            return float("-inf") if m is None else m

        return min(self.windows, key=key, default=None)


def windows(rows: Sequence[MinuteRow], minutes: int) -> tuple[Window, ...]:
    """Tumbling `WINDOW_MINUTES` windows over the first `minutes` minutes (whole only)."""
    out = []
    for start in range(0, minutes - WINDOW_MINUTES + 1, WINDOW_MINUTES):
        part = rows[start : start + WINDOW_MINUTES]
        out.append(
            Window(
                start,
                sum(r.revenue_micro for r in part),
                sum(r.gpu_cost_micro for r in part),
            )
        )
    return tuple(out)


def _margin_of(rows: Sequence[MinuteRow]) -> float | None:
    return margin(sum(r.revenue_micro for r in rows), sum(r.gpu_cost_micro for r in rows))


def summarize(
    result: ReplayResult, duration_s: float, spike: SpikeSpec | None, floor: float
) -> PolicySummary:
    rows = result.rows
    minutes = int(duration_s // 60)
    actions: dict[str, int] = {}
    for row in rows:
        for action, count in row.actions.items():
            actions[action] = actions.get(action, 0) + count
    before = during = after = None
    fallback_in_spike = 0
    if spike is not None:
        first, last = int(-(-spike.start_s // 60)), int(min(spike.end_s, duration_s) // 60)
        in_spike = rows[first:last]
        before = _margin_of(rows[: int(spike.start_s // 60)])
        during = _margin_of(in_spike)
        after = _margin_of(rows[int(-(-spike.end_s // 60)) : minutes])
        fallback_in_spike = sum(r.fallback for r in in_spike)
    return PolicySummary(
        policy=result.policy,
        requests=result.requests,
        actions=actions,
        served=sum(r.served for r in rows),
        failed=sum(r.failed for r in rows),
        sla_missed=sum(r.sla_missed for r in rows),
        fallback=sum(r.fallback for r in rows),
        fallback_in_spike=fallback_in_spike,
        revenue_micro=sum(r.revenue_micro for r in rows),
        sla_credits_micro=sum(r.sla_credits_micro for r in rows),
        gpu_cost_micro=sum(r.gpu_cost_micro for r in rows),
        margin_before_spike=before,
        margin_in_spike=during,
        margin_after_spike=after,
        windows=windows(rows, minutes),
        floor=floor,
        unbilled_peak_micro=result.unbilled_peak_micro,
        ttft_p50_s=result.ttft_p50_s,
        ttft_p99_s=result.ttft_p99_s,
        models=result.models,
    )
