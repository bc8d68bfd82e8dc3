"""The dashboard document (`GET /v1/admin/dashboard`, built by `dashboard.py`) as
pydantic models, for the served API description; never used to build the answer
(tests hold real answers to these schemas, as for `document_models.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from serve_app.ingress.document_models import BillingShard, Usd


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Replicas(_Document):
    warm: int
    """Serving now."""
    starting: int
    """Loading weights (paid, not serving yet)."""
    target: int | None
    """What the autoscaler wants (null until Serve's controller was read)."""


class RealizedMargin(_Document):
    """Revenue against the model's replica cost (idle and starting replicas included)
    over the window."""

    margin: float | None
    """(revenue − cost) / revenue; null without revenue."""
    revenue_usd: Usd
    replica_cost_usd: Usd


class ModelBucket(_Document):
    t: int
    """Bucket start, unix seconds."""
    revenue_usd: Usd
    replica_cost_usd: Usd
    margin_1m: float | None
    """Realized margin over the minute ending with this bucket (null: no revenue)."""


class ModelRow(_Document):
    model: str
    replicas: Replicas
    queued: int
    running: int
    """The running batch, summed over the replicas."""
    cost_usd_per_1m_tokens: float | None
    """Cost to serve now, on a reference request of 1000 prompt and 1000 output tokens."""
    realized: RealizedMargin
    margin_floors: dict[str, float]
    """The floor of each plan that offers the model."""
    history: list[ModelBucket]
    """One entry per bucket of the window, oldest first."""


class Decisions(_Document):
    """Priced requests by decision."""

    allow: int
    reroute: int
    surcharge: int
    accept_below_floor: int
    throttle: int


class PlanBucket(_Document):
    t: int
    decisions: Decisions
    revenue_usd: Usd
    sla_credits_usd: Usd


class PlanRow(_Document):
    plan: str
    margin_floor: float
    decisions: Decisions
    """Over the window."""
    requests_billed: int
    revenue_usd: Usd
    """Billed over the window, SLA credits deducted."""
    sla_credits_usd: Usd
    history: list[PlanBucket]


class LastReconcile(_Document):
    at: float
    """Unix seconds."""
    days: int
    ok: bool
    """No drift between the local ledger and Stripe."""
    lines: int
    drifted: int


class DashboardBilling(_Document):
    oldest_unsynced_age_s: float | None
    """Age of the oldest closed window not yet delivered to Stripe (null: none)."""
    dead_letters: int
    outbox: int
    open_windows: int
    last_reconcile: LastReconcile | None
    """Null until a reconciliation ran (`POST /v1/admin/reconcile`, `rtcts reconcile`)."""
    read_at: float
    shards: list[BillingShard]


class Dashboard(_Document):
    """The live margin dashboard's figures (the page at `/dashboard` draws them)."""

    object: Literal["rtcts.dashboard"]
    generated_at: float
    policy_version: str
    bucket_s: int
    window_s: int
    scope: Literal["all_ingress_replicas", "this_ingress_replica"]
    """Whose requests the counts are: every ingress replica's (Redis) or this one's."""
    models: list[ModelRow]
    plans: list[PlanRow]
    billing: DashboardBilling | None
    """Null when billing is not configured."""
    unread: list[Literal["counts", "billing"]]
    """Parts that could not be read now (Redis down); the rest is current."""
