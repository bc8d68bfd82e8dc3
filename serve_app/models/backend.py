"""The one small interface every model backend implements, and the values it speaks.

A backend turns chat messages into tokens and reports its live load. The model
deployment (`deployment.py`) wraps one backend per replica; the ingress never sees a
backend directly.

    BackendError                    the backend could not serve (request not billable)
    ├── BackendUnavailable          not loaded yet, shutting down, or upstream down
    └── GenerationFailed            failed mid-request (injected fault, upstream error)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from serve_app.errors import (  # re-exported: defined in the one error tree
    BackendError as BackendError,
    BackendUnavailable as BackendUnavailable,
    GenerationFailed as GenerationFailed,
)

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a backend needs to generate; built by the ingress from the OpenAI request."""

    request_id: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    """Hard cap on output tokens (the ingress always sets one)."""
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    upstream_model: str | None = None
    """Model name to send to an upstream server, when it differs from the rtcts id."""


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed piece of output. The last one has `finish_reason` and the usage."""

    text: str
    finish_reason: FinishReason | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole generation with its real token counts and timings (seconds)."""

    text: str
    finish_reason: FinishReason
    input_tokens: int
    output_tokens: int
    ttft_s: float
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
