"""The model deployment: one Serve deployment per model, one backend per replica.

Each replica loads its backend in its (async) constructor, which is the cold start:
Serve shows the replica as STARTING until the constructor returns. From its first line
the replica pushes a `ReplicaReport` to the load registry every `report_period_s`, so
the ingress sees a starting replica, then its live batch and queue.

`cold_start_scale` shortens a simulated cold start (local runs) without changing what
the pricing sees: the backend sleeps the shortened start, and the reports count its
progress in policy seconds, from the policy's full `cold_start_s` down to 0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from serve_app.models.backend import (
    Backend,
    Completion,
    Delta,
    Embedder,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    RequestRejected,
)
from serve_app.models.reporter import REPORT_PERIOD_S, ReplicaReporter, registry_sends
from serve_app.models.simulated import DEFAULT_NATURAL_OUTPUT_TOKENS, SimulatedLLM
from serve_app.models.upstream import OpenAIUpstream
from serve_app.policy.schema import BackendKind, ModelSpec
from serve_app.pricing.book import ModelProfile


def make_backend(
    spec: ModelSpec, *, time_scale: float, failure_rate: float, natural_output: bool = True
) -> Backend:
    """The backend a model spec asks for."""
    if spec.backend is BackendKind.SIMULATED:
        return SimulatedLLM(
            ModelProfile.from_spec(spec),
            time_scale=time_scale,
            failure_rate=failure_rate,
            natural_output_tokens=DEFAULT_NATURAL_OUTPUT_TOKENS if natural_output else None,
        )
    if spec.backend is BackendKind.OPENAI_UPSTREAM and spec.upstream_url:
        return OpenAIUpstream(spec.upstream_url, model=spec.id)
    raise ValueError(f"backend '{spec.backend.value}' is not supported yet (model {spec.id})")


class ModelServer:
    """Serve deployment class of one model (bound once per model by the builder)."""

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
        self._spec = ModelSpec.model_validate(spec)
        simulated = self._spec.model_copy(
            update={"cold_start_s": self._spec.cold_start_s * cold_start_scale}
        )
        self._backend = make_backend(
            simulated,
            time_scale=time_scale,
            failure_rate=failure_rate,
            natural_output=natural_output,
        )
        send, withdraw = registry_sends()
        context = serve.get_replica_context()
        self._reporter = ReplicaReporter(
            model_id=self._spec.id,
            replica_id=context.replica_id.unique_id,
            app=context.app_name,
            send=send,
            withdraw=withdraw,
            load=self._backend.load,
            cold_start_s=self._spec.cold_start_s,
            time_scale=time_scale,
            cold_start_scale=cold_start_scale,
            period_s=report_period_s,
        )
        self._reporter.start()
        try:
            await self._backend.start()
        except BaseException:
            self._reporter.stop()
            raise
        self._reporter.warm()

    async def generate(self, request: GenerationRequest) -> Completion:
        with self._reporter.serving(request.request_id):
            return await self._backend.generate(request)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        with self._reporter.serving(request.request_id):
            async for delta in self._backend.stream(request):
                yield delta

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """Embed with the backend (the ingress sends embeddings only to a model whose
        capabilities include them)."""
        if not isinstance(self._backend, Embedder):
            raise RequestRejected(f"model {self._spec.id} does not serve embeddings")
        with self._reporter.serving(request.request_id):
            return await self._backend.embed(request)

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy."""
        if not self._reporter.healthy():
            raise RuntimeError("load reporter stopped")

    async def __del__(self) -> None:
        self._reporter.stop()
        await self._backend.close()
