"""Item 11: a Stripe set-up error never stalls billing.

Before the fix the aggregator checked Stripe's meters and customers before its loop
started; a set-up error (one unknown customer on real Stripe, a meter with other
settings) raised out of it and the actor restarted the loop forever: nothing was folded,
closed or trimmed, and the stream grew. Now the loop folds and closes windows into the
outbox whatever Stripe says; sending waits (all of it when a meter is wrong, only the
customers Stripe lacks when that is the problem) while the set-up is retried with
backoff, and the problem shows in the aggregator's health and in the billing health the
admin endpoint serves (`BillingView.health`). The Stripe key travels to the actor in
`AggregatorConfig`, whose repr never shows it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
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
from serve_app.metering.stripe_setup import SetupReport, StripeSetupError
from serve_app.metering.types import (
    METER_EVENT_BILLED,
    METER_EVENT_TOKENS,
    OutboxEntry,
    SendResult,
    SendStatus,
)
from serve_app.metering.view import BillingView
from tests.factories import make_meter
from tests.fakes import FakeClock


def _meter(tenant: str, customer: str, billed: int) -> Meter:
    ended = int(time.time() * 1000)
    return make_meter(
        meter_id=new_meter_id(ended),
        tenant_id=tenant,
        stripe_customer_id=customer,
        input_tokens=10,
        output_tokens=5,
        list_price_micro=billed,
        credit_micro=0,
        billed_micro=billed,
        billable=True,
        ended_at_ms=ended,
    )


def _expected(meters: list[Meter]) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for m in meters:
        for event, value in (
            (METER_EVENT_BILLED, m.billed_micro),
            (METER_EVENT_TOKENS, m.input_tokens + m.output_tokens),
        ):
            key = (m.stripe_customer_id, event)
            totals[key] = totals.get(key, 0) + value
    return totals


def _as_ledger(totals: dict[tuple[str, str], int]) -> dict[str, int]:
    return {f"{c}|{e}": v for (c, e), v in totals.items()}


def test_the_stripe_key_never_shows_in_the_aggregator_config() -> None:
    key = "sk_live_" + "k3y" * 10
    config = AggregatorConfig(
        redis_url="redis://:s3cr3t-pass@redis.internal:6380/0", stripe_api_key=key
    )
    for text in (repr(config), str(config), f"{config}"):
        assert key not in text
        assert "s3cr3t-pass" not in text
    assert config.stripe_api_key == key  # it does travel to the actor


class SetupFailingSink:
    """A sink whose set-up reports the customers in `missing` as unknown to Stripe (what
    `ensure_setup` raises on real Stripe); sending to one of them is a test failure
    (Stripe takes such events and drops them later without a word)."""

    def __init__(self, missing: Iterable[str]) -> None:
        self.missing = set(missing)
        self.setup_calls = 0
        self.sent: list[OutboxEntry] = []

    async def ensure_setup(
        self, customers: Iterable[tuple[str, str]], event_names: Iterable[str]
    ) -> SetupReport:
        self.setup_calls += 1
        missing = tuple(c for c, _ in customers if c in self.missing)
        if missing:
            problem = (
                f"{len(missing)} Stripe customer(s) not found: {', '.join(missing)} "
                "(create them in Stripe, or fix stripe_customer_id in the policy)"
            )
            raise StripeSetupError(
                SetupReport(meters={}, missing_customers=missing, problems=(problem,))
            )
        return SetupReport(meters={e: f"mtr_{e}" for e in event_names})

    async def send(self, entries: Sequence[OutboxEntry]) -> list[SendResult]:
        for entry in entries:
            assert entry.stripe_customer_id not in self.missing, "sent for an unknown customer"
        self.sent.extend(entries)
        return [SendResult(e.identifier, SendStatus.DELIVERED) for e in entries]


@pytest.mark.integration
def test_an_unknown_customer_neither_stops_folding_nor_the_other_customers(
    redis_url: str,
) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        tag = uuid.uuid4().hex[:8]
        good, gone = f"ok-{tag}", f"gone-{tag}"
        cus_good, cus_gone = f"cus_ok_{tag}", f"cus_gone_{tag}"
        ledger = MeterLedger(client, int(uuid.uuid4().int % 10_000) + 80_000, window_s=1, grace_s=0)
        await ledger.ensure_group()
        sink = SetupFailingSink(missing=[cus_gone])
        clock = FakeClock(time.monotonic())
        loop = AggregatorLoop(
            ledger,
            sink,
            consumer="agg-s",
            block_ms=10,
            clock=clock,
            customers=((cus_good, good), (cus_gone, gone)),
        )
        meters = [_meter(good, cus_good, 100 + i) for i in range(5)]
        meters += [_meter(gone, cus_gone, 7) for _ in range(3)]
        await client.xadd(ledger.keys.stream, encode_batch(meters, ledger.keys.shard).fields())
        expected = _expected(meters)

        async def closed() -> bool:
            return await ledger.totals("ledger") == _as_ledger(expected)

        deadline = time.monotonic() + 30
        while not await closed():
            assert time.monotonic() < deadline, "nothing folded or closed: billing stalled"
            await loop.step()
            await asyncio.sleep(0.05)
        for _ in range(20):  # a few more rounds: set-up is not retried every round
            await loop.step()
        assert sink.setup_calls <= 2, "set-up retried without backoff"
        assert (await ledger.tenant_totals(gone))["meters"] == 3  # folded
        # The customer Stripe has is billed; the unknown one waits in the outbox.
        good_only = {k: v for k, v in expected.items() if k[0] == cus_good}
        assert await ledger.totals("synced") == _as_ledger(good_only)
        waiting = await ledger.outbox()
        assert {e.stripe_customer_id for e in waiting} == {cus_gone}
        health = await ledger.health()
        assert health["dead_letters"] == 0
        shown = str(health.get("stripe_setup"))
        assert cus_gone in shown
        assert "not found" in shown

        sink.missing.clear()  # someone creates the customer in Stripe
        deadline = time.monotonic() + 30
        while await ledger.outbox():
            assert time.monotonic() < deadline, "set-up never retried"
            clock.now += 30  # past the set-up retry's backoff
            await loop.step()
            await asyncio.sleep(0.02)
        assert await ledger.totals("synced") == _as_ledger(expected)
        assert (await ledger.health())["stripe_setup"]["ok"] is True
        await client.aclose()

    asyncio.run(run())


# -- real Ray: the detached actor with a Stripe whose meter is set up wrong ------------


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
    """A Redis of this test alone: the actor uses shard 0's keys."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


def _poll(check: Any, timeout_s: float, what: str) -> None:
    """Wait for `check()`; a Redis error (the stream's group not created yet) is a no."""
    from redis.exceptions import RedisError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except RedisError:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


@pytest.mark.integration
def test_the_actor_keeps_folding_and_closing_while_stripe_set_up_fails(
    ray_local: None, private_redis: EmbeddedRedis
) -> None:
    import ray

    customers = {"t-x": "cus_x", "t-y": "cus_y"}
    meters = [_meter(t, c, 1_000 + i) for i in range(4) for t, c in customers.items()]
    expected = _expected(meters)

    async def state() -> tuple[dict[str, int], list[dict[str, Any]]]:
        client = aioredis.Redis.from_url(private_redis.url)
        try:
            ledger = MeterLedger(client, 0, window_s=1, grace_s=1)
            health = await BillingView(client, 1, window_s=1, grace_s=1).health()
            return await ledger.totals("ledger"), health
        finally:
            await client.aclose()

    async def append() -> None:
        client = aioredis.Redis.from_url(private_redis.url)
        await client.xadd("rtcts:meters:{s0}", encode_batch(meters, 0).fields())
        await client.aclose()

    with EmulatorServer() as stripe:
        # A meter rtcts needs exists with other settings: Stripe would bill it differently,
        # so set-up fails (for every customer) until someone fixes it.
        bad = stripe.state.create_meter(
            {
                "display_name": "tokens (count)",
                "event_name": METER_EVENT_TOKENS,
                "default_aggregation": {"formula": "count"},
            }
        )
        config = AggregatorConfig(
            redis_url=private_redis.url,
            instance=f"st-{uuid.uuid4().hex[:8]}",
            window_s=1,
            grace_s=1,
            stripe_api_base=stripe.url,
            customers=tuple((c, t) for t, c in customers.items()),
            setup_retry_max_s=1.0,
        )
        (aggregator,) = ensure_aggregators(config)
        try:
            asyncio.run(append())
            _poll(
                lambda: asyncio.run(state())[0] == _as_ledger(expected),
                60,
                "meters not folded and closed while Stripe set-up fails: billing stalled",
            )
            assert stripe.state.events() == []  # nothing sent on a wrong meter
            shown = str(asyncio.run(state())[1][0].get("stripe_setup"))
            assert bad["id"] in shown  # the billing health says what is wrong
            actor_health = ray.get(aggregator.health.remote(), timeout=60)
            assert actor_health["stripe_setup"]["ok"] is False

            stripe.state.set_meter_status(bad["id"], "inactive")  # someone fixes Stripe
            _poll(lambda: stripe.state.totals() == expected, 60, "never sent after the fix")
            _poll(
                lambda: asyncio.run(state())[1][0]["stripe_setup"]["ok"] is True,
                30,
                "health still shows the set-up problem",
            )
        finally:
            ray.kill(aggregator, no_restart=True)
