"""What a served request is billed, from its verified token counts and latency (pure).

The decision quoted a price for predicted tokens; the bill uses the real ones at the
same terms: the plan's rates for the served model, scaled by whatever the decision
applied (a surcharge lifts it, a substitute's price ceiling lowers it). A request that
missed the SLA (TTFT or TPOT over target) is billed with the plan's credit already
taken off, and never more than the client's price cap. Embeddings are billed per input
token at the plan's embedding price and carry no latency promise (never credited).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from serve_app.policy.capabilities import Capability
from serve_app.pricing.book import PlanTerms, Rates
from serve_app.pricing.price import pico_to_micro
from serve_app.pricing.types import Decision


@dataclass(frozen=True, slots=True)
class Bill:
    list_price_micro: int
    """Real tokens at the plan's rates and the decision's terms, before any credit."""
    credit_micro: int
    billed_micro: int
    sla_met: bool


def bill(
    decision: Decision,
    plan: PlanTerms,
    *,
    input_tokens: int,
    output_tokens: int,
    ttft_s: float,
    tpot_s: float,
    credit_fraction: Fraction,
    max_price_micro: int | None = None,
) -> Bill:
    """Bill a served request. `decision` must have served it (`decision.chosen` set)."""
    if decision.chosen is None:
        raise ValueError("a throttled request is not billed")
    rates = _rates(decision, plan)
    pico = input_tokens * rates.input_micro_per_1m + output_tokens * rates.output_micro_per_1m
    list_price = _round_half_up(Fraction(pico) * _terms(decision, plan) / 1_000_000)
    if max_price_micro is not None:
        list_price = min(list_price, max_price_micro)
    sla_met = decision.endpoint is Capability.EMBEDDINGS or (
        ttft_s <= plan.ttft_target_s and tpot_s <= plan.tpot_target_s
    )
    credit = 0 if sla_met else _round_half_up(list_price * credit_fraction)
    return Bill(list_price, credit, list_price - credit, sla_met)


def _rates(decision: Decision, plan: PlanTerms) -> Rates:
    """The plan's rates for the decision's model and endpoint."""
    chosen = decision.chosen
    assert chosen is not None
    return plan.rates_for(decision.endpoint)[chosen.model_id]


def _terms(decision: Decision, plan: PlanTerms) -> Fraction:
    """The decision's terms as an exact ratio: charged price / list price of the
    prediction. A price the decision did not change (only rounded) is the plan's rates
    as they are."""
    chosen = decision.chosen
    assert chosen is not None
    rates = _rates(decision, plan)
    predicted_pico = (
        chosen.input_tokens * rates.input_micro_per_1m
        + chosen.predicted_output_tokens * rates.output_micro_per_1m
    )
    if predicted_pico and decision.price_micro != pico_to_micro(predicted_pico):
        return Fraction(decision.price_micro * 1_000_000, predicted_pico)
    return Fraction(1)


def output_tokens_within(decision: Decision, plan: PlanTerms, cap_micro: int) -> int:
    """The most output tokens whose price, with the prompt, stays within `cap_micro` at
    the decision's terms (0 when the prompt alone reaches the cap).

    A price cap bounds the worst case, not the prediction: the ingress stops generation
    here, so a request billed at its cap never got more output than the cap pays for."""
    chosen = decision.chosen
    if chosen is None:
        raise ValueError("a throttled request has no output")
    rates = _rates(decision, plan)
    terms = _terms(decision, plan)
    # price = round_half_up(pico * terms / 1e6) <= cap  <=  pico * terms <= cap * 1e6
    budget_pico = Fraction(cap_micro * 1_000_000) / terms
    left = budget_pico - chosen.input_tokens * rates.input_micro_per_1m
    if left <= 0 or rates.output_micro_per_1m <= 0:
        return 0 if left <= 0 else 1 << 31
    return max(0, math.floor(left / rates.output_micro_per_1m))


def _round_half_up(value: Fraction) -> int:
    return int((value + Fraction(1, 2)) // 1)
