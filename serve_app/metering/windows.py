"""Pure window arithmetic of the meter aggregator (no Redis, no clock).

A window is (tenant, meter event, start) covering `[start, start + window_s)` of the
request's end time. It closes at `start + window_s + grace_s`; a meter that arrives
later is folded into the window open at that moment (it never changes a window that
may already have been sent), so its money is billed once, a little later. That rule
lives in one place, `lua/fold.lua`, which applies it atomically with Redis's clock.
"""

from __future__ import annotations

import hashlib

WINDOW_VERSION = 1
"""Part of every identifier: bump it only to re-issue windows on purpose."""


def window_start_s(ended_at_ms: int, window_s: int) -> int:
    return (ended_at_ms // 1000) // window_s * window_s


def identifier(tenant_id: str, event_name: str, start_s: int, version: int = WINDOW_VERSION) -> str:
    """Deterministic Stripe identifier of a window (≤ 100 characters, any tenant id)."""
    digest = hashlib.sha256(f"{tenant_id}|{event_name}|{start_s}|{version}".encode()).hexdigest()
    return f"rtcts_{start_s}_{digest[:40]}"
