"""Capabilities, several choices and embeddings in the pure pricing core and the policy."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from serve_app.errors import ModelNotInPlanError, PolicyError, UnsupportedFeature
from serve_app.policy import load_policy_dict
from serve_app.policy.capabilities import Capability
from serve_app.pricing import (
    Action,
    ClusterSnapshot,
    Infeasibility,
    ModelLoad,
    PriceBook,
    PriceRequest,
    ReplicaLoad,
    decide,
)
from serve_app.pricing.billing import bill, output_tokens_within
from tests.fakes import model_dict, plan_dict, policy_dict

CARD = {"input_usd_per_1m_tokens": 0.5, "output_usd_per_1m_tokens": 5}
TIERS = {1: CARD, 2: CARD}
POLICY = policy_dict(
    models=[
        model_dict("plain", quality_tier=1, capabilities=["chat", "completions"]),
        model_dict("tooled", quality_tier=2, usd_per_hour=1.5),
        model_dict(
            "embed",
            quality_tier=1,
            capabilities=["embeddings"],
            usd_per_hour=0.5,
            throughput={  # an embedding model reads fast
                "prefill_tokens_per_s": 200_000,
                "decode_tokens_per_s_at_batch_1": 50,
                "max_concurrent_sequences": 10,
                "decode_tokens_per_s_at_max_batch": 400,
            },
        ),
    ],
    routes={"auto": ["plain", "tooled"], "vectors": ["embed"]},
    plans=[
        plan_dict(
            "std",
            prices_by_tier=TIERS,
            on_infeasible=["reroute", "throttle"],
            embedding_prices_by_model={"embed": {"input_usd_per_1m_tokens": 0.02}},
        ),
        plan_dict("fixed", prices_by_tier=TIERS, on_infeasible=["throttle"]),
    ],
)
BOOK = PriceBook.from_policy(load_policy_dict(POLICY).policy, "test")
BUSY = ModelLoad((ReplicaLoad(running=8),))
SNAP = ClusterSnapshot({"plain": BUSY, "tooled": BUSY, "embed": BUSY})
TOOLS = frozenset({Capability.TOOLS})


def _req(model: str, **kw: Any) -> PriceRequest:
    return PriceRequest(model, input_tokens=kw.pop("input_tokens", 200), **kw)


def test_an_alias_routes_to_the_candidate_that_serves_the_feature() -> None:
    plain = decide(_req("auto"), BOOK, "std", SNAP)
    assert plain.model_id == "plain"  # cheaper hardware, best margin
    tooled = decide(_req("auto", features=TOOLS), BOOK, "std", SNAP)
    assert tooled.model_id == "tooled"
    why = {q.model_id: q.reasons for q in tooled.candidates}
    assert why["plain"] == (Infeasibility.UNSUPPORTED_FEATURE,)


def test_a_named_model_without_the_feature_is_rerouted_when_the_plan_allows() -> None:
    d = decide(_req("plain", features=TOOLS), BOOK, "std", SNAP)
    assert (d.action, d.model_id) == (Action.REROUTE, "tooled")


def test_no_candidate_with_the_feature_is_a_refusal_naming_feature_and_model() -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        decide(_req("plain", features=TOOLS), BOOK, "fixed", SNAP)
    assert (caught.value.feature, caught.value.model) == ("tools", "plain")
    assert "model 'plain' does not serve tool calls" in str(caught.value)


def test_an_endpoint_the_model_lacks_is_refused_before_pricing() -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        decide(_req("embed"), BOOK, "std", SNAP)  # chat on an embedding model
    assert caught.value.feature == "chat"
    with pytest.raises(UnsupportedFeature):
        decide(_req("plain", endpoint=Capability.EMBEDDINGS), BOOK, "std", SNAP)
    with pytest.raises(UnsupportedFeature, match="no model of 'auto' serves embeddings"):
        decide(_req("auto", endpoint=Capability.EMBEDDINGS), BOOK, "std", SNAP)


def test_an_embedding_only_model_has_no_chat_rates_and_no_substitute_role() -> None:
    plan = BOOK.plans["std"]
    assert "embed" not in plan.rates  # tier 1's card prices generation only
    d = decide(_req("plain"), BOOK, "std", SNAP)
    assert [q.model_id for q in d.candidates] == ["plain", "tooled"]


def test_several_choices_multiply_predicted_and_worst_case_output() -> None:
    one = decide(_req("plain", max_tokens=50), BOOK, "std", SNAP).chosen
    three = decide(_req("plain", max_tokens=50, choices=3), BOOK, "std", SNAP).chosen
    assert one is not None
    assert three is not None
    assert three.predicted_output_tokens == 3 * one.predicted_output_tokens
    rates = BOOK.plans["std"].rates["plain"]
    prompt_pico = 200 * rates.input_micro_per_1m
    assert three.worst_case_price_micro == round(
        (prompt_pico + 150 * rates.output_micro_per_1m) / 1e6
    )
    assert three.price_micro > one.price_micro


def test_the_price_cap_bounds_the_output_of_every_choice_together() -> None:
    d = decide(_req("plain", max_tokens=50, choices=3), BOOK, "std", SNAP)
    assert d.chosen is not None
    # 200 prompt tokens and 3 x 50 output tokens: 100 + 750 micro-USD.
    assert d.chosen.worst_case_price_micro == 850
    assert output_tokens_within(d, BOOK.plans["std"], 850) == 150


def test_embeddings_are_priced_per_input_token_at_the_embedding_price() -> None:
    d = decide(
        _req("vectors", endpoint=Capability.EMBEDDINGS, input_tokens=1000), BOOK, "std", SNAP
    )
    chosen = d.chosen
    assert chosen is not None
    assert d.model_id == "embed"
    assert chosen.predicted_output_tokens == 0
    assert d.price_micro == chosen.worst_case_price_micro == 20  # 1000 x 0.02 USD / 1M
    plan = BOOK.plans["std"]
    the_bill = bill(
        d,
        plan,
        input_tokens=1500,
        output_tokens=0,
        ttft_s=60.0,  # far over any SLA: embeddings carry no latency promise
        tpot_s=0.0,
        credit_fraction=Fraction(1, 10),
    )
    assert (the_bill.billed_micro, the_bill.credit_micro, the_bill.sla_met) == (30, 0, True)


def test_embeddings_need_an_embedding_price_on_the_plan() -> None:
    with pytest.raises(ModelNotInPlanError, match="for embeddings"):
        decide(_req("embed", endpoint=Capability.EMBEDDINGS), BOOK, "fixed", SNAP)


def _invalid(**changes: Any) -> str:
    with pytest.raises(PolicyError) as caught:
        load_policy_dict(policy_dict(**changes))
    return str(caught.value)


def test_the_policy_refuses_wrong_capabilities_and_embedding_prices() -> None:
    assert "capabilities must include an endpoint" in _invalid(
        models=[model_dict(capabilities=["tools"])]
    )
    assert "unknown model 'nope'" in _invalid(
        plans=[plan_dict(embedding_prices_by_model={"nope": {"input_usd_per_1m_tokens": 1}})]
    )
    assert "does not serve embeddings" in _invalid(
        plans=[plan_dict(embedding_prices_by_model={"small": {"input_usd_per_1m_tokens": 1}})]
    )
    assert "input_usd_per_1m_tokens" in _invalid(
        models=[model_dict(capabilities=["embeddings"])],
        plans=[plan_dict(embedding_prices_by_model={"small": {"input_usd_per_1m_tokens": 0}})],
    )
    assert "Input should be" in _invalid(models=[model_dict(capabilities=["telepathy"])])


def test_a_model_without_declared_capabilities_serves_generation_with_every_feature() -> None:
    spec = load_policy_dict(policy_dict()).policy.models[0]
    assert Capability.EMBEDDINGS not in spec.capability_set
    assert {Capability.CHAT, Capability.COMPLETIONS, Capability.TOOLS} <= spec.capability_set
