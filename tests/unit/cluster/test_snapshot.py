"""`build_snapshot`: the pricing snapshot from reports, controller states and in-flight."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo, ReplicaInfo
from serve_app.cluster.snapshot import (
    SILENT_S,
    Scaling,
    build_snapshot,
    model_bases,
    model_load,
)
from serve_app.pricing.types import ClusterSnapshot, ModelLoad, ReplicaLoad

NOW = 1_000.0
COLD_S = 30.0
WARM_IDLE = ReplicaLoad(0, 0, True, 0.0)
FULL_COLD = ReplicaLoad(0, 0, False, COLD_S)


def _scaling(
    min_replicas: int = 1, max_replicas: int = 3, target_ongoing: float = 100.0
) -> dict[str, Scaling]:
    return {"m": Scaling(COLD_S, target_ongoing, min_replicas, max_replicas)}


def _report(
    replica_id: str,
    running: int = 0,
    queued: int = 0,
    *,
    model_id: str = "m",
    warm: bool = True,
    start_remaining_s: float = 0.0,
    age_s: float = 0.0,
    mean_service_s: float | None = None,
    failure_rate: float = 0.0,
    running_service_s: float | None = None,
) -> ReplicaReport:
    return ReplicaReport(
        model_id=model_id,
        replica_id=replica_id,
        running=running,
        queued=queued,
        warm=warm,
        start_remaining_s=start_remaining_s,
        reported_at=NOW - age_s,
        mean_service_s=mean_service_s,
        failure_rate=failure_rate,
        running_service_s=running_service_s,
    )


def _deployment(
    *replicas: ReplicaInfo, target: int | None = None, status: str = "HEALTHY"
) -> dict[str, DeploymentInfo]:
    wanted = len(replicas) if target is None else target
    return {"m": DeploymentInfo("m", status, wanted, tuple(replicas))}


def _load(
    reports: Sequence[ReplicaReport] = (),
    deployments: Mapping[str, DeploymentInfo] | None = None,
    in_flight: int = 0,
    scaling: Mapping[str, Scaling] | None = None,
) -> ModelLoad:
    snapshot = build_snapshot(
        _scaling() if scaling is None else scaling, reports, deployments, {"m": in_flight}, NOW
    )
    assert isinstance(snapshot, ClusterSnapshot)
    return snapshot.load("m")


# ------------------------------------------------------------------ controller-listed replicas


def test_running_replica_without_report_is_warm_and_idle() -> None:
    load = _load(deployments=_deployment(ReplicaInfo("a", "RUNNING", NOW - 100)))
    assert load.replicas == (WARM_IDLE,)


def test_running_replica_silent_since_it_reported_is_lost_and_replaced_cold() -> None:
    listed = _deployment(ReplicaInfo("a", "RUNNING", NOW - 100))
    silent = build_snapshot(
        _scaling(), [], listed, {}, NOW, last_seen={"a": NOW - SILENT_S - 0.1}
    ).load("m")
    assert silent.replicas == (FULL_COLD,)  # its node is gone: what a new one costs
    lapse = build_snapshot(_scaling(), [], listed, {}, NOW, last_seen={"a": NOW - 2.0}).load("m")
    assert lapse.replicas == (WARM_IDLE,)  # a report or two missed: still there


def test_a_fresh_report_wins_over_an_earlier_silence() -> None:
    listed = _deployment(ReplicaInfo("a", "RUNNING", NOW - 100))
    load = build_snapshot(
        _scaling(), [_report("a", 2)], listed, {}, NOW, last_seen={"a": NOW - 60}
    ).load("m")
    assert load.replicas == (ReplicaLoad(2, 0, True, 0.0),)


def test_starting_replica_without_report_has_the_cold_start_left_since_it_started() -> None:
    load = _load(deployments=_deployment(ReplicaInfo("a", "STARTING", NOW - 12.0)))
    (replica,) = load.replicas
    assert (replica.running, replica.queued, replica.warm) == (0, 0, False)
    assert replica.start_remaining_s == pytest.approx(COLD_S - 12.0)


def test_unscheduled_starting_replica_has_the_full_cold_start_left() -> None:
    load = _load(deployments=_deployment(ReplicaInfo("a", "STARTING", 0.0)))
    assert load.replicas == (FULL_COLD,)


def test_starting_replica_past_its_cold_start_has_none_left() -> None:
    load = _load(deployments=_deployment(ReplicaInfo("a", "STARTING", NOW - 2 * COLD_S)))
    assert load.replicas == (ReplicaLoad(0, 0, False, 0.0),)


# ------------------------------------------------------------------ reports


def test_report_wins_over_the_controller_state() -> None:
    load = _load(
        reports=[_report("a", running=3, queued=1)],
        deployments=_deployment(ReplicaInfo("a", "STARTING", NOW - 1)),
    )
    assert load.replicas == (ReplicaLoad(3, 1, True, 0.0),)


def test_reported_start_remaining_shrinks_by_the_reports_age() -> None:
    report = _report("a", warm=False, start_remaining_s=10.0, age_s=4.0)
    load = _load(reports=[report], deployments=_deployment(ReplicaInfo("a", "STARTING", NOW - 20)))
    (replica,) = load.replicas
    assert not replica.warm
    assert replica.start_remaining_s == pytest.approx(6.0)


def test_reported_start_remaining_never_goes_below_zero() -> None:
    load = _load(reports=[_report("a", warm=False, start_remaining_s=1.0, age_s=5.0)])
    assert load.replicas == (ReplicaLoad(0, 0, False, 0.0),)


def test_reported_replica_the_controller_does_not_list_is_included() -> None:
    load = _load(
        reports=[_report("a", running=2), _report("new", running=1)],
        deployments=_deployment(ReplicaInfo("a", "RUNNING", NOW - 100)),
    )
    assert sorted(load.replicas, key=lambda r: r.running) == [
        ReplicaLoad(1, 0, True, 0.0),
        ReplicaLoad(2, 0, True, 0.0),
    ]


def test_reports_of_models_outside_the_scaling_are_ignored() -> None:
    snapshot = build_snapshot(
        _scaling(), [_report("x", running=5, model_id="other")], None, {}, NOW
    )
    assert set(snapshot.models) == {"m"}


def test_deployments_none_before_the_first_refresh_uses_reports_and_min_replicas() -> None:
    assert _load(reports=[_report("a", running=2)]).replicas == (ReplicaLoad(2, 0, True, 0.0),)
    assert _load().replicas == (FULL_COLD,)  # min_replicas 1, nothing known yet
    assert _load().available


# ------------------------------------------------------------------ scale-ups


def test_controller_target_above_live_replicas_adds_cold_replicas() -> None:
    load = _load(deployments=_deployment(ReplicaInfo("a", "RUNNING", NOW - 100), target=3))
    assert load.replicas == (WARM_IDLE, FULL_COLD, FULL_COLD)


def test_controller_target_is_capped_at_max_replicas() -> None:
    load = _load(
        deployments=_deployment(ReplicaInfo("a", "RUNNING", NOW - 100), target=9),
        scaling=_scaling(max_replicas=2),
    )
    assert load.replicas == (WARM_IDLE, FULL_COLD)


def test_ongoing_load_anticipates_a_scale_up_with_cold_replicas() -> None:
    # 9 ongoing at 4 per replica: the autoscaler will want ceil(9 / 4) = 3 replicas.
    load = _load(reports=[_report("a", running=9)], scaling=_scaling(target_ongoing=4))
    assert load.replicas == (ReplicaLoad(9, 0, True, 0.0), FULL_COLD, FULL_COLD)


def test_in_flight_counts_as_ongoing_load_for_the_scale_up() -> None:
    load = _load(reports=[_report("a", running=1)], in_flight=5, scaling=_scaling(target_ongoing=4))
    assert len(load.replicas) == 2
    assert load.replicas[1] == FULL_COLD


def test_anticipated_scale_up_is_capped_at_max_replicas() -> None:
    load = _load(
        reports=[_report("a", running=50)], scaling=_scaling(target_ongoing=4, max_replicas=3)
    )
    assert len(load.replicas) == 3


def test_min_replicas_are_anticipated_when_none_are_live() -> None:
    load = _load(scaling=_scaling(min_replicas=2))
    assert load.replicas == (FULL_COLD, FULL_COLD)


def test_scale_to_zero_model_with_nothing_in_flight_has_no_replicas() -> None:
    assert _load(scaling=_scaling(min_replicas=0)).replicas == ()


def test_scale_to_zero_model_with_requests_in_flight_gets_a_cold_replica_queueing_them() -> None:
    load = _load(in_flight=2, scaling=_scaling(min_replicas=0))
    assert load.replicas == (ReplicaLoad(0, 2, False, COLD_S),)


# ------------------------------------------------------------------ in-flight beyond reports


def test_in_flight_beyond_reports_queues_on_the_least_loaded_warm_replica() -> None:
    load = _load(reports=[_report("a", running=2), _report("b", running=5)], in_flight=10)
    assert load.replicas == (ReplicaLoad(2, 3, True, 0.0), ReplicaLoad(5, 0, True, 0.0))


def test_in_flight_excess_spreads_over_equally_loaded_warm_replicas() -> None:
    load = _load(reports=[_report("a", running=1), _report("b", running=1)], in_flight=6)
    assert sorted(r.queued for r in load.replicas) == [2, 2]


def test_in_flight_excess_prefers_a_busy_warm_replica_to_a_cold_one() -> None:
    load = _load(
        reports=[_report("a", running=4), _report("b", warm=False, start_remaining_s=20.0)],
        in_flight=6,
    )
    assert load.replicas == (ReplicaLoad(4, 2, True, 0.0), ReplicaLoad(0, 0, False, 20.0))


def test_in_flight_within_what_replicas_report_queues_nothing() -> None:
    load = _load(reports=[_report("a", running=5)], in_flight=3)
    assert load.replicas == (ReplicaLoad(5, 0, True, 0.0),)


# ------------------------------------------------------------------ health


def test_deploy_failed_deployment_is_unavailable() -> None:
    failed = _deployment(ReplicaInfo("a", "RUNNING", NOW - 100), status="DEPLOY_FAILED")
    assert not _load(deployments=failed).available


@pytest.mark.parametrize("status", ["HEALTHY", "UPDATING", "UPSCALING", "UNHEALTHY"])
def test_other_deployment_statuses_stay_available(status: str) -> None:
    deployment = _deployment(ReplicaInfo("a", "RUNNING", NOW - 100), status=status)
    assert _load(deployments=deployment).available


def test_failure_rate_and_mean_service_are_averaged_over_reports() -> None:
    load = _load(
        reports=[
            _report("a", failure_rate=0.1, mean_service_s=2.0),
            _report("b", failure_rate=0.3, mean_service_s=4.0),
            _report("c", failure_rate=0.2),  # not measured yet: left out of the mean
        ]
    )
    assert load.failure_rate == pytest.approx(0.2)
    assert load.mean_service_s == pytest.approx(3.0)


def test_without_reports_failure_rate_is_zero_and_service_time_unknown() -> None:
    load = _load(deployments=_deployment(ReplicaInfo("a", "RUNNING", NOW - 100)))
    assert (load.failure_rate, load.mean_service_s) == (0.0, None)


def _mean_with_in_flight(
    in_flight: int,
    in_flight_s: float,
    reported: int,
    measured_s: float | None,
    running_s: float | None = None,
) -> float | None:
    reports = [
        _report("a", running=reported, mean_service_s=measured_s, running_service_s=running_s)
    ]
    base = model_bases(_scaling(), reports, None, NOW)["m"]
    return model_load(base, _scaling()["m"], in_flight, in_flight_s).mean_service_s


def test_in_flight_requests_count_at_their_predicted_service_time() -> None:
    # A burst of short requests (0.01 s each) after long ones (measured mean 8 s): the
    # requests actually ahead are the short ones this ingress sent.
    assert _mean_with_in_flight(20, 20 * 0.01, 4, 8.0) == pytest.approx(0.01)
    # Before any measurement, the predictions alone.
    assert _mean_with_in_flight(3, 3 * 0.5, 0, None) == pytest.approx(0.5)


def test_requests_of_other_ingresses_count_at_the_measured_mean() -> None:
    # 2 of the 10 reported ongoing requests are this ingress's (0.1 s each); the other 8
    # are unknown here and count at the replicas' measured 2 s.
    assert _mean_with_in_flight(2, 0.2, 10, 2.0) == pytest.approx((0.2 + 8 * 2.0) / 10)


def test_in_flight_requests_that_outrun_their_prediction_count_at_what_runs() -> None:
    # Predicted 0.05 s each, but the replica's running requests are 3 s old on average:
    # they count at 6 s, so the queue behind them grows as they run.
    assert _mean_with_in_flight(6, 6 * 0.05, 4, 0.5, running_s=6.0) == pytest.approx(6.0)
    # A shorter running estimate does not lower the prediction.
    assert _mean_with_in_flight(6, 6 * 0.05, 4, 0.5, running_s=0.01) == pytest.approx(0.05)


def test_without_predictions_the_measured_mean_stands() -> None:
    assert _mean_with_in_flight(0, 0.0, 4, 8.0) == 8.0
    assert _mean_with_in_flight(5, 0.0, 4, 8.0) == 8.0  # in flight, service unknown
    assert _mean_with_in_flight(0, 0.0, 0, None) is None


def test_reports_of_replicas_the_controller_says_are_gone_do_not_count() -> None:
    from serve_app.cluster.reports import ReplicaReport
    from serve_app.cluster.serve_adapter import DeploymentInfo, ReplicaInfo
    from serve_app.cluster.snapshot import Scaling, build_snapshot

    deployment = DeploymentInfo(
        "m", "HEALTHY", 1, (ReplicaInfo("live", "RUNNING", 1.0),), gone=frozenset({"old"})
    )
    reports = [
        ReplicaReport("m", rid, 0, 0, True, 0.0, reported_at=100.0) for rid in ("live", "old")
    ]
    snapshot = build_snapshot(
        {"m": Scaling(5.0, 8, 1, 2)}, reports, {"m": deployment}, {}, now=100.0
    )
    assert len(snapshot.load("m").replicas) == 1


def _one_by_one(replicas: tuple[ReplicaLoad, ...], excess: int) -> tuple[ReplicaLoad, ...]:
    """The rule `_queue_unreported` implements: each request on the least loaded replica,
    warm before cold, the first listed on ties."""
    loads = [[r.running, r.queued, r.warm, r.start_remaining_s] for r in replicas]
    for _ in range(excess):
        least = min(loads, key=lambda r: (not r[2], r[0] + r[1]))
        least[1] += 1
    return tuple(ReplicaLoad(*r) for r in loads)


def test_queue_unreported_matches_the_one_by_one_rule() -> None:
    import random

    from serve_app.cluster.snapshot import _queue_unreported

    rng = random.Random(7)
    for _ in range(2000):
        replicas = tuple(
            ReplicaLoad(rng.randint(0, 6), rng.randint(0, 4), rng.random() < 0.7, 0.0)
            for _ in range(rng.randint(1, 5))
        )
        excess = rng.randint(1, 40)
        assert _queue_unreported(replicas, excess) == _one_by_one(replicas, excess)
