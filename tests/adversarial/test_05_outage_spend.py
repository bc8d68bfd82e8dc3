"""Item 5: spend admitted during a Redis outage reaches the Redis budget, exactly once.

Before the fix, a request admitted by the local fail-open limiter settled only in that
limiter: 9,000 µ$ served during an outage left `settled_micro=0` in Redis, and another
9,000 was admitted against a 10,000 budget. The local limiter's month never rolled over.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    TimeoutError as RedisTimeoutError,
)

from serve_app.admission import (
    AdmissionGate,
    AdmissionLimits,
    Admitted,
    RedisAdmission,
    RefusalCode,
    Refused,
    Ticket,
)
from serve_app.admission.breaker import CircuitBreaker
from serve_app.admission.local import LocalLimiter
from serve_app.local.redis_server import EmbeddedRedis, free_port

BUDGET = AdmissionLimits(
    requests_per_minute=1000, tokens_per_minute=10**9, monthly_budget_micro=10_000
)
JAN_15 = datetime(2027, 1, 15, 12, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = JAN_15) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _ticket(tenant: str, amount: int, tokens: int = 50) -> Ticket:
    return Ticket(tenant, uuid.uuid4().hex, tokens, amount)


def _gate(store: RedisAdmission, clock: Clock) -> AdmissionGate:
    # Opens at the first refused connection, probes again at once (no waiting in tests).
    breaker = CircuitBreaker(open_s=0.0, failures_to_open=1, clock=clock)
    return AdmissionGate(store, timeout_s=1.0, breaker=breaker, clock=clock)


class FlakyStore(RedisAdmission):
    """The real store with failures injected at its seam: `down` refuses every call (an
    outage); `land_then_time_out` lets that many settles land in Redis, then raises a
    timeout as if the answer were lost (the ambiguous case a retry must not double)."""

    def __init__(self, client: Any, **kw: Any) -> None:
        super().__init__(client, **kw)
        self.down = False
        self.land_then_time_out = 0
        self.settles_sent = 0

    async def admit(self, ticket: Ticket, limits: AdmissionLimits) -> Admitted | Refused:
        if self.down:
            raise RedisConnectionError("refused (injected outage)")
        return await super().admit(ticket, limits)

    async def settle(self, *args: Any, **kw: Any) -> bool:
        if self.down:
            raise RedisConnectionError("refused (injected outage)")
        self.settles_sent += 1
        done = await super().settle(*args, **kw)
        if self.land_then_time_out:
            self.land_then_time_out -= 1
            raise RedisTimeoutError("answer lost (injected)")
        return done

    async def usage(self, tenant_id: str) -> Any:
        if self.down:
            raise RedisConnectionError("refused (injected outage)")
        return await super().usage(tenant_id)


@pytest.mark.integration
def test_outage_spend_reaches_redis_once_and_the_budget_then_refuses(tmp_path: Path) -> None:
    """A real Redis, really stopped and restarted (appendonly keeps its data)."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port()).start()
    try:

        async def run() -> None:
            client = aioredis.Redis.from_url(server.url, socket_timeout=0.5)
            clock = Clock()
            store = RedisAdmission(client, clock=clock)
            gate = _gate(store, clock)
            tenant = _tenant()
            warm = _ticket(tenant, 100)
            assert isinstance(await gate.admit(warm, BUDGET, fail_open=True), Admitted)
            await gate.settle(tenant, warm.request_id, 0, 0)  # Redis saw the tenant: 0 spent

            server.stop()
            served = _ticket(tenant, 9_500)
            during = await gate.admit(served, BUDGET, fail_open=True)
            assert isinstance(during, Admitted)
            assert during.degraded
            clock.now += 5
            await gate.settle(tenant, served.request_id, 40, 9_000)
            again = await gate.admit(_ticket(tenant, 9_000), BUDGET, fail_open=True)
            assert isinstance(again, Refused)  # the local limiter counts the outage spend

            server.start()
            clock.now += 5
            # Two successful calls after the outage: the queued settles are flushed after
            # the first; the second flush must find nothing left to add.
            await gate.usage(tenant)
            await gate.usage(tenant)
            usage = await RedisAdmission(client, clock=clock).usage(tenant)
            assert (usage.settled_micro, usage.billed_tokens, usage.billed_requests) == (
                9_000,
                40,
                1,
            ), "the outage spend did not reach Redis exactly once"
            # A retry of the same settle (same server-generated request id) adds nothing.
            assert not await store.settle(tenant, served.request_id, 40, 9_000)
            assert (await store.usage(tenant)).settled_micro == 9_000

            over = await gate.admit(_ticket(tenant, 9_000), BUDGET, fail_open=True)
            assert isinstance(over, Refused), "a request over budget was admitted"
            assert over.code is RefusalCode.BUDGET_EXCEEDED
            await client.aclose()

        asyncio.run(run())
    finally:
        server.stop()


@pytest.mark.integration
def test_a_flush_that_landed_but_lost_its_answer_is_not_counted_twice(redis_url: str) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=2)
        clock = Clock()
        store = FlakyStore(client, clock=clock)
        gate = _gate(store, clock)
        tenant = _tenant()

        store.down = True
        served = _ticket(tenant, 9_500)
        assert isinstance(await gate.admit(served, BUDGET, fail_open=True), Admitted)
        await gate.settle(tenant, served.request_id, 40, 9_000)

        store.down = False
        store.land_then_time_out = 1
        await gate.usage(tenant)  # the flush lands, its answer is lost: kept, retried
        await gate.usage(tenant)  # the retry: same request id, settled already
        await gate.usage(tenant)
        assert store.settles_sent >= 2, "the settle was not retried after a lost answer"
        usage = await RedisAdmission(client, clock=clock).usage(tenant)
        assert usage.settled_micro == 9_000
        assert gate.health()["pending_settles"] == 0
        await client.aclose()

    asyncio.run(run())


@pytest.mark.integration
def test_replayed_outage_tokens_count_in_the_month_not_in_the_current_minute(
    redis_url: str,
) -> None:
    """Spend settled long before Redis came back counts in the month it happened; its
    tokens do not fill the sliding window of the minute the replay runs in."""

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=2)
        clock = Clock(datetime(2027, 1, 31, 23, 58, tzinfo=UTC).timestamp())
        store = FlakyStore(client, clock=clock)
        gate = _gate(store, clock)
        tenant = _tenant()
        store.down = True
        served = _ticket(tenant, 500, tokens=900)
        assert isinstance(await gate.admit(served, BUDGET, fail_open=True), Admitted)
        await gate.settle(tenant, served.request_id, 800, 400)
        clock.now += 180  # Redis is back in February, three minutes later
        store.down = False
        assert await gate.flush_settles() == 0
        february = await store.usage(tenant)
        assert (february.month, february.settled_micro, february.tokens_in_window) == (
            "2027-02",
            0,
            0,
        )
        clock.now -= 180
        january = await store.usage(tenant)
        assert (january.settled_micro, january.billed_tokens) == (400, 800)
        await client.aclose()

    asyncio.run(run())


def test_the_local_limiter_rolls_over_by_month() -> None:
    """No Redis: the fail-open limiter alone, its month taken from the injected clock."""
    limiter = LocalLimiter()
    end_of_january = datetime(2027, 1, 31, 23, 59, tzinfo=UTC).timestamp()
    first = _ticket("t", 9_500)
    assert isinstance(limiter.admit(first, BUDGET, end_of_january), Admitted)
    assert limiter.settle("t", first.request_id, 9_000)
    assert isinstance(limiter.admit(_ticket("t", 9_000), BUDGET, end_of_january + 30), Refused)
    february = end_of_january + 120
    result = limiter.admit(_ticket("t", 9_000), BUDGET, february)
    assert isinstance(result, Admitted), "January's spend was counted against February"
    assert result.settled_micro == 0
