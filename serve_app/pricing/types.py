"""Plain typed values in and out of the pricing core.

In: a `PriceRequest` and a `ClusterSnapshot` (what the live cluster state reports).
Out: a `Decision` holding one `CandidateQuote` per candidate model. Money is integer
micro-USD; latencies are seconds (floats, since they are estimates).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from serve_app.policy.capabilities import Capability

NO_FEATURES: frozenset[Capability] = frozenset()


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One replica of a model as the live state last saw it.

    A warm replica is serving; a cold one is starting (loading weights) and will be
    warm in `start_remaining_s`. The cluster state reports a scale-up the autoscaler
    has decided but not yet begun as a cold replica with the full cold start left.
    """

    running: int = 0
    queued: int = 0
    warm: bool = True
    start_remaining_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """Live state of one model deployment."""

    replicas: tuple[ReplicaLoad, ...] = ()
    failure_rate: float = 0.0
    """Share of recent requests that failed, in [0, 1)."""
    available: bool = True
    """False when the deployment cannot take requests at all (unhealthy, being deleted)."""
    mean_service_s: float | None = None
    """Mean duration of the requests on this model now: this ingress's in-flight ones at
    their predicted durations, the rest at the replicas' measured recent mean; None
    when neither is known."""


NO_REPLICAS = ModelLoad()


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Live state of every model; a model missing here has no replicas."""

    models: Mapping[str, ModelLoad] = field(default_factory=lambda: MappingProxyType({}))

    def load(self, model_id: str) -> ModelLoad:
        return self.models.get(model_id, NO_REPLICAS)


@dataclass(frozen=True, slots=True)
class PriceRequest:
    """What is known about a request before it runs."""

    model: str
    """A model id or a route alias."""
    input_tokens: int
    max_tokens: int | None = None
    output_history: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """The tenant's recent mean output tokens per model id."""
    max_price_micro: int | None = None
    """The most the client agreed to pay for this request (its price cap), micro-USD."""
    endpoint: Capability = Capability.CHAT
    """chat and completions are priced at the plan's token rates; embeddings at its
    embedding price per input token, with no output and no latency promise."""
    features: frozenset[Capability] = NO_FEATURES
    """Optional features the request asks for (tools, logprobs, n, ...): a candidate
    that lacks one is infeasible (`UNSUPPORTED_FEATURE`)."""
    choices: int = 1
    """Choices generated (`n`, times the prompts of a completions request): predicted
    and worst-case output are per choice times this."""


class Action(str, Enum):
    """What the decision does with the request."""

    ALLOW = "allow"
    REROUTE = "reroute"
    SURCHARGE = "surcharge"
    ACCEPT_BELOW_FLOOR = "accept_below_floor"
    THROTTLE = "throttle"


class Reason(str, Enum):
    """Why the decision is what it is (machine-readable)."""

    REQUESTED_FEASIBLE = "requested_model_feasible"
    BEST_MARGIN = "best_margin_feasible_candidate"
    REROUTED = "requested_model_infeasible_rerouted"
    SURCHARGED = "surcharged_to_margin_floor"
    ACCEPTED_BELOW_FLOOR = "accepted_below_margin_floor"
    ACCEPTED_SLA_AT_RISK = "accepted_latency_sla_at_risk"
    NO_FEASIBLE_CANDIDATE = "no_feasible_candidate"
    PRICE_CAP_EXCEEDED = "price_cap_exceeded"
    NO_CAPACITY = "no_capacity"


class Infeasibility(str, Enum):
    """Why one candidate cannot be served as is."""

    TTFT_OVER_SLA = "ttft_over_sla"
    TPOT_OVER_SLA = "tpot_over_sla"
    MARGIN_BELOW_FLOOR = "margin_below_floor"
    OVER_PRICE_CAP = "over_price_cap"
    CONTEXT_WINDOW_EXCEEDED = "context_window_exceeded"
    NO_CAPACITY = "no_capacity"
    UNSUPPORTED_FEATURE = "unsupported_feature"


HARD_INFEASIBILITIES = frozenset(
    {
        Infeasibility.OVER_PRICE_CAP,
        Infeasibility.CONTEXT_WINDOW_EXCEEDED,
        Infeasibility.NO_CAPACITY,
        Infeasibility.UNSUPPORTED_FEATURE,
    }
)
"""Reasons that neither waiting, surcharging nor accepting below the floor can fix."""


@dataclass(slots=True)
class CandidateQuote:
    """The predicted latency, cost, price and margin of the request on one model.

    A value: never mutated after it is built. (Not `frozen`: frozen dataclasses cost
    1 µs more to build, and eight are built per request.)
    """

    model_id: str
    quality_tier: int
    input_tokens: int
    predicted_output_tokens: int
    ttft_s: float
    tpot_s: float
    total_s: float
    cost_micro: int
    price_micro: int
    worst_case_price_micro: int
    """Price if the request produces its maximum output tokens (for budget reservations)."""
    margin: float
    reasons: tuple[Infeasibility, ...]
    queue_ahead: int
    batch: int
    """Sequences the request is predicted to share its replica's batch with."""
    warm_replicas: int
    starting_replicas: int
    cold_start_remaining_s: float
    """Included in ttft_s when the request must wait for a replica to start."""
    incremental_cost_micro: int = 0
    """What serving the request adds to the bill (docs/pricing-model.md); `cost_micro`
    is its allocated share of the replica."""
    least_price_micro: int = 0
    """The least price that passes the margin check on the decision's cost basis."""

    @property
    def feasible(self) -> bool:
        return not self.reasons


@dataclass(slots=True)
class Decision:
    """The outcome for one request: what to do, why, at what price, on which model.

    A value: never mutated after it is built (not `frozen`, for speed, like the quotes).
    """

    action: Action
    reason: Reason
    model_id: str | None
    """The model to serve on; None when throttled."""
    price_micro: int
    """Price quoted to the client after any surcharge; 0 when throttled."""
    surcharge_multiplier: float
    retry_after_s: float | None
    """Seconds until a retry is predicted to be feasible; set only when throttled."""
    chosen: CandidateQuote | None
    candidates: tuple[CandidateQuote, ...]
    policy_version: str
    endpoint: Capability = Capability.CHAT
    """The request's endpoint: which of the plan's rates the bill uses."""

    @property
    def served(self) -> bool:
        return self.model_id is not None
