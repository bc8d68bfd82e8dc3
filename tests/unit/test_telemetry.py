"""Telemetry set-up that must not fail inside a replica."""

from __future__ import annotations

from serve_app.telemetry import MARGIN_BUCKETS, span_attributes


def test_margin_buckets_are_what_ray_histograms_accept() -> None:
    # ray.util.metrics.Histogram rejects non-positive or unsorted boundaries.
    assert all(b > 0 for b in MARGIN_BUCKETS)
    assert sorted(set(MARGIN_BUCKETS)) == MARGIN_BUCKETS


def test_span_attributes_keep_scalars_only() -> None:
    assert span_attributes({"a": 1, "b": None, "c": "x", "d": [1]}) == {
        "rtcts.a": 1,
        "rtcts.c": "x",
    }
