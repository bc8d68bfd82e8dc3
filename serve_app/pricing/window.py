"""The margin guard: realized gross margin of a model over a rolling window (pure).

The margin floor is a promise about realized gross margin: revenue against the model's
replica-hours, idle included, over a rolling window (5 minutes by default). The caller
(the ingress, or the backtest's simulator) keeps a `WindowMargin` per model; a candidate
passes the margin check when serving it keeps that window at or above the plan's floor,
or, for a window already below the floor (an idle replica is paid whether or not the
request is served), when serving it does not lower the window's margin. Without a
window the request's own incremental margin must meet the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

WINDOW_S = 300.0
"""The default rolling window of the margin guard, seconds."""


class CostBasis(str, Enum):
    """Which cost a decision's margin check weighs against the price."""

    INCREMENTAL = "incremental"
    """What serving the request adds (docs/pricing-model.md), under the window guard."""
    ALLOCATED = "allocated"
    """The request's share of its replica's time, against the floor request by request."""


@dataclass(frozen=True, slots=True)
class WindowMargin:
    """A model's realized revenue and replica cost (idle included) over the window."""

    revenue_micro: int
    cost_micro: int

    @property
    def margin(self) -> float:
        """(revenue − cost) / revenue; −inf for a window with cost and no revenue."""
        if self.revenue_micro <= 0:
            return 0.0 if self.cost_micro <= 0 else -math.inf
        return (self.revenue_micro - self.cost_micro) / self.revenue_micro


def margin_ok(
    price_micro: int, incremental_micro: int, floor: float, window: WindowMargin | None
) -> bool:
    """Whether serving at `price_micro` keeps the margin promise (module docstring)."""
    if window is None:
        return price_micro - incremental_micro >= floor * price_micro
    after = WindowMargin(
        window.revenue_micro + price_micro, window.cost_micro + incremental_micro
    ).margin
    return after >= floor or after >= window.margin


def least_price_micro(incremental_micro: int, floor: float, window: WindowMargin | None) -> int:
    """The least whole price that keeps the window (or the request alone) at the floor."""
    committed = incremental_micro
    revenue = 0
    if window is not None:
        committed += window.cost_micro
        revenue = window.revenue_micro
    # (revenue + p − committed) / (revenue + p) >= floor  <=>  p >= committed/(1−f) − revenue
    price = max(1, math.ceil(committed / (1.0 - floor) - revenue))
    while not margin_ok(price, incremental_micro, floor, window):  # float rounding guard
        price += 1
    return price
