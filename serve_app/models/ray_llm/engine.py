"""The simulated GPU model as a Ray Serve LLM engine (`LLMEngine`).

`LLMServer` takes its engine class as `engine_cls`; `simulated_engine(spec, ...)` makes
one bound to a model's throughput profile, so the real `LLMServer` code path (its
start-up, request ids, stream batching, health checks, routing stats) runs on CPU with
the same timing model as the `simulated` backend (`SimulatedLLM`: cold start, slots and
queue, prefill, continuous batching, failure injection).

It speaks chat and text completions the way Ray's vLLM engine does: a streamed request
yields SSE `data:` strings (a usage chunk last when `stream_options.include_usage`, then
`[DONE]`), a whole one yields one `ChatCompletionResponse` / `CompletionResponse`; an
error before the first token yields one `ErrorResponse` (503 when the model cannot take
requests, 400 when the simulation refuses the request itself, 500 on a failure), an
error after it an error chunk. Every feature the simulated model serves (tools, `n`
choices, logprobs, JSON response formats, stop: `simulated_output.py`) comes through;
embeddings yield one `EmbeddingResponse`. Transcriptions answer 501.

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
    RequestRejected,
)
from serve_app.models.deltas import ChoiceCollector
from serve_app.models.ray_llm.protocol import openai_models
from serve_app.models.ray_llm.wire import (
    DONE,
    embedding_request,
    embedding_response_fields,
    error_fields,
    generation_request,
    stream_chunk,
    usage_fields,
    whole_fields,
)
from serve_app.models.simulated import DEFAULT_NATURAL_OUTPUT_TOKENS, SimulatedLLM
from serve_app.models.tokens import count_chat_tokens, count_prompt_tokens
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

    # -- chat and text completions ---------------------------------------------------------

    async def chat(  # type: ignore[override]  # Ray declares async generators as coroutines
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        async for answer in self._generate(request, completion=False):
            yield answer

    async def completions(  # type: ignore[override]  # Ray declares async generators as coroutines
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        async for answer in self._generate(request, completion=True):
            yield answer

    async def _generate(self, request: Any, *, completion: bool) -> AsyncGenerator[Any, None]:
        models = openai_models()
        generation = generation_request(
            request, default_max_tokens=self._llm.profile.max_output_tokens
        )
        chunk_id = str(request.request_id)
        if not getattr(request, "stream", False):
            yield await self._whole(models, generation, chunk_id, completion)
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
                if delta.output_tokens is not None:
                    usage = usage_fields(delta.input_tokens or 0, delta.output_tokens)
                yield stream_chunk(
                    chunk_id,
                    self._model,
                    text=delta.text,
                    finish_reason=delta.finish_reason,
                    index=delta.index,
                    tool_calls=delta.tool_calls,
                    logprobs=delta.logprobs,
                    completion=completion,
                )
        except BackendError as exc:
            body = _error(exc)
            if not started:
                yield models.ErrorResponse.model_validate(body)
            else:
                yield f"data: {json.dumps(body)}\n\n"
            return
        if include_usage and usage is not None:
            yield stream_chunk(chunk_id, self._model, usage=usage, completion=completion)
        yield DONE

    async def _whole(
        self, models: Any, generation: GenerationRequest, chunk_id: str, completion: bool
    ) -> Any:
        choices: dict[int, ChoiceCollector] = {}
        last: Delta | None = None
        try:
            async for delta in self._deltas(generation):
                choices.setdefault(delta.index, ChoiceCollector()).add(delta)
                last = delta
        except BackendError as exc:
            return models.ErrorResponse.model_validate(_error(exc))
        assert last is not None  # SimulatedLLM's promise: a last delta with the usage
        outputs = tuple(choices[i].output(i) for i in sorted(choices))
        usage = usage_fields(last.input_tokens or 0, last.output_tokens or 0)
        fields = whole_fields(
            chunk_id,
            self._model,
            outputs[0].text,
            outputs[0].finish_reason,
            usage,
            choices=outputs,
            completion=completion,
        )
        kind = models.CompletionResponse if completion else models.ChatCompletionResponse
        return kind.model_validate(fields)

    async def _deltas(self, generation: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """The simulation's deltas, counting the request's tokens in the KV cache."""
        key = generation.request_id
        if generation.prompt is not None:
            prompt = count_prompt_tokens(generation.prompt)
        else:
            prompt = count_chat_tokens(generation.messages, generation.tools)
        produced = 0
        try:
            async with contextlib.aclosing(self._llm.stream(generation)) as deltas:
                async for delta in deltas:
                    produced += 1
                    self._kv_held[key] = prompt + produced
                    yield delta
        finally:
            self._kv_held.pop(key, None)

    # -- embeddings and what the simulation does not serve ---------------------------------

    async def embeddings(  # type: ignore[override]  # Ray declares async generators as coroutines
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        models = openai_models()
        try:
            done = await self._llm.embed(embedding_request(request))
        except BackendError as exc:
            yield models.ErrorResponse.model_validate(_error(exc))
            return
        fields = embedding_response_fields(str(request.request_id), self._model, done)
        yield models.EmbeddingResponse.model_validate(fields)

    async def transcriptions(  # type: ignore[override]  # Ray declares async generators as coroutines
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        yield _not_served("transcriptions")


def _error(error: BackendError) -> dict[str, Any]:
    param = error.param if isinstance(error, RequestRejected) else None
    message = error.detail if isinstance(error, RequestRejected) else str(error)
    return error_fields(message, _code(error), param)


def _code(error: BackendError) -> int:
    if isinstance(error, RequestRejected):
        return 400
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
