"""Item 8: billing state does not grow forever, and an evicting Redis is flagged.

Before the fix the ledger's `sent` records (one per tenant, meter event and window) were
never trimmed, and reconciliation read them all (HGETALL). Now they are kept for the
reconciliation horizon (plus days to spare) and reconciliation reads only its range.
Under an evicting `maxmemory-policy`, TTL'd budget and settle keys would be evicted
first; start-up now warns when the policy is not `noeviction`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from serve_app.local.redis_server import EmbeddedRedis
from serve_app.metering.ledger import MeterLedger
from serve_app.metering.types import METER_EVENT_BILLED, METER_EVENT_TOKENS, OutboxEntry
from serve_app.metering.view import BillingView

pytestmark = pytest.mark.integration

DAY_S = 86_400
RECONCILE_DAYS = 35
"""Stripe takes meter event timestamps 35 days back: reconciliation's horizon."""
KEPT_AT_MOST_DAYS = 42
"""The retention under test: the horizon, days to spare, and not much more."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _stored_sent(client: Any, ledger: MeterLedger, customer: str) -> list[int]:
    """Window starts of every delivered record of `customer` kept for this shard, in any
    hash named `...:sent` or `...:sent:<anything>`."""
    starts: list[int] = []
    async for key in client.scan_iter(match=f"{ledger.keys.sent}*", count=1000):
        if await client.type(key) not in (b"hash", "hash"):
            continue
        for value in (await client.hgetall(key)).values():
            fields = _text(value).split("|")
            if fields[0] == customer:
                starts.append(int(fields[3]))
    return starts


def _entry(customer: str, tenant: str, event: str, start: int, value: int) -> OutboxEntry:
    return OutboxEntry(
        identifier=f"it-{uuid.uuid4().hex}",
        event_name=event,
        stripe_customer_id=customer,
        value=value,
        timestamp=start,
        tenant_id=tenant,
        window_start=start,
    )


def test_sent_records_past_the_horizon_go_and_reconcile_keeps_its_range(
    redis_url: str,
) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        ledger = MeterLedger(client, 0, window_s=3600, grace_s=60)
        view = BillingView(client, 1, window_s=3600, grace_s=60)
        tenant = f"ret-{uuid.uuid4().hex[:8]}"
        customer = f"cus_{tenant.replace('-', '_')}"
        now = int((await client.time())[0])
        # One window every 6 hours over 60 days, both meter events: 480 delivered windows.
        starts = [(now - 60 * DAY_S) // 3600 * 3600 + i * 6 * 3600 for i in range(240)]
        for i, start in enumerate(starts):
            await ledger.mark_delivered(_entry(customer, tenant, METER_EVENT_BILLED, start, i))
            await ledger.mark_delivered(_entry(customer, tenant, METER_EVENT_TOKENS, start, 1))

        kept = await _stored_sent(client, ledger, customer)
        inside = [s for s in starts if s >= now - RECONCILE_DAYS * DAY_S]
        assert set(inside) <= set(kept), "a record inside the reconcile horizon went"
        assert min(kept) >= now - KEPT_AT_MOST_DAYS * DAY_S, (
            f"{len(kept)} sent records kept, the oldest {(now - min(kept)) // DAY_S} days old"
        )

        # Reconciliation's local side over its range still adds up exactly.
        end = (now // 60 + 1) * 60
        start = (now - 30 * DAY_S) // 60 * 60
        delivered = await view.delivered(start, end)
        in_range = [i for i, s in enumerate(starts) if start <= s < end]
        assert delivered[(customer, METER_EVENT_BILLED)] == sum(in_range)
        assert delivered[(customer, METER_EVENT_TOKENS)] == len(in_range)
        await client.aclose()

    asyncio.run(run())


def test_records_of_the_old_single_hash_are_moved_or_dropped_at_start(redis_url: str) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        ledger = MeterLedger(client, 0, window_s=3600, grace_s=60)
        tenant = f"leg-{uuid.uuid4().hex[:8]}"
        customer = f"cus_{tenant.replace('-', '_')}"
        now = int((await client.time())[0])
        recent, ancient = now // 3600 * 3600 - DAY_S, now // 3600 * 3600 - 90 * DAY_S
        legacy = ledger.keys.sent  # the one hash every delivered window went to
        for start, value in ((recent, 7), (ancient, 9)):
            record = f"{customer}|{METER_EVENT_BILLED}|{value}|{start}|{tenant}"
            await client.hset(legacy, f"it-{uuid.uuid4().hex}", record)

        await ledger.ensure_group()  # start-up: the aggregator calls this first
        kept = await _stored_sent(client, ledger, customer)
        assert kept == [recent], f"kept {kept}"
        view = BillingView(client, 1, window_s=3600, grace_s=60)
        delivered = await view.delivered(now - 2 * DAY_S, now + 60)
        assert delivered[(customer, METER_EVENT_BILLED)] == 7
        await client.aclose()

    asyncio.run(run())


def test_start_up_warns_when_redis_may_evict_billing_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from serve_app.admission import AdmissionGate, AdmissionLimits, RedisAdmission, Ticket

    async def run(url: str) -> None:
        client = aioredis.Redis.from_url(url)
        await client.config_set("maxmemory-policy", "allkeys-lru")
        await MeterLedger(client, 0, window_s=60, grace_s=10).ensure_group()
        assert "maxmemory-policy" in caplog.text
        assert "allkeys-lru" in caplog.text
        caplog.clear()
        gate = AdmissionGate(RedisAdmission(client))
        await gate.admit(Ticket("t", "r1", 1, 1), AdmissionLimits(10, 10, 10), fail_open=True)
        assert "allkeys-lru" in caplog.text, "the admission gate did not check the policy"
        caplog.clear()
        await client.config_set("maxmemory-policy", "noeviction")
        await MeterLedger(client, 0, window_s=60, grace_s=10).ensure_group()
        assert "maxmemory-policy" not in caplog.text
        await client.aclose()

    with EmbeddedRedis(tmp_path / "redis") as server, caplog.at_level(logging.WARNING):
        asyncio.run(run(server.url))


def test_a_redis_that_refuses_config_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    from redis.exceptions import ResponseError

    from serve_app.redis_checks import check_eviction_policy

    class ManagedRedis:
        async def config_get(self, *args: Any, **kw: Any) -> Any:
            raise ResponseError("unknown command 'CONFIG'")

    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(check_eviction_policy(ManagedRedis(), "test")) is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
