"""Whether billing runs: every shard's aggregator answers `running`; missing, failing
or slow ones are "not running"; answers are cached briefly. Fake actor handles."""

from __future__ import annotations

import asyncio
from typing import Any

from serve_app.metering.probe import AggregatorProbe
from tests.fakes import FakeClock


class Method:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls = 0

    def remote(self) -> Any:
        self.calls += 1

        async def answer() -> Any:
            if isinstance(self.answer, BaseException):
                raise self.answer
            if self.answer == "hang":
                await asyncio.sleep(3600)
            return self.answer

        return answer()


class Actor:
    def __init__(self, answer: Any) -> None:
        self.health = Method(answer)


def probe(actors: dict[str, Actor], clock: FakeClock) -> AggregatorProbe:
    def lookup(name: str) -> Actor:
        if name not in actors:
            raise ValueError(f"Failed to look up actor {name}")
        return actors[name]

    return AggregatorProbe("app", 2, timeout_s=0.05, cache_s=1.0, lookup=lookup, clock=clock)


def test_running_when_every_shard_runs_its_loop() -> None:
    clock = FakeClock()
    actors = {f"app-meter-aggregator-{s}": Actor({"running": True}) for s in range(2)}
    assert asyncio.run(probe(actors, clock).running())


def test_not_running_while_a_shard_is_missing_starting_failing_or_slow() -> None:
    clock = FakeClock()
    one = {"app-meter-aggregator-0": Actor({"running": True})}
    assert not asyncio.run(probe(one, clock).running())
    for answer in ({"shard": 1, "running": False}, RuntimeError("actor died"), "hang"):
        actors = {**one, "app-meter-aggregator-1": Actor(answer)}
        assert not asyncio.run(probe(actors, clock).running())


def test_answers_are_cached_for_a_moment() -> None:
    clock = FakeClock()
    actors = {f"app-meter-aggregator-{s}": Actor({"running": True}) for s in range(2)}
    checker = probe(actors, clock)

    async def twice_then_later() -> None:
        assert await checker.running()
        assert await checker.running()
        assert actors["app-meter-aggregator-0"].health.calls == 1
        clock.now += 2.0
        assert await checker.running()
        assert actors["app-meter-aggregator-0"].health.calls == 2

    asyncio.run(twice_then_later())
