"""`RayLLMServer`: Ray Serve LLM's `LLMServer`, with the two methods rtcts's ingress calls.

The deployment is a subclass of `ray.serve.llm.LLMServer`, not an adapter deployment in
front of one: one replica, one engine, and each request goes through `LLMServer.chat`
itself (request id, LoRA resolution, stream batching), then the engine. rtcts adds
what its ingress needs from every model deployment (docs/decisions.md, "Ray Serve LLM"):

- `generate` / `stream` take a `GenerationRequest` and return a `Completion` / yield
  `Delta`s. Both send `LLMServer.chat` (`.completions` for a text completion) a
  streamed request with the usage in the last chunk, so the first token's time is
  measured on any engine and the tokens billed are the engine's own count. Every OpenAI
  field the request carries (tools, `n`, logprobs, response format, ...) goes with it.
- `embed` takes an `EmbeddingRequest` through `LLMServer.embeddings`.
- Load reports to the registry every 100 ms from the constructor's first line
  (`ReplicaReporter`), with the engine's own figures where it has them
  (`engine_load.py`): the ingress sees the replica starting, then its batch, queue and
  KV cache usage.

The engine is `LLMServer`'s `engine_cls`: the simulated engine for `engine: simulated`,
Ray's default (vLLM) for `engine: vllm`. The constructor's arguments are those of the
simulated backend's `ModelServer`, so the builder binds both alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from serve_app.models.backend import (
    Completion,
    Delta,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    LoadReport,
)
from serve_app.models.ray_llm.chat import Chat, chat_deltas, collect, embed_through
from serve_app.models.ray_llm.engine import simulated_engine
from serve_app.models.ray_llm.engine_load import EngineLoad, InProcessMetrics
from serve_app.models.ray_llm.protocol import serve_llm
from serve_app.models.ray_llm.spec import llm_config
from serve_app.models.reporter import REPORT_PERIOD_S, ReplicaReporter, registry_sends
from serve_app.policy.schema import LLMEngineKind, ModelSpec

__all__ = ["RayLLMServer"]

LLMServer: Any = serve_llm().LLMServer


class RayLLMServer(LLMServer):  # type: ignore[misc]  # Ray's class is untyped here
    """Serve deployment class of one `ray_serve_llm` model (bound once per model)."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        spec: dict[str, Any],
        time_scale: float = 1.0,
        failure_rate: float = 0.0,
        natural_output: bool = True,
        report_period_s: float = REPORT_PERIOD_S,
        *,
        cold_start_scale: float = 1.0,
    ) -> None:
        model = ModelSpec.model_validate(spec)
        section = model.ray_serve_llm
        if section is None:
            raise ValueError(f"model {model.id} is not on backend ray_serve_llm")
        simulated = section.engine is LLMEngineKind.SIMULATED
        engine_cls = (
            simulated_engine(
                model,
                time_scale=time_scale,
                failure_rate=failure_rate,
                natural_output=natural_output,
                cold_start_scale=cold_start_scale,
            )
            if simulated
            else None  # LLMServer's default engine: vLLM
        )
        config = llm_config(model)
        self._served_model = str(config.model_id)
        self._engine_load = EngineLoad(None if simulated else InProcessMetrics())
        send, withdraw = registry_sends()
        context = serve.get_replica_context()
        self._reporter = ReplicaReporter(
            model_id=model.id,
            replica_id=context.replica_id.unique_id,
            app=context.app_name,
            send=send,
            withdraw=withdraw,
            load=self._live_load,
            cold_start_s=model.cold_start_s,
            time_scale=time_scale if simulated else 1.0,
            cold_start_scale=cold_start_scale if simulated else 1.0,
            period_s=report_period_s,
        )
        self._reporter.start()
        try:
            await super().__init__(config, engine_cls=engine_cls)
        except BaseException:
            self._reporter.stop()
            raise
        self._reporter.warm()

    # -- what rtcts's ingress calls -------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> Completion:
        with self._reporter.serving(request.request_id):
            return await collect(chat_deltas(self._entry(request), request, self._served_model))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        with self._reporter.serving(request.request_id):
            deltas = chat_deltas(self._entry(request), request, self._served_model)
            async with contextlib.aclosing(deltas) as stream:
                async for delta in stream:
                    yield delta

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        with self._reporter.serving(request.request_id):
            return await embed_through(self.embeddings, request, self._served_model)

    def _entry(self, request: GenerationRequest) -> Chat:
        """`LLMServer.chat`, or `.completions` for a text completion."""
        entry: Chat = self.chat if request.prompt is None else self.completions
        return entry

    # -- health and load -----------------------------------------------------------------

    async def check_health(self) -> None:
        """LLMServer's (the engine's) check, and the load reporter's."""
        await super().check_health()
        if not self._reporter.healthy():
            raise RuntimeError("load reporter stopped")

    async def __del__(self) -> None:
        self._reporter.stop()
        await super().__del__()

    def _live_load(self) -> LoadReport:
        engine = getattr(self, "engine", None)  # LLMServer's, set once start() begins
        return self._engine_load.report(engine, inflight=self._reporter.inflight, warm=True)
