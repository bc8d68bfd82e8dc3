"""Pure window arithmetic of the meter aggregator (no Redis, no clock).

A window is (tenant, meter event, start) covering `[start, start + window_s)` of the
request's end time. It closes at `start + window_s + grace_s`; a meter that arrives
later is folded into the window open at that moment (it never changes a window that
may already have been sent), so its money is billed once, a little later. That rule
lives in one place, `lua/fold.lua`, which applies it atomically with Redis's clock.

An open window is stored under `open_field(...)`: tenant, event, start and the length
and grace it was folded under, so a window keeps its own shape when the configuration
changes (it closes at its own end, under its own identifier).

Identifiers (what Stripe dedups on, about 24 hours) derive from every parameter that
defines a window: tenant, event, start, length, grace, the app instance and the shard
layout (count and index), and a version. A window of a given shape is folded only
before its close and closed once (Redis's clock decides both), so within one layout an
identifier is never made twice; any change of configuration changes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

WINDOW_VERSION = 2
"""Part of every identifier: bump it only to re-issue windows on purpose (1: the hash of
tenant, event and start alone, before the layout was part of it)."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a shard's windows are folded: the app instance and its shard layout."""

    instance: str
    """The app's name (`AggregatorConfig.instance`)."""
    shards: int
    shard: int


@dataclass(frozen=True, slots=True)
class OpenWindow:
    """One open window, as `parse_open_field` reads it back."""

    tenant_id: str
    event_name: str
    start_s: int
    window_s: int
    grace_s: int
    legacy: bool = False
    """Stored in the older form `tenant|event|start` (folded before this layout-aware
    form existed): closed under the older identifier, see `window_identifier`."""

    @property
    def due_s(self) -> int:
        """When it closes (Unix seconds, Redis's clock)."""
        return self.start_s + self.window_s + self.grace_s


def window_start_s(ended_at_ms: int, window_s: int) -> int:
    return (ended_at_ms // 1000) // window_s * window_s


def open_field(tenant_id: str, event_name: str, start_s: int, window_s: int, grace_s: int) -> str:
    """The open-window hash field (`lua/fold.lua` builds the same string)."""
    return f"{tenant_id}|{event_name}|{start_s}|{window_s}|{grace_s}"


def parse_open_field(field: str, window_s: int, grace_s: int) -> OpenWindow | None:
    """An open-window field read back, or None if it is not one. A field of the older
    form `tenant|event|start` takes the given `window_s` and `grace_s`. Event names hold
    no `|` and are never all digits, so the two forms cannot be confused."""
    parts = field.rsplit("|", 4)
    if len(parts) == 5 and parts[2].isdigit() and parts[3].isdigit() and parts[4].isdigit():
        tenant, event, start, length, grace = parts
        if tenant and event:
            return OpenWindow(tenant, event, int(start), int(length), int(grace))
    parts = field.rsplit("|", 2)
    if len(parts) == 3 and parts[0] and parts[1] and parts[2].isdigit():
        return OpenWindow(parts[0], parts[1], int(parts[2]), window_s, grace_s, legacy=True)
    return None


def identifier(
    tenant_id: str,
    event_name: str,
    start_s: int,
    *,
    window_s: int,
    grace_s: int,
    layout: Layout,
    version: int = WINDOW_VERSION,
) -> str:
    """Deterministic Stripe identifier of a window (≤ 100 characters, any tenant id)."""
    text = json.dumps(
        [
            tenant_id,
            event_name,
            start_s,
            window_s,
            grace_s,
            layout.instance,
            layout.shards,
            layout.shard,
            version,
        ]
    )
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"rtcts_{start_s}_{digest[:40]}"


def legacy_identifier(tenant_id: str, event_name: str, start_s: int) -> str:
    """The identifier of version 1 (tenant, event, start only), for windows folded in the
    older form: what the older aggregator would have given them. Its hash input differs
    in form from `identifier`'s, so the two never collide."""
    digest = hashlib.sha256(f"{tenant_id}|{event_name}|{start_s}|1".encode()).hexdigest()
    return f"rtcts_{start_s}_{digest[:40]}"


def window_identifier(window: OpenWindow, layout: Layout) -> str:
    """The identifier an open window closes under: `identifier` of its own shape, or
    `legacy_identifier` for a field of the older form (an upgrade mid-window may leave
    both forms of one window open: they close as two windows, neither dropped)."""
    if window.legacy:
        return legacy_identifier(window.tenant_id, window.event_name, window.start_s)
    return identifier(
        window.tenant_id,
        window.event_name,
        window.start_s,
        window_s=window.window_s,
        grace_s=window.grace_s,
        layout=layout,
    )


def reissued(old_identifier: str, start_s: int) -> str:
    """A new identifier for a window already issued as `old_identifier` (deterministic:
    every process renames it the same way). Used only for a window Stripe was found not
    to have once the old identifier may be forgotten (`outbox_horizon.py`)."""
    digest = hashlib.sha256(f"reissued|{old_identifier}".encode()).hexdigest()
    return f"rtcts_{start_s}_{digest[:40]}"
