"""How long the billing state remembers what, in one place: each horizon bounds another,
so they are named together and derived from each other, never repeated as literals.

    FOLD_DEDUP_S          the aggregator remembers a folded batch id this long (`seen`);
    SPOOL_MAX_AGE_S       a spool file older than this is dead-lettered, not replayed
                          (replayed later, a batch that also landed in the stream could
                          be folded twice: its id would be forgotten);
    RECONCILE_HORIZON_S   how far back reconciliation compares with Stripe (Stripe takes
                          meter event timestamps only 35 days back);
    SENT_RETENTION_S      delivered windows (the local ledger, entry by entry) are kept
                          this long past their day, then expire in Redis;
    STRIPE_IDENTIFIER_MEMORY_S  Stripe dedups a meter event identifier about this long;
    RESEND_HORIZON_S      an outbox entry first sent longer ago is reconciled with Stripe
                          before it is sent again (`outbox_horizon.py`), never resent blind.
"""

from __future__ import annotations

from typing import Final

DAY_S: Final = 86_400

FOLD_DEDUP_S: Final = 48 * 3600
"""How long the fold remembers a batch id (`rtcts:agg:{s<i>}:seen`, Redis's clock)."""

SPOOL_REPLAY_MARGIN_S: Final = 3600
"""Kept between the spool's age limit and the fold's memory: a spool file is dated by its
creation (this machine's clock) while the fold dates a batch id when it folds it (Redis's
clock, at or after the flush that may have landed, which precedes the file by at most a
flush timeout). The margin covers that timeout and any clock difference."""

SPOOL_MAX_AGE_S: Final = FOLD_DEDUP_S - SPOOL_REPLAY_MARGIN_S
"""A spool file created longer ago than this is dead-lettered instead of replayed."""

RECONCILE_HORIZON_S: Final = 35 * DAY_S
"""Reconciliation looks this far back at most (Stripe's limit for meter event timestamps)."""

SENT_RETENTION_S: Final = RECONCILE_HORIZON_S + 5 * DAY_S
"""Delivered windows are kept this long after the end of their day (UTC): every window
reconciliation can ask about, with days to spare."""

STRIPE_IDENTIFIER_MEMORY_S: Final = DAY_S
"""Stripe dedups a meter event's identifier "for at least 24 hours"; past that a resend
of the same identifier may be recorded again."""

RESEND_HORIZON_S: Final = STRIPE_IDENTIFIER_MEMORY_S - 4 * 3600
"""An outbox entry whose first send attempt is older than this (20 h) is compared with
Stripe's event summaries before any resend. The first attempt bounds every landing from
below, so Stripe still remembers any landed copy until at least 24 h after it; the 4 h
margin covers clock differences between the aggregator and Stripe, and sends still in
flight when the horizon passes."""
