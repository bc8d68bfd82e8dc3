"""What a served request is billed in the backtest, in exact integer micro-USD.

`decision_bill` and `output_cap_tokens` compute what `serve_app.pricing.billing.bill`
and `output_tokens_within` compute (the ingress's bill and output cap), in integer
arithmetic instead of `Fraction`s (a backtest bills hundreds of thousands of requests;
tests/unit/backtest/test_charges.py holds them equal). The decision's terms are the
ratio `price_micro / list price of the prediction` (1 when the decision charged the
plan's rates as they are), so the bill of the real tokens is

    list = round_half_up(real_pico × price_micro / predicted_pico)   (or real_pico / 1e6)
    list = min(list, price cap)
    credit = round_half_up(list × credit_fraction) when the SLA was missed

`card_bill` is the static card: the real tokens at the card model's rates, whatever
model served them, with the same SLA credit.
"""

from __future__ import annotations

from fractions import Fraction

from serve_app.pricing.book import PlanTerms
from serve_app.pricing.price import PICO_PER_MICRO
from serve_app.pricing.types import Decision

_HALF = PICO_PER_MICRO // 2
UNLIMITED_TOKENS = 1 << 31
"""What `output_tokens_within` answers when output tokens are free."""


def credit_micro(list_price_micro: int, fraction: Fraction) -> int:
    """round_half_up(list price × fraction), in integers."""
    num, den = fraction.numerator, fraction.denominator
    return (2 * list_price_micro * num + den) // (2 * den)


def _credited(
    list_price: int, plan: PlanTerms, ttft_s: float, tpot_s: float, credit: Fraction
) -> tuple[int, int, bool]:
    met = ttft_s <= plan.ttft_target_s and tpot_s <= plan.tpot_target_s
    taken = 0 if met else credit_micro(list_price, credit)
    return list_price - taken, taken, met


def card_bill(
    rates: tuple[int, int],
    plan: PlanTerms,
    input_tokens: int,
    output_tokens: int,
    ttft_s: float,
    tpot_s: float,
    credit: Fraction,
) -> tuple[int, int, bool]:
    """(billed, credit, SLA met) at the card `rates` (micro-USD per 1M tokens)."""
    list_price = (input_tokens * rates[0] + output_tokens * rates[1] + _HALF) // PICO_PER_MICRO
    return _credited(list_price, plan, ttft_s, tpot_s, credit)


def _terms(decision: Decision, plan: PlanTerms) -> tuple[int, int, int | None, int]:
    """(input rate, output rate, price, predicted pico) of the served model; price None
    when the decision charged the rates as they are."""
    chosen = decision.chosen
    if chosen is None:
        raise ValueError("a throttled request is not billed")
    rates = plan.rates[chosen.model_id]
    in_rate, out_rate = rates.input_micro_per_1m, rates.output_micro_per_1m
    predicted = chosen.input_tokens * in_rate + chosen.predicted_output_tokens * out_rate
    price = decision.price_micro
    if not predicted or price == (predicted + _HALF) // PICO_PER_MICRO:
        return in_rate, out_rate, None, predicted
    return in_rate, out_rate, price, predicted


def decision_bill(
    decision: Decision,
    plan: PlanTerms,
    input_tokens: int,
    output_tokens: int,
    ttft_s: float,
    tpot_s: float,
    credit: Fraction,
    max_price_micro: int | None = None,
) -> tuple[int, int, bool]:
    """(billed, credit, SLA met): `bill(...)`'s billed_micro, credit_micro, sla_met."""
    in_rate, out_rate, price, predicted = _terms(decision, plan)
    pico = input_tokens * in_rate + output_tokens * out_rate
    if price is not None:
        list_price = (2 * pico * price + predicted) // (2 * predicted)
    else:
        list_price = (pico + _HALF) // PICO_PER_MICRO
    if max_price_micro is not None and list_price > max_price_micro:
        list_price = max_price_micro
    return _credited(list_price, plan, ttft_s, tpot_s, credit)


def output_cap_tokens(decision: Decision, plan: PlanTerms, cap_micro: int) -> int:
    """`output_tokens_within(decision, plan, cap_micro)`: the most output tokens whose
    price, with the prompt, stays within the cap at the decision's terms."""
    in_rate, out_rate, price, predicted = _terms(decision, plan)
    chosen = decision.chosen
    assert chosen is not None
    if price is not None:
        if price <= 0:
            return 0
        # budget = cap / terms = cap × predicted / price (pico-USD)
        left_scaled = cap_micro * predicted - chosen.input_tokens * in_rate * price
        if left_scaled <= 0 or out_rate <= 0:
            return 0 if left_scaled <= 0 else UNLIMITED_TOKENS
        return left_scaled // (price * out_rate)
    left = cap_micro * PICO_PER_MICRO - chosen.input_tokens * in_rate
    if left <= 0 or out_rate <= 0:
        return 0 if left <= 0 else UNLIMITED_TOKENS
    return left // out_rate
