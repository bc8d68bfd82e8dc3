"""Metrics (Ray -> Prometheus) and traces (OpenTelemetry -> OTLP) of the serving path.

Metrics are Ray's (`ray.util.metrics`): they appear on each Ray node's Prometheus
endpoint (its metrics export port), prefixed `ray_`, and in the Ray dashboard next to
Serve's own. Every ingress replica records its own series (Ray labels them `WorkerId`):
sum counters across replicas; the live figures (gauges) are the same on every replica,
take `max`. Names (as recorded; scraped as `ray_<name>`):

    rtcts_decisions_total{model, decision, reason, plan}   every priced request
    rtcts_billed_usd_total{model, plan}                    revenue (after SLA credits)
    rtcts_sla_credit_usd_total{model, plan}                SLA credits given
    rtcts_cost_usd_total{model}                            allocated cost of billed requests
    rtcts_margin{model}                                    histogram, billed requests
    rtcts_failures_total{model}                            served requests that failed
    rtcts_model_queue{model}, rtcts_model_running{model}   queue and running batch
    rtcts_model_replicas{model, state}                     warm, starting, target
    rtcts_model_cost_usd_per_1m_tokens{model}              cost now, 1000 in + 1000 out
    rtcts_realized_margin{model}                           over the margin window (NaN: no
    rtcts_realized_revenue_usd{model},                     revenue yet), its two sums
    rtcts_realized_replica_cost_usd{model}
    rtcts_margin_floor{plan}
    rtcts_billing_outbox{shard}, rtcts_billing_oldest_unsynced_age_s{shard},
    rtcts_billing_dead_letters{shard}, rtcts_billing_open_windows{shard},
    rtcts_billing_stream_pending{shard}                    billing health per meter shard
    rtcts_billing_last_reconcile_timestamp_s,
    rtcts_billing_last_reconcile_ok                        the last reconciliation with Stripe

The per-request figures are summed in the replica and recorded once a second; the
live figures come from `ingress/figures.py`, which also feeds the dashboard
(`ingress/dashboard.py`): the dashboard and these metrics show the same numbers.

Traces use the OpenTelemetry API: nothing until the process has a tracer provider, and
until then the request path does not even open its (no-op) spans (`tracing`). An
ingress replica sets one up at its start when the standard OTel variables ask for OTLP
export (`configure_tracing`); `opentelemetry-instrument` or any other SDK set-up works
too. The spans of a request are listed in `ingress/traces.py`.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import trace

from serve_app.pricing.types import ClusterSnapshot

logger = logging.getLogger("rtcts.telemetry")

MARGIN_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
"""Ray histograms take positive boundaries only: zero and negative margins fall in the
first bucket (`rtcts_billed_usd_total - rtcts_cost_usd_total` gives the exact sum)."""

tracer = trace.get_tracer("rtcts")

_NOT_RECORDING = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def tracing() -> bool:
    """Whether a real tracer provider is set (checked per request, ~0.1 µs): without one
    the request path skips its spans, whose no-op machinery still costs ~10-25 µs."""
    return not isinstance(trace.get_tracer_provider(), _NOT_RECORDING)


# ------------------------------------------------------------------ live figures


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """One model's live figures (the dashboard's, `ingress/figures.py`)."""

    model: str
    target_replicas: int | None
    cost_usd_per_1m_tokens: float | None
    realized_margin: float | None
    """Over the margin window; None when the window has no revenue."""
    window_revenue_usd: float
    window_replica_cost_usd: float


@dataclass(frozen=True, slots=True)
class ShardHealth:
    """One meter shard's billing health (`BillingView.health()`)."""

    shard: int
    outbox: int
    oldest_unsynced_age_s: float | None
    dead_letters: int
    open_windows: int
    stream_pending: int


@dataclass(frozen=True, slots=True)
class LiveGauges:
    """What the live figures hand the metrics once a second."""

    models: Sequence[ModelFigures] = ()
    floors: Mapping[str, float] = field(default_factory=dict)
    """Margin floor per plan."""
    billing: Sequence[ShardHealth] | None = None
    """None: billing is off, or its health was not read yet."""
    last_reconcile: tuple[float, bool] | None = None
    """(unix time, no drift) of the last reconciliation with Stripe, when one ran."""


class Metrics(Protocol):
    def decision(self, model: str, decision: str, reason: str, plan: str = "") -> None: ...

    def billed(
        self,
        model: str,
        billed_micro: int,
        cost_micro: int,
        margin: float,
        plan: str = "",
        credit_micro: int = 0,
    ) -> None: ...

    def failure(self, model: str) -> None: ...

    def live_state(self, snapshot: ClusterSnapshot) -> None: ...

    def gauges(self, gauges: LiveGauges) -> None: ...


class NoMetrics:
    """Metrics that go nowhere (unit tests, tools)."""

    def decision(self, model: str, decision: str, reason: str, plan: str = "") -> None:
        pass

    def billed(
        self,
        model: str,
        billed_micro: int,
        cost_micro: int,
        margin: float,
        plan: str = "",
        credit_micro: int = 0,
    ) -> None:
        pass

    def failure(self, model: str) -> None:
        pass

    def live_state(self, snapshot: ClusterSnapshot) -> None:
        pass

    def gauges(self, gauges: LiveGauges) -> None:
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
        counter, gauge = metrics.Counter, metrics.Gauge
        self._decisions = counter(
            "rtcts_decisions_total",
            "Priced requests by decision",
            tag_keys=("model", "decision", "reason", "plan"),
        )
        self._billed = counter(
            "rtcts_billed_usd_total", "Billed USD (after SLA credits)", tag_keys=("model", "plan")
        )
        self._credits = counter(
            "rtcts_sla_credit_usd_total", "SLA credits, USD", tag_keys=("model", "plan")
        )
        self._cost = counter(
            "rtcts_cost_usd_total", "Estimated cost to serve, USD", tag_keys=("model",)
        )
        self._margin = metrics.Histogram(
            "rtcts_margin", "Gross margin of billed requests", MARGIN_BUCKETS, ("model",)
        )
        self._failures = counter(
            "rtcts_failures_total", "Served requests that failed", tag_keys=("model",)
        )
        self._queue = gauge("rtcts_model_queue", "Queued requests", ("model",))
        self._running = gauge("rtcts_model_running", "Running sequences", ("model",))
        self._replicas = gauge("rtcts_model_replicas", "Replicas by state", ("model", "state"))
        self._cost_1m = gauge(
            "rtcts_model_cost_usd_per_1m_tokens",
            "Cost to serve per 1M tokens now (1000 prompt + 1000 output tokens)",
            ("model",),
        )
        self._realized = gauge(
            "rtcts_realized_margin",
            "Realized gross margin over the margin window (revenue against replica-hours)",
            ("model",),
        )
        self._window_revenue = gauge(
            "rtcts_realized_revenue_usd", "Revenue over the margin window, USD", ("model",)
        )
        self._window_cost = gauge(
            "rtcts_realized_replica_cost_usd",
            "Replica cost (idle and starting included) over the margin window, USD",
            ("model",),
        )
        self._floor = gauge("rtcts_margin_floor", "The plan's margin floor", ("plan",))
        self._billing = {
            name: gauge(f"rtcts_billing_{name}", text, ("shard",))
            for name, text in BILLING_GAUGES.items()
        }
        self._reconciled_at = gauge(
            "rtcts_billing_last_reconcile_timestamp_s", "Unix time of the last reconciliation"
        )
        self._reconciled_ok = gauge(
            "rtcts_billing_last_reconcile_ok", "1 when the last reconciliation found no drift"
        )
        self._pending_decisions: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        self._pending_billed: defaultdict[tuple[str, str], list[int]] = defaultdict(
            lambda: [0, 0, 0]
        )
        self._pending_margins: defaultdict[str, list[float]] = defaultdict(list)
        self._pending_failures: defaultdict[str, int] = defaultdict(int)

    def decision(self, model: str, decision: str, reason: str, plan: str = "") -> None:
        self._pending_decisions[(model, decision, reason, plan)] += 1

    def billed(
        self,
        model: str,
        billed_micro: int,
        cost_micro: int,
        margin: float,
        plan: str = "",
        credit_micro: int = 0,
    ) -> None:
        sums = self._pending_billed[(model, plan)]
        sums[0] += billed_micro
        sums[1] += cost_micro
        sums[2] += credit_micro
        self._pending_margins[model].append(margin)

    def failure(self, model: str) -> None:
        self._pending_failures[model] += 1

    def flush(self) -> None:
        """Record what was summed since the last flush."""
        decisions, self._pending_decisions = self._pending_decisions, defaultdict(int)
        billed, self._pending_billed = self._pending_billed, defaultdict(lambda: [0, 0, 0])
        margins, self._pending_margins = self._pending_margins, defaultdict(list)
        failures, self._pending_failures = self._pending_failures, defaultdict(int)
        for (model, decision, reason, plan), count in decisions.items():
            self._decisions.inc(
                count, {"model": model, "decision": decision, "reason": reason, "plan": plan}
            )
        costs: defaultdict[str, int] = defaultdict(int)
        for (model, plan), (billed_micro, cost_micro, credit_micro) in billed.items():
            tags = {"model": model, "plan": plan}
            if billed_micro > 0:
                self._billed.inc(billed_micro / 1e6, tags)
            if credit_micro > 0:
                self._credits.inc(credit_micro / 1e6, tags)
            costs[model] += cost_micro
        for model, cost_micro in costs.items():
            if cost_micro > 0:
                self._cost.inc(cost_micro / 1e6, {"model": model})
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

    def gauges(self, gauges: LiveGauges) -> None:
        for m in gauges.models:
            tags = {"model": m.model}
            if m.target_replicas is not None:
                self._replicas.set(m.target_replicas, {"model": m.model, "state": "target"})
            if m.cost_usd_per_1m_tokens is not None:
                self._cost_1m.set(m.cost_usd_per_1m_tokens, tags)
            margin = m.realized_margin
            self._realized.set(math.nan if margin is None else margin, tags)
            self._window_revenue.set(m.window_revenue_usd, tags)
            self._window_cost.set(m.window_replica_cost_usd, tags)
        for plan, floor in gauges.floors.items():
            self._floor.set(floor, {"plan": plan})
        for shard in gauges.billing or ():
            tags = {"shard": str(shard.shard)}
            for name, value in billing_values(shard).items():
                self._billing[name].set(value, tags)
        if gauges.last_reconcile is not None:
            at_s, ok = gauges.last_reconcile
            self._reconciled_at.set(at_s)
            self._reconciled_ok.set(1.0 if ok else 0.0)


BILLING_GAUGES = {
    "outbox": "Closed windows waiting to reach Stripe",
    "oldest_unsynced_age_s": "Age of the oldest window not yet synced to Stripe (0: none)",
    "dead_letters": "Windows Stripe refused for good (to check by hand)",
    "open_windows": "Billing windows still open",
    "stream_pending": "Meter stream entries read but not yet folded",
}


def billing_values(shard: ShardHealth) -> dict[str, float]:
    """The billing gauges of one shard (an empty outbox is 0 seconds behind)."""
    return {
        "outbox": shard.outbox,
        "oldest_unsynced_age_s": shard.oldest_unsynced_age_s or 0.0,
        "dead_letters": shard.dead_letters,
        "open_windows": shard.open_windows,
        "stream_pending": shard.stream_pending,
    }


def span_attributes(values: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """OTel accepts only scalar attribute values; None is left out."""
    return {f"rtcts.{k}": v for k, v in values.items() if isinstance(v, str | int | float | bool)}


# ------------------------------------------------------------------ trace export


def otlp_requested(environment: Mapping[str, str]) -> bool:
    """Whether the standard OTel variables ask for OTLP trace export: an endpoint is set
    (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`), the SDK is
    not disabled (`OTEL_SDK_DISABLED`), and `OTEL_TRACES_EXPORTER`, if set, names otlp."""
    if environment.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environment.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")
    if "otlp" not in {e.strip() for e in exporters}:
        return False
    return any(
        environment.get(name, "").strip()
        for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure_tracing(environment: Mapping[str, str]) -> bool:
    """Set the process's tracer provider with an OTLP/HTTP (protobuf) exporter when the
    standard OTel variables (`settings.otel_environment()`) ask for it; True if set.

    The SDK reads the rest of the standard variables itself: endpoint, headers, timeout
    and compression (`OTEL_EXPORTER_OTLP_*`), `OTEL_SERVICE_NAME` (default "rtcts") and
    `OTEL_RESOURCE_ATTRIBUTES`, the sampler (`OTEL_TRACES_SAMPLER`), the batch processor
    (`OTEL_BSP_*`). A provider already set (by `opentelemetry-instrument`, say) is kept.
    Never raises: tracing must not stop a replica from serving."""
    if tracing() or not otlp_requested(environment):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()
        if "OTEL_SERVICE_NAME" not in environment and "service.name=" not in environment.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        ):
            resource = resource.merge(Resource({SERVICE_NAME: "rtcts"}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    except Exception:
        logger.exception("OTLP trace export could not be set up; serving without traces")
        return False
    return tracing()
