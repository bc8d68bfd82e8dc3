"""`bill`: verified tokens and latency at the decision's terms, in exact integers."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from serve_app.policy import load_policy_dict
from serve_app.pricing import (
    Action,
    ClusterSnapshot,
    CostBasis,
    Decision,
    ModelLoad,
    PriceBook,
    PriceRequest,
    ReplicaLoad,
    decide,
)
from serve_app.pricing.billing import bill
from tests.fakes import model_dict, plan_dict, policy_dict

# Micro-USD per 1M tokens: tier 1 is 150_000 in / 1_200_000 out; tier 2 costs more.
CARDS = {
    1: {"input_usd_per_1m_tokens": 0.15, "output_usd_per_1m_tokens": 1.20},
    2: {"input_usd_per_1m_tokens": 0.60, "output_usd_per_1m_tokens": 4.00},
}
SMALL_IN, SMALL_OUT = 150_000, 1_200_000
MID_IN, MID_OUT = 600_000, 4_000_000


POLICY = policy_dict(
    version="billing-test",
    models=[
        model_dict("small", quality_tier=1, usd_per_hour=0.2),
        model_dict("mid", quality_tier=2, usd_per_hour=0.3),
    ],
    plans=[
        plan_dict(
            "std",
            prices_by_tier=CARDS,
            surge_cap=5.0,
            on_infeasible=["reroute", "surcharge", "throttle"],
        )
    ],
)
BOOK = PriceBook.from_policy(load_policy_dict(POLICY).policy, "billing-test")
PLAN = BOOK.plans["std"]
CREDIT = Fraction(1, 10)

BUSY = ModelLoad((ReplicaLoad(running=8),))
IDLE = ModelLoad((ReplicaLoad(running=0),))
SWAMPED = ModelLoad((ReplicaLoad(running=10, queued=200),), mean_service_s=5.0)


def _decide(load: ModelLoad, mid: ModelLoad = SWAMPED, **kw: Any) -> Decision:
    """The decision on the allocated basis (idle replicas fall below the floor, so the
    surcharge and reroute paths are reachable with simple states)."""
    request = PriceRequest("small", input_tokens=kw.pop("input_tokens", 203), **kw)
    snapshot = ClusterSnapshot({"small": load, "mid": mid})
    return decide(request, BOOK, "std", snapshot, basis=CostBasis.ALLOCATED)


def _half_up(value: Fraction) -> int:
    return int((value + Fraction(1, 2)) // 1)


def _bill(decision: Decision, input_tokens: int, output_tokens: int, **kw: Any) -> Any:
    return bill(
        decision,
        PLAN,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        ttft_s=kw.pop("ttft_s", 0.5),
        tpot_s=kw.pop("tpot_s", 0.05),
        credit_fraction=kw.pop("credit_fraction", CREDIT),
        **kw,
    )


ALLOWED = _decide(BUSY)


def test_allowed_request_fixture_is_served_at_list_price() -> None:
    assert (ALLOWED.action, ALLOWED.model_id) == (Action.ALLOW, "small")
    # 203 prompt and 100 predicted tokens: 150.45 micro-USD, quoted 150.
    assert ALLOWED.price_micro == 150


@pytest.mark.parametrize(("input_tokens", "output_tokens"), [(203, 100), (203, 1000), (7, 3)])
def test_real_tokens_are_billed_at_the_plan_rates(input_tokens: int, output_tokens: int) -> None:
    b = _bill(ALLOWED, input_tokens, output_tokens)
    pico = input_tokens * SMALL_IN + output_tokens * SMALL_OUT
    assert b.list_price_micro == _half_up(Fraction(pico, 1_000_000))
    assert (b.credit_micro, b.billed_micro, b.sla_met) == (0, b.list_price_micro, True)


def test_allowed_request_is_not_overcharged_by_the_rounding_of_its_quote() -> None:
    d = _decide(BUSY, input_tokens=5)  # 5 + 100 predicted tokens: 120.75 micro-USD, quoted 121
    assert (d.action, d.price_micro) == (Action.ALLOW, 121)
    b = _bill(d, 5, 1024)  # 1229.55 micro-USD at the plan's rates
    assert b.list_price_micro == 1230


def test_a_bill_of_the_predicted_tokens_is_the_quoted_price() -> None:
    for decision in (ALLOWED, _decide(IDLE, max_price_micro=10_000), _decide(SWAMPED, mid=BUSY)):
        assert decision.chosen is not None
        chosen = decision.chosen
        b = _bill(decision, chosen.input_tokens, chosen.predicted_output_tokens)
        assert b.billed_micro == decision.price_micro, decision.action


def test_surcharged_decision_scales_the_bill_by_the_surcharge() -> None:
    d = _decide(IDLE, max_price_micro=10_000)
    assert d.action is Action.SURCHARGE
    assert d.chosen is not None
    predicted_pico = d.chosen.input_tokens * SMALL_IN + d.chosen.predicted_output_tokens * SMALL_OUT
    b = _bill(d, 203, 1000)
    real_pico = 203 * SMALL_IN + 1000 * SMALL_OUT
    assert b.list_price_micro == _half_up(Fraction(real_pico * d.price_micro, predicted_pico))
    assert b.list_price_micro > _half_up(Fraction(real_pico, 1_000_000))
    assert b.list_price_micro / _half_up(Fraction(real_pico, 1_000_000)) == pytest.approx(
        d.surcharge_multiplier, rel=0.01
    )


def test_substitute_priced_at_the_requested_models_ceiling_is_billed_down() -> None:
    d = _decide(SWAMPED, mid=BUSY)
    assert (d.action, d.model_id) == (Action.REROUTE, "mid")
    assert d.chosen is not None
    ceiling = d.candidates[0].price_micro  # what "small" would have cost
    assert d.price_micro == ceiling
    predicted_pico = d.chosen.input_tokens * MID_IN + d.chosen.predicted_output_tokens * MID_OUT
    assert predicted_pico > ceiling * 1_000_000  # mid's own rates would cost more
    b = _bill(d, 203, 1000)
    real_pico = 203 * MID_IN + 1000 * MID_OUT
    assert b.list_price_micro == _half_up(Fraction(real_pico * ceiling, predicted_pico))
    assert b.list_price_micro < _half_up(Fraction(real_pico, 1_000_000))


# ------------------------------------------------------------------ SLA credit


# 10 prompt and 103 output tokens: 1.5 + 123.6 = 125.1 micro-USD, billed 125.
LIST_125 = {"input_tokens": 10, "output_tokens": 103}


def test_sla_met_at_exactly_the_targets() -> None:
    b = _bill(ALLOWED, **LIST_125, ttft_s=1.0, tpot_s=0.1)
    assert (b.list_price_micro, b.credit_micro, b.billed_micro, b.sla_met) == (125, 0, 125, True)


@pytest.mark.parametrize(("ttft_s", "tpot_s"), [(1.001, 0.05), (0.5, 0.101), (3.0, 0.3)])
def test_missed_sla_takes_the_credit_off_rounded_half_up(ttft_s: float, tpot_s: float) -> None:
    b = _bill(ALLOWED, **LIST_125, ttft_s=ttft_s, tpot_s=tpot_s)
    # 10% of 125 = 12.5, rounded half up to 13.
    assert (b.list_price_micro, b.credit_micro, b.billed_micro, b.sla_met) == (125, 13, 112, False)


@pytest.mark.parametrize(
    ("fraction", "credit"),
    [(Fraction(0), 0), (Fraction(1, 4), 31), (Fraction(1, 2), 63), (Fraction(1), 125)],
)
def test_credit_fraction_is_applied_exactly(fraction: Fraction, credit: int) -> None:
    b = _bill(ALLOWED, **LIST_125, ttft_s=9.0, credit_fraction=fraction)
    assert (b.credit_micro, b.billed_micro) == (credit, 125 - credit)


def test_client_price_cap_caps_the_bill() -> None:
    b = _bill(ALLOWED, **LIST_125, max_price_micro=100)
    assert (b.list_price_micro, b.billed_micro) == (100, 100)


def test_price_cap_above_the_bill_changes_nothing() -> None:
    assert _bill(ALLOWED, **LIST_125, max_price_micro=10_000).billed_micro == 125


def test_credit_is_taken_off_the_capped_price() -> None:
    b = _bill(ALLOWED, **LIST_125, max_price_micro=100, ttft_s=5.0)
    assert (b.list_price_micro, b.credit_micro, b.billed_micro) == (100, 10, 90)


def test_zero_tokens_bill_nothing() -> None:
    b = _bill(ALLOWED, 0, 0)
    assert (b.list_price_micro, b.billed_micro) == (0, 0)


def test_throttled_decision_cannot_be_billed() -> None:
    d = _decide(SWAMPED)
    assert d.action is Action.THROTTLE
    with pytest.raises(ValueError, match="throttled"):
        _bill(d, 10, 10)
