"""The live load of an `LLMServer` replica: the engine's own figures where it has them.

In order of preference:

1. An engine that reports its load (`ReportsLoad`: rtcts's simulated engine): its
   slots held, queue, warmth and KV cache usage.
2. vLLM's own gauges in the replica's process (`vllm:num_requests_running`,
   `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`): vLLM's default Prometheus
   stat logger keeps them in `prometheus_client`'s registry, which `InProcessMetrics`
   reads (only those metrics) each time a report is made. They are there when the
   policy leaves `log_engine_metrics` off; with it on, vLLM sends them to Ray's metrics
   port instead.
3. rtcts's counting: the requests this replica has in flight, all counted as running.

An engine's figures never show fewer requests than this replica has in flight (a
request on its way to the engine): the shortfall counts as waiting when the engine
reports a queue, as running otherwise, as for an upstream server (`upstream_load.py`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import prometheus_client

from serve_app.models.backend import LoadReport
from serve_app.models.prometheus import UnrecognizedMetrics, vllm_load

__all__ = ["VLLM_METRICS", "EngineLoad", "InProcessMetrics", "ReportsLoad", "reconcile"]

VLLM_METRICS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_requests_swapped",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
)


@runtime_checkable
class ReportsLoad(Protocol):
    """An engine that reports its own live load."""

    def load(self) -> LoadReport: ...


class InProcessMetrics:
    """vLLM's load gauges in this process's Prometheus registry (None when absent)."""

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        source = prometheus_client.REGISTRY if registry is None else registry
        self._registry = source.restricted_registry(VLLM_METRICS)

    def read(self) -> tuple[int, int, float | None] | None:
        """(running, waiting, KV cache usage) summed over label sets, or None."""
        totals: dict[str, float] = {}
        for family in self._registry.collect():
            for sample in family.samples:
                if sample.name in VLLM_METRICS:
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        try:
            return vllm_load(totals)
        except UnrecognizedMetrics:
            return None


def reconcile(
    running: int,
    waiting: int,
    kv_cache_usage: float | None,
    *,
    inflight: int,
    warm: bool,
    extra: dict[str, float] | None = None,
) -> LoadReport:
    """The engine's figures, raised to this replica's requests in flight where short."""
    shortfall = inflight - running - waiting
    if shortfall > 0:
        if waiting > 0:
            waiting += shortfall
        else:
            running += shortfall
    return LoadReport(
        running=running,
        queued=waiting,
        warm=warm,
        kv_cache_usage=kv_cache_usage,
        extra={**(extra or {}), "local_inflight": float(inflight), "engine_figures": 1.0},
    )


class EngineLoad:
    """Chooses where a replica's live load comes from (see the module docstring)."""

    def __init__(self, metrics: InProcessMetrics | None = None) -> None:
        self._metrics = metrics

    def report(self, engine: Any, *, inflight: int, warm: bool) -> LoadReport:
        if engine is None:  # still constructing: LLMServer makes the engine in start()
            return LoadReport(running=inflight, queued=0, warm=False)
        if isinstance(engine, ReportsLoad):
            own = engine.load()
            return reconcile(
                own.running,
                own.queued,
                own.kv_cache_usage,
                inflight=inflight,
                warm=warm and own.warm,
                extra=own.extra,
            )
        figures = self._metrics.read() if self._metrics is not None else None
        if figures is not None:
            running, waiting, kv = figures
            return reconcile(running, waiting, kv, inflight=inflight, warm=warm)
        return LoadReport(
            running=inflight, queued=0, warm=warm, extra={"local_inflight": float(inflight)}
        )
