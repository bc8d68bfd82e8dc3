"""Shared test fakes: a clock that stands still until a test moves it, valid policy
dicts (a model entry, a plan, a whole policy) to override field by field, and a model
deployment handle that implements the part of Serve's `DeploymentHandle` rtcts uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from serve_app.models.backend import (
    Completion,
    Delta,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
)

__all__ = ["EMBEDDINGS", "FakeClock", "FakeHandle", "model_dict", "plan_dict", "policy_dict"]

COMPLETION = Completion(
    text="GPUs are fast.",
    finish_reason="stop",
    input_tokens=20,
    output_tokens=50,
    ttft_s=0.2,
    total_s=2.0,
)
DELTAS = (
    Delta("GPUs"),
    Delta(" are"),
    Delta(" fast.", finish_reason="stop", input_tokens=20, output_tokens=3),
)
EMBEDDINGS = Embeddings(vectors=((0.6, 0.8),), input_tokens=7, total_s=0.05)


class FakeHandle:
    """A Serve DeploymentHandle stand-in: `options(...).remote(request)` is awaitable for
    "generate" and "embed", and an async iterator for "stream".

    `delay_s` waits before answering (a queue or a cold start); `on_call` runs with
    each request as it arrives (tests use it to look at the ingress's state then)."""

    def __init__(
        self,
        *,
        completion: Completion = COMPLETION,
        deltas: Sequence[Delta] = DELTAS,
        embeddings: Embeddings = EMBEDDINGS,
        error: BaseException | None = None,
        fail_after: int | None = None,
        delay_s: float = 0.0,
        on_call: Callable[[GenerationRequest], None] | None = None,
    ) -> None:
        self.completion = completion
        self.deltas = tuple(deltas)
        self.embeddings = embeddings
        self.error = error
        self.fail_after = fail_after
        """Stream this many deltas, then raise `error`."""
        self.delay_s = delay_s
        self.on_call = on_call
        self.calls_seen: list[tuple[str, bool]] = []
        """(method_name, stream) of each call made through `options(...).remote`."""
        self.requests: list[GenerationRequest] = []
        self.embedding_requests: list[EmbeddingRequest] = []

    def options(self, **kwargs: Any) -> _Call:
        call = _Call(self, kwargs.pop("method_name"), kwargs.pop("stream", False))
        assert not kwargs, f"unexpected handle options: {kwargs}"
        return call

    def _note(self, request: GenerationRequest) -> None:
        self.requests.append(request)
        if self.on_call is not None:
            self.on_call(request)

    async def generate(self, request: GenerationRequest) -> Completion:
        self._note(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.completion

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        self.embedding_requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        # One vector per input, of the request's dimensions where it sets them.
        vector = self.embeddings.vectors[0]
        if request.dimensions is not None:
            vector = (vector * request.dimensions)[: request.dimensions]
        return Embeddings(
            tuple(vector for _ in request.inputs),
            self.embeddings.input_tokens,
            self.embeddings.total_s,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self._note(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        for index, delta in enumerate(self.deltas):
            if self.error is not None and index == (self.fail_after or 0):
                raise self.error
            yield delta


@dataclass
class _Call:
    handle: FakeHandle
    method_name: str
    stream: bool

    def remote(self, request: Any) -> Any:
        self.handle.calls_seen.append((self.method_name, self.stream))
        if self.method_name == "stream":
            assert self.stream, "a stream must be asked for with stream=True"
            return self.handle.stream(request)
        if self.method_name == "embed":
            return self.handle.embed(request)
        assert self.method_name == "generate"
        return self.handle.generate(request)


class FakeClock:
    """A clock (`clock()` → seconds) that reads `now`; a test moves it with `clock.now += s`.

    Starts at 1000 s unless told; code that compares with wall time (Stripe timestamps)
    starts it at `time.time()`.
    """

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def model_dict(model_id: str = "small", **overrides: Any) -> dict[str, Any]:
    """A valid `models[]` entry: a simulated tier-1 model at 1 USD/hour, 10 sequences
    a batch, a 4096-token window. Keyword arguments replace whole fields."""
    model: dict[str, Any] = {
        "id": model_id,
        "backend": "simulated",
        "accelerator": "test",
        "usd_per_hour": 1.0,
        "quality_tier": 1,
        "throughput": {
            "prefill_tokens_per_s": 1000,
            "decode_tokens_per_s_at_batch_1": 50,
            "max_concurrent_sequences": 10,
            "decode_tokens_per_s_at_max_batch": 400,
        },
        "cold_start_s": 10,
        "cold_start_amortization_requests": 10,
        "context_window_tokens": 4096,
        "max_output_tokens": 1024,
        "default_output_tokens": 100,
    }
    return {**model, **overrides}


def plan_dict(plan_id: str = "std", **overrides: Any) -> dict[str, Any]:
    """A valid `plans[]` entry: tier-1 models at 0.5 / 5 USD per 1M tokens in / out, a
    0.3 margin floor, throttle when infeasible, a 1 s / 100 ms SLA with a 10% credit,
    60 requests and 10,000 tokens a minute, 5 USD a month. Keyword arguments replace
    whole fields."""
    plan: dict[str, Any] = {
        "id": plan_id,
        "prices_by_tier": {1: {"input_usd_per_1m_tokens": 0.5, "output_usd_per_1m_tokens": 5}},
        "margin_floor": 0.3,
        "on_infeasible": ["throttle"],
        "sla": {"ttft_target_ms": 1000, "tpot_target_ms": 100, "credit_fraction": 0.1},
        "limits": {"requests_per_minute": 60, "tokens_per_minute": 10000, "monthly_budget_usd": 5},
    }
    return {**plan, **overrides}


def policy_dict(**overrides: Any) -> dict[str, Any]:
    """A valid policy dict (`load_policy_dict` accepts it): version "test", one
    `model_dict()` and one `plan_dict()`. Keyword arguments replace whole fields
    (`models=[...]`, `plans=[...]`, `routes={...}`, `tenants=[...]`)."""
    policy: dict[str, Any] = {
        "version": "test",
        "models": [model_dict()],
        "plans": [plan_dict()],
    }
    return {**policy, **overrides}
