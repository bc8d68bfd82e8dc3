"""The policy schema: every field documented, field and object rules, and the demo keys."""

from __future__ import annotations

import copy
import inspect
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from serve_app.policy import (
    Autoscaling,
    InfeasibleAction,
    ModelSpec,
    Plan,
    Policy,
    PriceCard,
    Sla,
    Tenant,
    ThroughputProfile,
    hash_api_key,
    schema,
)

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"


@pytest.fixture(scope="module")
def default_data() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _nested_models(annotation: object) -> typing.Iterator[type[BaseModel]]:
    """The BaseModel types inside an annotation such as `list[ModelSpec] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _nested_models(arg)


def _walk(model: type[BaseModel], seen: dict[type[BaseModel], None]) -> None:
    if model in seen:
        return
    seen[model] = None
    for info in model.model_fields.values():
        for nested in _nested_models(info.annotation):
            _walk(nested, seen)


def _reachable_models() -> list[type[BaseModel]]:
    seen: dict[type[BaseModel], None] = {}
    _walk(Policy, seen)
    return list(seen)


def test_the_walk_reaches_every_model_of_the_schema() -> None:
    defined = {
        obj
        for _, obj in inspect.getmembers(schema, inspect.isclass)
        if issubclass(obj, BaseModel)
        and obj.__module__ == schema.__name__
        and obj is not schema.StrictModel
    }
    assert defined == set(_reachable_models())
    assert {Policy, ModelSpec, ThroughputProfile, Autoscaling, Plan, PriceCard, Sla, Tenant} <= (
        defined
    )


@pytest.mark.parametrize("model", _reachable_models(), ids=lambda m: m.__name__)
def test_every_field_has_a_description(model: type[BaseModel]) -> None:
    assert model.model_fields, model.__name__
    missing = [
        name
        for name, info in model.model_fields.items()
        if not (info.description and info.description.strip())
    ]
    assert not missing, f"{model.__name__} fields without a description: {missing}"
    assert (model.__doc__ or "").strip(), f"{model.__name__} has no docstring"


@pytest.mark.parametrize("model", _reachable_models(), ids=lambda m: m.__name__)
def test_every_model_is_strict_and_frozen(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid"
    assert model.model_config.get("frozen") is True


@pytest.mark.parametrize(
    ("tenant_id", "plain_key"),
    [("demo-basic", "rtcts-demo-basic"), ("demo-pro", "rtcts-demo-pro")],
)
def test_demo_tenant_key_hash_matches_the_documented_key(
    default_data: dict[str, Any], tenant_id: str, plain_key: str
) -> None:
    (tenant,) = [t for t in default_data["tenants"] if t["id"] == tenant_id]
    assert tenant["api_key_sha256"] == [hash_api_key(plain_key)]


def test_hash_api_key_is_lowercase_sha256_hex() -> None:
    digest = hash_api_key("rtcts-demo-basic")
    assert digest == "90ad01ea2122a849e5926f1753e4a37f8dffc536cdd4b29828a7479e6c30d45e"
    assert hash_api_key("rtcts-demo-pro") != digest


def test_default_policy_validates(default_data: dict[str, Any]) -> None:
    policy = Policy.model_validate(default_data)
    assert [m.id for m in policy.models] == [
        "llama-3.1-8b",
        "qwen2.5-32b",
        "llama-3.1-70b",
        "bge-m3",
    ]
    assert set(policy.routes) == {"auto", "economy", "premium"}
    basic, pro = policy.plans
    assert basic.prices_by_model["llama-3.1-8b"].input_usd_per_1m_tokens == Decimal("0.15")
    assert pro.prices_by_tier[3].output_usd_per_1m_tokens == Decimal("10.00")
    assert basic.allows_substitution
    assert not basic.accepts_below_floor
    assert pro.accepts_below_floor


def test_policy_objects_are_immutable(default_data: dict[str, Any]) -> None:
    policy = Policy.model_validate(default_data)
    with pytest.raises(ValidationError, match="frozen"):
        policy.plans[0].margin_floor = 0.0  # type: ignore[misc]


# --- object-level rules, checked on the objects themselves ---------------------------

THROUGHPUT: dict[str, Any] = {
    "prefill_tokens_per_s": 3000,
    "decode_tokens_per_s_at_batch_1": 35,
    "max_concurrent_sequences": 32,
    "decode_tokens_per_s_at_max_batch": 600,
}
PLAN: dict[str, Any] = {
    "id": "basic",
    "prices_by_model": {"m": {"input_usd_per_1m_tokens": 1, "output_usd_per_1m_tokens": 2}},
    "sla": {"ttft_target_ms": 1000, "tpot_target_ms": 50, "credit_fraction": 0.1},
    "limits": {"requests_per_minute": 60, "tokens_per_minute": 1000, "monthly_budget_usd": 5},
}


def _errors(model: type[BaseModel], data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [str(error["msg"]) for error in info.value.errors()]


@pytest.mark.parametrize("rate", [35, 600, 35 * 32])
def test_saturated_decode_rate_may_lie_anywhere_in_its_range(rate: float) -> None:
    profile = ThroughputProfile.model_validate(
        {**THROUGHPUT, "decode_tokens_per_s_at_max_batch": rate}
    )
    assert profile.decode_tokens_per_s_at_max_batch == rate


@pytest.mark.parametrize("rate", [34.9, 35 * 32 + 1])
def test_saturated_decode_rate_outside_its_range_is_refused(rate: float) -> None:
    (message,) = _errors(
        ThroughputProfile, {**THROUGHPUT, "decode_tokens_per_s_at_max_batch": rate}
    )
    assert "decode_tokens_per_s_at_max_batch must lie between" in message


def test_autoscaling_defaults_and_bounds() -> None:
    assert Autoscaling() == Autoscaling(min_replicas=1, max_replicas=1, target_ongoing_requests=8)
    assert Autoscaling(min_replicas=0, max_replicas=1).min_replicas == 0
    (message,) = _errors(Autoscaling, {"min_replicas": 3, "max_replicas": 2})
    assert "min_replicas (3) exceeds max_replicas (2)" in message


def _model(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "m",
        "backend": "simulated",
        "accelerator": "1x NVIDIA L4",
        "usd_per_hour": 0.8,
        "quality_tier": 1,
        "throughput": THROUGHPUT,
        "cold_start_s": 25,
        "context_window_tokens": 8192,
        "max_output_tokens": 2048,
    }
    data.update(changes)
    return data


def test_model_defaults() -> None:
    model = ModelSpec.model_validate(_model())
    assert model.upstream_url is None
    assert model.default_output_tokens == 256
    assert model.cold_start_amortization_requests == 100
    assert model.autoscaling == Autoscaling()
    assert model.ray_resources == {}


def test_ray_resources_take_custom_names_and_ray_quantities() -> None:
    resources = {"accelerator_type:L4": 0.001, "gpu_l4": 1, "pool/a-1": 4}
    model = ModelSpec.model_validate(_model(ray_resources=resources))
    assert model.ray_resources == resources


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"max_output_tokens": 8193}, "max_output_tokens exceeds context_window_tokens"),
        ({"backend": "openai_upstream"}, "upstream_url is required for, and only for"),
        ({"upstream_url": "http://localhost:9000/v1"}, "upstream_url is required for"),
        ({"usd_per_hour": 0}, "greater than 0"),
        ({"quality_tier": 11}, "less than or equal to 10"),
        ({"id": "-leading-dash"}, "should match pattern"),
        ({"id": "has space"}, "should match pattern"),
        ({"backend": "tpu"}, "'simulated', 'openai_upstream' or 'ray_serve_llm'"),
        ({"ray_resources": {"GPU": 1}}, "'GPU' is Ray's own resource"),
        ({"ray_resources": {"CPU": 0.5}}, "'CPU' is Ray's own resource"),
        ({"ray_resources": {"gpu_l4": 0}}, "is not a Ray quantity"),
        ({"ray_resources": {"gpu_l4": 1.5}}, "is not a Ray quantity"),
        ({"ray_resources": {"gpu_l4": float("inf")}}, "is not a Ray quantity"),
        ({"ray_resources": {"bad name": 1}}, "should match pattern"),
    ],
)
def test_model_rules(changes: dict[str, Any], reason: str) -> None:
    messages = _errors(ModelSpec, _model(**changes))
    assert any(reason in message for message in messages), messages


def test_upstream_backend_with_url_is_valid() -> None:
    model = ModelSpec.model_validate(
        _model(backend="openai_upstream", upstream_url="http://localhost:9000/v1")
    )
    assert model.upstream_url == "http://localhost:9000/v1"


@pytest.mark.parametrize(
    ("card", "reason"),
    [
        ({"input_usd_per_1m_tokens": 0, "output_usd_per_1m_tokens": 0}, "must charge"),
        ({"input_usd_per_1m_tokens": -1, "output_usd_per_1m_tokens": 1}, "greater than or equal"),
        ({"input_usd_per_1m_tokens": "0.0000001", "output_usd_per_1m_tokens": 1}, "6 decimal"),
    ],
)
def test_price_card_rules(card: dict[str, Any], reason: str) -> None:
    messages = _errors(PriceCard, card)
    assert any(reason in message for message in messages), messages


def test_price_card_may_be_free_on_one_side() -> None:
    card = PriceCard.model_validate({"input_usd_per_1m_tokens": 0, "output_usd_per_1m_tokens": 1})
    assert card.input_usd_per_1m_tokens == 0


def test_plan_defaults() -> None:
    plan = Plan.model_validate(PLAN)
    assert plan.margin_floor == 0.35
    assert plan.surge_cap == 1.0
    assert plan.on_infeasible == [InfeasibleAction.REROUTE, InfeasibleAction.THROTTLE]
    assert plan.allows_substitution
    assert not plan.accepts_below_floor


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"on_infeasible": ["reroute"]}, "must end with 'throttle' or 'accept'"),
        ({"on_infeasible": []}, "at least 1 item"),
        ({"on_infeasible": ["reroute", "reroute", "throttle"]}, "lists an action twice"),
        ({"on_infeasible": ["throttle", "accept"]}, "actions after 'throttle' or 'accept'"),
        ({"on_infeasible": ["surcharge", "throttle"]}, "'surcharge' but surge_cap is 1"),
        ({"on_infeasible": ["beg", "throttle"]}, "'reroute', 'surcharge', 'accept' or"),
        ({"margin_floor": 1.0}, "less than 1"),
        ({"margin_floor": -0.1}, "greater than or equal to 0"),
        ({"surge_cap": 0.9}, "greater than or equal to 1"),
        ({"surge_cap": 11}, "less than or equal to 10"),
        (
            {"throttle_retry_after_s": 10, "max_retry_after_s": 5},
            "max_retry_after_s is below throttle_retry_after_s",
        ),
        ({"sla": {**PLAN["sla"], "credit_fraction": 1.5}}, "less than or equal to 1"),
        ({"limits": {**PLAN["limits"], "requests_per_minute": 0}}, "greater than or equal to 1"),
    ],
)
def test_plan_rules(changes: dict[str, Any], reason: str) -> None:
    messages = _errors(Plan, {**PLAN, **changes})
    assert any(reason in message for message in messages), messages


def test_plan_with_surcharge_needs_a_surge_cap_above_one() -> None:
    plan = Plan.model_validate(
        {**PLAN, "surge_cap": 1.5, "on_infeasible": ["reroute", "surcharge", "accept"]}
    )
    assert plan.accepts_below_floor
    assert plan.allows_substitution


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"api_key_sha256": []}, "at least 1 item"),
        ({"api_key_sha256": ["rtcts-demo-basic"]}, "should match pattern"),
        ({"api_key_sha256": [hash_api_key("k").upper()]}, "should match pattern"),
        ({"stripe_customer_id": "acct_123"}, "should match pattern"),
    ],
)
def test_tenant_rules(changes: dict[str, Any], reason: str) -> None:
    data = {
        "id": "t",
        "plan": "basic",
        "stripe_customer_id": "cus_1",
        "api_key_sha256": [hash_api_key("k")],
    }
    messages = _errors(Tenant, {**data, **changes})
    assert any(reason in message for message in messages), messages


def test_policy_schema_version_must_be_1(default_data: dict[str, Any]) -> None:
    data = copy.deepcopy(default_data)
    data["schema_version"] = 2
    assert any("Input should be 1" in m for m in _errors(Policy, data))
    del data["schema_version"]
    assert Policy.model_validate(data).schema_version == 1


def test_sla_credit_fraction_is_a_decimal() -> None:
    sla = Sla.model_validate({"ttft_target_ms": 1, "tpot_target_ms": 1, "credit_fraction": 0.1})
    assert sla.credit_fraction == Decimal("0.1")
