"""Telemetry set-up that must not fail inside a replica."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from serve_app import telemetry
from serve_app.pricing.types import ClusterSnapshot
from serve_app.telemetry import (
    MARGIN_BUCKETS,
    LiveGauges,
    ModelFigures,
    RayMetrics,
    ShardHealth,
    configure_tracing,
    otlp_requested,
    span_attributes,
)


def test_margin_buckets_are_what_ray_histograms_accept() -> None:
    # ray.util.metrics.Histogram rejects non-positive or unsorted boundaries.
    assert all(b > 0 for b in MARGIN_BUCKETS)
    assert sorted(set(MARGIN_BUCKETS)) == MARGIN_BUCKETS


def test_span_attributes_keep_scalars_only() -> None:
    assert span_attributes({"a": 1, "b": None, "c": "x", "d": [1]}) == {
        "rtcts.a": 1,
        "rtcts.c": "x",
    }


class FakeMetric:
    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.name = name
        self.records: list[tuple[str, float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        assert value > 0  # ray.util.metrics.Counter refuses anything else
        self.records.append(("inc", value, tags))

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.records.append(("observe", value, tags))

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.records.append(("set", value, tags or {}))


FAKE = SimpleNamespace(Counter=FakeMetric, Histogram=FakeMetric, Gauge=FakeMetric)


def test_ray_metrics_sum_per_request_figures_until_the_flush() -> None:
    metrics = RayMetrics(FAKE)
    for _ in range(3):
        metrics.decision("small", "allow", "requested_model_feasible", "pro")
    metrics.decision("big", "throttle", "margin", "basic")
    metrics.billed("small", 1_500_000, 500_000, 0.66, "pro", 100_000)
    metrics.billed("small", 0, 250_000, -1.0, "basic", 300_000)  # fully credited
    metrics.failure("small")
    assert metrics._decisions.records == []  # nothing recorded on the request path
    metrics.flush()
    assert sorted(metrics._decisions.records, key=lambda r: r[2]["model"]) == [
        ("inc", 1, {"model": "big", "decision": "throttle", "reason": "margin", "plan": "basic"}),
        (
            "inc",
            3,
            {
                "model": "small",
                "decision": "allow",
                "reason": "requested_model_feasible",
                "plan": "pro",
            },
        ),
    ]
    assert metrics._billed.records == [("inc", 1.5, {"model": "small", "plan": "pro"})]
    assert sorted(metrics._credits.records, key=lambda r: r[1]) == [
        ("inc", 0.1, {"model": "small", "plan": "pro"}),
        ("inc", 0.3, {"model": "small", "plan": "basic"}),
    ]
    assert metrics._cost.records == [("inc", 0.75, {"model": "small"})]
    assert metrics._margin.records == [
        ("observe", 0.66, {"model": "small"}),
        ("observe", -1.0, {"model": "small"}),
    ]
    assert metrics._failures.records == [("inc", 1, {"model": "small"})]
    metrics.flush()  # nothing new: nothing recorded again
    assert len(metrics._decisions.records) == 2
    assert len(metrics._margin.records) == 2


def test_ray_metrics_live_state_sets_gauges_and_flushes() -> None:
    metrics = RayMetrics(FAKE)
    metrics.decision("small", "allow", "ok")
    metrics.live_state(ClusterSnapshot())
    assert metrics._decisions.records == [
        ("inc", 1, {"model": "small", "decision": "allow", "reason": "ok", "plan": ""})
    ]


def test_ray_metrics_live_figures_become_gauges() -> None:
    metrics = RayMetrics(FAKE)
    metrics.gauges(
        LiveGauges(
            models=[
                ModelFigures("small", 3, 0.42, 0.35, 2.0, 1.3),
                ModelFigures("big", None, None, None, 0.0, 4.0),  # no revenue: no margin
            ],
            floors={"pro": 0.3},
            billing=[ShardHealth(0, 2, 12.5, 1, 3, 0), ShardHealth(1, 0, None, 0, 1, 4)],
            last_reconcile=(1_700_000_000.0, False),
        )
    )
    assert metrics._replicas.records == [("set", 3, {"model": "small", "state": "target"})]
    assert metrics._cost_1m.records == [("set", 0.42, {"model": "small"})]
    (small, big) = metrics._realized.records
    assert small == ("set", 0.35, {"model": "small"})
    assert math.isnan(big[1])  # undefined, not a number that could be read as a margin
    assert metrics._window_revenue.records[0] == ("set", 2.0, {"model": "small"})
    assert metrics._window_cost.records[1] == ("set", 4.0, {"model": "big"})
    assert metrics._floor.records == [("set", 0.3, {"plan": "pro"})]
    assert metrics._billing["oldest_unsynced_age_s"].records == [
        ("set", 12.5, {"shard": "0"}),
        ("set", 0.0, {"shard": "1"}),  # nothing waiting: no lag
    ]
    assert metrics._billing["dead_letters"].records[0] == ("set", 1, {"shard": "0"})
    assert metrics._billing["stream_pending"].records[1] == ("set", 4, {"shard": "1"})
    assert metrics._reconciled_at.records == [("set", 1_700_000_000.0, {})]
    assert metrics._reconciled_ok.records == [("set", 0.0, {})]


def test_every_metric_name_is_listed_in_the_module_docstring() -> None:
    metrics = RayMetrics(FAKE)
    names = {m.name for m in vars(metrics).values() if isinstance(m, FakeMetric)}
    names |= {m.name for m in metrics._billing.values()}
    assert len(names) == 21
    for name in names:
        assert name in (telemetry.__doc__ or ""), name


@pytest.mark.parametrize(
    ("environment", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),  # no endpoint: nowhere to send
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_TRACES_EXPORTER": "console,otlp",
            },
            True,
        ),
    ],
)
def test_otlp_export_follows_the_standard_otel_variables(
    environment: dict[str, str], wanted: bool
) -> None:
    assert otlp_requested(environment) is wanted


def test_configure_tracing_sets_an_otlp_provider_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    providers: list[object] = []
    monkeypatch.setattr(trace, "set_tracer_provider", providers.append)
    assert not configure_tracing({})  # nothing asked: nothing set
    assert providers == []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # the SDK reads it
    monkeypatch.setattr(telemetry, "tracing", lambda: bool(providers))
    assert configure_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    (provider,) = providers
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "rtcts"
    assert not configure_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert len(providers) == 1  # a provider already set is kept
    provider.shutdown()
