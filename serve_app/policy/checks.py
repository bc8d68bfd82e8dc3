"""Rules that cross objects of a policy, each reported with the field path it concerns.

Field-level rules (types, ranges, unknown fields) are pydantic's, in `schema.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from serve_app.errors import PolicyIssue
from serve_app.policy.capabilities import Capability
from serve_app.policy.schema import Policy


def check_policy(policy: Policy) -> list[PolicyIssue]:
    """Every cross-object problem of `policy`; an empty list means it is consistent."""
    return [
        *_duplicates("models", (m.id for m in policy.models), "model id"),
        *_duplicates("plans", (p.id for p in policy.plans), "plan id"),
        *_duplicates("tenants", (t.id for t in policy.tenants), "tenant id"),
        *_check_routes(policy),
        *_check_plans(policy),
        *_check_tenants(policy),
    ]


def _duplicates(section: str, ids: Iterable[str], what: str) -> Iterator[PolicyIssue]:
    first_index: dict[str, int] = {}
    for index, item_id in enumerate(ids):
        if item_id in first_index:
            yield PolicyIssue(
                f"{section}[{index}].id",
                f"duplicate {what} '{item_id}' (first at {section}[{first_index[item_id]}])",
            )
        else:
            first_index[item_id] = index


def _check_routes(policy: Policy) -> Iterator[PolicyIssue]:
    model_ids = {m.id for m in policy.models}
    for alias, members in policy.routes.items():
        path = f"routes.{alias}"
        if alias in model_ids:
            yield PolicyIssue(path, f"alias '{alias}' is also a model id")
        if not members:
            yield PolicyIssue(path, "alias lists no model")
        seen: set[str] = set()
        for index, model_id in enumerate(members):
            if model_id not in model_ids:
                yield PolicyIssue(f"{path}[{index}]", f"unknown model '{model_id}'")
            elif model_id in seen:
                yield PolicyIssue(f"{path}[{index}]", f"model '{model_id}' listed twice")
            seen.add(model_id)


def _check_plans(policy: Policy) -> Iterator[PolicyIssue]:
    model_ids = {m.id for m in policy.models}
    tiers = {m.quality_tier for m in policy.models}
    for index, plan in enumerate(policy.plans):
        path = f"plans[{index}]"
        for model_id in plan.prices_by_model:
            if model_id not in model_ids:
                yield PolicyIssue(
                    f"{path}.prices_by_model.{model_id}", f"unknown model '{model_id}'"
                )
        yield from _check_embedding_prices(policy, path, plan.embedding_prices_by_model)
        for tier in plan.prices_by_tier:
            if tier not in tiers:
                yield PolicyIssue(
                    f"{path}.prices_by_tier[{tier}]", f"no model has quality tier {tier}"
                )
        if not any(
            m.id in plan.prices_by_model or m.quality_tier in plan.prices_by_tier
            for m in policy.models
        ):
            yield PolicyIssue(path, f"plan '{plan.id}' prices no model")


def _check_embedding_prices(
    policy: Policy, path: str, prices: Iterable[str]
) -> Iterator[PolicyIssue]:
    models = {m.id: m for m in policy.models}
    for model_id in prices:
        where = f"{path}.embedding_prices_by_model.{model_id}"
        model = models.get(model_id)
        if model is None:
            yield PolicyIssue(where, f"unknown model '{model_id}'")
        elif Capability.EMBEDDINGS not in model.capability_set:
            yield PolicyIssue(
                where, f"model '{model_id}' does not serve embeddings (its capabilities)"
            )


def _check_tenants(policy: Policy) -> Iterator[PolicyIssue]:
    plan_ids = {p.id for p in policy.plans}
    key_owner: dict[str, str] = {}
    for index, tenant in enumerate(policy.tenants):
        path = f"tenants[{index}]"
        if tenant.plan not in plan_ids:
            yield PolicyIssue(f"{path}.plan", f"unknown plan '{tenant.plan}'")
        for key_index, digest in enumerate(tenant.api_key_sha256):
            if digest in key_owner:
                yield PolicyIssue(
                    f"{path}.api_key_sha256[{key_index}]",
                    f"duplicate API key (also a key of {key_owner[digest]})",
                )
            else:
                key_owner[digest] = f"tenant '{tenant.id}'"
    for index, digest in enumerate(policy.admin_api_key_sha256):
        if digest in key_owner:
            yield PolicyIssue(
                f"admin_api_key_sha256[{index}]",
                f"an admin key must not also be a key of {key_owner[digest]}",
            )
        key_owner[digest] = "the admins"
