"""Prices from a plan's rates, in exact integer money.

Rates are integer micro-USD per 1M tokens, so `tokens × rate` is an exact integer in
pico-USD (1e-12 USD); a price is that rounded half up to a whole micro-USD.
"""

from __future__ import annotations

import math

PICO_PER_MICRO = 1_000_000


def pico_to_micro(pico: int) -> int:
    """Round pico-USD half up to whole micro-USD."""
    return (pico + PICO_PER_MICRO // 2) // PICO_PER_MICRO


def margin(price_pico_usd: int, cost_usd: float) -> float:
    """Gross margin (price − cost) / price; −inf when the price is zero and cost is not."""
    if price_pico_usd <= 0:
        return 0.0 if cost_usd <= 0 else -math.inf
    return 1.0 - cost_usd * 1e12 / price_pico_usd


def floor_price_micro(cost_usd: float, margin_floor: float) -> int:
    """Least whole micro-USD price whose margin over `cost_usd` meets `margin_floor`."""
    micro = math.ceil(cost_usd * 1e6 / (1.0 - margin_floor))
    while margin(micro * PICO_PER_MICRO, cost_usd) < margin_floor:  # float rounding guard
        micro += 1
    return micro
