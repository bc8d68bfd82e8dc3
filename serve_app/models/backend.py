"""The one small interface every model backend implements, and the values it speaks.

A backend turns chat messages into tokens and reports its live load. The model
deployment (`deployment.py`) wraps one backend per replica; the ingress never sees a
backend directly.

    BackendError                    the backend could not serve (request not billable)
    ├── BackendUnavailable          not loaded yet, shutting down, or upstream down
    ├── GenerationFailed            failed mid-request (injected fault, upstream error)
    └── RequestRejected             the engine refused the request as invalid (400)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from serve_app.errors import (  # re-exported: defined in the one error tree
    BackendError as BackendError,
    BackendUnavailable as BackendUnavailable,
    GenerationFailed as GenerationFailed,
    RequestRejected as RequestRejected,
)

FinishReason = Literal["stop", "length", "tool_calls"]
Json = Mapping[str, Any]
"""A JSON object as OpenAI's API writes it (tool definitions, tool calls, logprobs)."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    """The text (a multi-part content's text parts joined)."""
    name: str | None = None
    tool_calls: tuple[Json, ...] = ()
    """An assistant message's tool calls, as OpenAI's `tool_calls` items."""
    tool_call_id: str | None = None
    """A tool message: the call it answers."""
    parts: tuple[Json, ...] = ()
    """The content parts as sent, when some are not text (images); else empty."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a backend needs to generate; built by the ingress from the OpenAI request.

    A chat request has `messages`; a text completion (`/v1/completions`) has `prompt`
    (one or more prompts; `n` choices of each) and no messages. Every optional field is
    forwarded to an engine that serves it as OpenAI's field of the same name; the
    ingress sends a feature only to a model whose capabilities include it."""

    request_id: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    """Hard cap on output tokens of each choice (the ingress always sets one)."""
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    upstream_model: str | None = None
    """Model name to send to an upstream server, when it differs from the rtcts id."""
    n: int = 1
    """Choices per prompt."""
    tools: tuple[Json, ...] = ()
    tool_choice: str | Json | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    """Alternatives per token (0-20) when `logprobs`."""
    response_format: Json | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: Json | None = None
    user: str | None = None
    prompt: tuple[str, ...] | None = None
    """Text completions: the prompts (`messages` is empty)."""

    @property
    def choices(self) -> int:
        """Choices generated in all: `n` per prompt."""
        return self.n * (len(self.prompt) if self.prompt is not None else 1)


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed piece of output. The last one has `finish_reason` and the usage.

    With several choices, `index` says whose piece it is; each choice's last piece has
    its `finish_reason`, and the usage (of every choice) is on the stream's last Delta."""

    text: str
    finish_reason: FinishReason | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    index: int = 0
    tool_calls: tuple[Json, ...] = ()
    """Streamed tool-call pieces, as OpenAI's `delta.tool_calls` items."""
    logprobs: Json | None = None
    """The piece's logprobs, as OpenAI's choice `logprobs` object for the endpoint."""


@dataclass(frozen=True, slots=True)
class ChoiceOutput:
    """One choice of a whole generation."""

    index: int
    text: str
    finish_reason: FinishReason
    tool_calls: tuple[Json, ...] = ()
    """OpenAI's `message.tool_calls` items (chat)."""
    logprobs: Json | None = None
    """OpenAI's choice `logprobs` object (chat: `content`; completions: `tokens`, ...)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole generation with its real token counts (every choice's) and timings (s).

    `text` and `finish_reason` are the first choice's; `choices` holds every choice
    when there are several, or tool calls or logprobs (empty: one plain choice)."""

    text: str
    finish_reason: FinishReason
    input_tokens: int
    output_tokens: int
    ttft_s: float
    total_s: float
    choices: tuple[ChoiceOutput, ...] = ()

    def all_choices(self) -> tuple[ChoiceOutput, ...]:
        """Every choice, the first one made from `text` when `choices` is empty."""
        return self.choices or (ChoiceOutput(0, self.text, self.finish_reason),)


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """What a backend needs to embed: each input a text, or token ids."""

    request_id: str
    inputs: tuple[str | tuple[int, ...], ...]
    dimensions: int | None = None
    upstream_model: str | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The vectors of an `EmbeddingRequest`, in input order, and the tokens read."""

    vectors: tuple[tuple[float, ...], ...]
    input_tokens: int
    total_s: float


@dataclass(frozen=True, slots=True)
class LoadReport:
    """Live load of one replica, as the pricing core needs it."""

    running: int
    """Sequences decoding now (the batch)."""
    queued: int
    """Requests waiting for a batch slot."""
    warm: bool
    """True once weights are loaded and the replica serves."""
    start_remaining_s: float = 0.0
    """While starting: predicted seconds until warm."""
    kv_cache_usage: float | None = None
    """Share of KV cache in use (0..1), where the engine reports it."""
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A model engine behind a model deployment replica."""

    async def start(self) -> None:
        """Load the model; returns when the backend can serve (the cold start)."""

    async def generate(self, request: GenerationRequest) -> Completion:
        """Generate the whole answer."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Generate the answer piece by piece; the last Delta carries finish_reason and usage."""

    def load(self) -> LoadReport:
        """Live load, cheap and non-blocking (called every 100 ms)."""

    async def close(self) -> None:
        """Release resources."""


@runtime_checkable
class Embedder(Protocol):
    """A backend that also embeds (a model whose capabilities include embeddings)."""

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """The vectors of every input, in order, with the input tokens the engine read."""
