"""Metrics (Ray -> Prometheus) and traces (OpenTelemetry) of the serving path.

Metrics are Ray's (`ray.util.metrics`): they appear on the Ray node's Prometheus
endpoint and in the Ray dashboard next to Serve's own (replicas, autoscaling). Names:

    rtcts_decisions_total{model, decision, reason}      every priced request
    rtcts_billed_usd_total{model}, rtcts_cost_usd_total{model}
    rtcts_margin{model}                                  histogram, billed requests
    rtcts_failures_total{model}                          served requests that failed
    rtcts_model_queue{model}, rtcts_model_running{model},
    rtcts_model_replicas{model, state}                   live state seen by the ingress

Traces use the OpenTelemetry API: a no-op until the process configures a tracer
provider (any OTel SDK set-up, e.g. `opentelemetry-instrument`), so the cost when
unused is nil.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from opentelemetry import trace

from serve_app.pricing.types import ClusterSnapshot

MARGIN_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
"""Ray histograms take positive boundaries only: zero and negative margins fall in the
first bucket (`rtcts_billed_usd_total - rtcts_cost_usd_total` gives the exact sum)."""

tracer = trace.get_tracer("rtcts")


class Metrics(Protocol):
    def decision(self, model: str, decision: str, reason: str) -> None: ...

    def billed(self, model: str, billed_micro: int, cost_micro: int, margin: float) -> None: ...

    def failure(self, model: str) -> None: ...

    def live_state(self, snapshot: ClusterSnapshot) -> None: ...


class NoMetrics:
    """Metrics that go nowhere (unit tests, tools)."""

    def decision(self, model: str, decision: str, reason: str) -> None:
        pass

    def billed(self, model: str, billed_micro: int, cost_micro: int, margin: float) -> None:
        pass

    def failure(self, model: str) -> None:
        pass

    def live_state(self, snapshot: ClusterSnapshot) -> None:
        pass


class RayMetrics:
    """Ray metrics; create it inside a Ray worker (a Serve replica)."""

    def __init__(self) -> None:
        from ray.util import metrics

        self._decisions = metrics.Counter(
            "rtcts_decisions_total",
            "Priced requests by decision",
            tag_keys=("model", "decision", "reason"),
        )
        self._billed = metrics.Counter("rtcts_billed_usd_total", "Billed USD", tag_keys=("model",))
        self._cost = metrics.Counter(
            "rtcts_cost_usd_total", "Estimated cost to serve, USD", tag_keys=("model",)
        )
        self._margin = metrics.Histogram(
            "rtcts_margin", "Gross margin of billed requests", MARGIN_BUCKETS, ("model",)
        )
        self._failures = metrics.Counter(
            "rtcts_failures_total", "Served requests that failed", tag_keys=("model",)
        )
        self._queue = metrics.Gauge("rtcts_model_queue", "Queued requests", ("model",))
        self._running = metrics.Gauge("rtcts_model_running", "Running sequences", ("model",))
        self._replicas = metrics.Gauge(
            "rtcts_model_replicas", "Replicas by state", ("model", "state")
        )

    def decision(self, model: str, decision: str, reason: str) -> None:
        self._decisions.inc(1, {"model": model, "decision": decision, "reason": reason})

    def billed(self, model: str, billed_micro: int, cost_micro: int, margin: float) -> None:
        tags = {"model": model}
        self._billed.inc(billed_micro / 1e6, tags)
        self._cost.inc(cost_micro / 1e6, tags)
        self._margin.observe(margin, tags)

    def failure(self, model: str) -> None:
        self._failures.inc(1, {"model": model})

    def live_state(self, snapshot: ClusterSnapshot) -> None:
        for model, load in snapshot.models.items():
            tags = {"model": model}
            self._queue.set(sum(r.queued for r in load.replicas), tags)
            self._running.set(sum(r.running for r in load.replicas), tags)
            warm = sum(1 for r in load.replicas if r.warm)
            self._replicas.set(warm, {"model": model, "state": "warm"})
            self._replicas.set(len(load.replicas) - warm, {"model": model, "state": "starting"})


def span_attributes(values: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """OTel accepts only scalar attribute values; None is left out."""
    return {f"rtcts.{k}": v for k, v in values.items() if isinstance(v, str | int | float | bool)}
