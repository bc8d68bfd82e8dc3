"""The aggregator's loop against a real Redis (no Ray): fold and acknowledge atomically,
deduplicate meters, close windows into the outbox, late meters, retries, dead letters."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from serve_app.metering.aggregator import AggregatorLoop
from serve_app.metering.entry import MeterBatch, encode_batch
from serve_app.metering.ledger import MeterLedger
from serve_app.metering.meter import Meter, new_meter_id
from serve_app.metering.types import (
    METER_EVENT_BILLED,
    METER_EVENT_TOKENS,
    OutboxEntry,
    SendResult,
    SendStatus,
)
from tests.factories import make_meter

pytestmark = pytest.mark.integration


def _meter(
    tenant: str, billed: int, *, billable: bool = True, ended_at_ms: int | None = None
) -> Meter:
    ended = int(time.time() * 1000) if ended_at_ms is None else ended_at_ms
    return make_meter(
        meter_id=new_meter_id(ended),
        tenant_id=tenant,
        stripe_customer_id=f"cus_{tenant}",
        input_tokens=10,
        output_tokens=5,
        list_price_micro=billed,
        credit_micro=0,
        billed_micro=billed if billable else 0,
        billable=billable,
        ended_at_ms=ended,
    )


class FakeSink:
    """Records what it delivers; can answer RETRY or PERMANENT on demand."""

    def __init__(self) -> None:
        self.delivered: dict[str, OutboxEntry] = {}
        self.script: list[SendStatus] = []

    async def send(self, entries: Sequence[OutboxEntry]) -> list[SendResult]:
        results = []
        for entry in entries:
            status = self.script.pop(0) if self.script else SendStatus.DELIVERED
            if status is SendStatus.DELIVERED:
                assert entry.identifier not in self.delivered or (
                    self.delivered[entry.identifier] == entry
                ), "an identifier was sent with two different values"
                self.delivered[entry.identifier] = entry
            results.append(SendResult(entry.identifier, status, "scripted"))
        return results

    def totals(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for e in self.delivered.values():
            key = (e.stripe_customer_id, e.event_name)
            out[key] = out.get(key, 0) + e.value
        return out


async def _setup(
    redis_url: str, sink: FakeSink | None, **kw: Any
) -> tuple[Any, MeterLedger, AggregatorLoop]:
    client = aioredis.Redis.from_url(redis_url)
    shard = int(uuid.uuid4().int % 10_000) + 100  # a shard of our own in a shared Redis
    ledger = MeterLedger(
        client, shard, window_s=kw.pop("window_s", 1), grace_s=kw.pop("grace_s", 0)
    )
    await ledger.ensure_group()
    loop = AggregatorLoop(ledger, sink, consumer="agg-test", block_ms=10, **kw)
    return client, ledger, loop


async def _append(
    client: Any, ledger: MeterLedger, meters: list[Meter], per_entry: int = 7
) -> list[MeterBatch]:
    """The meters as stream entries of `per_entry` meters each, as the writer makes them."""
    shard = ledger.keys.shard
    entries = [
        encode_batch(meters[i : i + per_entry], shard) for i in range(0, len(meters), per_entry)
    ]
    await _add(client, ledger, entries)
    return entries


async def _add(client: Any, ledger: MeterLedger, entries: list[MeterBatch]) -> None:
    for entry in entries:
        await client.xadd(ledger.keys.stream, entry.fields())  # type: ignore[arg-type]


async def _drain(loop: AggregatorLoop, until: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not await until():
        assert time.monotonic() < deadline, "aggregator did not converge"
        await loop.step()
        await asyncio.sleep(0.05)


def test_meters_fold_once_and_windows_reach_the_sink_exactly(redis_url: str) -> None:
    async def run() -> None:
        sink = FakeSink()
        client, ledger, loop = await _setup(redis_url, sink)
        meters = [_meter("a", 100 + i) for i in range(50)] + [_meter("b", 7) for _ in range(20)]
        failed = [_meter("a", 999, billable=False) for _ in range(5)]
        entries = await _append(client, ledger, meters + failed)
        await _add(client, ledger, entries[:2])  # appended twice (a replay after a timeout)
        expected = {
            ("cus_a", METER_EVENT_BILLED): sum(
                m.billed_micro for m in meters if m.tenant_id == "a"
            ),
            ("cus_b", METER_EVENT_BILLED): 7 * 20,
            ("cus_a", METER_EVENT_TOKENS): 15 * 50,
            ("cus_b", METER_EVENT_TOKENS): 15 * 20,
        }

        async def done() -> bool:
            return sink.totals() == expected and not await ledger.outbox()

        await _drain(loop, done)
        assert await ledger.totals("synced") == {f"{c}|{e}": v for (c, e), v in expected.items()}
        assert await ledger.totals("ledger") == await ledger.totals("synced")
        assert (await ledger.tenant_totals("a"))["failed"] == 5
        assert (await ledger.tenant_totals("a"))["meters"] == 50
        assert (await ledger.health())["stream_pending"] == 0
        await client.aclose()

    asyncio.run(run())


def test_a_crash_before_folding_rereads_the_pending_entries(redis_url: str) -> None:
    async def run() -> None:
        sink = FakeSink()
        client, ledger, _ = await _setup(redis_url, sink)
        meters = [_meter("c", 10) for _ in range(30)]
        await _append(client, ledger, meters)
        read = await ledger.read("agg-test", 100, 10)  # read, then "die" before folding
        assert len(read) == 5  # 30 meters in entries of 7
        assert (await ledger.health())["stream_pending"] == 5
        fresh = AggregatorLoop(ledger, sink, consumer="agg-test", block_ms=10)

        async def done() -> bool:
            return sink.totals().get(("cus_c", METER_EVENT_BILLED)) == 300

        await _drain(fresh, done)
        assert (await ledger.health())["stream_pending"] == 0
        await client.aclose()

    asyncio.run(run())


def test_a_late_meter_is_billed_in_a_later_window_once(redis_url: str) -> None:
    async def run() -> None:
        sink = FakeSink()
        client, ledger, loop = await _setup(redis_url, sink)
        await _append(client, ledger, [_meter("d", 50)])

        async def first_sent() -> bool:
            return sink.totals().get(("cus_d", METER_EVENT_BILLED)) == 50

        await _drain(loop, first_sent)
        (first,) = (
            sink.delivered.values()
            if len(sink.delivered) == 1
            else [e for e in sink.delivered.values() if e.event_name == METER_EVENT_BILLED]
        )
        # A meter of that (already sent) window arrives late.
        late = _meter("d", 8, ended_at_ms=first.window_start * 1000 + 10)
        await _append(client, ledger, [late])

        async def late_sent() -> bool:
            return sink.totals().get(("cus_d", METER_EVENT_BILLED)) == 58

        await _drain(loop, late_sent)
        billed = [e for e in sink.delivered.values() if e.event_name == METER_EVENT_BILLED]
        assert len(billed) == 2
        assert first in billed  # the sent window was never changed
        assert max(e.window_start for e in billed) > first.window_start
        await client.aclose()

    asyncio.run(run())


def test_retries_then_delivers_and_dead_letters_permanent_refusals(redis_url: str) -> None:
    async def run() -> None:
        sink = FakeSink()
        sink.script = [SendStatus.RETRY, SendStatus.RETRY, SendStatus.PERMANENT]
        client, ledger, loop = await _setup(redis_url, sink)
        await _append(client, ledger, [_meter("e", 5)])

        async def settled() -> bool:
            health = await ledger.health()
            handled = health["dead_letters"] + len(sink.delivered)
            return handled == 2 and health["outbox"] == 0

        await _drain(loop, settled, timeout_s=60)
        health = await ledger.health()
        assert health["dead_letters"] == 1  # one of the two windows was refused for good
        assert len(sink.delivered) == 1
        await client.aclose()

    asyncio.run(run())


def test_a_malformed_stream_entry_does_not_block_the_shard(redis_url: str) -> None:
    async def run() -> None:
        sink = FakeSink()
        client, ledger, loop = await _setup(redis_url, sink)
        await client.xadd(ledger.keys.stream, {"m": b"not a meter"})
        await _append(client, ledger, [_meter("f", 21)])

        async def done() -> bool:
            return sink.totals().get(("cus_f", METER_EVENT_BILLED)) == 21

        await _drain(loop, done)
        assert await client.hlen(ledger.keys.name("bad_meters")) == 1
        assert (await ledger.health())["stream_pending"] == 0
        await client.aclose()

    asyncio.run(run())


def test_trim_drops_only_folded_entries_older_than_the_retention(redis_url: str) -> None:
    async def run() -> None:
        client, ledger, _ = await _setup(redis_url, None)
        stream, shard = ledger.keys.stream, ledger.keys.shard
        for i in range(4):  # entries from 1970: far older than any retention
            entry = encode_batch([_meter("g", 1)], shard)
            await client.xadd(stream, entry.fields(), id=f"{1000 + i}-0")  # type: ignore[arg-type]
        assert await ledger.trim(3600) == 0  # none read yet: unread entries stay
        read = await ledger.read("agg-test", 2, 10)
        assert await ledger.trim(3600) == 0  # read, not acknowledged: pending entries stay
        await ledger.fold(read)
        assert await ledger.trim(3600) == 2  # folded and acknowledged
        rest = await ledger.read("agg-test", 10, 10)
        await ledger.fold(rest[:1])
        assert await ledger.trim(3600) == 1  # not past the one still pending
        await ledger.fold(rest[1:])
        fresh = encode_batch([_meter("g", 1)], shard)
        await client.xadd(stream, fresh.fields())  # type: ignore[arg-type]
        await ledger.fold(await ledger.read("agg-test", 10, 10))
        assert await ledger.trim(3600) == 1  # the last old one; the fresh one is kept
        assert await client.xlen(stream) == 1
        assert (await ledger.tenant_totals("g"))["meters"] == 5  # trimming never unbills
        await client.aclose()

    asyncio.run(run())
