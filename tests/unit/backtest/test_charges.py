"""The backtest's integer bills equal `bill` and `output_tokens_within` (Fractions)."""

from __future__ import annotations

from fractions import Fraction
from types import MappingProxyType

from hypothesis import given, settings, strategies as st

from serve_app.backtest.charges import card_bill, decision_bill, output_cap_tokens
from serve_app.policy.schema import InfeasibleAction
from serve_app.pricing import Action, CandidateQuote, Decision, Reason
from serve_app.pricing.billing import bill, output_tokens_within
from serve_app.pricing.book import PlanTerms, Rates


def _plan(in_rate: int, out_rate: int) -> PlanTerms:
    return PlanTerms(
        id="p",
        rates=MappingProxyType({"m": Rates(in_rate, out_rate)}),
        margin_floor=0.35,
        surge_cap=1.5,
        on_infeasible=(InfeasibleAction.THROTTLE,),
        allows_substitution=False,
        ttft_target_s=1.0,
        tpot_target_s=0.05,
        throttle_retry_after_s=1.0,
        max_retry_after_s=30.0,
    )


def _decision(plan: PlanTerms, input_tokens: int, predicted: int, price: int | None) -> Decision:
    rates = plan.rates["m"]
    listed = input_tokens * rates.input_micro_per_1m + predicted * rates.output_micro_per_1m
    list_price = (listed + 500_000) // 1_000_000
    charged = list_price if price is None else price
    quote = CandidateQuote(
        "m", 1, input_tokens, predicted, 0.1, 0.02, 1.0, 10, list_price, list_price,
        0.5, (), 0, 0, 1, 0, 0.0,
    )  # fmt: skip
    return Decision(
        Action.ALLOW, Reason.REQUESTED_FEASIBLE, "m", charged, 1.0, None, quote, (quote,), "v"
    )


rates = st.integers(0, 20_000_000)
tokens = st.integers(0, 20_000)


@settings(max_examples=400, deadline=None)
@given(
    in_rate=rates,
    out_rate=rates,
    input_tokens=tokens,
    predicted=st.integers(1, 4_000),
    price=st.none() | st.integers(0, 50_000),
    output_tokens=tokens,
    ttft=st.sampled_from([0.5, 2.0]),
    credit=st.sampled_from([Fraction(0), Fraction(1, 10), Fraction(1, 4), Fraction(1, 3)]),
    cap=st.none() | st.integers(0, 50_000),
)
def test_decision_bill_is_bill(
    in_rate: int,
    out_rate: int,
    input_tokens: int,
    predicted: int,
    price: int | None,
    output_tokens: int,
    ttft: float,
    credit: Fraction,
    cap: int | None,
) -> None:
    plan = _plan(in_rate, out_rate)
    decision = _decision(plan, input_tokens, predicted, price)
    expected = bill(
        decision,
        plan,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        ttft_s=ttft,
        tpot_s=0.01,
        credit_fraction=credit,
        max_price_micro=cap,
    )
    got = decision_bill(decision, plan, input_tokens, output_tokens, ttft, 0.01, credit, cap)
    assert got == (expected.billed_micro, expected.credit_micro, expected.sla_met)
    if cap is not None and decision.price_micro > 0:
        assert output_cap_tokens(decision, plan, cap) == output_tokens_within(decision, plan, cap)


def test_the_card_bills_the_card_models_rates() -> None:
    plan = _plan(100_000, 700_000)
    assert card_bill((100_000, 700_000), plan, 1000, 200, 0.5, 0.01, Fraction(1, 10)) == (
        240,
        0,
        True,
    )
    # SLA missed: 10% off, rounded half up (240 * 0.1 = 24).
    assert card_bill((100_000, 700_000), plan, 1000, 200, 1.5, 0.01, Fraction(1, 10)) == (
        216,
        24,
        False,
    )
