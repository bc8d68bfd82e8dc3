"""The price book: a policy compiled into plain numbers for the hot path.

Pydantic objects are for validation; the pricing core reads these frozen, slotted
records instead (floats for estimates, integer micro-USD for prices), so one
decision over eight models stays within tens of microseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from serve_app.policy.capabilities import GENERATION_ENDPOINTS, Capability
from serve_app.policy.schema import InfeasibleAction, ModelSpec, Plan, Policy
from serve_app.pricing.window import CostBasis

MICRO_PER_USD = 1_000_000
SCALE_DOWN_DELAY_S = 60.0
"""Seconds a replica stays up after its load drops (Serve's `downscale_delay_s`, set by
the builder): the least time a replica that a request forces into existence is paid."""


def usd_to_micro(amount: Decimal) -> int:
    """Exact conversion of a policy dollar amount (at most 6 decimals) to micro-USD."""
    micro = amount * MICRO_PER_USD
    if micro != micro.to_integral_value():
        raise ValueError(f"{amount} USD has more than 6 decimals")
    return int(micro)


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What the cost model needs to know about one model."""

    id: str
    quality_tier: int
    usd_per_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s_at_batch_1: float
    max_concurrent_sequences: int
    batch_slowdown: float
    cold_start_s: float
    cold_start_share_usd: float
    forced_capacity_share_usd: float
    """A new replica's cold start plus `SCALE_DOWN_DELAY_S`, shared over the requests it
    is expected to serve: what a request that forces one into existence adds."""
    context_window_tokens: int
    max_output_tokens: int
    default_output_tokens: int
    max_replicas: int
    capabilities: frozenset[Capability] = frozenset(GENERATION_ENDPOINTS)
    """Endpoints and request features the model serves (`policy/capabilities.py`)."""

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelProfile:
        t = spec.throughput
        usd_per_s = spec.usd_per_hour / 3600.0
        return cls(
            id=spec.id,
            quality_tier=spec.quality_tier,
            usd_per_s=usd_per_s,
            prefill_tokens_per_s=t.prefill_tokens_per_s,
            decode_tokens_per_s_at_batch_1=t.decode_tokens_per_s_at_batch_1,
            max_concurrent_sequences=t.max_concurrent_sequences,
            batch_slowdown=batch_slowdown(
                t.decode_tokens_per_s_at_batch_1,
                t.max_concurrent_sequences,
                t.decode_tokens_per_s_at_max_batch,
            ),
            cold_start_s=spec.cold_start_s,
            cold_start_share_usd=usd_per_s
            * spec.cold_start_s
            / spec.cold_start_amortization_requests,
            forced_capacity_share_usd=usd_per_s
            * (spec.cold_start_s + SCALE_DOWN_DELAY_S)
            / spec.cold_start_amortization_requests,
            context_window_tokens=spec.context_window_tokens,
            max_output_tokens=spec.max_output_tokens,
            default_output_tokens=min(spec.default_output_tokens, spec.max_output_tokens),
            max_replicas=spec.autoscaling.max_replicas,
            capabilities=spec.capability_set,
        )

    def decode_tokens_per_s(self, batch: int) -> float:
        """Aggregate decode throughput Θ(n) of one replica with `batch` sequences (n ≥ 1)."""
        return (
            self.decode_tokens_per_s_at_batch_1 * batch / (1.0 + self.batch_slowdown * (batch - 1))
        )

    def tpot_s(self, batch: int) -> float:
        """Seconds per output token of one sequence in a batch of `batch`: batch / Θ(batch)."""
        return (1.0 + self.batch_slowdown * (batch - 1)) / self.decode_tokens_per_s_at_batch_1


def batch_slowdown(rate_at_1: float, max_batch: int, rate_at_max: float) -> float:
    """The α of Θ(n) = r1·n / (1 + α(n − 1)) that passes through Θ(max_batch) = rate_at_max.

    α = 0 is perfect batching (Θ linear in n); α = 1 is none (Θ constant r1).
    """
    if max_batch == 1:
        return 0.0
    return max(0.0, (rate_at_1 * max_batch / rate_at_max - 1.0) / (max_batch - 1))


@dataclass(frozen=True, slots=True)
class Rates:
    """A plan's price for one model, in micro-USD per 1M tokens."""

    input_micro_per_1m: int
    output_micro_per_1m: int


@dataclass(frozen=True, slots=True)
class PlanTerms:
    """What the decision needs to know about one plan."""

    id: str
    rates: Mapping[str, Rates]
    margin_floor: float
    surge_cap: float
    on_infeasible: tuple[InfeasibleAction, ...]
    allows_substitution: bool
    ttft_target_s: float
    tpot_target_s: float
    throttle_retry_after_s: float
    max_retry_after_s: float
    cost_basis: CostBasis = CostBasis.INCREMENTAL
    embedding_rates: Mapping[str, Rates] = field(default_factory=dict)
    """Embedding prices by model (output rate 0): `embedding_prices_by_model`."""

    def rates_for(self, endpoint: Capability) -> Mapping[str, Rates]:
        """The rates an endpoint's requests are priced at: embeddings have their own."""
        return self.embedding_rates if endpoint is Capability.EMBEDDINGS else self.rates

    @classmethod
    def from_plan(cls, plan: Plan, models: list[ModelSpec]) -> PlanTerms:
        rates: dict[str, Rates] = {}
        embedding: dict[str, Rates] = {}
        for model in models:
            card = plan.prices_by_model.get(model.id) or plan.prices_by_tier.get(model.quality_tier)
            # Token rates price generation: an embedding-only model is not sold for chat.
            if card is not None and GENERATION_ENDPOINTS & model.capability_set:
                rates[model.id] = Rates(
                    usd_to_micro(card.input_usd_per_1m_tokens),
                    usd_to_micro(card.output_usd_per_1m_tokens),
                )
            embedding_card = plan.embedding_prices_by_model.get(model.id)
            if embedding_card is not None:
                embedding[model.id] = Rates(usd_to_micro(embedding_card.input_usd_per_1m_tokens), 0)
        return cls(
            id=plan.id,
            rates=rates,
            margin_floor=plan.margin_floor,
            surge_cap=plan.surge_cap,
            on_infeasible=tuple(plan.on_infeasible),
            allows_substitution=plan.allows_substitution,
            ttft_target_s=plan.sla.ttft_target_ms / 1000.0,
            tpot_target_s=plan.sla.tpot_target_ms / 1000.0,
            throttle_retry_after_s=plan.throttle_retry_after_s,
            max_retry_after_s=plan.max_retry_after_s,
            cost_basis=CostBasis(plan.cost_basis),
            embedding_rates=embedding,
        )


@dataclass(frozen=True, slots=True)
class PriceBook:
    """Models, route aliases and plans of one policy version, ready for pricing."""

    version: str
    models: Mapping[str, ModelProfile]
    routes: Mapping[str, tuple[str, ...]]
    plans: Mapping[str, PlanTerms]

    @classmethod
    def from_policy(cls, policy: Policy, version: str | None = None) -> PriceBook:
        return cls(
            version=version or policy.version,
            models={m.id: ModelProfile.from_spec(m) for m in policy.models},
            routes={alias: tuple(ids) for alias, ids in policy.routes.items()},
            plans={p.id: PlanTerms.from_plan(p, policy.models) for p in policy.plans},
        )
