"""Telemetry set-up that must not fail inside a replica."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from serve_app.pricing.types import ClusterSnapshot
from serve_app.telemetry import MARGIN_BUCKETS, RayMetrics, span_attributes


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

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.records.append(("set", value, tags))


FAKE = SimpleNamespace(Counter=FakeMetric, Histogram=FakeMetric, Gauge=FakeMetric)


def test_ray_metrics_sum_per_request_figures_until_the_flush() -> None:
    metrics = RayMetrics(FAKE)
    for _ in range(3):
        metrics.decision("small", "allow", "requested_model_feasible")
    metrics.decision("big", "throttle", "margin")
    metrics.billed("small", 1_500_000, 500_000, 0.66)
    metrics.billed("small", 0, 250_000, -1.0)  # fully credited: nothing billed
    metrics.failure("small")
    assert metrics._decisions.records == []  # nothing recorded on the request path
    metrics.flush()
    assert sorted(metrics._decisions.records, key=lambda r: r[2]["model"]) == [
        ("inc", 1, {"model": "big", "decision": "throttle", "reason": "margin"}),
        ("inc", 3, {"model": "small", "decision": "allow", "reason": "requested_model_feasible"}),
    ]
    assert metrics._billed.records == [("inc", 1.5, {"model": "small"})]
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
        ("inc", 1, {"model": "small", "decision": "allow", "reason": "ok"})
    ]
