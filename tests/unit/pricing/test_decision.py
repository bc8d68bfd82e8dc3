"""Each outcome of the decision, on a small hand-made policy."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.errors import ContextWindowError, ModelNotInPlanError, UnknownModelError
from serve_app.policy import load_policy_dict
from serve_app.pricing import (
    Action,
    ClusterSnapshot,
    CostBasis,
    Infeasibility,
    ModelLoad,
    PriceBook,
    PriceRequest,
    Reason,
    ReplicaLoad,
    WindowMargin,
    decide,
)
from serve_app.pricing.price import floor_price_micro, margin, pico_to_micro
from tests.fakes import model_dict, plan_dict, policy_dict

CARD = {"input_usd_per_1m_tokens": 0.5, "output_usd_per_1m_tokens": 5}


TIERS_1_TO_3 = {1: CARD, 2: CARD, 3: CARD}
POLICY = policy_dict(
    models=[
        model_dict(
            "small",
            quality_tier=1,
            usd_per_hour=1.0,
            cold_start_s=10,
            autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
        ),
        model_dict("mid", quality_tier=2, usd_per_hour=1.5, cold_start_s=10),
        model_dict("big", quality_tier=3, usd_per_hour=8.0, cold_start_s=60),
    ],
    routes={"auto": ["small", "mid", "big"], "top": ["big"]},
    plans=[
        plan_dict("strict", prices_by_tier=TIERS_1_TO_3, on_infeasible=["throttle"]),
        plan_dict("sub", prices_by_tier=TIERS_1_TO_3, on_infeasible=["reroute", "throttle"]),
        plan_dict(
            "surge",
            prices_by_tier=TIERS_1_TO_3,
            on_infeasible=["surcharge", "throttle"],
            surge_cap=3.0,
        ),
        plan_dict("premium", prices_by_tier=TIERS_1_TO_3, on_infeasible=["accept"]),
        plan_dict("narrow", prices_by_tier={1: CARD}, on_infeasible=["reroute", "throttle"]),
    ],
)
BOOK = PriceBook.from_policy(load_policy_dict(POLICY).policy, "test")

ALLOCATED = CostBasis.ALLOCATED
BUSY = ModelLoad((ReplicaLoad(running=8),))  # a fairly full batch: cheap per token
IDLE = ModelLoad((ReplicaLoad(running=0),))  # an idle replica: dear per token
SWAMPED = ModelLoad((ReplicaLoad(running=10, queued=200),), mean_service_s=5.0)
FULL = ModelLoad((ReplicaLoad(running=10),), mean_service_s=0.05)  # a full batch, no queue


def _snap(**loads: ModelLoad) -> ClusterSnapshot:
    return ClusterSnapshot(loads)


def _req(model: str = "small", **kw: Any) -> PriceRequest:
    return PriceRequest(model, input_tokens=kw.pop("input_tokens", 200), **kw)


def test_requested_model_feasible_is_allowed() -> None:
    d = decide(_req(), BOOK, "strict", _snap(small=BUSY))
    assert (d.action, d.reason, d.model_id) == (Action.ALLOW, Reason.REQUESTED_FEASIBLE, "small")
    assert d.price_micro == d.candidates[0].price_micro > 0
    assert d.candidates[0].margin >= 0.3


def test_alias_allows_the_feasible_candidate_with_best_margin() -> None:
    d = decide(_req("auto"), BOOK, "strict", _snap(small=BUSY, mid=BUSY, big=BUSY))
    assert (d.action, d.reason) == (Action.ALLOW, Reason.BEST_MARGIN)
    # Same price card for all three; the cheapest hardware has the best margin.
    assert d.model_id == "small"
    assert [q.model_id for q in d.candidates] == ["small", "mid", "big"]


def test_swamped_requested_model_is_rerouted_to_an_equal_or_better_model() -> None:
    d = decide(_req(), BOOK, "sub", _snap(small=SWAMPED, mid=BUSY, big=IDLE))
    assert Infeasibility.TTFT_OVER_SLA in d.candidates[0].reasons
    assert (d.action, d.reason, d.model_id) == (Action.REROUTE, Reason.REROUTED, "mid")
    # No surprise costs: never more than the requested model would have cost.
    assert d.price_micro <= d.candidates[0].price_micro


def test_substitute_is_priced_at_most_the_requested_models_price() -> None:
    book = PriceBook.from_policy(
        load_policy_dict(
            {
                **POLICY,
                "plans": [
                    plan_dict(
                        "sub",
                        on_infeasible=["reroute", "throttle"],
                        prices_by_tier={
                            1: CARD,
                            2: {"input_usd_per_1m_tokens": 1, "output_usd_per_1m_tokens": 10},
                        },
                    )
                ],
            }
        ).policy
    )
    d = decide(_req(), book, "sub", _snap(small=SWAMPED, mid=BUSY))
    assert d.action is Action.REROUTE
    assert d.price_micro == d.candidates[0].price_micro
    # With a price cap, the client agrees to pay the substitute's own price.
    capped = decide(_req(max_price_micro=10_000), book, "sub", _snap(small=SWAMPED, mid=BUSY))
    assert capped.action is Action.REROUTE
    assert capped.price_micro > capped.candidates[0].price_micro


def test_without_substitution_only_the_requested_model_is_quoted_and_throttled() -> None:
    d = decide(_req(), BOOK, "strict", _snap(small=SWAMPED, mid=BUSY))
    assert [q.model_id for q in d.candidates] == ["small"]
    assert (d.action, d.reason, d.model_id) == (Action.THROTTLE, Reason.NO_FEASIBLE_CANDIDATE, None)
    assert d.price_micro == 0
    q = d.candidates[0]
    assert d.retry_after_s == pytest.approx(min(q.ttft_s - 1.0, 60.0))


def test_reroute_never_picks_a_lower_tier() -> None:
    d = decide(_req("mid"), BOOK, "sub", _snap(small=BUSY, mid=SWAMPED, big=SWAMPED))
    assert {q.model_id for q in d.candidates} == {"mid", "big"}
    assert d.action is Action.THROTTLE


def test_surcharge_lifts_the_price_to_the_floor_within_the_clients_cap() -> None:
    q = decide(_req(), BOOK, "strict", _snap(small=IDLE), basis=ALLOCATED).candidates[0]
    assert q.reasons == (Infeasibility.MARGIN_BELOW_FLOOR,)
    floor_price = floor_price_micro(q.cost_micro / 1e6, 0.3)
    d = decide(_req(max_price_micro=floor_price), BOOK, "surge", _snap(small=IDLE), basis=ALLOCATED)
    assert (d.action, d.reason, d.model_id) == (Action.SURCHARGE, Reason.SURCHARGED, "small")
    assert d.price_micro == floor_price
    assert margin(d.price_micro * 1_000_000, q.cost_micro / 1e6) >= 0.3
    assert 1 < d.surcharge_multiplier <= 3.0


def test_no_surcharge_without_a_price_cap_or_above_it() -> None:
    no_cap = decide(_req(), BOOK, "surge", _snap(small=IDLE), basis=ALLOCATED)
    assert no_cap.action is Action.THROTTLE
    q = no_cap.candidates[0]
    low_cap = floor_price_micro(q.cost_micro / 1e6, 0.3) - 1
    assert low_cap >= q.price_micro  # the cap allows the base price, not the surcharge
    below = decide(_req(max_price_micro=low_cap), BOOK, "surge", _snap(small=IDLE), basis=ALLOCATED)
    assert below.action is Action.THROTTLE


def test_premium_accepts_below_floor() -> None:
    d = decide(_req(), BOOK, "premium", _snap(small=IDLE), basis=ALLOCATED)
    assert (d.action, d.reason, d.model_id) == (
        Action.ACCEPT_BELOW_FLOOR,
        Reason.ACCEPTED_BELOW_FLOOR,
        "small",
    )
    assert d.chosen is not None
    assert d.chosen.margin < 0.3


def test_premium_accepts_a_late_request_with_the_sla_at_risk() -> None:
    d = decide(_req(), BOOK, "premium", _snap(small=SWAMPED))
    assert (d.action, d.reason) == (Action.ACCEPT_BELOW_FLOOR, Reason.ACCEPTED_SLA_AT_RISK)


def test_cold_model_quote_includes_start_and_retry_after_is_the_remaining_start() -> None:
    starting = ModelLoad((ReplicaLoad(warm=False, start_remaining_s=7.0),))
    d = decide(_req("top"), BOOK, "strict", _snap(big=starting))
    q = d.candidates[0]
    assert q.cold_start_remaining_s == 7.0
    assert q.ttft_s >= 7.0
    assert (q.warm_replicas, q.starting_replicas) == (0, 1)
    assert d.action is Action.THROTTLE
    assert d.retry_after_s == pytest.approx(7.0)


def test_scaled_to_zero_model_pays_a_share_of_the_cold_start() -> None:
    cold = decide(_req("top"), BOOK, "premium", _snap()).candidates[0]
    warm = decide(_req("top"), BOOK, "premium", _snap(big=IDLE)).candidates[0]
    share = 8.0 / 3600 * 60 / 10
    assert cold.cost_micro - warm.cost_micro == pytest.approx(share * 1e6, abs=1)
    assert cold.ttft_s == pytest.approx(warm.ttft_s + 60)


def test_retry_after_is_capped() -> None:
    d = decide(_req("top"), BOOK, "strict", _snap())
    assert d.retry_after_s == 60.0


def test_failure_rate_raises_expected_cost() -> None:
    healthy = decide(_req(), BOOK, "strict", _snap(small=BUSY)).candidates[0]
    flaky = ModelLoad(BUSY.replicas, failure_rate=0.5)
    failing = decide(_req(), BOOK, "strict", _snap(small=flaky)).candidates[0]
    assert failing.cost_micro == pytest.approx(2 * healthy.cost_micro, abs=1)


def test_unavailable_model_gives_no_capacity() -> None:
    down = ModelLoad(BUSY.replicas, available=False)
    d = decide(_req(), BOOK, "strict", _snap(small=down))
    assert d.candidates[0].reasons[0] is Infeasibility.NO_CAPACITY
    assert (d.action, d.reason, d.retry_after_s) == (Action.THROTTLE, Reason.NO_CAPACITY, None)


def test_price_cap_below_the_price_refuses_with_its_reason() -> None:
    d = decide(_req(max_price_micro=1), BOOK, "premium", _snap(small=BUSY))
    assert Infeasibility.OVER_PRICE_CAP in d.candidates[0].reasons
    assert (d.action, d.reason) == (Action.THROTTLE, Reason.PRICE_CAP_EXCEEDED)


def test_output_tokens_are_predicted_from_history_and_capped_by_max_tokens() -> None:
    def predicted(**kw: Any) -> int:
        return (
            decide(_req(**kw), BOOK, "premium", _snap(small=BUSY))
            .candidates[0]
            .predicted_output_tokens
        )

    assert predicted() == 100  # the model's default
    assert predicted(max_tokens=40) == 40
    assert predicted(output_history={"small": 300.4}) == 300
    assert predicted(output_history={"small": 300.4}, max_tokens=250) == 250


def test_worst_case_price_uses_max_tokens() -> None:
    q = decide(_req(max_tokens=500), BOOK, "premium", _snap(small=BUSY)).candidates[0]
    assert q.worst_case_price_micro == pico_to_micro(200 * 500_000 + 500 * 5_000_000)
    assert q.price_micro == pico_to_micro(200 * 500_000 + 100 * 5_000_000)


def test_price_rounds_half_up_to_whole_micro_usd() -> None:
    assert pico_to_micro(499_999) == 0
    assert pico_to_micro(500_000) == 1
    assert pico_to_micro(1_499_999) == 1


@pytest.mark.parametrize(
    ("model", "plan", "error"),
    [
        ("nope", "strict", UnknownModelError),
        ("mid", "narrow", ModelNotInPlanError),
        ("top", "narrow", ModelNotInPlanError),
    ],
)
def test_requests_that_cannot_be_priced_raise_domain_errors(
    model: str, plan: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        decide(_req(model), BOOK, plan, _snap())


def test_prompt_beyond_every_context_window_is_a_client_error() -> None:
    with pytest.raises(ContextWindowError, match="context window"):
        decide(_req("auto", input_tokens=5000), BOOK, "strict", _snap())
    with pytest.raises(ContextWindowError):
        decide(_req(input_tokens=4000, max_tokens=200), BOOK, "sub", _snap(small=BUSY))
    fits = decide(_req(input_tokens=4000, max_tokens=96), BOOK, "sub", _snap(small=BUSY))
    assert Infeasibility.CONTEXT_WINDOW_EXCEEDED not in fits.candidates[0].reasons


# ------------------------------------------------------------------ incremental basis


def test_an_idle_warm_replica_serves_at_list_price_on_the_incremental_basis() -> None:
    """The allocated share of an idle replica is below the floor, but the replica is
    paid whether or not the request is served: what serving adds is nothing."""
    allocated = decide(_req(), BOOK, "strict", _snap(small=IDLE), basis=ALLOCATED)
    assert allocated.action is Action.THROTTLE
    d = decide(_req(), BOOK, "strict", _snap(small=IDLE))  # the plan's default basis
    assert (d.action, d.reason) == (Action.ALLOW, Reason.REQUESTED_FEASIBLE)
    q = d.candidates[0]
    assert q.incremental_cost_micro == 0 < q.cost_micro
    assert q.margin < 0.3  # the allocated figure is still reported


def test_a_busy_replica_adds_its_slowdown_and_a_forced_replica_its_start() -> None:
    busy = decide(_req(), BOOK, "strict", _snap(small=BUSY)).candidates[0]
    model = BOOK.models["small"]
    slowdown_s = 200 / model.prefill_tokens_per_s + busy.predicted_output_tokens * (
        model.batch_slowdown / model.decode_tokens_per_s_at_batch_1
    )
    assert busy.incremental_cost_micro == round(model.usd_per_s * slowdown_s * 1e6)
    assert 0 < busy.incremental_cost_micro < busy.cost_micro
    # Every batch full: the request queues and a scale-up follows, which it pays a share of.
    forced = decide(_req(), BOOK, "premium", _snap(small=FULL)).candidates[0]
    assert forced.incremental_cost_micro > round(model.forced_capacity_share_usd * 1e6)


def test_the_window_guard_keeps_a_healthy_window_at_the_floor() -> None:
    q = decide(_req(), BOOK, "strict", _snap(small=BUSY)).candidates[0]
    # A window exactly at the 30% floor: a request below the floor on its own would
    # pull it under, so it is refused; a window with slack takes it.
    at_floor = WindowMargin(revenue_micro=10_000, cost_micro=7_000)
    lean = decide(
        _req(), BOOK, "strict", _snap(small=BUSY), windows={"small": at_floor}
    ).candidates[0]
    alone_ok = q.price_micro - q.incremental_cost_micro >= 0.3 * q.price_micro
    assert (Infeasibility.MARGIN_BELOW_FLOOR in lean.reasons) is not alone_ok
    slack = WindowMargin(revenue_micro=10_000, cost_micro=1_000)
    roomy = decide(_req(), BOOK, "strict", _snap(small=BUSY), windows={"small": slack})
    assert roomy.action is Action.ALLOW


def test_a_window_below_the_floor_takes_what_lifts_it() -> None:
    """An idle paid window (cost, no revenue) is below any floor: serving only lifts it,
    so refusing would lose the revenue and save nothing."""
    idle_window = WindowMargin(revenue_micro=0, cost_micro=50_000)
    d = decide(_req(), BOOK, "strict", _snap(small=BUSY), windows={"small": idle_window})
    assert d.action is Action.ALLOW


def test_surcharge_on_the_incremental_basis_reaches_the_windows_floor() -> None:
    alone = decide(_req(), BOOK, "surge", _snap(small=FULL)).candidates[0]
    price, added = alone.price_micro, alone.incremental_cost_micro
    # A window that serving at list price would leave just under the 30% floor.
    revenue = 100_000
    cost = round((revenue + price) * 0.7) - added + price // 2
    windows = {"small": WindowMargin(revenue, cost)}
    q = decide(_req(), BOOK, "surge", _snap(small=FULL), windows=windows).candidates[0]
    assert q.reasons == (Infeasibility.MARGIN_BELOW_FLOOR,)
    capped = _req(max_price_micro=10**6)
    d = decide(capped, BOOK, "surge", _snap(small=FULL), windows=windows)
    assert (d.action, d.price_micro) == (Action.SURCHARGE, q.least_price_micro)
    assert price < d.price_micro <= 3 * price
    assert WindowMargin(revenue + d.price_micro, cost + added).margin >= 0.3
    assert WindowMargin(revenue + d.price_micro - 1, cost + added).margin < 0.3
