"""Read-only views of the ingress: models and prices, live cluster state, a tenant's usage,
billing health and reconciliation. Each returns a JSON-ready document (no HTTP here).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Any

from serve_app.admission import AdmissionGate, AdmissionLimits
from serve_app.cluster.state import ClusterState
from serve_app.errors import AdmissionUnavailable, Forbidden, NotFound, Unauthorized
from serve_app.ingress import readiness
from serve_app.ingress.auth import TenantDirectory
from serve_app.ingress.documents import candidate_json, usd
from serve_app.ingress.policy_view import PolicyView
from serve_app.ingress.protocol import ModelCard, ModelList
from serve_app.metering.view import BillingView
from serve_app.policy import LoadedPolicy, Tenant, hash_api_key
from serve_app.pricing import PlanTerms, PriceBook, PriceRequest, quote

REFERENCE_TOKENS = 1000
"""`/v1/cluster` prices a request of 1000 prompt and 1000 output tokens per model."""


class Views:
    """The read-only routes' documents, for one policy version."""

    def __init__(
        self,
        policy: LoadedPolicy,
        book: PriceBook,
        state: ClusterState,
        limits: Mapping[str, AdmissionLimits],
        admission: AdmissionGate | None = None,
        billing: BillingView | None = None,
    ) -> None:
        self.policy = policy
        self.book = book
        self.state = state
        self.tenants = TenantDirectory(policy.policy.tenants)
        self._limits = limits
        self._admission = admission
        self._billing = billing
        self._admins = frozenset(policy.policy.admin_api_key_sha256)

    def swap(self, view: PolicyView) -> None:
        """Answer from a reloaded policy version from now on."""
        self.policy = view.loaded
        self.book = view.book
        self.tenants = view.tenants
        self._limits = view.limits
        self._admins = frozenset(view.loaded.policy.admin_api_key_sha256)

    # ------------------------------------------------------------------ access

    def is_admin(self, authorization: str | None) -> bool:
        """Whether the header carries an admin key (constant-time digest comparison)."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        digest = hash_api_key(key.strip())
        return any(hmac.compare_digest(digest, admin) for admin in self._admins)

    def require_admin(self, authorization: str | None) -> None:
        """An admin key, else 403 for a tenant's key and 401 for anything else."""
        if not self.is_admin(authorization):
            if self.tenants.authenticate(authorization) is not None:
                raise Forbidden("This endpoint needs an admin key.")
            raise Unauthorized("Invalid API key")

    def tenant_by_id(self, tenant_id: str) -> Tenant:
        tenant = next((t for t in self.policy.policy.tenants if t.id == tenant_id), None)
        if tenant is None:
            raise NotFound(f"No tenant '{tenant_id}'.", code="tenant_not_found")
        return tenant

    # ------------------------------------------------------------------ documents

    async def usage(self, tenant: Tenant) -> dict[str, Any]:
        """The tenant's current window and month, limits and what is left."""
        if self._admission is None:
            raise AdmissionUnavailable("admission is not configured")
        usage = await self._admission.usage(tenant.id)
        limits = self._limits[tenant.plan]
        spent = usage.settled_micro + usage.reserved_micro
        billing: dict[str, Any] | None = None
        if self._billing is not None:
            money = await self._billing.tenant(tenant.id, tenant.stripe_customer_id)
            billing = {
                "billed_usd": usd(money["billed_micro"]),
                "credited_usd": usd(money["credited_micro"]),
                "synced_to_stripe_usd": usd(money["synced_micro"]),
                "pending_usd": usd(money["pending_micro"]),
                "billable_requests": money["billable_requests"],
                "failed_requests_not_billed": money["failed_requests"],
            }
        return {
            "object": "rtcts.usage",
            "tenant": tenant.id,
            "plan": tenant.plan,
            "window": {
                "seconds": 60,
                "requests": usage.requests_in_window,
                "requests_limit": limits.requests_per_minute,
                "requests_remaining": max(0, limits.requests_per_minute - usage.requests_in_window),
                "tokens": usage.tokens_in_window,
                "tokens_limit": limits.tokens_per_minute,
                "tokens_remaining": max(0, limits.tokens_per_minute - usage.tokens_in_window),
            },
            "month": {
                "month": usage.month,
                "settled_usd": usd(usage.settled_micro),
                "reserved_usd": usd(usage.reserved_micro),
                "budget_usd": usd(limits.monthly_budget_micro),
                "remaining_usd": usd(max(0, limits.monthly_budget_micro - spent)),
                "billed_requests": usage.billed_requests,
                "billed_tokens": usage.billed_tokens,
            },
            "billing": billing,
        }

    def _billing_view(self) -> BillingView:
        if self._billing is None:
            raise NotFound("Billing is not configured.", code="billing_disabled")
        return self._billing

    async def billing_health(self) -> dict[str, Any]:
        """Admin: per meter shard, open windows, outbox size, oldest unsynced age, dead letters."""
        return {"object": "rtcts.billing", "shards": await self._billing_view().health()}

    async def reconcile(self, stripe_client: Any) -> dict[str, Any]:
        """Admin: the local ledger against Stripe's event summaries."""
        report = await self._billing_view().reconcile(stripe_client)
        return report.to_dict()

    def admission_health(self) -> dict[str, object] | None:
        return None if self._admission is None else self._admission.health()

    def health(self) -> dict[str, Any]:
        load_at, replicas_at = self.state.refreshed_at
        now = time.time()
        return {
            "status": "ok",
            "policy_version": self.policy.version,
            "load_age_s": round(now - load_at, 3) if load_at else None,
            "replicas_age_s": round(now - replicas_at, 3) if replicas_at else None,
            "admission": self.admission_health(),
        }

    def ready(self, billing_running: bool | None) -> dict[str, Any]:
        """`GET /readyz`: whether a request sent now is served without waiting on start-up
        (the rule: `readiness.py`); `billing_running` is None where billing is off."""
        admission = self.admission_health()
        snapshot = self.state.snapshot()
        models = self.policy.policy.models
        return readiness.assess(
            {m.id: snapshot.load(m.id) for m in models},
            {m.id: m.autoscaling.min_replicas for m in models},
            live_state=readiness.fresh(self.state.refreshed_at, time.time()),
            admission=None if admission is None else bool(admission["redis_up"]),
            billing=billing_running,
        ).document(self.policy.version)

    def models(self, tenant: Tenant) -> dict[str, Any]:
        plan = self.book.plans[tenant.plan]
        created = int(time.time())
        cards = [
            ModelCard(id=model_id, created=created, pricing=self._prices(plan, model_id))
            for model_id in self.book.models
            if model_id in plan.rates or model_id in plan.embedding_rates
        ]
        for alias, members in self.book.routes.items():
            # A chat alias lists its members the plan prices for chat; an embedding-only
            # alias, those it prices for embeddings.
            served = [m for m in members if m in plan.rates] or [
                m for m in members if m in plan.embedding_rates
            ]
            if served:
                cards.append(ModelCard(id=alias, created=created, pricing={"route_alias": served}))
        return ModelList(data=cards).model_dump(mode="json", exclude_none=True)

    def _prices(self, plan: PlanTerms, model_id: str) -> dict[str, Any]:
        """A model's list prices on the plan: per token in and out, and per token
        embedded where it serves embeddings."""
        prices: dict[str, Any] = {}
        rates = plan.rates.get(model_id)
        if rates is not None:
            prices["input_usd_per_1m_tokens"] = usd(rates.input_micro_per_1m)
            prices["output_usd_per_1m_tokens"] = usd(rates.output_micro_per_1m)
        embedding = plan.embedding_rates.get(model_id)
        if embedding is not None:
            prices["embedding_usd_per_1m_tokens"] = usd(embedding.input_micro_per_1m)
        prices["quality_tier"] = self.book.models[model_id].quality_tier
        return prices

    def cluster(self, tenant: Tenant) -> dict[str, Any]:
        snapshot = self.state.snapshot()
        view = self.state.view()
        plan = self.book.plans[tenant.plan]
        for model_id, entry in view.items():
            model = self.book.models[model_id]
            load = snapshot.load(model_id)
            entry["predicted"] = {
                "warm_replicas": sum(1 for r in load.replicas if r.warm),
                "starting_replicas": sum(1 for r in load.replicas if not r.warm),
                "queued": sum(r.queued for r in load.replicas),
                "running": sum(r.running for r in load.replicas),
                "failure_rate": load.failure_rate,
            }
            if model_id in plan.rates:
                q = quote(
                    PriceRequest(model_id, REFERENCE_TOKENS, max_tokens=REFERENCE_TOKENS),
                    model,
                    plan,
                    snapshot,
                )
                per_1m = q.cost_micro / (q.input_tokens + q.predicted_output_tokens)
                entry["cost_usd_per_1m_tokens"] = round(per_1m, 6)
                entry["reference_quote"] = candidate_json(q)
        return {"policy_version": self.policy.version, "models": view}
