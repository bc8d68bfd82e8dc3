"""Metrics (Ray -> Prometheus) and traces (OpenTelemetry) of the serving path.

Metrics are Ray's (`ray.util.metrics`): they appear on the Ray node's Prometheus
endpoint and in the Ray dashboard next to Serve's own (replicas, autoscaling). Names:

    rtcts_decisions_total{model, decision, reason}      every priced request
    rtcts_billed_usd_total{model}, rtcts_cost_usd_total{model}
    rtcts_margin{model}                                  histogram, billed requests
    rtcts_failures_total{model}                          served requests that failed
    rtcts_model_queue{model}, rtcts_model_running{model},
    rtcts_model_replicas{model, state}                   live state seen by the ingress

Traces use the OpenTelemetry API: nothing until the process configures a tracer
provider (any OTel SDK set-up, e.g. `opentelemetry-instrument`); until then the request
path does not even open its (no-op) spans, see `tracing`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Protocol

from opentelemetry import trace

from serve_app.pricing.types import ClusterSnapshot

MARGIN_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
"""Ray histograms take positive boundaries only: zero and negative margins fall in the
first bucket (`rtcts_billed_usd_total - rtcts_cost_usd_total` gives the exact sum)."""

tracer = trace.get_tracer("rtcts")

_NOT_RECORDING = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def tracing() -> bool:
    """Whether a real tracer provider is set (checked per request, ~0.1 µs): without one
    the request path skips its spans, whose no-op machinery still costs ~10-25 µs."""
    return not isinstance(trace.get_tracer_provider(), _NOT_RECORDING)


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
    """Ray metrics; create it inside a Ray worker (a Serve replica).

    A Ray metric record costs several microseconds of Python (tag merging and checks)
    and the request path made four of them; so per-request figures are summed here in
    plain dicts and recorded by `flush`, which `live_state` calls from the ingress's
    1 s live-state loop. Same names and meaning, at most ~1 s later; a replica that
    dies loses at most its last second of counts. Margins are kept one by one (a
    histogram needs every observation) and observed at the flush.
    """

    def __init__(self, metrics: Any = None) -> None:
        if metrics is None:
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
        self._pending_decisions: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._pending_billed: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._pending_margins: defaultdict[str, list[float]] = defaultdict(list)
        self._pending_failures: defaultdict[str, int] = defaultdict(int)

    def decision(self, model: str, decision: str, reason: str) -> None:
        self._pending_decisions[(model, decision, reason)] += 1

    def billed(self, model: str, billed_micro: int, cost_micro: int, margin: float) -> None:
        sums = self._pending_billed[model]
        sums[0] += billed_micro
        sums[1] += cost_micro
        self._pending_margins[model].append(margin)

    def failure(self, model: str) -> None:
        self._pending_failures[model] += 1

    def flush(self) -> None:
        """Record what was summed since the last flush."""
        decisions, self._pending_decisions = self._pending_decisions, defaultdict(int)
        billed, self._pending_billed = self._pending_billed, defaultdict(lambda: [0, 0])
        margins, self._pending_margins = self._pending_margins, defaultdict(list)
        failures, self._pending_failures = self._pending_failures, defaultdict(int)
        for (model, decision, reason), count in decisions.items():
            self._decisions.inc(count, {"model": model, "decision": decision, "reason": reason})
        for model, (billed_micro, cost_micro) in billed.items():
            tags = {"model": model}
            if billed_micro > 0:
                self._billed.inc(billed_micro / 1e6, tags)
            if cost_micro > 0:
                self._cost.inc(cost_micro / 1e6, tags)
        for model, values in margins.items():
            tags = {"model": model}
            for margin in values:
                self._margin.observe(margin, tags)
        for model, count in failures.items():
            self._failures.inc(count, {"model": model})

    def live_state(self, snapshot: ClusterSnapshot) -> None:
        for model, load in snapshot.models.items():
            tags = {"model": model}
            self._queue.set(sum(r.queued for r in load.replicas), tags)
            self._running.set(sum(r.running for r in load.replicas), tags)
            warm = sum(1 for r in load.replicas if r.warm)
            self._replicas.set(warm, {"model": model, "state": "warm"})
            self._replicas.set(len(load.replicas) - warm, {"model": model, "state": "starting"})
        self.flush()


def span_attributes(values: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """OTel accepts only scalar attribute values; None is left out."""
    return {f"rtcts.{k}": v for k, v in values.items() if isinstance(v, str | int | float | bool)}
