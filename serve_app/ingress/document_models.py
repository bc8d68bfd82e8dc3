"""rtcts's answers as pydantic models, for the served OpenAPI document (`openapi.py`).

The routes build their JSON as plain dicts for speed (`documents.py`, `views.py`,
`render.py`); these models describe that JSON field by field, so the document says
exactly what a client gets. They are never used to build an answer: tests hold the
real answers to the schemas of the served document (tests/unit/ingress/test_openapi.py)
and the fuzz test checks every answer against them (tests/integration/test_openapi_fuzz.py).

`ChatCompletion` and `ChatCompletionStreamChunk` are `protocol.ChatCompletionResponse`
and `protocol.ChatCompletionChunk` with the `rtcts` object spelled out (a test holds
their fields equal); the other models describe rtcts's own documents.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.ingress.protocol import Choice, ChunkChoice, FinishReason, Usage
from serve_app.pricing import Action, Infeasibility, Reason

Usd = Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]{6}$", examples=["0.000185"])]
"""An amount of USD as a decimal string with 6 places (exact: micro-USD)."""


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


# ----------------------------------------------------------------------------- errors


class ErrorDetail(_Document):
    message: str
    """What went wrong, for a person; never an internal detail."""
    type: Literal["invalid_request_error", "rate_limit_error", "server_error"]
    param: str | None
    """The request field at fault (`messages[0].role`), when there is one."""
    code: str | None
    """Machine-readable: `invalid_api_key`, `model_not_found`, `rate_limited`, ..."""


class ErrorResponse(_Document):
    """Every error answer, in OpenAI's shape (OpenAI clients raise their usual errors)."""

    error: ErrorDetail


# ----------------------------------------------------------------------- chat answers


class RtctsVerified(_Document):
    """rtcts extension: the decision behind a served request and its verified bill."""

    decision: Action
    reason: Reason
    model: str
    """The model that served the request (a route alias resolved)."""
    quoted_price_usd: Usd
    """The price quoted before serving (`x-rtcts-price-usd` of a stream)."""
    list_price_usd: Usd
    """The price of the verified tokens at the plan's rates (surcharge applied)."""
    credit_usd: Usd
    """The SLA credit, when the latency target was missed."""
    billed_usd: Usd
    """What the meter bills: list price less credit, within `max_price_usd`."""
    cost_usd: Usd
    """The allocated cost-to-serve predicted for the request."""
    margin: float
    """(billed − cost) / billed."""
    sla_met: bool
    ttft_ms: float
    """Time to first token, from the request's arrival at the ingress."""
    total_ms: float
    policy_version: str


class ChatCompletion(_Document):
    """A non-streamed chat completion: OpenAI's object, plus `rtcts`."""

    id: str
    """`chatcmpl-` and rtcts's request id (also `x-rtcts-request-id`)."""
    object: Literal["chat.completion"]
    created: int
    """Unix time, seconds."""
    model: str
    choices: list[Choice]
    usage: Usage
    rtcts: RtctsVerified


class ChatCompletionStreamChunk(_Document):
    """One event of a streamed chat completion: OpenAI's chunk. The first carries the
    role, the next ones the text, one the finish reason; the last one has no choices and
    carries `rtcts` (and `usage` when `stream_options.include_usage` is true)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    rtcts: RtctsVerified | None = None


# ------------------------------------------------------- text completions, embeddings


class TextCompletionChoice(_Document):
    index: int
    """With several prompts, choice `index` answers prompt `index // n`."""
    text: str
    logprobs: dict[str, Any] | None
    """With `logprobs`: OpenAI's `{"tokens", "token_logprobs", "top_logprobs",
    "text_offset"}`."""
    finish_reason: FinishReason | None


class TextCompletion(_Document):
    """A non-streamed text completion (`POST /v1/completions`): OpenAI's object, plus
    `rtcts`."""

    id: str
    """`cmpl-` and rtcts's request id (also `x-rtcts-request-id`)."""
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextCompletionChoice]
    usage: Usage
    rtcts: RtctsVerified


class TextCompletionStreamChunk(_Document):
    """One event of a streamed text completion; the last carries `rtcts` (and `usage`
    when `stream_options.include_usage` is true) and no choices."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextCompletionChoice]
    usage: Usage | None = None
    rtcts: RtctsVerified | None = None


class Embedding(_Document):
    object: Literal["embedding"]
    index: int
    """The input's position."""
    embedding: list[float] | str
    """The vector: numbers, or (`encoding_format: base64`) base64 of its little-endian
    float32 values."""


class EmbeddingUsage(_Document):
    prompt_tokens: int
    """Input tokens read (what is billed)."""
    total_tokens: int


class EmbeddingList(_Document):
    """The answer of `POST /v1/embeddings`: OpenAI's list, plus `rtcts`."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    rtcts: RtctsVerified


# ----------------------------------------------------------------------------- quotes


class LiveState(_Document):
    """The live state of the candidate's model that the prediction used."""

    queue_ahead: int
    batch: int
    warm_replicas: int
    starting_replicas: int
    cold_start_remaining_s: float


class Candidate(_Document):
    """One model that could serve the request, priced on the live state."""

    model: str
    quality_tier: int
    feasible: bool
    why_not: list[Infeasibility]
    """Why it cannot be served as is (empty when feasible)."""
    predicted_ttft_ms: float
    predicted_tpot_ms: float
    predicted_total_ms: float
    input_tokens: int
    predicted_output_tokens: int
    cost_usd: Usd
    """The allocated cost-to-serve: the request's share of the replica's time at the
    predicted batch."""
    incremental_cost_usd: Usd
    """What serving the request adds to the cluster's cost (the figure the margin check
    weighs on plans whose `cost_basis` is incremental)."""
    price_usd: Usd
    worst_case_price_usd: Usd
    """The price if the request generates every output token it may."""
    margin: float
    live: LiveState


class Quote(_Document):
    """The decision for a request now, and every candidate: nothing is run or billed."""

    object: Literal["rtcts.quote"]
    decision: Action
    reason: Reason
    model: str | None
    """The model that would serve the request; null when throttled."""
    price_usd: Usd
    """The price that would be quoted (0 when throttled)."""
    surcharge_multiplier: float
    retry_after_s: float | None
    """When throttled: seconds until a retry is predicted to be feasible."""
    policy_version: str
    input_tokens: int
    candidates: list[Candidate]


# ----------------------------------------------------------------------------- models


class ModelPrices(_Document):
    input_usd_per_1m_tokens: Usd
    output_usd_per_1m_tokens: Usd
    embedding_usd_per_1m_tokens: Usd | None = None
    """Where the model serves embeddings too: per 1M tokens embedded."""
    quality_tier: int


class EmbeddingModelPrices(_Document):
    """An embedding model's price: per 1M input tokens embedded (no output)."""

    embedding_usd_per_1m_tokens: Usd
    quality_tier: int


class RouteAlias(_Document):
    route_alias: list[str]
    """The plan's models the alias routes among."""


class PricedModel(_Document):
    """A model (or a route alias) of the caller's plan, OpenAI's model object plus
    `pricing` (rtcts extension)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    pricing: ModelPrices | EmbeddingModelPrices | RouteAlias


class PricedModelList(_Document):
    object: Literal["list"]
    data: list[PricedModel]


# ------------------------------------------------------------------------------ usage


class UsageWindow(_Document):
    """The current minute (a sliding window) against the plan's limits."""

    seconds: int
    requests: int
    requests_limit: int
    requests_remaining: int
    tokens: int
    tokens_limit: int
    tokens_remaining: int


class UsageMonth(_Document):
    """The current month against the plan's budget."""

    month: str
    settled_usd: Usd
    reserved_usd: Usd
    """Reserved by requests in flight, at their worst-case price."""
    budget_usd: Usd
    remaining_usd: Usd
    billed_requests: int
    billed_tokens: int


class UsageBilling(_Document):
    """What the meters billed and what reached Stripe (when billing is configured)."""

    billed_usd: Usd
    credited_usd: Usd
    synced_to_stripe_usd: Usd
    pending_usd: Usd
    billable_requests: int
    failed_requests_not_billed: int


class UsageReport(_Document):
    object: Literal["rtcts.usage"]
    tenant: str
    plan: str
    window: UsageWindow
    month: UsageMonth
    billing: UsageBilling | None


# ---------------------------------------------------------------------------- cluster


class ReplicaState(_Document):
    replica_id: str
    warm: bool
    running: int
    queued: int
    start_remaining_s: float
    mean_service_s: float | None
    failure_rate: float
    kv_cache_usage: float | None
    age_s: float
    """Seconds since the replica's last report."""


class PredictedLoad(_Document):
    """The load the pricing uses for the model."""

    warm_replicas: int
    starting_replicas: int
    queued: int
    running: int
    failure_rate: float


class ModelState(_Document):
    status: str
    """Serve's deployment status (`UNKNOWN` before the controller answered)."""
    target_replicas: int | None
    running_replicas: int | None
    starting_replicas: int | None
    in_flight_here: int
    """Requests this ingress replica has in flight on the model."""
    in_flight_service_s: float
    replicas: list[ReplicaState]
    predicted: PredictedLoad
    cost_usd_per_1m_tokens: float | None = None
    """Present for the models of the caller's plan: the current cost of a reference
    request (1000 prompt and 1000 output tokens), per 1M tokens."""
    reference_quote: Candidate | None = None
    """Present for the models of the caller's plan: the reference request's quote."""


class ClusterReport(_Document):
    policy_version: str
    models: dict[str, ModelState]


# ----------------------------------------------------------------------------- health


class AdmissionHealth(_Document):
    redis_up: bool
    outages: int
    degraded_admissions: int
    failed_calls: dict[str, int]
    pending_settles: int
    dropped_settles: int


class Health(_Document):
    status: Literal["ok"]
    policy_version: str
    load_age_s: float | None
    """Seconds since the live load was refreshed (null before the first refresh)."""
    replicas_age_s: float | None
    admission: AdmissionHealth | None
    """Null when admission (Redis) is not configured."""


# ---------------------------------------------------------------------------- billing


class BillingShard(_Document):
    shard: int
    open_windows: int
    outbox: int
    """Closed windows not yet delivered to Stripe."""
    dead_letters: int
    stream_pending: int
    oldest_unsynced_age_s: float | None
    stripe_setup: dict[str, Any] | None = None
    """The aggregator's Stripe set-up status, once one published it (`ok`, problems)."""


class BillingHealth(_Document):
    object: Literal["rtcts.billing"]
    shards: list[BillingShard]


class ReconcileLine(_Document):
    stripe_customer_id: str
    event_name: str
    unit: str
    """What the figures count: `micro_usd`, `tokens` or `units`."""
    local: int
    stripe: int | None
    """Null when Stripe could not be read (see `error`)."""
    drift: int | None
    """Stripe minus local."""
    ok: bool
    error: str


class ReconcileReport(_Document):
    """The local ledger against Stripe's event summaries, per customer and meter."""

    start_time: int
    end_time: int
    ok: bool
    lines: list[ReconcileLine]
