"""`MarginWindows`: revenue and replica cost per model over a rolling window."""

from __future__ import annotations

import pytest

from serve_app.ingress.margins import MarginWindows
from serve_app.pricing import ClusterSnapshot, ModelLoad, ReplicaLoad, WindowMargin
from tests.fakes import FakeClock

USD_PER_S = {"m": 3.6 / 3600}  # $3.60 an hour: 1,000 micro-USD a second


def _replicas(count: int, warm: bool = True) -> ClusterSnapshot:
    return ClusterSnapshot({"m": ModelLoad(tuple(ReplicaLoad(warm=warm) for _ in range(count)))})


def test_replica_time_is_paid_idle_or_busy_and_revenue_is_added() -> None:
    clock = FakeClock(0.0)
    windows = MarginWindows(USD_PER_S, window_s=300, bucket_s=10, clock=clock)
    windows.replicas(_replicas(2))
    clock.now += 5
    windows.replicas(_replicas(2))  # 2 replicas for 5 s: 10,000 micro-USD
    windows.revenue("m", 4_000)
    assert windows.margins() == {"m": WindowMargin(4_000, 10_000)}
    assert windows.margins()["m"].margin == pytest.approx(-1.5)


def test_a_starting_replica_is_paid_too_and_the_share_splits_the_cost() -> None:
    clock = FakeClock(0.0)
    windows = MarginWindows(USD_PER_S, share=0.5, clock=clock)
    windows.replicas(_replicas(1, warm=False))
    clock.now += 4
    windows.replicas(_replicas(1))
    assert windows.margins()["m"].cost_micro == 2_000  # half of 4 s at 1,000 a second


def test_what_left_the_window_no_longer_counts() -> None:
    clock = FakeClock(0.0)
    windows = MarginWindows(USD_PER_S, window_s=60, bucket_s=10, clock=clock)
    windows.revenue("m", 500)
    clock.now += 30
    windows.revenue("m", 700)
    assert windows.margins()["m"].revenue_micro == 1_200
    clock.now += 40  # the first bucket is 70 s old
    assert windows.margins()["m"].revenue_micro == 700
    clock.now += 60
    assert windows.margins()["m"] == WindowMargin(0, 0)
