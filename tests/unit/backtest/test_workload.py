"""Workload shaping: compression, looping, tenants and plans, the spike, the warm-up;
all deterministic by seed."""

from __future__ import annotations

import pytest

from serve_app.backtest.workload import SpikeSpec, WorkloadSpec, parse_mix, shape
from tests.unit.backtest.conftest import synthetic_trace

PLANS = ["basic", "pro"]
TRACE = synthetic_trace(600, 0.2)  # 120 s of traffic, 5 requests/s


def _spec(**kw: object) -> WorkloadSpec:
    values: dict[str, object] = {"duration_s": 600.0, "warmup_s": 0.0, "seed": 7}
    values.update(kw)
    return WorkloadSpec(**values)  # type: ignore[arg-type]


def test_same_seed_same_workload_other_seed_other_tenants() -> None:
    a = shape(TRACE, _spec(spike=SpikeSpec(100, 200, 2.5)), PLANS)
    b = shape(TRACE, _spec(spike=SpikeSpec(100, 200, 2.5)), PLANS)
    c = shape(TRACE, _spec(spike=SpikeSpec(100, 200, 2.5), seed=8), PLANS)
    assert a == b
    assert [x.tenant for x in a.arrivals] != [x.tenant for x in c.arrivals]


def test_the_trace_loops_until_the_duration_and_compression_divides_times() -> None:
    w = shape(TRACE, _spec(), PLANS)
    assert len(w.arrivals) == 3000  # 600 s of a 120 s trace, back to back
    assert all(0 <= a.t < 600 for a in w.arrivals)
    fast = shape(TRACE, _spec(speed=2.0), PLANS)
    assert len(fast.arrivals) == 6000
    assert fast.arrivals[1].t == pytest.approx(0.1)


def test_the_spike_multiplies_traffic_in_its_window_only() -> None:
    base = shape(TRACE, _spec(), PLANS)
    spiked = shape(TRACE, _spec(spike=SpikeSpec(120, 240, 3.5)), PLANS)
    extra = [a for a in spiked.arrivals if a.spike]
    assert all(120 <= a.t < 360 for a in extra)
    in_window = sum(1 for a in base.arrivals if 120 <= a.t < 360)
    assert len(extra) == pytest.approx(2.5 * in_window, rel=0.05)
    assert [a for a in spiked.arrivals if not a.spike] == list(base.arrivals)
    assert [a.t for a in spiked.arrivals] == sorted(a.t for a in spiked.arrivals)


def test_tenants_follow_the_plan_mix() -> None:
    w = shape(TRACE, _spec(mix={"basic": 3, "pro": 1}, tenants_per_plan=4), PLANS)
    assert [t.id for t in w.tenants] == [f"{p}-{n:02d}" for p in PLANS for n in range(1, 5)]
    plans = [w.tenants[a.tenant].plan for a in w.arrivals]
    assert plans.count("basic") / len(plans) == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError, match="not in the policy"):
        shape(TRACE, _spec(mix={"gold": 1}), PLANS)


def test_price_caps_go_to_a_share_of_each_plans_tenants() -> None:
    w = shape(TRACE, _spec(tenants_per_plan=10, price_cap_share=0.3), PLANS)
    for plan in PLANS:
        assert sum(t.price_cap for t in w.tenants if t.plan == plan) == 3


def test_the_warm_up_plays_the_traces_start_before_time_zero() -> None:
    w = shape(TRACE, _spec(warmup_s=30.0), PLANS)
    warm = [a for a in w.arrivals if a.t < 0]
    assert len(warm) == 150
    assert w.counted == 3000
    assert [(a.input_tokens, a.output_tokens) for a in warm] == [
        (r.prompt_tokens, r.output_tokens) for r in TRACE[:150]
    ]
    assert warm[0].t == pytest.approx(-30.0)


def test_parse_mix() -> None:
    assert parse_mix("basic=0.7, pro=0.3") == {"basic": 0.7, "pro": 0.3}
    for bad, message in (
        ("basic", "not PLAN=SHARE"),
        ("=1", "not PLAN=SHARE"),
        ("basic=-1", "0 or more"),
        ("basic=0", "positive share"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_mix(bad)


def test_a_spike_needs_a_factor_above_one() -> None:
    with pytest.raises(ValueError, match="more than 1"):
        SpikeSpec(0, 10, 1.0)
