"""The rule for outbox entries past the resend horizon (`outbox_horizon.judge`), pure."""

from __future__ import annotations

from decimal import Decimal

from serve_app.metering.horizons import RESEND_HORIZON_S, STRIPE_IDENTIFIER_MEMORY_S
from serve_app.metering.outbox_horizon import Verdict, judge, past_horizon
from serve_app.metering.windows import reissued


def test_only_unambiguous_figures_are_acted_on() -> None:
    # Stripe holds what the ledger delivered and nothing more: none of them landed.
    assert judge(Decimal(500), delivered=500, past=40, unconfirmed=0) is Verdict.REISSUE
    # Stripe holds all of them (past and other unconfirmed ones): they landed.
    assert judge(Decimal(560), delivered=500, past=40, unconfirmed=20) is Verdict.DELIVERED
    # Part of them, something unknown, or less than delivered: a person decides.
    assert judge(Decimal(540), delivered=500, past=40, unconfirmed=20) is Verdict.DEAD
    assert judge(Decimal(599), delivered=500, past=40, unconfirmed=0) is Verdict.DEAD
    assert judge(Decimal(400), delivered=500, past=40, unconfirmed=0) is Verdict.DEAD


def test_the_horizon_comes_before_stripe_forgets_and_counts_from_the_first_attempt() -> None:
    assert RESEND_HORIZON_S < STRIPE_IDENTIFIER_MEMORY_S
    assert not past_horizon(None, 10**9)  # never sent: nothing to forget
    assert not past_horizon(1_000, 1_000 + RESEND_HORIZON_S - 1)
    assert past_horizon(1_000, 1_000 + RESEND_HORIZON_S)


def test_a_reissued_identifier_is_new_deterministic_and_short() -> None:
    old = "rtcts_1800000000_" + "a" * 40
    new = reissued(old, 1_800_000_000)
    assert new != old
    assert new == reissued(old, 1_800_000_000)
    assert reissued(new, 1_800_000_000) not in (old, new)
    assert len(new) <= 100
