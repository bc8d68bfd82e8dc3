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

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from serve_app.cluster.registry import get_or_create_registry
from serve_app.cluster.reports import ReplicaReport
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
from serve_app.models.simulated import DEFAULT_NATURAL_OUTPUT_TOKENS, SimulatedLLM
from serve_app.models.stats import (
    ServiceStats,
    running_service_estimate,
    service_time_estimate,
)
from serve_app.models.upstream import OpenAIUpstream
from serve_app.policy.schema import BackendKind, ModelSpec
from serve_app.pricing.book import ModelProfile

logger = logging.getLogger("rtcts.models")

REPORT_PERIOD_S = 0.1


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
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._time_scale = time_scale
        self._cold_start_scale = cold_start_scale
        self._created = time.monotonic()
        self._warm = False
        self._stats = ServiceStats()
        self._running: dict[str, float] = {}
        """Start time of each request in this replica, by request id."""
        self._registry = get_or_create_registry()
        self._period_s = report_period_s
        self._reporter = asyncio.get_running_loop().create_task(self._report_forever())
        await self._backend.start()
        self._warm = True
        self._report()

    async def generate(self, request: GenerationRequest) -> Completion:
        started = time.monotonic()
        self._running[request.request_id] = started
        try:
            completion = await self._backend.generate(request)
        except RequestRejected:
            raise  # the client's invalid request: no failure of the model
        except Exception:
            self._stats.record(False, time.monotonic() - started)
            raise
        # A cancel (the client left) is no failure of the model: not recorded, so a
        # tenant who hangs up cannot raise the failure rate everyone's cost carries.
        finally:
            self._running.pop(request.request_id, None)
        self._stats.record(True, completion.total_s)
        return completion

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        started = time.monotonic()
        self._running[request.request_id] = started
        outcome: bool | None = None  # None: cancelled (the client left), not recorded
        try:
            async for delta in self._backend.stream(request):
                yield delta
            outcome = True
        except RequestRejected:
            raise  # the client's invalid request: no failure of the model
        except Exception:
            outcome = False
            raise
        finally:
            self._running.pop(request.request_id, None)
            if outcome is not None:
                self._stats.record(outcome, time.monotonic() - started)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """Embed with the backend (the ingress sends embeddings only to a model whose
        capabilities include them)."""
        if not isinstance(self._backend, Embedder):
            raise RequestRejected(f"model {self._spec.id} does not serve embeddings")
        started = time.monotonic()
        self._running[request.request_id] = started
        try:
            embeddings = await self._backend.embed(request)
        except RequestRejected:
            raise
        except Exception:
            self._stats.record(False, time.monotonic() - started)
            raise
        finally:
            self._running.pop(request.request_id, None)
        self._stats.record(True, embeddings.total_s)
        return embeddings

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy."""
        if self._reporter.done() and not self._reporter.cancelled():
            raise RuntimeError("load reporter stopped")

    async def __del__(self) -> None:
        self._reporter.cancel()
        with contextlib.suppress(Exception):
            self._registry.forget.remote(self._replica_id)
        await self._backend.close()

    async def _report_forever(self) -> None:
        while True:
            try:
                self._report()
            except Exception:  # a registry hiccup must not kill the replica
                logger.warning("load report failed", exc_info=True)
            await asyncio.sleep(self._period_s)

    def _report(self) -> None:
        load = self._backend.load()
        warm = self._warm and load.warm
        # Reports speak policy seconds: a simulation at time_scale 0.1 runs 10x faster,
        # and a cold start shortened by cold_start_scale counts down the policy's full one.
        scale = self._time_scale or 1.0
        start_remaining = 0.0
        if not warm:
            start_scale = scale * (self._cold_start_scale or 1.0)
            elapsed = (time.monotonic() - self._created) / start_scale
            start_remaining = max(0.0, self._spec.cold_start_s - elapsed)
        now = time.monotonic()
        ages = [now - t for t in self._running.values()]
        service_s = service_time_estimate(self._stats.mean_service_s, ages)
        running_s = running_service_estimate(ages)
        self._registry.report.remote(
            ReplicaReport(
                model_id=self._spec.id,
                replica_id=self._replica_id,
                running=load.running,
                queued=load.queued,
                warm=warm,
                start_remaining_s=start_remaining,
                reported_at=time.time(),
                mean_service_s=None if service_s is None else service_s / scale,
                failure_rate=self._stats.failure_rate,
                kv_cache_usage=load.kv_cache_usage,
                running_service_s=None if running_s is None else running_s / scale,
            )
        )
