"""`ServiceStats`: a replica's recent mean service time and failure rate."""

from __future__ import annotations

import pytest

from serve_app.models.stats import ServiceStats, running_service_estimate, service_time_estimate


def test_no_outcomes_yet() -> None:
    stats = ServiceStats()
    assert (stats.failure_rate, stats.mean_service_s) == (0.0, None)


def test_mean_service_time_of_successes() -> None:
    stats = ServiceStats()
    for duration in (1.0, 2.0, 6.0):
        stats.record(True, duration)
    assert stats.mean_service_s == pytest.approx(3.0)
    assert stats.failure_rate == 0.0


def test_failures_count_for_the_rate_not_the_service_time() -> None:
    stats = ServiceStats()
    stats.record(True, 2.0)
    stats.record(False, 0.1)
    stats.record(True, 4.0)
    stats.record(False, 30.0)
    assert stats.failure_rate == pytest.approx(0.5)
    assert stats.mean_service_s == pytest.approx(3.0)


def test_only_failures_have_no_service_time() -> None:
    stats = ServiceStats()
    stats.record(False, 1.0)
    assert (stats.failure_rate, stats.mean_service_s) == (1.0, None)


def test_only_the_last_window_outcomes_count() -> None:
    stats = ServiceStats(window=4)
    for _ in range(4):
        stats.record(False, 9.0)
    for duration in (1.0, 2.0, 3.0):
        stats.record(True, duration)
    # Window: one failure and three successes.
    assert stats.failure_rate == pytest.approx(0.25)
    assert stats.mean_service_s == pytest.approx(2.0)
    stats.record(True, 6.0)
    assert stats.failure_rate == 0.0
    assert stats.mean_service_s == pytest.approx(3.0)


def test_service_time_estimate_without_anything_is_unknown() -> None:
    assert service_time_estimate(None, []) is None


def test_service_time_estimate_from_completed_requests_alone() -> None:
    assert service_time_estimate(3.0, []) == 3.0


def test_service_time_estimate_from_running_requests_is_twice_their_mean_age() -> None:
    assert service_time_estimate(None, [1.0, 3.0]) == pytest.approx(4.0)


def test_service_time_estimate_takes_the_larger_of_the_two() -> None:
    assert service_time_estimate(10.0, [1.0, 3.0]) == 10.0
    assert service_time_estimate(1.0, [5.0, 7.0]) == pytest.approx(12.0)


def test_running_service_estimate_is_twice_the_mean_age_of_what_runs() -> None:
    assert running_service_estimate([1.0, 2.0, 3.0]) == 4.0
    assert running_service_estimate([]) is None
