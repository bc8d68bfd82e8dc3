"""The fail-open local limiter."""

from __future__ import annotations

from serve_app.admission.local import LocalLimiter
from serve_app.admission.types import AdmissionLimits, Admitted, RefusalCode, Refused, Ticket


def _ticket(n: int, tokens: int = 10, amount: int = 10) -> Ticket:
    return Ticket("t", f"r{n}", tokens, amount)


def test_requests_slide_over_sixty_seconds() -> None:
    limiter = LocalLimiter()
    limits = AdmissionLimits(2, 10**6, 10**9)
    assert isinstance(limiter.admit(_ticket(1), limits, 0.0), Admitted)
    assert isinstance(limiter.admit(_ticket(2), limits, 30.0), Admitted)
    refused = limiter.admit(_ticket(3), limits, 59.0)
    assert isinstance(refused, Refused)
    assert refused.code is RefusalCode.RATE_LIMITED
    assert refused.retry_after_s == 1.0
    assert isinstance(limiter.admit(_ticket(4), limits, 60.5), Admitted)


def test_budget_counts_the_last_redis_total_and_local_spend() -> None:
    limiter = LocalLimiter()
    limiter.last_settled_micro["t"] = 90
    limits = AdmissionLimits(100, 10**6, 100)
    assert isinstance(limiter.admit(_ticket(1, amount=10), limits, 0.0), Admitted)
    refused = limiter.admit(_ticket(2, amount=1), limits, 0.0)
    assert isinstance(refused, Refused)
    assert refused.code is RefusalCode.BUDGET_EXCEEDED
    assert limiter.settle("t", "r1", 5)
    assert isinstance(limiter.admit(_ticket(3, amount=5), limits, 0.0), Admitted)
    assert not limiter.settle("t", "unknown", 5)


def test_admissions_are_marked_degraded() -> None:
    result = LocalLimiter().admit(_ticket(1), AdmissionLimits(1, 100, 100), 0.0)
    assert isinstance(result, Admitted)
    assert result.degraded
