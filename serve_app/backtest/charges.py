"""What a served request is billed in the backtest, in exact integer micro-USD.

`decision_bill` is `serve_app.pricing.billing.bill` (the ingress's bill) with a fast
path: when the decision charged the plan's rates as they are and the price stays within
the client's cap, the bill is `round_half_up(tokens × rates)` minus the SLA credit, in
integers (no `Fraction`), which is what `bill` computes then; every other case goes
through `bill` itself. `output_cap_tokens` is `output_tokens_within` the same way.
`card_bill` is the static card: the real tokens at the card model's rates, whatever
model served them, with the same SLA credit.
"""

from __future__ import annotations

from fractions import Fraction

from serve_app.pricing.billing import bill, output_tokens_within
from serve_app.pricing.book import PlanTerms
from serve_app.pricing.price import PICO_PER_MICRO
from serve_app.pricing.types import Decision

_HALF = PICO_PER_MICRO // 2


def credit_micro(list_price_micro: int, fraction: Fraction) -> int:
    """round_half_up(list price × fraction), in integers."""
    num, den = fraction.numerator, fraction.denominator
    return (2 * list_price_micro * num + den) // (2 * den)


def _sla_met(plan: PlanTerms, ttft_s: float, tpot_s: float) -> bool:
    return ttft_s <= plan.ttft_target_s and tpot_s <= plan.tpot_target_s


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
    met = _sla_met(plan, ttft_s, tpot_s)
    taken = 0 if met else credit_micro(list_price, credit)
    return list_price - taken, taken, met


def _list_terms(decision: Decision, plan: PlanTerms) -> tuple[int, int] | None:
    """The served model's rates when the decision charges them as they are (its price is
    the prediction's list price); None when it changed them (surcharge, price ceiling)."""
    chosen = decision.chosen
    if chosen is None:
        raise ValueError("a throttled request is not billed")
    rates = plan.rates[chosen.model_id]
    in_rate, out_rate = rates.input_micro_per_1m, rates.output_micro_per_1m
    predicted = chosen.input_tokens * in_rate + chosen.predicted_output_tokens * out_rate
    if not predicted or decision.price_micro == (predicted + _HALF) // PICO_PER_MICRO:
        return in_rate, out_rate
    return None


def output_cap_tokens(decision: Decision, plan: PlanTerms, cap_micro: int) -> int:
    """`output_tokens_within(decision, plan, cap_micro)`, in integers when the decision
    charges the list rates."""
    rates = _list_terms(decision, plan)
    if rates is None:
        return output_tokens_within(decision, plan, cap_micro)
    in_rate, out_rate = rates
    chosen = decision.chosen
    assert chosen is not None
    left = cap_micro * PICO_PER_MICRO - chosen.input_tokens * in_rate
    if left <= 0 or out_rate <= 0:
        return 0 if left <= 0 else 1 << 31
    return left // out_rate


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
    """(billed, credit, SLA met) as `bill` computes them."""
    rates = _list_terms(decision, plan)
    if rates is not None:
        list_price = (input_tokens * rates[0] + output_tokens * rates[1] + _HALF) // PICO_PER_MICRO
        if max_price_micro is None or list_price <= max_price_micro:
            met = _sla_met(plan, ttft_s, tpot_s)
            taken = 0 if met else credit_micro(list_price, credit)
            return list_price - taken, taken, met
    result = bill(
        decision,
        plan,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        ttft_s=ttft_s,
        tpot_s=tpot_s,
        credit_fraction=credit,
        max_price_micro=max_price_micro,
    )
    return result.billed_micro, result.credit_micro, result.sla_met
