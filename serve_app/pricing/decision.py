"""The routing decision: quote every candidate model, then allow, reroute, surcharge,
accept below the floor, or throttle, by the plan's policy.

One pure function, `decide`, serves both `/v1/quote` and the serving path, so a quote
and the decision taken for the same request and state always agree.

Rules, in order:
1. The candidates are the requested model (plus, when the plan allows substitution,
   every model of equal or higher quality tier the plan sells), or the models of the
   requested alias that the plan sells; only models that serve the request's endpoint
   (chat, completions, embeddings: `policy/capabilities.py`) are candidates.
2. A candidate is feasible when it serves every feature the request asks for (tools,
   logprobs, n, ...), fits its context window, can get capacity, meets the SLA (TTFT and
   TPOT; embeddings have no latency promise), stays within the client's price cap and
   meets the margin floor. When no candidate serves a feature, the request is refused
   (`UnsupportedFeature`, naming the feature and the model).
3. Requested model feasible → allow. Alias → allow the feasible candidate with the best
   margin. A substitute for a named model is priced at most what the named model would
   cost (unless the client's price cap allows more): no surprise costs. Otherwise the
   plan's `on_infeasible` chain, in order: reroute (the best-margin feasible
   substitute, never of lower tier), surcharge (the cheapest candidate that reaches the
   floor within `surge_cap` and the client's price cap; no cap, no surcharge), accept
   (serve below the floor, latency-feasible first), throttle (Retry-After = predicted
   seconds until a candidate is feasible).
Ties break on lower predicted latency, then model id, so the result is deterministic.

Several choices (`PriceRequest.choices`) multiply the predicted and worst-case output:
the engine's usage counts every choice's tokens. Embeddings are priced per input token
at the plan's embedding price, with no output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from serve_app.errors import (
    ContextWindowError,
    ModelNotInPlanError,
    UnknownModelError,
    UnsupportedFeature,
)
from serve_app.policy.capabilities import DESCRIPTIONS, Capability
from serve_app.policy.schema import InfeasibleAction
from serve_app.pricing.book import ModelProfile, PlanTerms, PriceBook
from serve_app.pricing.cost import estimate
from serve_app.pricing.price import PICO_PER_MICRO, floor_price_micro, margin
from serve_app.pricing.types import (
    HARD_INFEASIBILITIES,
    NO_REPLICAS,
    Action,
    CandidateQuote,
    ClusterSnapshot,
    Decision,
    Infeasibility,
    PriceRequest,
    Reason,
)
from serve_app.pricing.window import CostBasis, WindowMargin, least_price_micro, margin_ok

HALF_MICRO = PICO_PER_MICRO // 2


def decide(
    request: PriceRequest,
    book: PriceBook,
    plan_id: str,
    snapshot: ClusterSnapshot,
    *,
    basis: CostBasis | None = None,
    windows: Mapping[str, WindowMargin] | None = None,
) -> Decision:
    """Quote the request on every candidate and decide what to do with it.

    `basis` (default: the plan's `cost_basis`) is the cost the margin check weighs;
    `windows` (per model id) are the realized margins the incremental check guards."""
    plan = book.plans[plan_id]
    primary, pool = _candidates(request, book, plan)
    margin_rule = _MarginRule(basis or plan.cost_basis, windows)
    quotes = _quote_all(request, primary, pool, plan, snapshot, margin_rule)
    unsupported = Infeasibility.UNSUPPORTED_FEATURE
    if all(unsupported in q.reasons for q in quotes):
        missing = min(request.features - pool[0].capabilities, key=lambda c: c.value)
        raise UnsupportedFeature(
            f"model '{request.model}' does not serve {DESCRIPTIONS[missing]}",
            feature=missing.value,
            model=request.model,
        )
    too_long = Infeasibility.CONTEXT_WINDOW_EXCEEDED
    if too_long in quotes[0].reasons and all(too_long in q.reasons for q in quotes):
        largest = max(m.context_window_tokens for m in pool)
        raise ContextWindowError(
            f"{request.input_tokens} prompt tokens plus max_tokens exceed the context "
            f"window of '{request.model}' ({largest} tokens)"
        )

    def done(
        action: Action,
        reason: Reason,
        chosen: CandidateQuote | None = None,
        price_micro: int | None = None,
        retry_after_s: float | None = None,
    ) -> Decision:
        base = 0 if chosen is None else chosen.price_micro
        charged = base if price_micro is None else price_micro
        return Decision(
            action=action,
            reason=reason,
            model_id=None if chosen is None else chosen.model_id,
            price_micro=charged,
            surcharge_multiplier=charged / base if base else 1.0,
            retry_after_s=retry_after_s,
            chosen=chosen,
            candidates=quotes,
            policy_version=book.version,
            endpoint=request.endpoint,
        )

    if primary is not None and not quotes[0].reasons:
        return done(Action.ALLOW, Reason.REQUESTED_FEASIBLE, quotes[0])
    if primary is None and (best := _best_margin([q for q in quotes if not q.reasons])):
        return done(Action.ALLOW, Reason.BEST_MARGIN, best)

    # What the fallback chain may choose from: the requested model alone, unless the
    # plan allows substitution or the request named an alias.
    scope = quotes if primary is None or plan.allows_substitution else quotes[:1]
    for action in plan.on_infeasible:
        if action is InfeasibleAction.REROUTE and primary is not None:
            if best := _best_margin([q for q in quotes[1:] if q.feasible]):
                return done(Action.REROUTE, Reason.REROUTED, best)
        elif action is InfeasibleAction.SURCHARGE:
            if surcharged := _surcharge(scope, plan, request.max_price_micro):
                return done(Action.SURCHARGE, Reason.SURCHARGED, *surcharged)
        elif action is InfeasibleAction.ACCEPT:
            servable = [q for q in scope if HARD_INFEASIBILITIES.isdisjoint(q.reasons)]
            if best := _best_margin([q for q in servable if not _misses_sla(q)]):
                return done(Action.ACCEPT_BELOW_FLOOR, Reason.ACCEPTED_BELOW_FLOOR, best)
            if servable:
                fastest = min(servable, key=lambda q: (q.total_s, q.model_id))
                return done(Action.ACCEPT_BELOW_FLOOR, Reason.ACCEPTED_SLA_AT_RISK, fastest)
    reason, retry_after_s = _throttle(scope, plan)
    return done(Action.THROTTLE, reason, retry_after_s=retry_after_s)


class _MarginRule(NamedTuple):
    """How a candidate's margin is checked: on which cost, against which windows."""

    basis: CostBasis
    windows: Mapping[str, WindowMargin] | None


def _quote_all(
    request: PriceRequest,
    primary: ModelProfile | None,
    pool: Sequence[ModelProfile],
    plan: PlanTerms,
    snapshot: ClusterSnapshot,
    rule: _MarginRule,
) -> tuple[CandidateQuote, ...]:
    """Quote every candidate. No surprise costs: when the client named a model, a
    substitute is priced at most what the requested model would cost, unless the
    client's price cap allows more; its margin and feasibility use that price."""
    if primary is None:
        return tuple([quote(request, model, plan, snapshot, None, rule) for model in pool])
    first = quote(request, primary, plan, snapshot, None, rule)
    cap = request.max_price_micro or 0
    ceiling = (max(first.price_micro, cap), max(first.worst_case_price_micro, cap))
    return (
        first,
        *(quote(request, model, plan, snapshot, ceiling, rule) for model in pool[1:]),
    )


def quote(
    request: PriceRequest,
    model: ModelProfile,
    plan: PlanTerms,
    snapshot: ClusterSnapshot,
    price_ceiling_micro: tuple[int, int] | None = None,
    rule: _MarginRule | None = None,
) -> CandidateQuote:
    """Predicted latency, cost, price, margin and feasibility of the request on `model`.

    `price_ceiling_micro` (expected, worst case) caps the price of a substitute model;
    `rule` says which cost the margin check weighs (default: the plan's basis, no window).
    """
    load = snapshot.models.get(model.id, NO_REPLICAS)
    embedding = request.endpoint is Capability.EMBEDDINGS
    rates = plan.rates_for(request.endpoint)[model.id]
    input_tokens = request.input_tokens
    max_tokens = request.max_tokens
    output_cap = model.max_output_tokens
    if max_tokens is not None and max_tokens < output_cap:
        output_cap = max_tokens
    room = model.context_window_tokens - input_tokens
    if room < output_cap:
        output_cap = room if room > 1 else 1
    history = request.output_history.get(model.id) if request.output_history else None
    output_tokens = model.default_output_tokens if history is None else round(history)
    if output_tokens > output_cap:
        output_tokens = output_cap
    if output_tokens < 1:
        output_tokens = 1
    if embedding:  # no output: the input tokens are the work and the price
        output_tokens = output_cap = 0
    elif request.choices > 1:  # each choice generates its own output
        output_tokens *= request.choices
        output_cap *= request.choices

    # One unpack: NamedTuple field access is a property call each (per candidate).
    (_, start_s, queue_ahead, batch, _, ttft_s, tpot_s, total_s, cost_usd, warm, added_usd) = (
        estimate(model, load, input_tokens, output_tokens)
    )
    in_rate, out_rate = rates.input_micro_per_1m, rates.output_micro_per_1m
    pico = input_tokens * in_rate + output_tokens * out_rate
    # pico_to_micro and margin, inlined (this runs per candidate per request).
    worst_case = (input_tokens * in_rate + output_cap * out_rate + HALF_MICRO) // PICO_PER_MICRO
    if price_ceiling_micro is not None:
        pico = min(pico, price_ceiling_micro[0] * PICO_PER_MICRO)
        worst_case = min(worst_case, price_ceiling_micro[1])
    price = (pico + HALF_MICRO) // PICO_PER_MICRO
    gross_margin = 1.0 - cost_usd * 1e12 / pico if pico > 0 else margin(pico, cost_usd)

    reasons: tuple[Infeasibility, ...] = ()
    if request.features and not request.features <= model.capabilities:
        reasons += (Infeasibility.UNSUPPORTED_FEATURE,)
    if input_tokens + (0 if embedding else max_tokens or 1) > model.context_window_tokens:
        reasons += (Infeasibility.CONTEXT_WINDOW_EXCEEDED,)
    if not load.available:
        reasons += (Infeasibility.NO_CAPACITY,)
    # Embeddings carry no latency promise (the SLA's TTFT and TPOT are a generation's).
    if ttft_s > plan.ttft_target_s and not embedding:
        reasons += (Infeasibility.TTFT_OVER_SLA,)
    if tpot_s > plan.tpot_target_s and not embedding:
        reasons += (Infeasibility.TPOT_OVER_SLA,)
    if request.max_price_micro is not None and price > request.max_price_micro:
        reasons += (Infeasibility.OVER_PRICE_CAP,)
    # The margin check, on the decision's cost basis; the least price that would pass
    # it (what a surcharge asks) is worked out only for a candidate that fails it.
    incremental_micro = round(added_usd * 1e6)
    least_price = price
    if (rule.basis if rule else plan.cost_basis) is CostBasis.ALLOCATED:
        if gross_margin < plan.margin_floor:
            reasons += (Infeasibility.MARGIN_BELOW_FLOOR,)
            least_price = floor_price_micro(round(cost_usd * 1e6) / 1e6, plan.margin_floor)
    else:
        window = rule.windows.get(model.id) if rule and rule.windows else None
        if not margin_ok(price, incremental_micro, plan.margin_floor, window):
            reasons += (Infeasibility.MARGIN_BELOW_FLOOR,)
            least_price = least_price_micro(incremental_micro, plan.margin_floor, window)

    return CandidateQuote(
        model.id,
        model.quality_tier,
        input_tokens,
        output_tokens,
        ttft_s,
        tpot_s,
        total_s,
        round(cost_usd * 1e6),
        price,
        worst_case,
        gross_margin,
        reasons,
        queue_ahead,
        batch,
        warm,
        len(load.replicas) - warm,
        start_s,
        incremental_micro,
        least_price,
    )


def _candidates(
    request: PriceRequest, book: PriceBook, plan: PlanTerms
) -> tuple[ModelProfile | None, list[ModelProfile]]:
    """(the requested model or None for an alias, the candidate models in order): the
    plan's models that serve the request's endpoint (a substitute or an alias member
    that does not is no candidate at all)."""
    name, endpoint = request.model, request.endpoint
    rates = plan.rates_for(endpoint)
    model = book.models.get(name)
    if model is not None:
        if endpoint not in model.capabilities:
            raise UnsupportedFeature(
                f"model '{name}' does not serve {DESCRIPTIONS[endpoint]}",
                feature=endpoint.value,
                model=name,
            )
        if model.id not in rates:
            what = "for embeddings " if endpoint is Capability.EMBEDDINGS else ""
            raise ModelNotInPlanError(f"model '{name}' is not available {what}on your plan")
        pool = [model]
        if plan.allows_substitution:
            pool += sorted(
                (
                    m
                    for m in book.models.values()
                    if m.id != model.id
                    and m.id in rates
                    and endpoint in m.capabilities
                    and m.quality_tier >= model.quality_tier
                ),
                key=lambda m: (m.quality_tier, m.id),
            )
        return model, pool
    alias = book.routes.get(name)
    if alias is None:
        raise UnknownModelError(f"model '{name}' does not exist")
    sold = [book.models[m] for m in alias if m in plan.rates or m in plan.embedding_rates]
    if sold and not any(endpoint in m.capabilities for m in sold):
        raise UnsupportedFeature(
            f"no model of '{name}' serves {DESCRIPTIONS[endpoint]}",
            feature=endpoint.value,
            model=name,
        )
    pool = [m for m in sold if m.id in rates and endpoint in m.capabilities]
    if not pool:
        raise ModelNotInPlanError(f"no model of '{name}' is available on your plan")
    return None, pool


def _best_margin(quotes: Sequence[CandidateQuote]) -> CandidateQuote | None:
    """Highest margin, then lowest predicted latency, then model id."""
    return min(quotes, key=lambda q: (-q.margin, q.total_s, q.model_id), default=None)


def _misses_sla(q: CandidateQuote) -> bool:
    return Infeasibility.TTFT_OVER_SLA in q.reasons or Infeasibility.TPOT_OVER_SLA in q.reasons


def _surcharge(
    scope: Sequence[CandidateQuote], plan: PlanTerms, cap_micro: int | None
) -> tuple[CandidateQuote, int] | None:
    """The candidate whose floor-meeting price is lowest, if within surge_cap and the cap.

    Only a candidate whose one problem is its margin can be surcharged: a higher price
    fixes neither latency nor capacity. No surprise costs: a surcharge needs the
    client's price cap, and never exceeds it.
    """
    if cap_micro is None:
        return None
    options: list[tuple[int, float, str, CandidateQuote]] = []
    for q in scope:
        if q.reasons != (Infeasibility.MARGIN_BELOW_FLOOR,) or q.price_micro <= 0:
            continue
        price = max(q.price_micro, q.least_price_micro)
        if price <= q.price_micro * plan.surge_cap and price <= cap_micro:
            options.append((price, q.total_s, q.model_id, q))
    if not options:
        return None
    price, _, _, q = min(options)
    return q, price


def _throttle(scope: Sequence[CandidateQuote], plan: PlanTerms) -> tuple[Reason, float | None]:
    """Why nothing can be served now, and the predicted seconds until something can."""
    waits = [w for q in scope if (w := _seconds_until_feasible(q, plan)) is not None]
    if waits:
        return Reason.NO_FEASIBLE_CANDIDATE, min(
            max(min(waits), plan.throttle_retry_after_s), plan.max_retry_after_s
        )
    if all(Infeasibility.NO_CAPACITY in q.reasons for q in scope):
        return Reason.NO_CAPACITY, None
    return Reason.PRICE_CAP_EXCEEDED, None


def _seconds_until_feasible(q: CandidateQuote, plan: PlanTerms) -> float | None:
    """Predicted wait until `q` is feasible; None when waiting cannot help."""
    if not HARD_INFEASIBILITIES.isdisjoint(q.reasons):
        return None
    wait = 0.0
    if Infeasibility.TTFT_OVER_SLA in q.reasons:
        wait = q.ttft_s - plan.ttft_target_s
    if q.cold_start_remaining_s > 0:  # the start wait and the start's cost share end together
        wait = max(wait, q.cold_start_remaining_s)
    if Infeasibility.TPOT_OVER_SLA in q.reasons or Infeasibility.MARGIN_BELOW_FLOOR in q.reasons:
        wait = max(wait, plan.throttle_retry_after_s)
    return wait
