"""Values shared by the billing half: what a closed window sends to Stripe, and how a
send ended.

    SyncError                      base of sink errors (carry `retryable`)
    ├── RetryableSyncError         429, 5xx, network: send again later (same idempotency key)
    └── PermanentSyncError         invalid request, unknown customer: dead-letter it
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from serve_app.errors import (  # re-exported: defined in the one error tree
    PermanentSyncError as PermanentSyncError,
    RetryableSyncError as RetryableSyncError,
    SyncError as SyncError,
)

METER_EVENT_BILLED = "rtcts_billed_micro_usd"
"""Stripe meter event: billed amount in micro-USD (value summed per customer)."""
METER_EVENT_TOKENS = "rtcts_tokens"
"""Stripe meter event: verified prompt + output tokens of billable requests."""
METER_EVENTS = (METER_EVENT_BILLED, METER_EVENT_TOKENS)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One closed window, frozen, ready to send to Stripe as one meter event.

    `identifier` is deterministic: derived from every parameter of the window (tenant,
    meter, start, length, grace, app instance, shard layout, version: `windows.py`) and
    frozen at close, so every retry, from any process, sends the same identifier and
    idempotency key; it is renamed only past the resend horizon, for a window Stripe
    was found not to have (`outbox_horizon.py`).
    """

    identifier: str
    """≤ 100 characters; Stripe dedups meter events by it for at least 24 hours."""
    event_name: str
    stripe_customer_id: str
    value: int
    """A whole number (micro-USD or tokens); Stripe requires an integer."""
    timestamp: int
    """Unix seconds: the window's start (Stripe accepts 35 days back to 5 minutes ahead)."""
    tenant_id: str
    window_start: int


class SendStatus(str, Enum):
    DELIVERED = "delivered"
    """Stripe accepted it, or already had this identifier (a duplicate counts as delivered)."""
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class SendResult:
    identifier: str
    status: SendStatus
    detail: str = ""
    """For RETRY/PERMANENT: Stripe's error code or the network error, never a secret."""
