"""Policies: the pydantic schema of `policies/*.yaml`, its loader and cross-object checks."""

from serve_app.policy.keys import hash_api_key
from serve_app.policy.loader import (
    LoadedPolicy,
    load_policy_dict,
    load_policy_file,
    load_policy_text,
)
from serve_app.policy.schema import (
    Autoscaling,
    BackendKind,
    Dispatch,
    InfeasibleAction,
    Limits,
    ModelSpec,
    Plan,
    Policy,
    PriceCard,
    Sla,
    Tenant,
    ThroughputProfile,
)

__all__ = [
    "Autoscaling",
    "BackendKind",
    "Dispatch",
    "InfeasibleAction",
    "Limits",
    "LoadedPolicy",
    "ModelSpec",
    "Plan",
    "Policy",
    "PriceCard",
    "Sla",
    "Tenant",
    "ThroughputProfile",
    "hash_api_key",
    "load_policy_dict",
    "load_policy_file",
    "load_policy_text",
]
