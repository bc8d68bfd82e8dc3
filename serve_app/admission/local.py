"""The fail-open limiter: an approximate, per-ingress-replica stand-in for Redis.

While Redis is unreachable, a plan that fails open keeps serving under the same limits
counted in this replica alone (so across N ingress replicas up to N x the limit). The
monthly budget is enforced against what this replica reserved and settled during the
outage on top of the last month total it saw from Redis.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from serve_app.admission.types import Admitted, Limits, RefusalCode, Refused, Ticket

WINDOW_S = 60.0


@dataclass
class _TenantWindow:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    reserved: dict[str, tuple[int, int]] = field(default_factory=dict)
    spent_micro: int = 0


class LocalLimiter:
    def __init__(self) -> None:
        self._tenants: dict[str, _TenantWindow] = {}
        self.last_settled_micro: dict[str, int] = {}
        """The month total each tenant had when Redis last answered."""

    def admit(self, ticket: Ticket, limits: Limits, now_s: float) -> Admitted | Refused:
        w = self._tenants.setdefault(ticket.tenant_id, _TenantWindow())
        while w.requests and w.requests[0] <= now_s - WINDOW_S:
            w.requests.popleft()
        while w.tokens and w.tokens[0][0] <= now_s - WINDOW_S:
            w.tokens.popleft()
        if len(w.requests) >= limits.requests_per_minute:
            return Refused(RefusalCode.RATE_LIMITED, w.requests[0] + WINDOW_S - now_s)
        used = sum(t for _, t in w.tokens)
        if ticket.reserve and used + ticket.tokens > limits.tokens_per_minute:
            return Refused(
                RefusalCode.TOKENS_LIMITED, w.tokens[0][0] + WINDOW_S - now_s if w.tokens else None
            )
        spent = self.last_settled_micro.get(ticket.tenant_id, 0) + w.spent_micro
        reserved = sum(a for _, a in w.reserved.values())
        if ticket.reserve and spent + reserved + ticket.amount_micro > limits.monthly_budget_micro:
            return Refused(RefusalCode.BUDGET_EXCEEDED, None)
        w.requests.append(now_s)
        if ticket.reserve:
            w.tokens.append((now_s, ticket.tokens))
            w.reserved[ticket.request_id] = (ticket.tokens, ticket.amount_micro)
        return Admitted(len(w.requests), used + ticket.tokens, spent, reserved, degraded=True)

    def settle(self, tenant_id: str, request_id: str, billed_micro: int) -> bool:
        """Settle a request admitted here; False if this limiter never admitted it."""
        w = self._tenants.get(tenant_id)
        if w is None or request_id not in w.reserved:
            return False
        del w.reserved[request_id]
        w.spent_micro += billed_micro
        return True
