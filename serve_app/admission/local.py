"""The fail-open limiter: an approximate, per-ingress-replica stand-in for Redis.

While Redis is unreachable, a plan that fails open keeps serving under the same limits
counted in this replica alone (so across N ingress replicas up to N x the limit). The
monthly budget is enforced against the last month total this replica saw from Redis
plus what it settled during the outage and has not yet folded into Redis, plus what it
reserved for requests in flight.

Months: every figure is kept per calendar month (UTC) of the injected clock, so the
budget rolls over at the month boundary as Redis's month keys do.

The limiter only decides; folding outage spend into Redis is the gate's job
(`AdmissionGate`): it tells the limiter, through `synced`, when a settle made here
reached Redis, so that spend is not counted twice (here and in the Redis total).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from serve_app.admission.keys import month_of
from serve_app.admission.types import AdmissionLimits, Admitted, RefusalCode, Refused, Ticket

WINDOW_S = 60.0


@dataclass
class _TenantWindow:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    reserved: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    """Request id -> (tokens, amount_micro, admitted at)."""
    unsynced_micro: dict[str, int] = field(default_factory=dict)
    """Month -> spend settled here during an outage and not yet folded into Redis."""


class LocalLimiter:
    def __init__(self) -> None:
        self._tenants: dict[str, _TenantWindow] = {}
        self.last_settled_micro: dict[str, int] = {}
        """The month total each tenant had when Redis last answered."""
        self._seen_month: dict[str, str] = {}
        """The month of `last_settled_micro` (absent: taken as the current month)."""

    def saw_redis(self, tenant_id: str, settled_micro: int, now_s: float) -> None:
        """Redis answered with the tenant's month total (which includes every settle
        already folded into Redis)."""
        self.last_settled_micro[tenant_id] = settled_micro
        self._seen_month[tenant_id] = month_of(now_s)

    def spent_micro(self, tenant_id: str, now_s: float) -> int:
        """Settled this month as far as this replica knows: Redis's last total plus the
        outage spend not yet in it."""
        month = month_of(now_s)
        seen = 0
        if self._seen_month.get(tenant_id, month) == month:
            seen = self.last_settled_micro.get(tenant_id, 0)
        w = self._tenants.get(tenant_id)
        return seen + (0 if w is None else w.unsynced_micro.get(month, 0))

    def admit(self, ticket: Ticket, limits: AdmissionLimits, now_s: float) -> Admitted | Refused:
        # Quotes count in a window of their own (they never reserve anything).
        key = (
            ticket.tenant_id if ticket.window == "req" else f"{ticket.tenant_id}\x00{ticket.window}"
        )
        w = self._tenants.setdefault(key, _TenantWindow())
        while w.requests and w.requests[0] <= now_s - WINDOW_S:
            w.requests.popleft()
        while w.tokens and w.tokens[0][0] <= now_s - WINDOW_S:
            w.tokens.popleft()
        month = month_of(now_s)
        for old in [m for m in w.unsynced_micro if m < month]:
            del w.unsynced_micro[old]  # a past month's budget no longer limits anything
        if len(w.requests) >= limits.requests_per_minute:
            return Refused(RefusalCode.RATE_LIMITED, w.requests[0] + WINDOW_S - now_s)
        used = sum(t for _, t in w.tokens)
        if ticket.reserve and used + ticket.tokens > limits.tokens_per_minute:
            return Refused(
                RefusalCode.TOKENS_LIMITED, w.tokens[0][0] + WINDOW_S - now_s if w.tokens else None
            )
        spent = self.spent_micro(ticket.tenant_id, now_s)
        reserved = sum(a for _, a, _ in w.reserved.values())
        if ticket.reserve and spent + reserved + ticket.amount_micro > limits.monthly_budget_micro:
            return Refused(RefusalCode.BUDGET_EXCEEDED, None)
        w.requests.append(now_s)
        if ticket.reserve:
            w.tokens.append((now_s, ticket.tokens))
            w.reserved[ticket.request_id] = (ticket.tokens, ticket.amount_micro, now_s)
        return Admitted(len(w.requests), used + ticket.tokens, spent, reserved, degraded=True)

    def settle(
        self, tenant_id: str, request_id: str, billed_micro: int, now_s: float | None = None
    ) -> bool:
        """Settle a request admitted here; False if this limiter never admitted it.

        The spend counts in the month of `now_s` (the settle's time; None: the time of
        its admission) until `synced` says it reached Redis."""
        w = self._tenants.get(tenant_id)
        if w is None or request_id not in w.reserved:
            return False
        _, _, admitted_at = w.reserved.pop(request_id)
        if billed_micro > 0:
            month = month_of(admitted_at if now_s is None else now_s)
            w.unsynced_micro[month] = w.unsynced_micro.get(month, 0) + billed_micro
        return True

    def synced(self, tenant_id: str, billed_micro: int, settled_at_s: float) -> None:
        """A settle made here (at `settled_at_s`) is now in Redis's month total: move it
        from the unsynced spend to the last Redis total, so it is counted once."""
        w = self._tenants.get(tenant_id)
        month = month_of(settled_at_s)
        if w is not None and month in w.unsynced_micro:
            w.unsynced_micro[month] = max(0, w.unsynced_micro[month] - billed_micro)
        seen = self._seen_month.get(tenant_id)
        if seen is None and tenant_id in self.last_settled_micro:
            seen = month  # set without a month: taken as the current one
        if seen == month:
            self.last_settled_micro[tenant_id] += billed_micro
        elif seen is None or seen < month:
            # Redis's total for this month holds at least this settle now.
            self.last_settled_micro[tenant_id] = billed_micro
            self._seen_month[tenant_id] = month
