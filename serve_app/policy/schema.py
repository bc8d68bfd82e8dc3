"""The policy schema: what `policies/*.yaml` may say, and the rules each field obeys.

Every model is strict (`extra="forbid"`, frozen) and every field carries a description
and its unit in its name. Rules that need more than one field of one object live in
a `model_validator` here; rules that cross objects (an alias naming an unknown model,
a duplicate API key) live in `checks.py`, which reports them with their field path.
"""

from __future__ import annotations

from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.policy.capabilities import Capability, capabilities_of, capability_issue

Identifier = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="An id: letters, digits, '.', '_', ':' or '-'; starts with a letter or digit.",
    ),
]
Sha256Hex = Annotated[
    str,
    Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of an API key, 64 lowercase hex digits (`rtcts policy hash-key KEY`).",
    ),
]
UsdAmount = Annotated[
    Decimal,
    Field(ge=0, max_digits=18, decimal_places=6, description="US dollars, at most 6 decimals."),
]


RAY_BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
"""Resources Ray counts itself: a model cannot ask for them by name in `ray_resources`."""
RayResourceName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$",
        description="A Ray resource name, e.g. 'gpu_l4' or 'accelerator_type:L4'.",
    ),
]


class StrictModel(BaseModel):
    """Base of every policy object: unknown fields are errors, objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class BackendKind(str, Enum):
    """Which engine serves a model."""

    SIMULATED = "simulated"
    OPENAI_UPSTREAM = "openai_upstream"
    RAY_SERVE_LLM = "ray_serve_llm"


class Dispatch(str, Enum):
    """Where a model's requests are sent from."""

    DEPLOYMENT = "deployment"
    """A Serve deployment of the model, its replicas autoscaled (the engine runs there)."""
    INGRESS = "ingress"
    """The ingress calls the model's server itself (openai_upstream only): one hop less."""


class InfeasibleAction(str, Enum):
    """What to try when the requested model (or no candidate) meets the SLA and margin floor."""

    REROUTE = "reroute"
    SURCHARGE = "surcharge"
    ACCEPT = "accept"
    THROTTLE = "throttle"


TERMINAL_ACTIONS = frozenset({InfeasibleAction.ACCEPT, InfeasibleAction.THROTTLE})


class ThroughputProfile(StrictModel):
    """How fast one replica of a model works, measured on its accelerator."""

    prefill_tokens_per_s: float = Field(
        gt=0, description="Prompt tokens processed per second by one replica (prefill)."
    )
    decode_tokens_per_s_at_batch_1: float = Field(
        gt=0, description="Output tokens per second of one sequence decoding alone."
    )
    max_concurrent_sequences: int = Field(
        ge=1, le=4096, description="Most sequences one replica decodes at once (its batch)."
    )
    decode_tokens_per_s_at_max_batch: float = Field(
        gt=0,
        description=(
            "Aggregate output tokens per second of one replica with a full batch. "
            "Between the batch-1 rate and batch-1 rate x max_concurrent_sequences; "
            "the curve between them saturates (see docs/pricing-model.md)."
        ),
    )

    @model_validator(mode="after")
    def _saturation_in_range(self) -> ThroughputProfile:
        low = self.decode_tokens_per_s_at_batch_1
        high = low * self.max_concurrent_sequences
        if not low <= self.decode_tokens_per_s_at_max_batch <= high:
            raise ValueError(
                "decode_tokens_per_s_at_max_batch must lie between the batch-1 rate "
                f"({low:g}) and batch-1 rate x max_concurrent_sequences ({high:g})"
            )
        return self


class Autoscaling(StrictModel):
    """Replica bounds of a model deployment; min_replicas 0 means it scales to zero."""

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas (0 = scale to zero).")
    max_replicas: int = Field(default=1, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(
        default=8,
        gt=0,
        description="Requests per replica the autoscaler aims for before adding a replica.",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


class LLMEngineKind(str, Enum):
    """The engine inside a Ray Serve LLM `LLMServer` replica."""

    SIMULATED = "simulated"
    VLLM = "vllm"


class RayServeLLM(StrictModel):
    """The `LLMConfig` fields of a `ray_serve_llm` model (autoscaling and batch: the spec's).

    `engine` simulated (CPU) or vllm (GPU) is the only change between CI and production.
    """

    engine: LLMEngineKind = Field(
        default=LLMEngineKind.SIMULATED,
        description="'simulated': the simulated GPU model, run on CPU by the real "
        "LLMServer through its engine_cls; 'vllm': Ray Serve LLM's vLLM engine (needs vLLM "
        "and a GPU where replicas run, and where the app is built).",
    )
    model_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Model name the engine serves (LLMConfig model_loading_config.model_id); "
        "default: the rtcts model id.",
    )
    model_source: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Where the engine loads the weights from: a Hugging Face repo id, a local "
        "path or an s3:// / gs:// URI (model_loading_config.model_source); default: model_id.",
    )
    accelerator_type: str | None = Field(
        default=None,
        min_length=1,
        description="Ray accelerator type of a replica, e.g. 'L4', 'A10G', 'H100' "
        "(LLMConfig accelerator_type, checked against Ray's list when the app is built); "
        "the simulated engine runs on CPU whatever it says.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments (max_model_len, tensor_parallel_size, "
        "gpu_memory_utilization, ...); the simulated engine ignores them. max_num_seqs "
        "must equal throughput.max_concurrent_sequences, max_model_len must hold "
        "context_window_tokens.",
    )
    stream_batching_interval_ms: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="How long LLMServer gathers streamed chunks before sending them on, ms "
        "(LLMConfig experimental_configs); 0 sends each at once; default: Ray's (50).",
    )
    log_engine_metrics: bool = Field(
        default=False,
        description="vLLM's engine metrics through Ray's metrics port (LLMConfig "
        "log_engine_metrics). Off, vLLM keeps them in the replica, where rtcts reads the "
        "running and waiting requests and KV cache usage every 100 ms; on, rtcts counts "
        "requests itself.",
    )


class ModelSpec(StrictModel):
    """A model rtcts can serve: its hardware cost, speed, quality and scaling."""

    id: Identifier = Field(description="Model id clients send as `model`.")
    backend: BackendKind = Field(description="Engine behind the model deployment.")
    upstream_url: str | None = Field(
        default=None,
        description="Base URL of the OpenAI-compatible server (backend openai_upstream only).",
    )
    ray_serve_llm: RayServeLLM | None = Field(
        default=None,
        description="The Ray Serve LLM deployment's LLMConfig fields (backend ray_serve_llm only).",
    )
    dispatch: Dispatch | None = Field(
        default=None,
        description="Where requests go from: 'ingress' (the ingress calls an "
        "openai_upstream server itself, one hop less; the server is one fixed replica, so "
        "autoscaling stays at 1) or 'deployment' (a Serve deployment between, autoscaled). "
        "Unset: ingress for openai_upstream, deployment otherwise.",
    )
    accelerator: str = Field(
        min_length=1, description="Accelerators of one replica, for people (e.g. '1x NVIDIA L4')."
    )
    ray_resources: dict[RayResourceName, float] = Field(
        default_factory=dict,
        description="Custom Ray resources one replica needs, which pin the model's replicas "
        "to the nodes that declare them (`ray start --resources`, a node type's `resources` "
        "in cluster.yaml): e.g. {'accelerator_type:L4': 0.001} or {'gpu_l4': 1}. A "
        "quantity is above 0, and at most 1 or whole (Ray's rule); a fraction lets several "
        "replicas share the node. Not CPU, GPU, memory or object_store_memory. Empty: any "
        "node (the replica takes no CPU).",
    )
    usd_per_hour: float = Field(
        gt=0, description="What one replica costs per hour, busy or idle (on-demand price)."
    )
    quality_tier: int = Field(ge=1, le=10, description="Quality rank; higher is better.")
    throughput: ThroughputProfile = Field(description="Measured speed of one replica.")
    cold_start_s: float = Field(
        ge=0, description="Seconds from starting a replica to its first token (weights load)."
    )
    cold_start_amortization_requests: int = Field(
        default=100,
        ge=1,
        description="Requests a newly started replica is expected to serve; a cold start's "
        "GPU cost is shared among them.",
    )
    context_window_tokens: int = Field(ge=1, description="Most prompt plus output tokens.")
    max_output_tokens: int = Field(ge=1, description="Most output tokens of one request.")
    default_output_tokens: int = Field(
        default=256,
        ge=1,
        description="Predicted output tokens when the request sets no max_tokens and the "
        "tenant has no history on this model.",
    )
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling, description="Replica bounds of the deployment."
    )
    capabilities: list[Capability] | None = Field(
        default=None,
        min_length=1,
        description="Endpoints (chat, completions, embeddings) and request features (tools, "
        "logprobs, n, json_object, json_schema, penalties, logit_bias, images) the model "
        "serves; unset: chat and completions with every feature (serve_app/policy/"
        "capabilities.py). An embedding model lists [embeddings].",
    )

    @property
    def dispatched_from_ingress(self) -> bool:
        """True when the ingress calls the model's server itself (no Serve deployment)."""
        if self.dispatch is None:
            return self.backend is BackendKind.OPENAI_UPSTREAM
        return self.dispatch is Dispatch.INGRESS

    @property
    def capability_set(self) -> frozenset[Capability]:
        """What the model serves: its `capabilities`, else its backend's default."""
        return capabilities_of(self.backend.value, self.capabilities)

    @field_validator("ray_resources")
    @classmethod
    def _ray_resources(cls, value: dict[str, float]) -> dict[str, float]:
        for name, quantity in value.items():
            if name in RAY_BUILTIN_RESOURCES:
                raise ValueError(f"'{name}' is Ray's own resource, not a custom one")
            if not (quantity > 0 and (quantity <= 1 or float(quantity).is_integer())):
                raise ValueError(
                    f"'{name}': {quantity} is not a Ray quantity (above 0; at most 1, or whole)"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.max_output_tokens > self.context_window_tokens:
            raise ValueError("max_output_tokens exceeds context_window_tokens")
        if self.capabilities is not None and (
            why := capability_issue(self.backend.value, self.capabilities)
        ):
            raise ValueError(why)
        if (self.backend is BackendKind.OPENAI_UPSTREAM) != (self.upstream_url is not None):
            raise ValueError("upstream_url is required for, and only for, backend openai_upstream")
        if (self.backend is BackendKind.RAY_SERVE_LLM) != (self.ray_serve_llm is not None):
            raise ValueError("ray_serve_llm is required for, and only for, backend ray_serve_llm")
        if self.dispatch is Dispatch.INGRESS and self.backend is not BackendKind.OPENAI_UPSTREAM:
            raise ValueError("dispatch 'ingress' is for openai_upstream models only")
        if self.dispatched_from_ingress and (
            self.autoscaling.min_replicas,
            self.autoscaling.max_replicas,
        ) != (1, 1):
            raise ValueError(
                "an upstream the ingress calls itself is one fixed server: autoscaling "
                "min_replicas and max_replicas are 1 (or set dispatch: deployment)"
            )
        if self.ray_serve_llm is not None:
            self._engine_agrees(self.ray_serve_llm.engine_kwargs)
        return self

    def _engine_agrees(self, engine_kwargs: dict[str, Any]) -> None:
        """The engine's batch and context are the ones the pricing assumes."""
        seqs = engine_kwargs.get("max_num_seqs")
        if seqs is not None and seqs != self.throughput.max_concurrent_sequences:
            raise ValueError(
                f"ray_serve_llm.engine_kwargs.max_num_seqs ({seqs}) differs from "
                f"throughput.max_concurrent_sequences ({self.throughput.max_concurrent_sequences})"
            )
        length = engine_kwargs.get("max_model_len")
        if length is not None and (
            not isinstance(length, int) or length < self.context_window_tokens
        ):
            raise ValueError(
                f"ray_serve_llm.engine_kwargs.max_model_len ({length}) is below "
                f"context_window_tokens ({self.context_window_tokens})"
            )


class PriceCard(StrictModel):
    """What a plan charges for a model, per million tokens."""

    input_usd_per_1m_tokens: UsdAmount = Field(description="Price of 1M prompt tokens, USD.")
    output_usd_per_1m_tokens: UsdAmount = Field(description="Price of 1M output tokens, USD.")

    @model_validator(mode="after")
    def _not_free(self) -> PriceCard:
        if self.input_usd_per_1m_tokens == 0 and self.output_usd_per_1m_tokens == 0:
            raise ValueError("a price card must charge for input or output tokens")
        return self


class EmbeddingPriceCard(StrictModel):
    """What a plan charges for embeddings of a model: per input token (no output)."""

    input_usd_per_1m_tokens: UsdAmount = Field(
        gt=0, description="Price of 1M input tokens embedded, USD."
    )


class Sla(StrictModel):
    """The latency a plan promises, and the credit when a request misses it."""

    ttft_target_ms: float = Field(gt=0, description="Time to first token promised, ms.")
    tpot_target_ms: float = Field(
        gt=0, description="Mean time per output token after the first promised, ms."
    )
    credit_fraction: Decimal = Field(
        ge=0,
        le=1,
        max_digits=7,
        decimal_places=6,
        description="Share of the price credited on a request that missed the SLA (0..1).",
    )


class Limits(StrictModel):
    """Admission limits of a plan (enforced in Redis by the admission layer)."""

    requests_per_minute: int = Field(ge=1, description="Requests per sliding minute.")
    tokens_per_minute: int = Field(
        ge=1, description="Prompt plus output tokens per sliding minute."
    )
    monthly_budget_usd: UsdAmount = Field(description="Most spend per calendar month, USD.")
    quotes_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Quotes (POST /v1/quote) per sliding minute, counted apart from "
        "requests; unset: the same number as requests_per_minute.",
    )
    on_redis_outage: Literal["fail_open", "fail_closed"] = Field(
        default="fail_open",
        description="While Redis is unreachable: keep serving under a local approximate "
        "limiter (fail_open) or answer 503 (fail_closed).",
    )


class Plan(StrictModel):
    """A price plan: price cards, margin floor, SLA, limits and what to do when infeasible."""

    id: Identifier = Field(description="Plan id that tenants refer to.")
    prices_by_model: dict[str, PriceCard] = Field(
        default_factory=dict, description="Price card per model id; wins over prices_by_tier."
    )
    prices_by_tier: dict[int, PriceCard] = Field(
        default_factory=dict, description="Price card per quality tier, for models not listed."
    )
    embedding_prices_by_model: dict[str, EmbeddingPriceCard] = Field(
        default_factory=dict,
        description="Embedding price per model id (models with the embeddings capability); "
        "a model without one is not sold for embeddings on this plan.",
    )
    margin_floor: float = Field(
        default=0.35,
        ge=0,
        lt=1,
        description="Least realized gross margin (revenue - cost) / revenue: of each "
        "model's rolling window with cost_basis 'incremental', of each request with "
        "'allocated'.",
    )
    cost_basis: Literal["incremental", "allocated"] = Field(
        default="incremental",
        description="'incremental': a request is weighed at what serving it adds (replica "
        "time it adds at the current batch, capacity it forces, failure risk) under the "
        "rolling-window margin guard; 'allocated': at its share of the replica's time, "
        "each request against the floor (refuses work on idle paid replicas).",
    )
    surge_cap: float = Field(
        default=1.0,
        ge=1,
        le=10,
        description="Largest price multiplier a surcharge may apply (1 = never surcharge).",
    )
    on_infeasible: list[InfeasibleAction] = Field(
        default_factory=lambda: [InfeasibleAction.REROUTE, InfeasibleAction.THROTTLE],
        min_length=1,
        description="Actions tried in order when the requested model is infeasible; "
        "'reroute' allows substitution by an equal or better model; the chain ends with "
        "'throttle' (HTTP 429) or 'accept' (serve below the floor).",
    )
    throttle_retry_after_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Retry-After when waiting cannot be predicted (e.g. margin, not queue).",
    )
    max_retry_after_s: float = Field(
        default=60.0, gt=0, le=3600, description="Largest Retry-After ever quoted, seconds."
    )
    sla: Sla = Field(description="Latency promise and its credit.")
    limits: Limits = Field(description="Request, token and spend limits.")

    @property
    def allows_substitution(self) -> bool:
        """Substitution by another model is allowed exactly when 'reroute' is in the chain."""
        return InfeasibleAction.REROUTE in self.on_infeasible

    @property
    def accepts_below_floor(self) -> bool:
        """Whether this plan may serve a request below its margin floor."""
        return InfeasibleAction.ACCEPT in self.on_infeasible

    @field_validator("on_infeasible")
    @classmethod
    def _chain_well_formed(cls, chain: list[InfeasibleAction]) -> list[InfeasibleAction]:
        if len(set(chain)) != len(chain):
            raise ValueError("on_infeasible lists an action twice")
        if chain[-1] not in TERMINAL_ACTIONS:
            raise ValueError("on_infeasible must end with 'throttle' or 'accept'")
        if any(action in TERMINAL_ACTIONS for action in chain[:-1]):
            raise ValueError("on_infeasible has actions after 'throttle' or 'accept'")
        return chain

    @model_validator(mode="after")
    def _surcharge_needs_a_cap(self) -> Plan:
        if InfeasibleAction.SURCHARGE in self.on_infeasible and self.surge_cap <= 1:
            raise ValueError("on_infeasible has 'surcharge' but surge_cap is 1 (no surcharge)")
        if self.max_retry_after_s < self.throttle_retry_after_s:
            raise ValueError("max_retry_after_s is below throttle_retry_after_s")
        return self


class Tenant(StrictModel):
    """A customer: its plan, its Stripe customer and the hashes of its API keys."""

    id: Identifier = Field(description="Tenant id.")
    plan: Identifier = Field(description="Id of the tenant's plan.")
    stripe_customer_id: str = Field(
        pattern=r"^cus_[A-Za-z0-9_]+$", max_length=100, description="Stripe customer id."
    )
    api_key_sha256: list[Sha256Hex] = Field(
        min_length=1, description="SHA-256 hex digests of the tenant's API keys (never keys)."
    )


class Policy(StrictModel):
    """One policy file: models, route aliases, plans and tenants."""

    schema_version: Literal[1] = Field(default=1, description="Version of this schema.")
    version: str = Field(
        min_length=1, max_length=64, description="Version label of this policy, stamped on meters."
    )
    models: list[ModelSpec] = Field(min_length=1, description="Models that can be served.")
    routes: dict[Identifier, list[str]] = Field(
        default_factory=dict,
        description="Route aliases (e.g. 'auto', tiers): alias -> candidate model ids.",
    )
    plans: list[Plan] = Field(min_length=1, description="Price plans.")
    tenants: list[Tenant] = Field(default_factory=list, description="Customers.")
    admin_api_key_sha256: list[Sha256Hex] = Field(
        default_factory=list,
        description="SHA-256 hex digests of admin API keys (admin endpoints; never tenant keys).",
    )
