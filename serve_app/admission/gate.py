"""The admission gate the ingress calls: Redis when it answers, else the plan's outage
policy (fail-open: the local approximate limiter; fail-closed: `AdmissionUnavailable`).

Guarantees:
- the request path never waits on Redis longer than `timeout_s` (hard bound with
  `asyncio.wait_for`, on top of the client's socket timeouts), and while the circuit
  breaker is open it does not wait at all;
- a limit is never exceeded because of a slow answer: a timed-out call may have been
  admitted in Redis, so it is answered with a retryable 503, never admitted again
  locally, and it does not count towards an outage (under a burst the event loop, not
  Redis, is usually what is slow); refused or broken connections fall back at once and
  open the breaker after 3 in a row;
- the switch to the fallback and the return to Redis are logged once each and counted;
- a settle that cannot reach Redis is kept and retried (oldest first) after the next
  successful call, so verified usage is not lost; reservations it would have released
  expire in Redis on their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from serve_app.admission.breaker import CircuitBreaker
from serve_app.admission.local import LocalLimiter
from serve_app.admission.redis_store import RedisAdmission
from serve_app.admission.types import (
    AdmissionUnavailable,
    Admitted,
    Limits,
    Refused,
    Ticket,
    Usage,
)

logger = logging.getLogger("rtcts.admission")

DEFAULT_TIMEOUT_S = 2.0
"""Bounds the wait on Redis, event-loop delays included. Generous on purpose: Redis
answers in well under a millisecond, but under a burst the ingress's own event loop can
be busy for hundreds of milliseconds, and a slow answer must not read as an outage (a
timed-out call may still have been admitted in Redis). A dead Redis refuses connections
at once; a hung one costs this much for a few requests, until the breaker opens."""
MAX_PENDING_SETTLES = 100_000


class AdmissionGate:
    def __init__(
        self,
        store: RedisAdmission,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._timeout_s = timeout_s
        self._breaker = breaker or CircuitBreaker()
        self._local = LocalLimiter()
        self._clock = clock
        self._pending: deque[tuple[str, str, int, int]] = deque(maxlen=MAX_PENDING_SETTLES)
        self.outages = 0
        self.degraded_admissions = 0
        self.failures: dict[str, int] = {}
        """Failed Redis calls by exception type (for /healthz)."""

    @property
    def redis_up(self) -> bool:
        return not self._breaker.is_open

    def health(self) -> dict[str, object]:
        return {
            "redis_up": self.redis_up,
            "outages": self.outages,
            "degraded_admissions": self.degraded_admissions,
            "failed_calls": dict(self.failures),
            "pending_settles": len(self._pending),
        }

    async def admit(self, ticket: Ticket, limits: Limits, *, fail_open: bool) -> Admitted | Refused:
        if self._breaker.allow():
            try:
                result: Admitted | Refused = await self._call(self._store.admit(ticket, limits))
            except _REDIS_ERRORS as exc:
                if _ambiguous(exc):
                    # A timed-out call may have been admitted in Redis: admitting it again
                    # locally could exceed the limit, and a slow answer is as likely an
                    # overloaded event loop as a sick Redis. Retryable 503; the breaker
                    # opens on connection failures only.
                    self._count(exc)
                    raise AdmissionUnavailable("admission timed out; retry shortly") from None
                self._down(exc)
            else:
                if isinstance(result, Admitted):
                    self._local.last_settled_micro[ticket.tenant_id] = result.settled_micro
                await self._up()
                return result
        if not fail_open:
            raise AdmissionUnavailable("admission is temporarily unavailable; retry shortly")
        self.degraded_admissions += 1
        return self._local.admit(ticket, limits, self._clock())

    async def settle(self, tenant_id: str, request_id: str, tokens: int, billed_micro: int) -> None:
        """Settle a request (0 tokens and 0 billed for a failed one). Never raises."""
        if self._local.settle(tenant_id, request_id, billed_micro):
            return  # admitted during an outage: Redis never held its reservation
        item = (tenant_id, request_id, tokens, billed_micro)
        if not self._breaker.allow():
            self._pending.append(item)
            return
        try:
            await self._call(self._store.settle(*item))
        except _REDIS_ERRORS as exc:
            self._down(exc)
            self._pending.append(item)
        else:
            await self._up()

    async def usage(self, tenant_id: str) -> Usage:
        if not self._breaker.allow():
            raise AdmissionUnavailable("usage is temporarily unavailable; retry shortly")
        try:
            result: Usage = await self._call(self._store.usage(tenant_id))
        except _REDIS_ERRORS as exc:
            self._down(exc)
            raise AdmissionUnavailable("usage is temporarily unavailable; retry shortly") from None
        await self._up()
        return result

    async def _call(self, coro: Any) -> Any:
        return await asyncio.wait_for(coro, self._timeout_s)

    def _count(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.failures[name] = self.failures.get(name, 0) + 1

    def _down(self, exc: BaseException) -> None:
        self._count(exc)
        if self._breaker.failure():
            self.outages += 1
            logger.warning(
                "Redis unreachable (%s): admission falls back by plan", type(exc).__name__
            )

    async def _up(self) -> None:
        if self._breaker.success():
            logger.warning("Redis reachable again: admission back on Redis")
        while self._pending:
            item = self._pending[0]
            try:
                await self._call(self._store.settle(*item))
            except _REDIS_ERRORS as exc:
                self._down(exc)
                return
            self._pending.popleft()


def _ambiguous(exc: BaseException) -> bool:
    """Not evidence of an outage: a timeout (the outcome is unknown) or this process's
    own connection pool being full. A refused or reset connection is evidence."""
    from redis.exceptions import MaxConnectionsError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(
        exc, TimeoutError | asyncio.TimeoutError | RedisTimeoutError | MaxConnectionsError
    )


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError, asyncio.TimeoutError)


_REDIS_ERRORS = _redis_errors()
