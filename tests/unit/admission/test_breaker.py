"""The circuit breaker, on a fake clock."""

from __future__ import annotations

from serve_app.admission.breaker import CircuitBreaker
from tests.fakes import FakeClock


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(open_s=1.0, failures_to_open=3, clock=FakeClock(0.0))
    assert not breaker.failure()
    assert not breaker.failure()
    breaker.success()  # the run of failures is broken
    assert not breaker.failure()
    assert not breaker.failure()
    assert breaker.failure()  # third in a row: the outage starts
    assert breaker.is_open
    assert not breaker.allow()


def test_one_probe_after_open_s_then_closes_on_success() -> None:
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(open_s=1.0, failures_to_open=1, clock=clock)
    assert breaker.failure()
    clock.now = 0.5
    assert not breaker.allow()
    clock.now = 1.0
    assert breaker.allow()
    assert not breaker.allow()  # only one probe at a time
    assert breaker.success()  # recovery reported once
    assert not breaker.is_open
    assert breaker.allow()


def test_a_failed_probe_keeps_it_open_for_another_period() -> None:
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(open_s=1.0, failures_to_open=1, clock=clock)
    breaker.failure()
    clock.now = 1.0
    assert breaker.allow()
    assert not breaker.failure()  # not a new outage
    clock.now = 1.5
    assert not breaker.allow()
    clock.now = 2.0
    assert breaker.allow()
