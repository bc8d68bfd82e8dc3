"""Rolling windows: revenue and replica cost of the last window_s seconds, exactly."""

from __future__ import annotations

from serve_app.backtest.windows import RollingWindows

USD_PER_S = 0.001  # 1,000 micro-USD a replica-second


def test_revenue_and_idle_replica_cost_over_the_window() -> None:
    w = RollingWindows({"m": USD_PER_S}, window_s=100.0)
    w.replicas("m", 0.0, 2)
    assert w.margin("m", 50.0) == (0, 100_000)  # two idle replicas for 50 s
    w.billed("m", 60.0, 5_000)
    w.billed("m", 90.0, 7_000)
    w.replicas("m", 120.0, 1)
    assert w.margin("m", 120.0) == (12_000, 200_000)
    # At 170 the window is (70, 170]: the 60 s bill has left; 50 s at 2 + 50 s at 1.
    assert w.margin("m", 170.0) == (7_000, 150_000)
    assert w.margin("m", 400.0) == (0, 100_000)  # only the one replica left


def test_models_are_apart_and_no_replicas_cost_nothing() -> None:
    w = RollingWindows({"a": USD_PER_S, "b": 2 * USD_PER_S}, window_s=10.0, now=-5.0)
    w.replicas("b", -5.0, 1)
    w.billed("a", 1.0, 42)
    assert w.all(5.0) == {"a": (42, 0), "b": (0, 20_000)}
