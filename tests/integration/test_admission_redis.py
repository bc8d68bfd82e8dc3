"""Admission against a real Redis server (no Ray): exact limits under concurrency, a
sliding window, token and budget reserve-then-settle, expiry, outages. The exactness
tests run twice: on one Redis and on a Redis Cluster (3 masters, 3 replicas), where
each tenant's keys share one slot (`{tenant}`)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from serve_app.admission import (
    AdmissionGate,
    AdmissionLimits,
    AdmissionUnavailable,
    Admitted,
    RedisAdmission,
    RefusalCode,
    Refused,
    Ticket,
)
from serve_app.local.redis_server import EmbeddedRedis, free_port
from serve_app.redis_client import redis_client
from tests.factories import blackhole_port
from tests.fakes import FakeClock

pytestmark = pytest.mark.integration
T0 = 1_800_000_000.0  # the fake clock's start, seconds
BIG = AdmissionLimits(
    requests_per_minute=10**9, tokens_per_minute=10**12, monthly_budget_micro=10**15
)


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _ticket(tenant: str, tokens: int = 10, amount: int = 100, reserve: bool = True) -> Ticket:
    return Ticket(tenant, uuid.uuid4().hex, tokens, amount, reserve)


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The session's Redis, or the session's Redis Cluster (`redis+cluster://`)."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return redis_url


def _client(url: str) -> Any:
    return redis_client(url, timeout_s=2)


def test_concurrent_requests_over_two_clients_admit_exactly_the_limit(redis_url: str) -> None:
    async def run() -> list[Admitted | Refused]:
        clients = [_client(redis_url), _client(redis_url)]  # two ingress replicas
        stores = [RedisAdmission(c) for c in clients]
        tenant = _tenant()
        limits = AdmissionLimits(50, 10**9, 10**12)
        results = await asyncio.gather(
            *(stores[i % 2].admit(_ticket(tenant), limits) for i in range(200))
        )
        for c in clients:
            await c.aclose()
        return results

    results = asyncio.run(run())
    admitted = [r for r in results if isinstance(r, Admitted)]
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(admitted) == 50
    assert {r.code for r in refused} == {RefusalCode.RATE_LIMITED}
    assert all(r.retry_after_s is not None and 0 < r.retry_after_s <= 60 for r in refused)


def test_the_window_slides_no_burst_of_twice_the_limit_at_a_minute_boundary(
    redis_url: str,
) -> None:
    async def run() -> None:
        clock = FakeClock(T0 + 59)  # one second before a minute boundary
        client = _client(redis_url)
        store = RedisAdmission(client, clock=clock)
        tenant, limits = _tenant(), AdmissionLimits(10, 10**9, 10**12)
        first = [await store.admit(_ticket(tenant), limits) for _ in range(10)]
        assert all(isinstance(r, Admitted) for r in first)
        clock.now += 2  # past the boundary: a fixed window would reset here
        later = await store.admit(_ticket(tenant), limits)
        assert isinstance(later, Refused)
        assert later.code is RefusalCode.RATE_LIMITED
        assert later.retry_after_s == pytest.approx(58.0, abs=0.01)
        clock.now += 58.001  # the first ten leave the window
        again = [await store.admit(_ticket(tenant), limits) for _ in range(11)]
        assert sum(isinstance(r, Admitted) for r in again) == 10
        await client.aclose()

    asyncio.run(run())


def test_tokens_are_reserved_then_settled_to_the_verified_count(redis_url: str) -> None:
    async def run() -> None:
        clock = FakeClock(T0)
        client = _client(redis_url)
        store = RedisAdmission(client, clock=clock)
        tenant, limits = _tenant(), AdmissionLimits(100, 1000, 10**12)
        a = _ticket(tenant, tokens=600)
        assert isinstance(await store.admit(a, limits), Admitted)
        refused = await store.admit(_ticket(tenant, tokens=500), limits)
        assert isinstance(refused, Refused)
        assert refused.code is RefusalCode.TOKENS_LIMITED
        assert refused.retry_after_s is not None
        assert 0 < refused.retry_after_s <= 61
        assert await store.settle(tenant, a.request_id, tokens=300, billed_micro=42)
        usage = await store.usage(tenant)
        assert usage.tokens_in_window == 300
        assert (usage.settled_micro, usage.billed_tokens, usage.billed_requests) == (42, 300, 1)
        assert isinstance(await store.admit(_ticket(tenant, tokens=500), limits), Admitted)
        too_big = await store.admit(_ticket(tenant, tokens=5000), limits)
        assert isinstance(too_big, Refused)
        assert too_big.retry_after_s is None  # larger than the whole limit: waiting won't help
        await client.aclose()

    asyncio.run(run())


def test_budget_holds_under_concurrency_and_settles_exactly_once(redis_url: str) -> None:
    budget = 50_000
    rng = random.Random(7)
    amounts = [rng.randint(500, 3000) for _ in range(100)]

    async def run() -> None:
        client = _client(redis_url)
        store = RedisAdmission(client)
        tenant, limits = _tenant(), AdmissionLimits(10**6, 10**9, budget)
        tickets = [_ticket(tenant, amount=a) for a in amounts]
        results = await asyncio.gather(*(store.admit(t, limits) for t in tickets))
        admitted = [t for t, r in zip(tickets, results, strict=True) if isinstance(r, Admitted)]
        refused = [r for r in results if isinstance(r, Refused)]
        assert sum(t.amount_micro for t in admitted) <= budget
        assert refused
        assert {r.code for r in refused} == {RefusalCode.BUDGET_EXCEEDED}
        assert all(r.retry_after_s is None for r in refused)
        # Each settles to at most its worst case; a retried settle counts once.
        for t in admitted:
            assert await store.settle(tenant, t.request_id, 5, t.amount_micro * 9 // 10)
            assert not await store.settle(tenant, t.request_id, 5, t.amount_micro)
        usage = await store.usage(tenant)
        assert usage.reserved_micro == 0
        assert usage.settled_micro == sum(t.amount_micro * 9 // 10 for t in admitted)
        assert usage.settled_micro <= budget
        await client.aclose()

    asyncio.run(run())


def test_reservations_of_requests_that_die_expire_and_are_released(redis_url: str) -> None:
    async def run() -> None:
        clock = FakeClock(T0)
        client = _client(redis_url)
        store = RedisAdmission(client, clock=clock, reservation_ttl_s=30)
        tenant, limits = _tenant(), AdmissionLimits(100, 10**9, 1000)
        assert isinstance(await store.admit(_ticket(tenant, amount=1000), limits), Admitted)
        blocked = await store.admit(_ticket(tenant, amount=1), limits)
        assert isinstance(blocked, Refused)
        assert blocked.code is RefusalCode.BUDGET_EXCEEDED
        clock.now += 31  # the first request never settled: its reservation expires
        assert isinstance(await store.admit(_ticket(tenant, amount=1000), limits), Admitted)
        await client.aclose()

    asyncio.run(run())


def test_a_throttled_request_is_counted_but_reserves_nothing(redis_url: str) -> None:
    async def run() -> None:
        client = _client(redis_url)
        store = RedisAdmission(client)
        tenant = _tenant()
        result = await store.admit(
            _ticket(tenant, tokens=10**6, reserve=False), AdmissionLimits(5, 10, 10)
        )
        assert isinstance(result, Admitted)
        usage = await store.usage(tenant)
        assert (usage.requests_in_window, usage.tokens_in_window, usage.reserved_micro) == (1, 0, 0)
        await client.aclose()

    asyncio.run(run())


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    with blackhole_port() as port:
        yield port


def test_hung_redis_never_hangs_a_request_nor_double_admits(blackhole: int) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{blackhole}/0", socket_timeout=5)
        gate = AdmissionGate(RedisAdmission(client), timeout_s=0.05)
        tenant = _tenant()
        # A hang detector, not a speed check: without the gate's own timeout each call
        # would wait for the client's 5 s socket timeout and trip the outer bound.
        for fail_open in (True, True, True, False):
            with pytest.raises(AdmissionUnavailable):
                await asyncio.wait_for(gate.admit(_ticket(tenant), BIG, fail_open=fail_open), 3)
        # Timed out: the outcome is unknown, so nothing was admitted locally, and slow
        # answers alone do not declare an outage.
        assert gate.redis_up
        assert gate.degraded_admissions == 0
        assert gate.health()["failed_calls"] == {"TimeoutError": 4}
        await client.aclose()

    asyncio.run(run())


def test_refused_connections_fail_open_at_once(tmp_path: Path) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
        gate = AdmissionGate(RedisAdmission(client), timeout_s=1)
        tenant = _tenant()
        opened = await asyncio.wait_for(gate.admit(_ticket(tenant), BIG, fail_open=True), 3)
        assert isinstance(opened, Admitted)
        assert opened.degraded
        with pytest.raises(AdmissionUnavailable):
            await gate.admit(_ticket(tenant), BIG, fail_open=False)
        await client.aclose()

    asyncio.run(run())


def test_redis_outage_fails_open_then_recovers_and_replays_settles(tmp_path: Path) -> None:
    port = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port).start()
    try:

        async def run() -> None:
            client = aioredis.Redis.from_url(server.url, socket_timeout=0.2)
            clock = FakeClock(T0)
            from serve_app.admission.breaker import CircuitBreaker

            breaker = CircuitBreaker(open_s=0.0)
            gate = AdmissionGate(
                RedisAdmission(client), timeout_s=0.5, breaker=breaker, clock=clock
            )
            tenant, limits = _tenant(), AdmissionLimits(3, 10**9, 10**12)
            before = _ticket(tenant)
            assert isinstance(await gate.admit(before, limits, fail_open=True), Admitted)

            server.stop()
            during = [await gate.admit(_ticket(tenant), limits, fail_open=True) for _ in range(4)]
            assert [isinstance(r, Admitted) for r in during] == [True, True, True, False]
            assert all(r.degraded for r in during if isinstance(r, Admitted))
            await gate.settle(tenant, before.request_id, 7, 70)  # Redis down: kept for later
            assert gate.outages == 1

            server.start()
            after = await gate.admit(_ticket(tenant), limits, fail_open=True)
            assert isinstance(after, Admitted)
            assert not after.degraded
            assert gate.redis_up
            usage = await gate.usage(tenant)
            assert usage.settled_micro == 70  # the settle made during the outage landed
            await client.aclose()

        asyncio.run(run())
    finally:
        server.stop()
