"""Hypothesis strategies: valid policies, cluster snapshots and requests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from serve_app.policy import load_policy_dict
from serve_app.pricing import ClusterSnapshot, ModelLoad, PriceBook, PriceRequest, ReplicaLoad
from tests.fakes import model_dict, plan_dict, policy_dict

ACTION_CHAINS = [
    ["throttle"],
    ["reroute", "throttle"],
    ["reroute", "surcharge", "throttle"],
    ["surcharge", "accept"],
    ["reroute", "surcharge", "accept"],
    ["accept"],
]


@st.composite
def model_dicts(draw: st.DrawFn, index: int) -> dict[str, Any]:
    rate_1 = draw(st.floats(5, 120))
    max_batch = draw(st.integers(1, 256))
    saturation = draw(st.floats(0.0, 1.0))
    # Clamped: rate_1 + 1.0 * (rate_1 * B - rate_1) can round above rate_1 * B.
    rate_max = min(rate_1 * max_batch, rate_1 + saturation * (rate_1 * max_batch - rate_1))
    window = draw(st.sampled_from([2048, 8192, 32768]))
    return model_dict(
        f"m{index}",
        usd_per_hour=draw(st.floats(0.1, 40)),
        quality_tier=draw(st.integers(1, 4)),
        throughput={
            "prefill_tokens_per_s": draw(st.floats(200, 20000)),
            "decode_tokens_per_s_at_batch_1": rate_1,
            "max_concurrent_sequences": max_batch,
            "decode_tokens_per_s_at_max_batch": rate_max,
        },
        cold_start_s=draw(st.floats(0, 300)),
        cold_start_amortization_requests=draw(st.integers(1, 2000)),
        context_window_tokens=window,
        max_output_tokens=draw(st.integers(1, window)),
        default_output_tokens=draw(st.integers(1, 1024)),
        autoscaling={"min_replicas": 0, "max_replicas": 4},
    )


def _card(draw: st.DrawFn, model: dict[str, Any]) -> dict[str, float]:
    """Rates between 0.3x and 30x the model's cost per token at a full batch, so every
    outcome (allow, reroute, surcharge, accept, throttle) is common."""
    usd_per_s = model["usd_per_hour"] / 3600
    throughput = model["throughput"]
    per_1m_out = usd_per_s / throughput["decode_tokens_per_s_at_max_batch"] * 1e6
    per_1m_in = usd_per_s / throughput["prefill_tokens_per_s"] * 1e6

    def rate(per_1m: float) -> float:
        return max(1, round(per_1m * draw(st.floats(0.3, 30)) * 1e6)) / 1e6

    return {
        "input_usd_per_1m_tokens": rate(per_1m_in),
        "output_usd_per_1m_tokens": rate(per_1m_out),
    }


@st.composite
def books(draw: st.DrawFn) -> PriceBook:
    """A valid policy of 1-5 models and one plan that sells them all, compiled."""
    count = draw(st.integers(1, 5))
    models = [draw(model_dicts(i)) for i in range(count)]
    chain = draw(st.sampled_from(ACTION_CHAINS))
    plan = plan_dict(
        "p",
        prices_by_model={m["id"]: _card(draw, m) for m in models},
        prices_by_tier={},
        margin_floor=draw(st.floats(0, 0.9)),
        surge_cap=draw(st.floats(1.01, 3)) if "surcharge" in chain else 1.0,
        on_infeasible=chain,
        cost_basis=draw(st.sampled_from(["incremental", "allocated"])),
        sla={
            "ttft_target_ms": draw(st.floats(200, 60000)),
            "tpot_target_ms": draw(st.floats(20, 500)),
            "credit_fraction": 0.1,
        },
    )
    policy = policy_dict(
        version="prop",
        models=models,
        routes={"all": [m["id"] for m in models]},
        plans=[plan],
    )
    loaded = load_policy_dict(policy)
    return PriceBook.from_policy(loaded.policy, loaded.version)


replica_loads = st.builds(
    ReplicaLoad,
    running=st.integers(0, 128),
    queued=st.integers(0, 300) | st.just(0),
    warm=st.sampled_from([True, True, True, False]),
    start_remaining_s=st.floats(0, 300),
)

model_loads = st.builds(
    ModelLoad,
    replicas=st.lists(replica_loads, max_size=4).map(tuple),
    failure_rate=st.floats(0, 0.5),
    mean_service_s=st.none() | st.floats(0.01, 120),
    available=st.sampled_from([True, True, True, False]),
)


def snapshots(book: PriceBook) -> st.SearchStrategy[ClusterSnapshot]:
    return st.fixed_dictionaries({}, optional=dict.fromkeys(book.models, model_loads)).map(
        ClusterSnapshot
    )


def requests(book: PriceBook) -> st.SearchStrategy[PriceRequest]:
    names = sorted(book.models) + sorted(book.routes)
    return st.builds(
        PriceRequest,
        model=st.sampled_from(names),
        input_tokens=st.integers(1, 4000),
        max_tokens=st.none() | st.integers(1, 4000),
        output_history=st.dictionaries(st.sampled_from(sorted(book.models)), st.floats(1, 3000)),
        max_price_micro=st.none() | st.integers(0, 5_000) | st.integers(0, 500_000),
    )
