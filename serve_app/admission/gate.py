"""The admission gate the ingress calls: Redis when it answers, else the plan's outage
policy (fail-open: the local approximate limiter; fail-closed: `AdmissionUnavailable`).

Guarantees:
- the request path never waits on Redis longer than `timeout_s` (hard bound with
  `asyncio.timeout`, on top of the client's socket timeouts), and while the circuit
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

Outage spend ("nothing free"): a request the local limiter admitted while Redis was down
is settled in the local limiter (so the outage keeps its budget) AND queued like any
settle that could not reach Redis, with its server-generated request id and the time it
settled. When Redis answers again the queue is replayed, oldest first, through the same
`settle` script, which counts a request id once (the `settled` set). What holds at each
step of that flush, if it stops right there:
- a settle landed and its answer came back: it is off the queue, and the local limiter
  moved its spend from "not yet in Redis" to Redis's total (counted once, here and there);
- a settle landed and its answer was lost (timeout, the process or Redis died in between):
  it stays first in the queue and is sent again; the script finds its id and adds nothing.
  A settle that may have landed is retried only within `SETTLE_DEDUP_S` of that attempt
  (after it Redis may have forgotten the id): past that it is dropped with a warning, an
  undercount rather than a double count;
- the flush is interrupted or run again (two successful calls, two flushes): what is off
  the queue is never sent again, what is still on it is sent again: idempotent;
- this process dies with settles queued: they are lost from the Redis budget (the queue is
  in memory), never doubled. The verified meters, which are what is billed, are on the
  durable meter path (stream or disk spool) whatever happens here.
The spend counts in the month it settled in, and its tokens in the sliding window only
if that moment is still inside it (`RedisAdmission.settle(age_s=...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serve_app.admission.breaker import CircuitBreaker
from serve_app.admission.local import LocalLimiter
from serve_app.admission.redis_store import SETTLE_DEDUP_S, RedisAdmission
from serve_app.admission.types import (
    AdmissionLimits,
    AdmissionUnavailable,
    Admitted,
    Refused,
    TenantUsage,
    Ticket,
)

logger = logging.getLogger("rtcts.admission")

DEFAULT_TIMEOUT_S = 2.0
"""Bounds the wait on Redis, event-loop delays included. Generous on purpose: Redis
answers in well under a millisecond, but under a burst the ingress's own event loop can
be busy for hundreds of milliseconds, and a slow answer must not read as an outage (a
timed-out call may still have been admitted in Redis). A dead Redis refuses connections
at once; a hung one costs this much for a few requests, until the breaker opens."""
MAX_PENDING_SETTLES = 100_000
RETRY_MARGIN_S = 60.0
"""A settle that may have landed is retried only until `SETTLE_DEDUP_S` minus this after
the attempt (clock differences, the time the retry takes)."""


@dataclass(slots=True)
class _Settle:
    """A settle waiting for Redis."""

    tenant_id: str
    request_id: str
    tokens: int
    billed_micro: int
    at_s: float
    """When the request settled (the gate's clock)."""
    local: bool
    """Admitted by the local limiter (Redis never held its reservation)."""
    maybe_landed_s: float | None = None
    """When an attempt ended without an answer (it may have landed in Redis)."""
    model_id: str = ""
    output_tokens: int = 0
    """A finished generation's model and output tokens, for the shared output history."""


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
        self._pending: deque[_Settle] = deque()
        self._flushing = False
        self._policy_checked = False
        self.outages = 0
        self.dropped_settles = 0
        """Settles given up: the queue was full, or a retry could have counted twice."""
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
            "dropped_settles": self.dropped_settles,
        }

    async def admit(
        self, ticket: Ticket, limits: AdmissionLimits, *, fail_open: bool
    ) -> Admitted | Refused:
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
                    self._local.saw_redis(ticket.tenant_id, result.settled_micro, self._clock())
                await self._up()
                return result
        if not fail_open:
            raise AdmissionUnavailable("admission is temporarily unavailable; retry shortly")
        self.degraded_admissions += 1
        return self._local.admit(ticket, limits, self._clock())

    async def settle(
        self,
        tenant_id: str,
        request_id: str,
        tokens: int,
        billed_micro: int,
        *,
        model_id: str = "",
        output_tokens: int = 0,
    ) -> None:
        """Settle a request (0 tokens and 0 billed for a failed one). Never raises.

        `model_id` and `output_tokens` (a finished generation) feed the tenant's output
        history that every ingress replica reads back at admission."""
        now = self._clock()
        # Admitted during an outage: Redis never held its reservation, but its spend must
        # still reach Redis's budget (module docstring: "Outage spend").
        local = self._local.settle(tenant_id, request_id, billed_micro, now)
        item = _Settle(
            tenant_id,
            request_id,
            tokens,
            billed_micro,
            now,
            local,
            model_id=model_id,
            output_tokens=output_tokens,
        )
        if not self._breaker.allow():
            self._enqueue(item)
            return
        if not await self._send(item):
            self._enqueue(item)
            return
        await self._flush()

    async def flush_settles(self) -> int:
        """Send the queued settles now (if Redis answers); returns how many are left."""
        if self._pending and self._breaker.allow():
            await self._flush()
        return len(self._pending)

    async def usage(self, tenant_id: str) -> TenantUsage:
        if not self._breaker.allow():
            raise AdmissionUnavailable("usage is temporarily unavailable; retry shortly")
        try:
            result: TenantUsage = await self._call(self._store.usage(tenant_id))
        except _REDIS_ERRORS as exc:
            self._down(exc)
            raise AdmissionUnavailable("usage is temporarily unavailable; retry shortly") from None
        await self._up()
        return result

    async def _call(self, coro: Any) -> Any:
        # `asyncio.timeout`, not `wait_for`: the same bound (TimeoutError, the call
        # cancelled) without a task per call, twice per request (the ingress's profile).
        async with asyncio.timeout(self._timeout_s):
            return await coro

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
        self._mark_up()
        if not self._policy_checked:
            # Once, at the first answer (where this replica starts using Redis): warn if
            # Redis may evict budgets and settles. Never fails or delays admission long.
            self._policy_checked = True
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._call(self._store.eviction_policy())
        await self._flush()

    def _mark_up(self) -> None:
        if self._breaker.success():
            logger.warning("Redis reachable again: admission back on Redis")

    async def _flush(self) -> None:
        """Replay queued settles, oldest first, until one fails (see the module docstring
        for what holds if this stops anywhere). One flush at a time: a second caller
        returns at once, the running flush gets to what it queued."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._pending:
                item = self._pending[0]
                if item.maybe_landed_s is not None and (
                    self._clock() - item.maybe_landed_s > SETTLE_DEDUP_S - RETRY_MARGIN_S
                ):
                    self._pending.popleft()
                    self.dropped_settles += 1
                    logger.warning(
                        "settle of request %s (tenant %s) dropped: it may have landed over "
                        "%d s ago, and a retry could count it twice",
                        item.request_id,
                        item.tenant_id,
                        SETTLE_DEDUP_S,
                    )
                    continue
                if not await self._send(item):
                    return
                # Dies here: the settle is in Redis, and still first in a queue that lives
                # in memory only; a retry would find its id settled and add nothing.
                if self._pending and self._pending[0] is item:
                    self._pending.popleft()
        finally:
            self._flushing = False

    async def _send(self, item: _Settle) -> bool:
        """One settle through the idempotent script; False (and the breaker told) when
        Redis did not answer."""
        try:
            await self._call(
                self._store.settle(
                    item.tenant_id,
                    item.request_id,
                    item.tokens,
                    item.billed_micro,
                    age_s=max(0.0, self._clock() - item.at_s),
                    model_id=item.model_id,
                    output_tokens=item.output_tokens,
                )
            )
        except _REDIS_ERRORS as exc:
            if _ambiguous(exc) and item.maybe_landed_s is None:
                item.maybe_landed_s = self._clock()
            self._down(exc)
            return False
        self._mark_up()
        if item.local:
            self._local.synced(item.tenant_id, item.billed_micro, item.at_s)
        return True

    def _enqueue(self, item: _Settle) -> None:
        if len(self._pending) >= MAX_PENDING_SETTLES:
            dropped = self._pending.popleft()
            self.dropped_settles += 1
            if self.dropped_settles == 1 or self.dropped_settles % 10_000 == 0:
                logger.error(
                    "settle queue full (%d): dropped the oldest (request %s); %d dropped so far",
                    MAX_PENDING_SETTLES,
                    dropped.request_id,
                    self.dropped_settles,
                )
        self._pending.append(item)


def _ambiguous(exc: BaseException) -> bool:
    """Not evidence of an outage: a timeout (the outcome is unknown) or this process's
    own connection pool being full. A refused or reset connection is evidence."""
    from redis.exceptions import MaxConnectionsError, TimeoutError as RedisTimeoutError

    return isinstance(
        exc, TimeoutError | asyncio.TimeoutError | RedisTimeoutError | MaxConnectionsError
    )


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError, asyncio.TimeoutError)


_REDIS_ERRORS = _redis_errors()
