"""Serve-like autoscaling: the pure step, and a deployment under load and after it."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.backtest.autoscale import ScaleState, ScalingBounds, desired_replicas, step
from serve_app.backtest.deployment import Deployment
from serve_app.backtest.replica import TICK, EventQueue
from tests.unit.backtest.harness import Timing, drive, job
from tests.unit.models.test_simulated import COLD_START_S, make_profile

BOUNDS = ScalingBounds(min_replicas=1, max_replicas=4, target_ongoing_requests=8)


def test_desired_replicas_is_ongoing_over_target_within_bounds() -> None:
    assert desired_replicas(BOUNDS, 0) == 1
    assert desired_replicas(BOUNDS, 8) == 1
    assert desired_replicas(BOUNDS, 8.5) == 2
    assert desired_replicas(BOUNDS, 1000) == 4


def test_scaling_up_waits_for_the_upscale_delay() -> None:
    state = step(BOUNDS, ScaleState(1), 30, now=10.0)
    assert state.target == 1
    assert state.wish_up
    assert step(BOUNDS, state, 30, now=10.25).target == 1
    assert step(BOUNDS, state, 30, now=10.5).target == 4


def test_scaling_down_waits_for_the_downscale_delay_and_a_change_of_mind_resets_it() -> None:
    state = ScaleState(3)
    state = step(BOUNDS, state, 1, now=0.0)
    state = step(BOUNDS, state, 1, now=59.0)
    assert state.target == 3
    assert step(BOUNDS, state, 1, now=60.0).target == 1
    # A wish to go up in between starts the count again.
    mind_changed = step(BOUNDS, step(BOUNDS, state, 100, now=59.5), 1, now=60.0)
    assert mind_changed.target == 3
    assert step(BOUNDS, mind_changed, 1, now=119.0).target == 3
    assert step(BOUNDS, mind_changed, 1, now=120.0).target == 1


def test_to_zero_only_from_one_and_from_zero_at_once() -> None:
    bounds = ScalingBounds(min_replicas=0, max_replicas=3, target_ongoing_requests=8)
    state = step(bounds, ScaleState(2), 0, now=0.0)
    assert step(bounds, state, 0, now=60.0).target == 1
    state = step(bounds, ScaleState(1), 0, now=100.0)
    assert step(bounds, state, 0, now=160.0).target == 0
    assert step(bounds, ScaleState(0), 0.1, now=200.0).target == 1  # no delay


def _deployment(bounds: ScalingBounds, timing: Timing) -> tuple[EventQueue, Deployment, list[Any]]:
    events = EventQueue()
    changes: list[Any] = []
    deployment = Deployment(
        make_profile(),
        bounds,
        events,
        timing.done,
        lambda model, now, count: changes.append((now, count)),
        control_period_s=0.5,
    )
    deployment.start(0.0)
    return events, deployment, changes


def _run(events: EventQueue, deployment: Deployment, arrivals: list[Any], until: float) -> None:
    events.push(0.0, TICK, None)

    def tick(kind: int, subject: Any, now: float) -> None:
        deployment.tick(now)
        events.push(now + 0.5, TICK, None)

    drive(events, arrivals, deployment.route, deployment.replica_warm, tick, until=until)


def test_a_deployment_scales_up_under_load_and_down_after_the_delay() -> None:
    timing = Timing()
    events, deployment, changes = _deployment(BOUNDS, timing)
    # 120 requests over 20 s, each about 10 s long: ~60 in flight, far above 1 x 8.
    arrivals = [(i / 6, job(i, i / 6, 200, 400)) for i in range(120)]
    _run(events, deployment, arrivals, until=400.0)
    assert len(timing.ended) == 120
    assert max(count for _, count in changes) == 4
    up_at = next(t for t, count in changes if count > 1)
    assert up_at < 5.0  # as the look-back average crosses the target
    last_end = max(timing.ended.values())
    down_at = next(t for t, count in changes if t > last_end and count < 4)
    assert down_at - last_end == pytest.approx(60.0, abs=31.0)  # delay, after the look-back
    assert len(deployment.replicas) == 1  # back to min_replicas
    # The new replicas served once warm: none before their cold start.
    assert all(j.start_s >= 0 for j in timing.jobs.values())
    assert min(t for t in timing.ended.values()) > 0


def test_requests_wait_at_the_handle_for_a_deployment_scaled_to_zero() -> None:
    bounds = ScalingBounds(min_replicas=0, max_replicas=2, target_ongoing_requests=8)
    timing = Timing()
    events, deployment, changes = _deployment(bounds, timing)
    assert deployment.replicas == []
    _run(events, deployment, [(1.0, job(0, 1.0, 100, 10))], until=200.0)
    assert timing.jobs[0].start_s == pytest.approx(1.0 + 0.0 + COLD_START_S, abs=0.5)
    assert changes[0] == (0.0, 0)
    assert changes[1][1] == 1
    assert deployment.intervals
    assert deployment.intervals[0][0] == pytest.approx(1.0, abs=0.5)
