"""Pure window arithmetic of the meter aggregator (no Redis, no clock).

A window is (tenant, meter event, start) covering `[start, start + window_s)` of the
request's end time. It closes at `start + window_s + grace_s`; a meter that arrives
later is folded into the window open at that moment (it never changes a window that
may already have been sent), so its money is billed once, a little later.
"""

from __future__ import annotations

import hashlib

from serve_app.metering.meter import Meter
from serve_app.metering.types import METER_EVENT_BILLED, METER_EVENT_TOKENS

WINDOW_VERSION = 1
"""Part of every identifier: bump it only to re-issue windows on purpose."""


def window_start_s(ended_at_ms: int, window_s: int) -> int:
    return (ended_at_ms // 1000) // window_s * window_s


def target_window_s(ended_at_ms: int, now_ms: int, window_s: int, grace_s: int) -> int:
    """The window a meter folds into at `now_ms`: its own, or the open one if its own is due."""
    own = window_start_s(ended_at_ms, window_s)
    if (own + window_s + grace_s) * 1000 <= now_ms:
        return window_start_s(now_ms, window_s)
    return own


def identifier(tenant_id: str, event_name: str, start_s: int, version: int = WINDOW_VERSION) -> str:
    """Deterministic Stripe identifier of a window (≤ 100 characters, any tenant id)."""
    digest = hashlib.sha256(f"{tenant_id}|{event_name}|{start_s}|{version}".encode()).hexdigest()
    return f"rtcts_{start_s}_{digest[:40]}"


def meter_values(meter: Meter) -> dict[str, int]:
    """What a meter adds to each Stripe meter event; nothing for a non-billable meter."""
    if not meter.billable:
        return {}
    return {
        METER_EVENT_BILLED: meter.billed_micro,
        METER_EVENT_TOKENS: meter.input_tokens + meter.output_tokens,
    }
