"""Item 9: a Stripe identifier is never reused when the configuration changes.

Before the fix a window's identifier hashed tenant, event, window start and version
only. A window of another length, or of another shard, that starts at the same second
got the identifier of a window already sent: Stripe answered "duplicate", the sink
counted it as delivered, and its usage was silently lost. And the detached aggregator
was reused as it was (`get_if_exists`), so a redeploy kept its old window size, Stripe
base and customer list.

Now the identifier derives from every parameter that defines a window (tenant, event,
start, length, grace, app instance, shard layout, version), an open window keeps the
length it was folded under, and `ensure_aggregators` replaces an aggregator whose
configuration differs (everything lives in Redis: the new one resumes its pending
entries and resends its outbox with the identifiers frozen there).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from rtcts_dev.stripe_emulator import EmulatorServer
from serve_app.local.redis_server import EmbeddedRedis
from serve_app.metering.aggregator import AggregatorConfig, AggregatorLoop, ensure_aggregators
from serve_app.metering.entry import encode_batch
from serve_app.metering.ledger import MeterLedger
from serve_app.metering.meter import Meter, new_meter_id
from serve_app.metering.stream import MeterStreamWriter
from serve_app.metering.stripe_sink import LOCAL_TEST_KEY, StripeSink
from serve_app.metering.types import METER_EVENT_BILLED, METER_EVENT_TOKENS, METER_EVENTS
from tests.factories import make_meter


def _meter(tenant: str, customer: str, billed: int, ended_ms: int) -> Meter:
    return make_meter(
        meter_id=new_meter_id(ended_ms),
        tenant_id=tenant,
        stripe_customer_id=customer,
        input_tokens=10,
        output_tokens=5,
        list_price_micro=billed,
        credit_micro=0,
        billed_micro=billed,
        billable=True,
        ended_at_ms=ended_ms,
    )


def _expected(meters: list[Meter]) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for m in meters:
        if m.billable:
            for event, value in (
                (METER_EVENT_BILLED, m.billed_micro),
                (METER_EVENT_TOKENS, m.input_tokens + m.output_tokens),
            ):
                key = (m.stripe_customer_id, event)
                totals[key] = totals.get(key, 0) + value
    return totals


async def _redis_now(client: Any) -> float:
    seconds, micros = await client.time()
    return int(seconds) + int(micros) / 1e6


async def _append(client: Any, ledger: MeterLedger, meters: list[Meter]) -> None:
    entry = encode_batch(meters, ledger.keys.shard)
    await client.xadd(ledger.keys.stream, entry.fields())


async def _drain(loops: list[AggregatorLoop], done: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await done():
        assert time.monotonic() < deadline, "the aggregator did not converge"
        for loop in loops:
            await loop.step()
        await asyncio.sleep(0.05)


def _stripe_events(stripe: EmulatorServer, customer: str) -> list[dict[str, Any]]:
    return [e for e in stripe.state.events() if e["customer"] == customer]


# -- pure: the identifier covers every parameter of a window --------------------------


def test_the_identifier_changes_with_every_parameter_that_defines_a_window() -> None:
    from serve_app.metering.windows import Layout, identifier

    layout = Layout(instance="rtcts", shards=2, shard=1)

    def ident(change: dict[str, Any]) -> str:
        p: dict[str, Any] = {"window_s": 60, "grace_s": 10, "layout": layout, "version": 1}
        p.update(change)
        return identifier(
            "t",
            METER_EVENT_BILLED,
            1_800_000_000,
            window_s=p["window_s"],
            grace_s=p["grace_s"],
            layout=p["layout"],
            version=p["version"],
        )

    one = ident({})
    assert one == ident({})
    assert len(one) <= 100
    variants: list[dict[str, Any]] = [
        {"window_s": 120},
        {"grace_s": 5},
        {"layout": replace(layout, instance="other-app")},
        {"layout": replace(layout, shards=4)},
        {"layout": replace(layout, shard=0)},
        {"version": 2},
    ]
    seen = {one}
    for change in variants:
        other = ident(change)
        assert other not in seen, f"{change} reused an identifier"
        seen.add(other)


# -- Redis + the emulator, no Ray ----------------------------------------------------


@pytest.mark.integration
def test_a_longer_window_starting_at_a_sent_ones_second_reaches_stripe(redis_url: str) -> None:
    """Windows of 1 s, then (a redeploy) 2 s: the 2 s window starting at the second of a
    1 s window already sent must not reuse its identifier, or Stripe drops it as a
    duplicate and its usage is lost."""

    async def run() -> None:
        tenant = f"ws-{uuid.uuid4().hex[:8]}"
        customer = f"cus_{tenant.replace('-', '_')}"
        client = aioredis.Redis.from_url(redis_url)
        shard = int(uuid.uuid4().int % 10_000) + 20_000
        with EmulatorServer() as stripe:
            sink = StripeSink.connect(LOCAL_TEST_KEY, stripe.url)
            await sink.ensure_setup([(customer, tenant)], METER_EVENTS)
            before = MeterLedger(client, shard, window_s=1, grace_s=0)
            after = MeterLedger(client, shard, window_s=2, grace_s=2)
            await before.ensure_group()
            old = AggregatorLoop(before, sink, consumer="agg-x", block_ms=10)
            new = AggregatorLoop(after, sink, consumer="agg-x", block_ms=10)

            # Start at an even second, so the 1 s and the 2 s windows start together.
            while True:
                now = await _redis_now(client)
                if int(now) % 2 == 0 and now % 1 < 0.4:
                    break
                await asyncio.sleep(0.02)
            start = int(now)
            first = _meter(tenant, customer, 1_000, start * 1000 + 100)
            await _append(client, before, [first])
            await old.step()  # folded into [start, start + 1)

            async def first_sent() -> bool:
                return len(_stripe_events(stripe, customer)) == 2

            await _drain([old], first_sent)
            # Redeployed with 2 s windows: a meter of [start, start + 2) arrives.
            second = _meter(tenant, customer, 7, start * 1000 + 600)
            assert await _redis_now(client) < start + 4  # its window is still open
            await _append(client, after, [second])

            async def all_closed() -> bool:
                health = await after.health()
                folded = (await after.tenant_totals(tenant))["meters"] == 2
                return folded and health["open_windows"] == 0 and health["outbox"] == 0

            await _drain([new], all_closed)
            events = _stripe_events(stripe, customer)
            assert len({e["identifier"] for e in events}) == len(events) == 4
            assert stripe.state.totals() == _expected([first, second]), "usage lost"
            await sink.aclose()
        await client.aclose()

    asyncio.run(run())


@pytest.mark.integration
def test_a_tenant_moved_to_another_shard_keeps_its_windows_apart(redis_url: str) -> None:
    """A shard-count change moves a tenant to another shard while its old shard still
    holds an open window of the same second: both windows must reach Stripe."""

    async def run() -> None:
        tenant = f"sh-{uuid.uuid4().hex[:8]}"
        customer = f"cus_{tenant.replace('-', '_')}"
        client = aioredis.Redis.from_url(redis_url)
        base = int(uuid.uuid4().int % 10_000) + 40_000
        with EmulatorServer() as stripe:
            sink = StripeSink.connect(LOCAL_TEST_KEY, stripe.url)
            await sink.ensure_setup([(customer, tenant)], METER_EVENTS)
            old_shard = MeterLedger(client, base, window_s=1, grace_s=1)
            new_shard = MeterLedger(client, base + 1, window_s=1, grace_s=1)
            loops = []
            for ledger in (old_shard, new_shard):
                await ledger.ensure_group()
                loops.append(AggregatorLoop(ledger, sink, consumer="agg-x", block_ms=10))
            now_ms = int(await _redis_now(client) * 1000)
            before = _meter(tenant, customer, 300, now_ms)
            after = _meter(tenant, customer, 45, now_ms)
            await _append(client, old_shard, [before])
            await _append(client, new_shard, [after])

            async def done() -> bool:
                for ledger in (old_shard, new_shard):
                    health = await ledger.health()
                    if health["open_windows"] or health["outbox"]:
                        return False
                    if (await ledger.tenant_totals(tenant))["meters"] != 1:
                        return False  # not folded yet
                return True

            await _drain(loops, done)
            events = _stripe_events(stripe, customer)
            assert len({e["identifier"] for e in events}) == len(events) == 4
            assert stripe.state.totals() == _expected([before, after]), "usage lost"
            await sink.aclose()
        await client.aclose()

    asyncio.run(run())


# -- real Ray: a redeploy with another window size, the aggregator killed meanwhile ------


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(include_dashboard=False, log_to_driver=False, namespace="rtcts-adversarial")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test alone: the actor uses shard 0's keys, which other tests of the
    session's Redis use too."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


CUSTOMERS = {"t-a": "cus_a", "t-b": "cus_b"}


def _produce(url: str, spool: Path, seconds: float, rate: int) -> list[Meter]:
    rng = random.Random(9)
    meters: list[Meter] = []

    async def run() -> None:
        writer = MeterStreamWriter.from_url(url, spool)
        writer.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(rate // 20):
                tenant = rng.choice(sorted(CUSTOMERS))
                ended = int(time.time() * 1000)
                meter = _meter(tenant, CUSTOMERS[tenant], rng.randint(1, 5000), ended)
                meters.append(meter)
                writer.emit(meter)
            await asyncio.sleep(0.05)
        await writer.stop()

    asyncio.run(run())
    return meters


@pytest.mark.integration
def test_a_redeploy_with_another_window_size_and_killed_aggregators_bills_exactly_once(
    ray_local: None, private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    import ray

    with EmulatorServer() as stripe:
        before = AggregatorConfig(
            redis_url=private_redis.url,
            instance=f"ws-{uuid.uuid4().hex[:8]}",
            window_s=1,
            grace_s=1,
            stripe_api_base=stripe.url,
            customers=tuple((cus, tenant) for tenant, cus in CUSTOMERS.items()),
        )
        after = replace(before, window_s=2)
        (aggregator,) = ensure_aggregators(before)
        produced: list[Meter] = []
        producer = threading.Thread(
            target=lambda: produced.extend(
                _produce(private_redis.url, tmp_path / "spool", 6.0, 200)
            )
        )
        producer.start()
        try:
            time.sleep(1.5)
            os.kill(ray.get(aggregator.pid.remote(), timeout=60), signal.SIGKILL)
            time.sleep(1.0)
            # The redeploy: same app, 2 s windows; the running aggregator is replaced.
            (replaced,) = ensure_aggregators(after)
            assert ray.get(replaced.config.remote(), timeout=60) == after
            time.sleep(1.0)
            os.kill(ray.get(replaced.pid.remote(), timeout=60), signal.SIGKILL)
        finally:
            producer.join()
        expected = _expected(produced)

        deadline = time.monotonic() + 120
        while stripe.state.totals() != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        health: dict[str, Any] = ray.get(replaced.health.remote(), timeout=60)
        assert ray.get(replaced.config.remote(), timeout=60) == after  # kept after a restart
        ray.kill(replaced, no_restart=True)
        assert stripe.state.totals() == expected, "usage lost or doubled"
        events = stripe.state.events()
        assert len({e["identifier"] for e in events}) == len(events)
        assert health["dead_letters"] == 0
