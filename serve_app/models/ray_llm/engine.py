"""The simulated GPU model as a Ray Serve LLM engine (`LLMEngine`).

`LLMServer` takes its engine class as `engine_cls`; `simulated_engine(spec, ...)` makes
one bound to a model's throughput profile, so the real `LLMServer` code path (its
start-up, request ids, stream batching, health checks, routing stats) runs on CPU with
the same timing model as the `simulated` backend (`SimulatedLLM`: cold start, slots and
queue, prefill, continuous batching, failure injection).

It speaks chat the way Ray's vLLM engine does: a streamed request yields SSE `data:`
strings (a usage chunk last when `stream_options.include_usage`, then `[DONE]`), a
whole one yields one `ChatCompletionResponse`; an error before the first token yields
one `ErrorResponse` (503 when the model cannot take requests, 500 on a failure), an
error after it an error chunk. The other endpoints answer 501.

Live state, the engine's own figures (`load()`): slots held and queue from the
simulation, and KV cache usage as the tokens held by the requests past their prefill
(prompt plus output so far) over the cache of a full batch at full context
(`max_concurrent_sequences` x `context_window_tokens`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncGenerator
from typing import Any

from ray.llm._internal.serve.core.engine.protocol import LLMEngine

from serve_app.models.backend import (
    BackendError,
    BackendUnavailable,
    Delta,
    GenerationRequest,
    LoadReport,
)
from serve_app.models.ray_llm.protocol import openai_models
from serve_app.models.ray_llm.wire import (
    DONE,
    error_fields,
    generation_request,
    stream_chunk,
    usage_fields,
    whole_fields,
)
from serve_app.models.simulated import DEFAULT_NATURAL_OUTPUT_TOKENS, SimulatedLLM
from serve_app.models.tokens import count_chat_tokens
from serve_app.policy.schema import ModelSpec
from serve_app.pricing.book import ModelProfile

__all__ = ["SimulatedEngine", "simulated_engine"]


class SimulatedEngine(LLMEngine):
    """A `SimulatedLLM` behind Ray Serve LLM's engine protocol (see the module docstring)."""

    def __init__(self, llm_config: Any, llm: SimulatedLLM, *, kv_capacity_tokens: int) -> None:
        self.llm_config = llm_config
        self._model = str(llm_config.model_id)
        self._llm = llm
        self._kv_capacity = max(1, kv_capacity_tokens)
        self._kv_held: dict[str, int] = {}
        """Tokens in the KV cache of each request past its prefill, by request id."""

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """The cold start: returns when the simulated weights are loaded."""
        await self._llm.start()

    async def check_health(self) -> None:
        """Raises once the engine stopped serving (closed, or its scheduler crashed)."""
        if not self._llm.load().warm:
            raise RuntimeError("simulated engine is not serving")

    async def shutdown(self) -> None:
        await self._llm.close()

    def routing_stats(self) -> dict[str, Any]:
        return {}

    async def resolve_lora(self, lora_model: Any) -> None:
        raise NotImplementedError("the simulated engine has no LoRA adapters")

    async def reset_prefix_cache(self) -> None:
        return None

    # -- live state ----------------------------------------------------------------------

    def load(self) -> LoadReport:
        """Slots held, queue and warmth of the simulation, with the KV cache usage."""
        held = sum(self._kv_held.values())
        base = self._llm.load()
        return dataclasses.replace(
            base,
            kv_cache_usage=min(1.0, held / self._kv_capacity),
            extra={**base.extra, "kv_tokens": float(held)},
        )

    # -- chat ----------------------------------------------------------------------------

    async def chat(  # type: ignore[override]  # Ray declares async generators as coroutines
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        models = openai_models()
        try:
            generation = generation_request(
                request, default_max_tokens=self._llm.profile.max_output_tokens
            )
        except ValueError as exc:
            yield models.ErrorResponse.model_validate(error_fields(str(exc), 400))
            return
        chunk_id = str(request.request_id)
        if not getattr(request, "stream", False):
            yield await self._whole(models, generation, chunk_id)
            return
        options = getattr(request, "stream_options", None)
        include_usage = bool(
            options.get("include_usage")
            if isinstance(options, dict)
            else getattr(options, "include_usage", False)
        )
        started = False
        usage: dict[str, int] | None = None
        try:
            async for delta in self._deltas(generation):
                started = True
                if delta.finish_reason is not None:
                    usage = usage_fields(delta.input_tokens or 0, delta.output_tokens or 0)
                yield stream_chunk(
                    chunk_id, self._model, text=delta.text, finish_reason=delta.finish_reason
                )
        except BackendError as exc:
            body = error_fields(str(exc), _code(exc))
            if not started:
                yield models.ErrorResponse.model_validate(body)
            else:
                yield f"data: {json.dumps(body)}\n\n"
            return
        if include_usage and usage is not None:
            yield stream_chunk(chunk_id, self._model, usage=usage)
        yield DONE

    async def _whole(self, models: Any, generation: GenerationRequest, chunk_id: str) -> Any:
        texts: list[str] = []
        last: Delta | None = None
        try:
            async for delta in self._deltas(generation):
                texts.append(delta.text)
                last = delta
        except BackendError as exc:
            return models.ErrorResponse.model_validate(error_fields(str(exc), _code(exc)))
        assert last is not None  # SimulatedLLM's promise: a last delta with the finish
        assert last.finish_reason is not None
        usage = usage_fields(last.input_tokens or 0, last.output_tokens or 0)
        fields = whole_fields(chunk_id, self._model, "".join(texts), last.finish_reason, usage)
        return models.ChatCompletionResponse.model_validate(fields)

    async def _deltas(self, generation: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """The simulation's deltas, counting the request's tokens in the KV cache."""
        key = generation.request_id
        prompt = count_chat_tokens(generation.messages)
        produced = 0
        try:
            async with contextlib.aclosing(self._llm.stream(generation)) as deltas:
                async for delta in deltas:
                    produced += 1
                    self._kv_held[key] = prompt + produced
                    yield delta
        finally:
            self._kv_held.pop(key, None)

    # -- endpoints the simulation does not serve -------------------------------------------

    async def completions(  # type: ignore[override]  # Ray declares async generators as coroutines
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        yield _not_served("completions")

    async def embeddings(  # type: ignore[override]  # Ray declares async generators as coroutines
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        yield _not_served("embeddings")

    async def transcriptions(  # type: ignore[override]  # Ray declares async generators as coroutines
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        yield _not_served("transcriptions")


def _code(error: BackendError) -> int:
    return 503 if isinstance(error, BackendUnavailable) else 500


def _not_served(endpoint: str) -> Any:
    body = error_fields(f"the simulated engine does not serve {endpoint}", 501)
    return openai_models().ErrorResponse.model_validate(body)


def simulated_engine(
    spec: ModelSpec,
    *,
    time_scale: float = 1.0,
    failure_rate: float = 0.0,
    natural_output: bool = True,
    cold_start_scale: float = 1.0,
) -> type[SimulatedEngine]:
    """An engine class for `LLMServer(engine_cls=...)`: `SimulatedEngine` bound to `spec`.

    `cold_start_scale` shortens the simulated cold start (as for the simulated backend);
    the reports still count down the policy's full one."""
    profile = ModelProfile.from_spec(
        spec.model_copy(update={"cold_start_s": spec.cold_start_s * cold_start_scale})
    )
    kv_capacity = spec.throughput.max_concurrent_sequences * spec.context_window_tokens
    natural = DEFAULT_NATURAL_OUTPUT_TOKENS if natural_output else None

    class BoundSimulatedEngine(SimulatedEngine):
        def __init__(self, llm_config: Any) -> None:
            llm = SimulatedLLM(
                profile,
                time_scale=time_scale,
                failure_rate=failure_rate,
                natural_output_tokens=natural,
            )
            super().__init__(llm_config, llm, kv_capacity_tokens=kv_capacity)

    BoundSimulatedEngine.__name__ = BoundSimulatedEngine.__qualname__ = (
        f"SimulatedEngine[{spec.id}]"
    )
    return BoundSimulatedEngine
