"""Values of the admission layer, and its errors.

AdmissionError                  base
└── AdmissionUnavailable        Redis cannot be reached (timeouts, breaker open)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from serve_app.errors import (  # re-exported: defined in the one error tree
    AdmissionError as AdmissionError,
    AdmissionUnavailable as AdmissionUnavailable,
)


class RefusalCode(str, Enum):
    RATE_LIMITED = "rate_limited"
    TOKENS_LIMITED = "tokens_limited"
    BUDGET_EXCEEDED = "budget_exceeded"


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """A tenant's limits, from its plan."""

    requests_per_minute: int
    tokens_per_minute: int
    monthly_budget_micro: int


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request to admit."""

    tenant_id: str
    request_id: str
    tokens: int
    """Estimated prompt + output tokens, reserved against the token limit."""
    amount_micro: int
    """Worst-case price, reserved against the monthly budget."""
    reserve: bool = True
    """False: the request will not be served (e.g. margin-throttled): count it only."""
    window: str = "req"
    """The sliding window it counts in: "req" for requests, "quote" for quotes."""


@dataclass(frozen=True, slots=True)
class Admitted:
    requests_in_window: int
    tokens_in_window: int
    settled_micro: int
    reserved_micro: int
    degraded: bool = False
    """True when Redis was unreachable and the local fail-open limiter decided."""
    output_history: Mapping[str, float] = field(default_factory=dict)
    """The tenant's mean output tokens per model, as every ingress replica settled them
    (empty from the local limiter)."""


@dataclass(frozen=True, slots=True)
class Refused:
    code: RefusalCode
    retry_after_s: float | None
    """Seconds until a retry can pass; None when waiting cannot help."""


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """A tenant's current window and month."""

    requests_in_window: int
    tokens_in_window: int
    month: str
    settled_micro: int
    reserved_micro: int
    billed_requests: int
    billed_tokens: int
