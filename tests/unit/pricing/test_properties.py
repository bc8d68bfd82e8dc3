"""The laws users rely on, checked on generated policies, states and requests."""

from __future__ import annotations

import dataclasses

from hypothesis import assume, event, given, settings, strategies as st

from serve_app.errors import PricingError
from serve_app.pricing import (
    Action,
    ClusterSnapshot,
    CostBasis,
    Decision,
    Infeasibility,
    ModelLoad,
    PriceBook,
    PriceRequest,
    ReplicaLoad,
    decide,
    quote,
)
from serve_app.pricing.cost import estimate
from serve_app.pricing.price import PICO_PER_MICRO, margin
from tests.unit.pricing.strategies import books, model_loads, replica_loads, requests, snapshots

PLAN = "p"


def _decide_or_none(
    request: PriceRequest, book: PriceBook, snapshot: ClusterSnapshot, basis: bool = False
) -> Decision | None:
    """The decision (None when the request cannot be priced); `basis`: incremental."""
    try:
        return decide(request, book, PLAN, snapshot, basis=CostBasis.INCREMENTAL if basis else None)
    except PricingError:
        return None


@given(
    book=books(),
    load=model_loads,
    extra=st.integers(1, 200),
    which=st.integers(0, 3),
    tokens=st.tuples(st.integers(1, 4000), st.integers(1, 2000)),
)
def test_more_queue_ahead_never_lowers_predicted_latency(
    book: PriceBook, load: ModelLoad, extra: int, which: int, tokens: tuple[int, int]
) -> None:
    assume(load.replicas)  # queue needs a replica to wait on
    model = next(iter(book.models.values()))
    index = which % len(load.replicas)
    replicas = list(load.replicas)
    replicas[index] = dataclasses.replace(replicas[index], queued=replicas[index].queued + extra)
    busier = dataclasses.replace(load, replicas=tuple(replicas))
    before = estimate(model, load, *tokens)
    after = estimate(model, busier, *tokens)
    assert after.total_s >= before.total_s - 1e-9
    if len(load.replicas) == 1:
        assert after.ttft_s >= before.ttft_s - 1e-9


@given(
    book=books(),
    running=st.integers(0, 300),
    extra=st.integers(1, 300),
    failure_rate=st.floats(0, 0.5),
    tokens=st.tuples(st.integers(1, 4000), st.integers(1, 2000)),
)
def test_fuller_batch_never_raises_cost_per_token(
    book: PriceBook, running: int, extra: int, failure_rate: float, tokens: tuple[int, int]
) -> None:
    model = next(iter(book.models.values()))

    def cost(batch: int) -> float:
        load = ModelLoad((ReplicaLoad(running=batch),), failure_rate=failure_rate)
        return estimate(model, load, *tokens).cost_usd

    assert cost(running + extra) <= cost(running) * (1 + 1e-12)


@given(book=books(), replicas=st.lists(replica_loads, max_size=4), tokens=st.integers(1, 4000))
def test_no_warm_replica_means_latency_includes_the_remaining_cold_start(
    book: PriceBook, replicas: list[ReplicaLoad], tokens: int
) -> None:
    model = next(iter(book.models.values()))
    cold = tuple(dataclasses.replace(r, warm=False) for r in replicas)
    est = estimate(model, ModelLoad(cold), tokens, 10)
    remaining = min((r.start_remaining_s for r in cold), default=model.cold_start_s)
    assert est.cold
    assert est.ttft_s >= remaining
    assert est.total_s >= remaining


@settings(max_examples=300)
@given(data=st.data(), book=books())
def test_decision_laws(data: st.DataObject, book: PriceBook) -> None:
    request = data.draw(requests(book))
    snapshot = data.draw(snapshots(book))
    decision = _decide_or_none(request, book, snapshot)
    if decision is None:
        return
    plan = book.plans[PLAN]
    event(decision.action.value)

    # The same inputs give the same decision.
    assert decide(request, book, PLAN, snapshot) == decision

    # Price and cost are never negative.
    for q in decision.candidates:
        assert q.price_micro >= 0
        assert q.cost_micro >= 0
        assert q.worst_case_price_micro >= q.price_micro or q.predicted_output_tokens == 0
    assert decision.price_micro >= 0

    if decision.chosen is None:
        assert decision.action is Action.THROTTLE
        return
    chosen = decision.chosen
    charged_margin = margin(decision.price_micro * PICO_PER_MICRO, chosen.cost_micro / 1e6)

    # Serving below the floor needs a plan that says accept-below-floor (on the plan's
    # cost basis: the allocated share, or what serving adds).
    if decision.action is not Action.ACCEPT_BELOW_FLOOR:
        if plan.cost_basis is CostBasis.ALLOCATED:
            assert chosen.margin >= plan.margin_floor or charged_margin >= plan.margin_floor
        else:
            added = chosen.incremental_cost_micro
            assert decision.price_micro - added >= plan.margin_floor * decision.price_micro
    else:
        assert plan.on_infeasible[-1].value == "accept"

    # A named model is never replaced by a lower quality tier.
    requested = book.models.get(request.model)
    if requested is not None:
        assert chosen.quality_tier >= requested.quality_tier
    if decision.action is Action.REROUTE:
        assert requested is not None
        assert chosen.model_id != requested.id

    # A surcharge stays within the plan's surge cap and the client's price cap.
    if decision.action is Action.SURCHARGE:
        assert request.max_price_micro is not None
        assert decision.price_micro <= request.max_price_micro
        assert decision.price_micro <= chosen.price_micro * plan.surge_cap + 1

    # No surprise costs: never above the client's cap.
    if request.max_price_micro is not None:
        assert decision.price_micro <= request.max_price_micro


@given(data=st.data(), book=books())
def test_a_warm_idle_replica_never_throttles_a_list_price_request_for_margin(
    data: st.DataObject, book: PriceBook
) -> None:
    """Incremental basis: an idle replica is paid whether or not the request is served,
    so with no scale-up to force, a request at the plan's list price passes the margin
    check (it may still miss the SLA or the context window)."""
    request = data.draw(requests(book))
    model = book.models.get(request.model)
    if model is None:
        return
    snapshot = ClusterSnapshot({model.id: ModelLoad((ReplicaLoad(running=0),))})
    at_list = dataclasses.replace(request, max_price_micro=None)
    decision = _decide_or_none(at_list, book, snapshot, basis=True)
    if decision is None:
        return
    assert Infeasibility.MARGIN_BELOW_FLOOR not in decision.candidates[0].reasons


@given(data=st.data(), book=books())
def test_quote_matches_the_decisions_candidate(data: st.DataObject, book: PriceBook) -> None:
    request = data.draw(requests(book))
    snapshot = data.draw(snapshots(book))
    decision = _decide_or_none(request, book, snapshot)
    if decision is None or request.model not in book.routes:
        return
    plan = book.plans[PLAN]
    for q in decision.candidates:
        assert quote(request, book.models[q.model_id], plan, snapshot) == q
