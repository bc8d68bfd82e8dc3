"""`ClusterState` with fake fetchers and a fake clock (no Ray, no real sleeps)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo, ReplicaInfo
from serve_app.cluster.snapshot import Scaling
from serve_app.cluster.state import ClusterState
from serve_app.pricing.types import ReplicaLoad
from tests.fakes import FakeClock

NOW = 1_000.0
SCALING = {"m": Scaling(30.0, 100.0, 1, 3), "z": Scaling(60.0, 100.0, 0, 2)}


class Fetcher:
    """An async fetcher returning `value` (or raising `error`), counting its calls."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.error: Exception | None = None
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.value


def _report(replica_id: str = "a", running: int = 2, age_s: float = 0.0) -> ReplicaReport:
    return ReplicaReport(
        model_id="m",
        replica_id=replica_id,
        running=running,
        queued=1,
        warm=True,
        start_remaining_s=0.0,
        reported_at=NOW - age_s,
        mean_service_s=1.5,
        failure_rate=0.1,
        kv_cache_usage=0.25,
    )


DEPLOYMENTS = {
    "m": DeploymentInfo(
        "m",
        "HEALTHY",
        2,
        (ReplicaInfo("a", "RUNNING", NOW - 100), ReplicaInfo("b", "STARTING", NOW - 10)),
    )
}


def _state(
    reports: Fetcher | None = None, deployments: Fetcher | None = None, **kw: Any
) -> tuple[ClusterState, Fetcher, Fetcher, FakeClock]:
    reports = reports or Fetcher([_report()])
    deployments = deployments or Fetcher(DEPLOYMENTS)
    clock = FakeClock(NOW)
    state = ClusterState(SCALING, reports, deployments, clock=clock, **kw)
    return state, reports, deployments, clock


async def _until(condition: Callable[[], bool], rounds: int = 200) -> None:
    """Let other tasks run (no real time passes) until `condition` holds."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


# ------------------------------------------------------------------ refreshes


def test_before_any_refresh_the_snapshot_has_the_min_replicas_cold() -> None:
    state, *_ = _state()
    snapshot = state.snapshot()
    assert snapshot.load("m").replicas == (ReplicaLoad(0, 0, False, 30.0),)
    assert snapshot.load("z").replicas == ()
    assert state.refreshed_at == (0.0, 0.0)


def test_refresh_load_brings_reports_into_the_snapshot() -> None:
    state, *_ = _state()
    state.snapshot()  # cached before the refresh
    asyncio.run(state.refresh_load())
    assert state.snapshot().load("m").replicas == (ReplicaLoad(2, 1, True, 0.0),)
    assert state.refreshed_at == (NOW, 0.0)


def test_refresh_replicas_brings_controller_states_into_the_snapshot() -> None:
    state, *_ = _state()
    state.snapshot()
    asyncio.run(state.refresh_replicas())
    assert state.snapshot().load("m").replicas == (
        ReplicaLoad(0, 0, True, 0.0),
        ReplicaLoad(0, 0, False, 20.0),
    )
    assert state.refreshed_at == (0.0, NOW)


def test_a_replica_that_falls_silent_is_lost_while_the_controller_still_lists_it() -> None:
    state, reports, _, clock = _state()
    asyncio.run(state.refresh_load())
    asyncio.run(state.refresh_replicas())
    assert state.snapshot().load("m").replicas[0] == ReplicaLoad(2, 1, True, 0.0)
    reports.value = []  # "a" stops reporting (its node is lost); the controller lists it
    clock.now += 4
    asyncio.run(state.refresh_load())
    asyncio.run(state.refresh_replicas())
    # "a" is lost; "b" is still starting (10 + 4 s of 30 gone); the target of 2 wants
    # one more, cold from the start.
    assert state.snapshot().load("m").replicas == (
        ReplicaLoad(0, 0, False, 16.0),
        ReplicaLoad(0, 0, False, 30.0),
    )


def test_refresh_times_follow_the_clock() -> None:
    state, _, _, clock = _state()
    asyncio.run(state.refresh_load())
    clock.now += 5
    asyncio.run(state.refresh_replicas())
    assert state.refreshed_at == (NOW, NOW + 5)


def test_snapshot_is_cached_between_changes() -> None:
    state, *_ = _state()
    assert state.snapshot() is state.snapshot()


def test_begin_and_end_change_the_snapshot_at_once() -> None:
    state, *_ = _state()
    asyncio.run(state.refresh_load())
    before = state.snapshot()
    state.begin("m")
    state.begin("m")
    state.begin("m")  # 3 in flight here, the replica reports 3 ongoing: nothing new
    assert state.snapshot().load("m") == before.load("m")
    state.begin("m")
    assert state.snapshot().load("m").replicas == (ReplicaLoad(2, 2, True, 0.0),)
    for _ in range(4):
        state.end("m")
    assert state.snapshot().load("m").replicas == (ReplicaLoad(2, 1, True, 0.0),)


def test_begin_on_a_scaled_to_zero_model_prices_a_cold_start() -> None:
    state, *_ = _state()
    state.begin("z")
    assert state.snapshot().load("z").replicas == (ReplicaLoad(0, 1, False, 60.0),)
    state.end("z")
    assert state.snapshot().load("z").replicas == ()


def test_failing_load_fetch_keeps_the_last_good_view() -> None:
    state, reports, _, clock = _state()
    asyncio.run(state.refresh_load())
    good = state.snapshot()
    reports.error = ConnectionError("registry down")
    clock.now += 1
    with pytest.raises(ConnectionError):
        asyncio.run(state.refresh_load())
    assert state.snapshot() is good
    assert state.refreshed_at == (NOW, 0.0)


def test_failing_replica_fetch_keeps_the_last_good_view() -> None:
    state, _, deployments, _ = _state()
    asyncio.run(state.refresh_replicas())
    good = state.snapshot().load("m")
    deployments.error = TimeoutError("controller slow")
    with pytest.raises(TimeoutError):
        asyncio.run(state.refresh_replicas())
    assert state.snapshot().load("m") == good
    assert state.view()["m"]["status"] == "HEALTHY"


# ------------------------------------------------------------------ background tasks


def test_start_refreshes_in_the_background_and_stop_ends_cleanly() -> None:
    state, reports, deployments, _ = _state(load_period_s=0.0, replica_period_s=0.0)

    async def scenario() -> None:
        state.start()
        await _until(lambda: reports.calls >= 3 and deployments.calls >= 3)
        assert state.snapshot().load("m").replicas[0] == ReplicaLoad(2, 1, True, 0.0)
        await state.stop()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        calls = (reports.calls, deployments.calls)
        for _ in range(10):
            await asyncio.sleep(0)
        assert (reports.calls, deployments.calls) == calls

    asyncio.run(scenario())


def test_background_refresh_survives_failures_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reports = Fetcher([_report(running=5)])
    reports.error = ConnectionError("registry down")
    state, *_ = _state(reports=reports, load_period_s=0.0, replica_period_s=0.0)

    async def scenario() -> None:
        state.start()
        await _until(lambda: reports.calls >= 3)
        assert state.refreshed_at[0] == 0.0  # never a good load refresh yet
        reports.error = None
        await _until(lambda: state.refreshed_at[0] == NOW)
        assert state.snapshot().load("m").replicas[0].running == 5
        await state.stop()

    with caplog.at_level(logging.INFO, logger="rtcts.cluster"):
        asyncio.run(scenario())
    failures = [r for r in caplog.records if "refresh failed" in r.getMessage()]
    assert len(failures) == 1  # logged once per outage, not once per try
    assert any("recovered" in r.getMessage() for r in caplog.records)


def test_stop_without_start_is_harmless() -> None:
    state, *_ = _state()
    asyncio.run(state.stop())


# ------------------------------------------------------------------ view


def test_view_shape_before_any_refresh() -> None:
    state, *_ = _state()
    assert state.view() == {
        model: {
            "status": "UNKNOWN",
            "target_replicas": None,
            "running_replicas": None,
            "starting_replicas": None,
            "in_flight_here": 0,
            "in_flight_service_s": 0,
            "replicas": [],
        }
        for model in ("m", "z")
    }


def test_view_shape_after_refreshes() -> None:
    state, reports, _, clock = _state()
    reports.value = [_report("b", running=1, age_s=0.25), _report("a", running=2)]
    asyncio.run(state.refresh_load())
    asyncio.run(state.refresh_replicas())
    state.begin("m")
    clock.now += 0.5
    view = state.view()["m"]
    assert {k: v for k, v in view.items() if k != "replicas"} == {
        "status": "HEALTHY",
        "target_replicas": 2,
        "running_replicas": 1,
        "starting_replicas": 1,
        "in_flight_here": 1,
        "in_flight_service_s": 0,
    }
    assert [r["replica_id"] for r in view["replicas"]] == ["a", "b"]  # sorted
    assert view["replicas"][0] == {
        "replica_id": "a",
        "warm": True,
        "running": 2,
        "queued": 1,
        "start_remaining_s": 0.0,
        "mean_service_s": 1.5,
        "failure_rate": 0.1,
        "kv_cache_usage": 0.25,
        "age_s": 0.5,
    }
    assert view["replicas"][1]["age_s"] == 0.75
    assert state.view()["z"]["replicas"] == []


def test_in_flight_below_the_reported_load_keeps_the_cached_snapshot() -> None:
    state, *_ = _state()
    asyncio.run(state.refresh_load())
    before = state.snapshot()  # the replica reports 3 ongoing requests
    state.begin("m")
    state.begin("m")
    assert state.snapshot() is before  # 2 in flight here are among the 3 reported
    state.end("m")
    assert state.snapshot() is before
    state.begin("m")
    state.begin("m")
    state.begin("m")  # 4 > 3: news the replicas have not reported yet
    assert state.snapshot() is not before


def test_in_flight_service_times_enter_the_mean_and_leave_with_their_requests() -> None:
    state, *_ = _state()
    asyncio.run(state.refresh_load())
    assert state.snapshot().load("m").mean_service_s == 1.5  # measured (3 reported ongoing)
    for _ in range(6):  # 6 > 3: all ongoing requests are this ingress's, 0.1 s each
        state.begin("m", 0.1)
    assert state.snapshot().load("m").mean_service_s == pytest.approx(0.1)
    for _ in range(6):
        state.end("m", 0.1)
    assert state.snapshot().load("m").mean_service_s == 1.5


def test_snapshot_after_begins_and_ends_equals_a_full_rebuild() -> None:
    """Only the changed model's load is rebuilt between refreshes; the result is what
    `build_snapshot` gives for the same reports, controller states and in-flight counts."""
    from serve_app.cluster.snapshot import build_snapshot

    state, reports, deployments, _clock = _state()
    asyncio.run(state.refresh_load())
    asyncio.run(state.refresh_replicas())
    steps = [("m", 1)] * 6 + [("z", 1)] * 3 + [("m", -1)] * 4 + [("z", -1), ("m", 1)] * 2
    in_flight = {"m": 0, "z": 0}
    for model_id, change in steps:
        (state.begin if change > 0 else state.end)(model_id)
        in_flight[model_id] += change
        expected = build_snapshot(SCALING, reports.value, deployments.value, in_flight, NOW)
        assert state.snapshot() == expected
    asyncio.run(state.refresh_load())  # a refresh rebuilds every model from the new reports
    expected = build_snapshot(SCALING, reports.value, deployments.value, in_flight, NOW)
    assert state.snapshot() == expected
