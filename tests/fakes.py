"""Shared test fakes: a clock that stands still until a test moves it, and valid policy
dicts (a model entry, a plan, a whole policy) to override field by field."""

from __future__ import annotations

from typing import Any

__all__ = ["FakeClock", "model_dict", "plan_dict", "policy_dict"]


class FakeClock:
    """A clock (`clock()` → seconds) that reads `now`; a test moves it with `clock.now += s`.

    Starts at 1000 s unless told; code that compares with wall time (Stripe timestamps)
    starts it at `time.time()`.
    """

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def model_dict(model_id: str = "small", **overrides: Any) -> dict[str, Any]:
    """A valid `models[]` entry: a simulated tier-1 model at 1 USD/hour, 10 sequences
    a batch, a 4096-token window. Keyword arguments replace whole fields."""
    model: dict[str, Any] = {
        "id": model_id,
        "backend": "simulated",
        "accelerator": "test",
        "usd_per_hour": 1.0,
        "quality_tier": 1,
        "throughput": {
            "prefill_tokens_per_s": 1000,
            "decode_tokens_per_s_at_batch_1": 50,
            "max_concurrent_sequences": 10,
            "decode_tokens_per_s_at_max_batch": 400,
        },
        "cold_start_s": 10,
        "cold_start_amortization_requests": 10,
        "context_window_tokens": 4096,
        "max_output_tokens": 1024,
        "default_output_tokens": 100,
    }
    return {**model, **overrides}


def plan_dict(plan_id: str = "std", **overrides: Any) -> dict[str, Any]:
    """A valid `plans[]` entry: tier-1 models at 0.5 / 5 USD per 1M tokens in / out, a
    0.3 margin floor, throttle when infeasible, a 1 s / 100 ms SLA with a 10% credit,
    60 requests and 10,000 tokens a minute, 5 USD a month. Keyword arguments replace
    whole fields."""
    plan: dict[str, Any] = {
        "id": plan_id,
        "prices_by_tier": {1: {"input_usd_per_1m_tokens": 0.5, "output_usd_per_1m_tokens": 5}},
        "margin_floor": 0.3,
        "on_infeasible": ["throttle"],
        "sla": {"ttft_target_ms": 1000, "tpot_target_ms": 100, "credit_fraction": 0.1},
        "limits": {"requests_per_minute": 60, "tokens_per_minute": 10000, "monthly_budget_usd": 5},
    }
    return {**plan, **overrides}


def policy_dict(**overrides: Any) -> dict[str, Any]:
    """A valid policy dict (`load_policy_dict` accepts it): version "test", one
    `model_dict()` and one `plan_dict()`. Keyword arguments replace whole fields
    (`models=[...]`, `plans=[...]`, `routes={...}`, `tenants=[...]`)."""
    policy: dict[str, Any] = {
        "version": "test",
        "models": [model_dict()],
        "plans": [plan_dict()],
    }
    return {**policy, **overrides}
