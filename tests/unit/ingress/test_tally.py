"""The dashboard's per-plan counts: pending on the request path, flushed to a store,
kept when the store fails, read back over the window."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.ingress.tally import (
    KEEP_S,
    Buckets,
    MemoryTallyStore,
    Tally,
    bucket_of,
    model_field,
    plan_field,
)
from tests.fakes import FakeClock


class FailingStore(MemoryTallyStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def add(self, counts: Buckets) -> None:
        if self.down:
            raise ConnectionError("redis down")
        await super().add(counts)


def test_buckets_are_wall_clock_multiples() -> None:
    assert bucket_of(1_009.99) == 1_000
    assert bucket_of(1_010.0) == 1_010


def test_counts_wait_for_the_flush_then_are_read_per_bucket() -> None:
    clock = FakeClock(1_000.0)
    tally = Tally(MemoryTallyStore(), clock=clock)
    tally.decision("pro", "allow")
    tally.billed("pro", "small", 1_500, 100)
    clock.now += 10
    tally.decision("pro", "throttle")

    async def run() -> tuple[Buckets, Buckets]:
        before = await tally.window()
        await tally.flush()
        return before, await tally.window()

    before, after = asyncio.run(run())
    assert before == {}
    assert after == {
        1_000: {
            plan_field("pro", "allow"): 1,
            plan_field("pro", "requests"): 1,
            plan_field("pro", "billed"): 1_500,
            plan_field("pro", "credit"): 100,
            model_field("small", "revenue"): 1_500,
        },
        1_010: {plan_field("pro", "throttle"): 1},
    }
    starts = tally.starts()
    assert len(starts) == 30
    assert starts[-1] == 1_010
    assert starts[0] == 1_010 - 290


def test_a_failed_flush_keeps_its_counts_for_the_next_one() -> None:
    clock = FakeClock(1_000.0)
    store = FailingStore()
    tally = Tally(store, clock=clock)
    tally.decision("pro", "allow")

    async def run() -> Buckets:
        with pytest.raises(ConnectionError):
            await tally.flush()
        tally.decision("pro", "allow")
        store.down = False
        await tally.flush()
        await tally.flush()  # nothing pending: nothing added twice
        return await tally.window()

    assert asyncio.run(run()) == {1_000: {plan_field("pro", "allow"): 2}}


def test_counts_past_the_window_are_not_kept_for_a_retry() -> None:
    clock = FakeClock(1_000.0)
    store = FailingStore()
    tally = Tally(store, clock=clock)
    tally.decision("pro", "allow")
    clock.now += 400  # the bucket left the window while Redis was down

    async def run() -> Buckets:
        with pytest.raises(ConnectionError):
            await tally.flush()
        store.down = False
        await tally.flush()
        return await store.read([1_000])

    assert asyncio.run(run()) == {}


def test_the_memory_store_forgets_old_buckets() -> None:
    store = MemoryTallyStore()

    async def run() -> Buckets:
        await store.add({1_000: {"a": 1}})
        await store.add({1_000 + KEEP_S + 10: {"a": 2}})
        return await store.read([1_000, 1_000 + KEEP_S + 10])

    assert asyncio.run(run()) == {1_000 + KEEP_S + 10: {"a": 2}}
