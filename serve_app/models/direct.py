"""An OpenAI-compatible server the ingress calls itself (`dispatch: ingress`).

A model deployment in front of an external server only forwards: each request then
crosses two Serve hops (ingress -> model replica -> server), and the hop costs more CPU
than everything else rtcts does per request (docs/benchmarks.md, "rtcts against
LiteLLM": 2.25 ms of CPU per request with the hop, 0.71 ms without). So by default the
ingress holds the `OpenAIUpstream` client itself.

What the pricing sees does not change: `DirectModel` reports the server's load with the
same `ReplicaReporter` a model replica uses (the server's `/metrics`, else the requests
in flight), into the ingress's own table instead of the registry actor, and stands for
one fixed replica in the deployment listing (`deployment()`): STARTING until the server
answers, RUNNING after. Each ingress replica sees the server as its one replica, so the
margin window weighs its share of the revenue against its share of one server.

The server not answering at start is retried in the background for as long as the
ingress lives (the model is priced cold meanwhile, and `auto` routes elsewhere); a
request sent to it before then fails fast as unavailable (502, never billed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo, ReplicaInfo
from serve_app.models.backend import (
    Backend,
    BackendUnavailable,
    Completion,
    Delta,
    Embedder,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    RequestRejected,
)
from serve_app.models.reporter import REPORT_PERIOD_S, ReplicaReporter
from serve_app.models.upstream import OpenAIUpstream
from serve_app.policy.schema import ModelSpec

__all__ = ["DirectHandle", "DirectModel", "DirectModels"]

logger = logging.getLogger("rtcts.models")

RETRY_S = (1.0, 30.0)
"""First and longest pause between start attempts of an unreachable server."""


class DirectModel:
    """One `dispatch: ingress` model inside one ingress replica."""

    def __init__(
        self,
        spec: ModelSpec,
        replica_id: str,
        *,
        backend: Backend | None = None,
        period_s: float = REPORT_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if backend is None:
            assert spec.upstream_url is not None  # the schema requires it for the backend
            backend = OpenAIUpstream(spec.upstream_url, model=spec.id)
        self.spec = spec
        self.replica_id = replica_id
        self._backend = backend
        self._report: ReplicaReport | None = None
        self._reporter = ReplicaReporter(
            model_id=spec.id,
            replica_id=replica_id,
            send=self._keep,
            withdraw=self._drop,
            load=backend.load,
            cold_start_s=spec.cold_start_s,
            period_s=period_s,
            clock=clock,
            wall_clock=wall_clock,
        )
        self._wall_clock = wall_clock
        self._created_s = wall_clock()
        self._up = False
        self._starter: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Report from now on, and connect in the background (needs a running loop)."""
        self._reporter.start()
        self._starter = asyncio.get_running_loop().create_task(
            self._connect(), name=f"direct-{self.spec.id}"
        )

    async def stop(self) -> None:
        if self._starter is not None:
            self._starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starter
        self._reporter.stop()
        await self._backend.close()

    async def _connect(self) -> None:
        pause = RETRY_S[0]
        while True:
            try:
                await self._backend.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable or refusing: priced cold, retried
                logger.warning("upstream of %s not up yet (%s); retrying", self.spec.id, exc)
                await asyncio.sleep(pause)
                pause = min(RETRY_S[1], pause * 2)
                continue
            self._up = True
            self._reporter.warm()
            return

    # ---------------------------------------------------------------- live state

    def _keep(self, report: ReplicaReport) -> None:
        self._report = report

    def _drop(self, replica_id: str) -> None:
        self._report = None

    def report(self) -> ReplicaReport | None:
        """The latest report (None once stopped)."""
        return self._report

    def deployment(self) -> DeploymentInfo:
        """The server as the one replica of its model, as the controller would list it."""
        state = "RUNNING" if self._up else "STARTING"
        replica = ReplicaInfo(self.replica_id, state, self._created_s)
        return DeploymentInfo(
            name=self.spec.id,
            status="HEALTHY" if self._up else "UPDATING",
            target_replicas=1,
            replicas=(replica,),
        )

    # ---------------------------------------------------------------- requests

    def _require_up(self) -> None:
        if not self._up:
            raise BackendUnavailable(f"the server of model {self.spec.id} is not up yet")

    async def generate(self, request: GenerationRequest) -> Completion:
        self._require_up()
        with self._reporter.serving(request.request_id):
            return await self._backend.generate(request)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self._require_up()
        with self._reporter.serving(request.request_id):
            deltas = self._backend.stream(request)
            try:
                async for delta in deltas:
                    yield delta
            finally:  # the client left: the server's stream is closed now, not at GC
                aclose = getattr(deltas, "aclose", None)
                if aclose is not None:
                    await aclose()

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        if not isinstance(self._backend, Embedder):
            raise RequestRejected(f"model {self.spec.id} does not serve embeddings")
        self._require_up()
        with self._reporter.serving(request.request_id):
            return await self._backend.embed(request)


class DirectHandle:
    """The part of a Serve `DeploymentHandle` the chat service uses, on a `DirectModel`:
    `options(method_name=..., stream=...)` then `remote(request)`, awaited (generate,
    embed) or iterated (stream)."""

    def __init__(self, model: DirectModel, method: str = "generate", stream: bool = False):
        self._model = model
        self._method = method
        self._stream = stream

    def options(self, **kwargs: Any) -> DirectHandle:
        """`method_name` and `stream`, as Serve's handle takes them (nothing else)."""
        method = kwargs.pop("method_name", self._method)
        stream = kwargs.pop("stream", self._stream)
        if kwargs:
            raise TypeError(f"unsupported handle options: {sorted(kwargs)}")
        return DirectHandle(self._model, method, stream)

    def remote(self, request: Any) -> Any:
        if self._stream:
            return self._model.stream(request)
        if self._method == "embed":
            return self._model.embed(request)
        return self._model.generate(request)


class DirectModels:
    """The `dispatch: ingress` models of one ingress replica, merged into what the
    cluster state reads from the registry and the Serve controller."""

    def __init__(self, models: Mapping[str, DirectModel]) -> None:
        self.models = dict(models)

    @classmethod
    def of(cls, specs: list[ModelSpec], replica_id: str) -> DirectModels:
        direct = [s for s in specs if s.dispatched_from_ingress]
        return cls({s.id: DirectModel(s, f"{s.id}@{replica_id}") for s in direct})

    def handles(self) -> dict[str, DirectHandle]:
        return {model_id: DirectHandle(model) for model_id, model in self.models.items()}

    def start(self) -> None:
        for model in self.models.values():
            model.start()

    async def stop(self) -> None:
        for model in self.models.values():
            await model.stop()

    def reports(self, reported: list[ReplicaReport]) -> list[ReplicaReport]:
        """The registry's reports and this ingress's own."""
        own = [r for m in self.models.values() if (r := m.report()) is not None]
        return reported + own if own else reported

    def deployments(self, listed: dict[str, DeploymentInfo]) -> dict[str, DeploymentInfo]:
        """The controller's deployments and this ingress's own."""
        if not self.models:
            return listed
        return {**listed, **{m_id: m.deployment() for m_id, m in self.models.items()}}
