"""The values of one priced request on its way through the ingress (no HTTP here).

A `ChatCall` is made once the request is decided and admitted; every later step
(serve, settle, meter, render) takes it whole instead of its parts. What the service
returns is one of the values below; `render.py` turns them into OpenAI JSON, SSE and
headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from serve_app.ingress.protocol import ChatCompletionRequest
from serve_app.ingress.protocol_endpoints import CompletionRequest, EmbeddingsRequest
from serve_app.models.backend import (
    Completion,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    Json,
)
from serve_app.policy import Tenant
from serve_app.pricing import Decision, PlanTerms, PriceRequest
from serve_app.pricing.billing import Bill
from serve_app.pricing.types import CandidateQuote

GenerationBody = ChatCompletionRequest | CompletionRequest
"""A request that generates: a chat or a text completion."""
PricedBody = ChatCompletionRequest | CompletionRequest | EmbeddingsRequest
"""Any priced request's body (each says its endpoint, features and prompt tokens)."""


@dataclass(frozen=True, slots=True)
class Quoted:
    """A decision and the request it priced (`POST /v1/quote`, and the first step of chat)."""

    request: PriceRequest
    decision: Decision


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One request decided to be served and admitted: everything the steps after need."""

    tenant: Tenant
    body: PricedBody
    decision: Decision
    plan: PlanTerms
    """The plan's terms the decision was made under (billed at them, even after a reload)."""
    credit: Fraction
    """The plan's SLA credit fraction, of the same policy version."""
    request_id: str
    """Made by the server: the admission member, settle key and meter's request id."""
    generation: GenerationRequest | EmbeddingRequest
    """The engine's request: a generation, or an embedding (`/v1/embeddings`)."""
    service_s: float
    """How long it will hold a batch slot, for the queue wait of those behind it."""
    arrived_s: float = 0.0
    """Monotonic clock time at which the request reached the ingress."""
    client_request_id: str | None = None
    """The client's `X-Request-ID`, recorded in the meter, never used as a key."""

    @property
    def chosen(self) -> CandidateQuote:
        chosen = self.decision.chosen
        assert chosen is not None  # a call exists only for a request that is served
        return chosen

    @property
    def model_id(self) -> str:
        return self.chosen.model_id


@dataclass(frozen=True, slots=True)
class Served:
    """A finished generation, however it was delivered: the verified tokens and latency."""

    input_tokens: int
    output_tokens: int
    ttft_s: float
    total_s: float

    @property
    def tpot_s(self) -> float:
        return (
            (self.total_s - self.ttft_s) / (self.output_tokens - 1)
            if self.output_tokens > 1
            else 0.0
        )


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A finished, billed, metered chat completion (not streamed)."""

    call: ChatCall
    completion: Completion
    served: Served
    bill: Bill


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """Finished, billed, metered embeddings."""

    call: ChatCall
    embeddings: Embeddings
    served: Served
    bill: Bill


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The first event of a stream: the generation has started on the model."""


@dataclass(frozen=True, slots=True)
class StreamText:
    """A piece of the answer: of choice `index`, its text, tool-call pieces and
    logprobs; `finish_reason` when the piece ends its choice (not the stream's last)."""

    text: str
    index: int = 0
    tool_calls: tuple[Json, ...] = ()
    logprobs: Json | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of a stream that finished: billed and metered. `finish_reason`
    is choice `index`'s (the last choice to finish)."""

    finish_reason: str
    served: Served
    bill: Bill
    index: int = 0


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """The last event of a stream that failed after it began: not billed, metered as failed.
    `error` is a domain error (a `BackendError`)."""

    error: Exception


StreamEvent = StreamOpened | StreamText | StreamEnd | StreamFailed
