"""Item 10 (second half): an outbox entry unconfirmed near Stripe's 24 h identifier
horizon is reconciled before it is sent again, never resent blind.

Stripe dedups a meter event's identifier for about 24 hours. An entry whose send landed
but whose answer was lost stays in the outbox; if Stripe is then unreachable for a day,
the retry that finally gets through carries an identifier Stripe has forgotten, and the
window is counted twice. Before the fix the outbox resent it as it was. Now the first
send attempt of every entry is recorded in Redis; an entry older than the safe horizon
(20 h) is compared with Stripe's event summaries first: Stripe has it -> marked
delivered; Stripe has nothing of it -> resent under a new identifier; anything else ->
dead-lettered with a message saying what to check. The tests move a fake clock (the
aggregator's and the emulator's) across the horizon.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from rtcts_dev.stripe_emulator import EmulatorServer
from serve_app.metering.aggregator import AggregatorLoop
from serve_app.metering.entry import encode_batch
from serve_app.metering.ledger import MeterLedger
from serve_app.metering.meter import Meter, new_meter_id
from serve_app.metering.stripe_sink import LOCAL_TEST_KEY, StripeSink
from serve_app.metering.types import (
    METER_EVENT_BILLED,
    METER_EVENT_TOKENS,
    METER_EVENTS,
    OutboxEntry,
    SendResult,
    SendStatus,
)
from tests.factories import make_meter
from tests.fakes import FakeClock

pytestmark = pytest.mark.integration

HOUR_S = 3600


class Switch:
    """The real sink behind a switch. "up": as it is; "lost": sends, then reports a
    network error (Stripe recorded the event, the answer never came); "down": reaches
    nothing (sends and summaries alike fail as the network would)."""

    def __init__(self, inner: StripeSink) -> None:
        self.inner = inner
        self.mode = "up"

    async def send(self, entries: Sequence[OutboxEntry]) -> list[SendResult]:
        if self.mode == "down":
            return [
                SendResult(e.identifier, SendStatus.RETRY, "network: ConnectError") for e in entries
            ]
        results = await self.inner.send(entries)
        if self.mode == "lost":
            return [
                SendResult(r.identifier, SendStatus.RETRY, "network: ReadTimeout") for r in results
            ]
        return results

    async def stripe_totals(
        self, pairs: Sequence[tuple[str, str]], *, start_time: int, end_time: int
    ) -> tuple[dict[tuple[str, str], Decimal], dict[tuple[str, str], str]]:
        if self.mode == "down":
            return {}, dict.fromkeys(pairs, "network: ConnectError")
        return await self.inner.stripe_totals(pairs, start_time=start_time, end_time=end_time)


class Scene:
    """One tenant, one shard of a shared Redis, the emulator on a fake clock."""

    def __init__(self, client: Any, stripe: EmulatorServer, clock: FakeClock) -> None:
        self.client = client
        self.stripe = stripe
        self.clock = clock
        self.tenant = f"hz-{uuid.uuid4().hex[:8]}"
        self.customer = f"cus_{self.tenant.replace('-', '_')}"
        self.ledger = MeterLedger(
            client, int(uuid.uuid4().int % 10_000) + 60_000, window_s=1, grace_s=0
        )
        self.inner = StripeSink.connect(LOCAL_TEST_KEY, stripe.url, clock=clock)
        self.sink = Switch(self.inner)
        self.meter = make_meter(
            meter_id=new_meter_id(),
            tenant_id=self.tenant,
            stripe_customer_id=self.customer,
            input_tokens=30,
            output_tokens=12,
            list_price_micro=4_321,
            credit_micro=0,
            billed_micro=4_321,
            billable=True,
            ended_at_ms=int(time.time() * 1000),
        )

    def loop(self) -> AggregatorLoop:
        """An aggregator (a fresh one is a restarted process: memory gone, Redis kept)."""
        return AggregatorLoop(
            self.ledger,
            self.sink,
            consumer="agg-h",
            block_ms=10,
            clock=self.clock,
            wall=self.clock,
        )

    async def start(self) -> None:
        await self.inner.ensure_setup([(self.customer, self.tenant)], METER_EVENTS)
        await self.ledger.ensure_group()
        entry = encode_batch([self.meter], self.ledger.keys.shard)
        await self.client.xadd(self.ledger.keys.stream, entry.fields())

    async def run_until(self, loop: AggregatorLoop, done: Any, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not await done():
            assert time.monotonic() < deadline, "the aggregator did not get there"
            await loop.step()
            self.clock.now += 5  # past any retry's backoff (a minute at most) in a few steps
            await asyncio.sleep(0.05)

    async def outage(self, loop: AggregatorLoop, hours: int) -> None:
        """Stripe unreachable for `hours`; the aggregator keeps trying every 15 minutes."""
        self.sink.mode = "down"
        for _ in range(hours * 4):
            self.clock.now += 900
            await loop.step()

    def events(self) -> list[dict[str, Any]]:
        return [e for e in self.stripe.state.events() if e["customer"] == self.customer]

    def expected(self) -> dict[tuple[str, str], int]:
        m: Meter = self.meter
        return {
            (self.customer, METER_EVENT_BILLED): m.billed_micro,
            (self.customer, METER_EVENT_TOKENS): m.input_tokens + m.output_tokens,
        }

    async def dead(self) -> dict[str, str]:
        raw = await self.client.hgetall(self.ledger.keys.dead)
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def settled(self) -> bool:
        health = await self.ledger.health()
        folded = (await self.ledger.tenant_totals(self.tenant))["meters"] == 1
        return folded and health["open_windows"] == 0 and health["outbox"] == 0

    async def close(self) -> None:
        await self.inner.aclose()


def _scene(body: Any) -> Any:
    def test(redis_url: str) -> None:
        async def run() -> None:
            client = aioredis.Redis.from_url(redis_url)
            clock = FakeClock(time.time())
            with EmulatorServer(clock=clock) as stripe:
                scene = Scene(client, stripe, clock)
                await scene.start()
                try:
                    await body(scene)
                finally:
                    await scene.close()
            await client.aclose()

        asyncio.run(run())

    test.__name__ = body.__name__
    test.__doc__ = body.__doc__
    return test


async def _landed_then_lost_then_a_day_of_outage(scene: Scene) -> None:
    """The first send lands, its answer is lost, then Stripe is unreachable for 25 h (it
    forgets the identifiers); the aggregator restarts meanwhile. The window must count
    once."""
    loop = scene.loop()
    scene.sink.mode = "lost"

    async def landed() -> bool:
        return len(scene.events()) == 2

    await scene.run_until(loop, landed)
    await scene.outage(loop, hours=25)
    scene.sink.mode = "up"
    await scene.run_until(scene.loop(), scene.settled)
    assert scene.stripe.state.totals() == scene.expected(), "counted twice past the horizon"
    assert len(scene.events()) == 2
    assert await scene.ledger.totals("synced") == await scene.ledger.totals("ledger")
    assert await scene.dead() == {}


async def _never_landed_then_a_day_of_outage(scene: Scene) -> None:
    """Nothing ever reached Stripe for 25 h: the window is sent once, under a new
    identifier (the old one is past the horizon where Stripe would dedup it)."""
    loop = scene.loop()
    scene.sink.mode = "down"
    await scene.run_until(loop, lambda: _outbox_filled(scene))
    original = {e.identifier for e in await scene.ledger.outbox()}
    await scene.outage(loop, hours=25)
    scene.sink.mode = "up"
    await scene.run_until(loop, scene.settled)
    assert scene.stripe.state.totals() == scene.expected()
    events = scene.events()
    assert len(events) == 2
    assert not original & {e["identifier"] for e in events}, "resent past the horizon as is"
    assert await scene.dead() == {}


async def _stripe_holds_more_than_the_ledger_knows(scene: Scene) -> None:
    """The first send lands (answer lost), and Stripe also holds an event for the same
    customer, meter and minute that this ledger never sent. Past the horizon the window
    cannot be told apart: it is dead-lettered with a clear reason, never resent."""
    loop = scene.loop()
    scene.sink.mode = "lost"

    async def landed() -> bool:
        return len(scene.events()) == 2

    await scene.run_until(loop, landed)
    start = next(e["timestamp"] for e in scene.events())
    scene.stripe.state.create_meter_event(
        {
            "event_name": METER_EVENT_BILLED,
            "identifier": f"foreign-{uuid.uuid4().hex}",
            "timestamp": start,
            "payload": {"stripe_customer_id": scene.customer, "value": "99"},
        }
    )
    await scene.outage(loop, hours=21)
    scene.sink.mode = "up"
    await scene.run_until(loop, scene.settled)
    assert len(scene.events()) == 3, "an unconfirmed window was resent past the horizon"
    dead = await scene.dead()
    assert len(dead) == 1, dead
    (reason,) = dead.values()
    assert METER_EVENT_BILLED in reason
    assert "reconcile" in reason.lower()
    assert "4420" in reason  # what Stripe holds (4,321 + 99), so a person can check
    # The tokens window was unambiguous: Stripe has it, it is marked delivered.
    synced = await scene.ledger.totals("synced")
    assert synced == {f"{scene.customer}|{METER_EVENT_TOKENS}": 42}


async def _outbox_filled(scene: Scene) -> bool:
    return len(await scene.ledger.outbox()) == 2


test_a_landed_window_whose_answer_was_lost_counts_once_after_a_day_of_outage = _scene(
    _landed_then_lost_then_a_day_of_outage
)
test_a_window_that_never_landed_is_sent_once_under_a_new_identifier = _scene(
    _never_landed_then_a_day_of_outage
)
test_an_ambiguous_window_past_the_horizon_is_dead_lettered_not_resent = _scene(
    _stripe_holds_more_than_the_ledger_knows
)
