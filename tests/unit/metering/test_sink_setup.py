"""The aggregator's Stripe set-up state (`sink_setup.py`): what may be sent after which
failure, and retries that back off (a fake clock, no Stripe)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable

from serve_app.metering.sink_setup import TRANSIENT_RETRY_MAX_S, SinkSetup
from serve_app.metering.stripe_setup import SetupReport, StripeSetupError
from serve_app.metering.types import METER_EVENTS, RetryableSyncError
from tests.fakes import FakeClock


class ScriptedSetup:
    """`ensure_setup` raises the scripted errors in turn, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def ensure_setup(
        self, customers: Iterable[tuple[str, str]], event_names: Iterable[str]
    ) -> SetupReport:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return SetupReport(meters={})


def _missing(*customers: str, meter_problem: bool = False) -> StripeSetupError:
    problems = [f"{len(customers)} Stripe customer(s) not found: {', '.join(customers)}"]
    if meter_problem:
        problems.insert(0, "meter mtr_1 (rtcts_tokens) has default_aggregation.formula='count'")
    return StripeSetupError(
        SetupReport(meters={}, missing_customers=customers, problems=tuple(problems))
    )


def test_missing_customers_hold_only_their_windows() -> None:
    setup = SinkSetup(
        ScriptedSetup(_missing("cus_b")), [("cus_a", "a"), ("cus_b", "b")], METER_EVENTS
    )
    assert setup.status.hold_all  # nothing is sent before the first check
    assert asyncio.run(setup.ensure())
    assert not setup.status.ok
    assert not setup.status.hold_all
    assert setup.status.holds("cus_b")
    assert not setup.status.holds("cus_a")
    assert "cus_b" in setup.status.to_dict()["problem"]
    assert setup.status.to_dict()["sending"] == "some"


def test_a_wrong_meter_or_an_unreachable_stripe_holds_everything() -> None:
    for error in (
        _missing("cus_b", meter_problem=True),
        RetryableSyncError("Stripe set-up failed: network"),
    ):
        setup = SinkSetup(ScriptedSetup(error), [("cus_a", "a")], METER_EVENTS)
        asyncio.run(setup.ensure())
        assert setup.status.hold_all
        assert setup.status.holds("cus_a")


def test_retries_back_off_up_to_the_cap_then_the_status_clears() -> None:
    clock = FakeClock(0.0)
    sink = ScriptedSetup(*(_missing("cus_b", meter_problem=True) for _ in range(8)))
    setup = SinkSetup(sink, [], METER_EVENTS, retry_max_s=10.0, clock=clock, wall=clock)
    tries_at: list[float] = []
    while not setup.done:
        before = sink.calls
        asyncio.run(setup.ensure())
        if sink.calls > before:
            tries_at.append(clock.now)
        clock.now += 0.5
    gaps = [b - a for a, b in itertools.pairwise(tries_at)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(gaps) == 10.0  # capped
    assert setup.status.ok
    assert setup.status.to_dict()["sending"] == "all"


def test_a_sink_without_set_up_needs_none_and_no_sink_sends_nothing() -> None:
    class Plain:
        pass

    assert SinkSetup(Plain(), [], METER_EVENTS).status.ok
    assert SinkSetup(None, [], METER_EVENTS).status.hold_all


def test_an_unreachable_stripe_is_retried_every_few_seconds_at_most() -> None:
    clock = FakeClock(0.0)
    sink = ScriptedSetup(*(RetryableSyncError("down") for _ in range(8)))
    setup = SinkSetup(sink, [], METER_EVENTS, retry_max_s=60.0, clock=clock, wall=clock)
    tries_at: list[float] = []
    while not setup.done:
        before = sink.calls
        asyncio.run(setup.ensure())
        if sink.calls > before:
            tries_at.append(clock.now)
        clock.now += 0.5
    gaps = [b - a for a, b in itertools.pairwise(tries_at)]
    assert gaps[:3] == [1.0, 2.0, 4.0]
    assert max(gaps) == TRANSIENT_RETRY_MAX_S
