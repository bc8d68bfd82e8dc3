"""Build the pricing core's `ClusterSnapshot` from what the ingress knows (pure).

Three sources, each with its own freshness:
- replica reports from the load registry (≈100-200 ms old): batch, queue, warm/cold;
- deployment states from the Serve controller (≤ 1 s old): replicas RUNNING/STARTING
  and the autoscaler's target;
- the ingress's own in-flight count per model (exact, immediate).

Rules: a replica the controller lists but that has not reported yet is warm and idle
if RUNNING, else cold with the cold start it has left; a replica that reports but the
controller does not list yet is taken as reported. A replica that did report but has
been silent for `SILENT_S` is lost (its node gone, its process hung), whatever the
controller still says: no capacity, so the quote shows what replacing it costs. In-flight
requests beyond what the replicas report (sent since their last report, or waiting at
the handle for a replica to start) count as queued on the least loaded replicas.

Scale-ups are anticipated: the autoscaler wants `ceil(ongoing / target_ongoing_requests)`
replicas (within its bounds); if that, or the target the controller already set, is
above the live replicas, the difference is added as cold replicas with a full cold
start. So load that will start a replica is priced with that cold start at once, not a
second later when the controller acts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo
from serve_app.pricing.types import ClusterSnapshot, ModelLoad, ReplicaLoad

UNAVAILABLE_STATUSES = frozenset({"DEPLOY_FAILED"})
SILENT_S = 3.0
"""A replica that reported before and not for this long is lost. Replicas report every
100 ms and the registry drops a report after 1.5 s; the controller notices a lost node's
replicas only after its own health checks, and lists them RUNNING meanwhile."""


@dataclass(frozen=True, slots=True)
class Scaling:
    """What the snapshot needs of a model's deployment: its cold start and autoscaling."""

    cold_start_s: float
    target_ongoing_requests: float
    min_replicas: int
    max_replicas: int


@dataclass(slots=True)
class _Replica:
    running: int
    queued: int
    warm: bool
    start_remaining_s: float

    def frozen(self) -> ReplicaLoad:
        return ReplicaLoad(self.running, self.queued, self.warm, self.start_remaining_s)


@dataclass(frozen=True, slots=True)
class ModelBase:
    """What one model's load is before this ingress's in-flight count is applied: its
    replicas from the reports and the controller (as of one refresh) and their averages.
    `model_load` applies an in-flight count to it; the cluster state keeps bases between
    refreshes, so a request's begin or end rebuilds only its model's `ModelLoad`."""

    replicas: tuple[ReplicaLoad, ...]
    target_replicas: int | None
    failure_rate: float
    mean_service_s: float | None
    available: bool
    running_service_s: float | None = None


def build_snapshot(
    scaling: Mapping[str, Scaling],
    reports: Iterable[ReplicaReport],
    deployments: Mapping[str, DeploymentInfo] | None,
    in_flight: Mapping[str, int],
    now: float,
    last_seen: Mapping[str, float] | None = None,
) -> ClusterSnapshot:
    """The pricing snapshot of every model in `scaling`."""
    bases = model_bases(scaling, reports, deployments, now, last_seen)
    return ClusterSnapshot(
        {
            model_id: model_load(bases[model_id], bounds, in_flight.get(model_id, 0))
            for model_id, bounds in scaling.items()
        }
    )


def model_bases(
    scaling: Mapping[str, Scaling],
    reports: Iterable[ReplicaReport],
    deployments: Mapping[str, DeploymentInfo] | None,
    now: float,
    last_seen: Mapping[str, float] | None = None,
) -> dict[str, ModelBase]:
    """Per model in `scaling`, its replicas and averages without the in-flight count.
    `last_seen`: replica id -> time of its latest report ever seen (silent replicas)."""
    by_model: dict[str, dict[str, ReplicaReport]] = {}
    for report in reports:
        by_model.setdefault(report.model_id, {})[report.replica_id] = report
    bases: dict[str, ModelBase] = {}
    for model_id, bounds in scaling.items():
        reported = by_model.get(model_id, {})
        deployment = None if deployments is None else deployments.get(model_id)
        replicas = _replicas(reported, deployment, bounds.cold_start_s, now, last_seen or {})
        services = [r.mean_service_s for r in reported.values() if r.mean_service_s]
        running = [r.running_service_s for r in reported.values() if r.running_service_s]
        failures = [r.failure_rate for r in reported.values()]
        bases[model_id] = ModelBase(
            replicas=tuple(r.frozen() for r in replicas),
            target_replicas=None if deployment is None else deployment.target_replicas,
            failure_rate=sum(failures) / len(failures) if failures else 0.0,
            mean_service_s=sum(services) / len(services) if services else None,
            available=deployment is None or deployment.status not in UNAVAILABLE_STATUSES,
            running_service_s=sum(running) / len(running) if running else None,
        )
    return bases


def model_load(
    base: ModelBase, bounds: Scaling, in_flight: int, in_flight_s: float = 0.0
) -> ModelLoad:
    """One model's `ModelLoad`: its base with this ingress's in-flight requests applied
    (anticipated scale-up, requests beyond the reports queued on the least loaded, and
    their predicted service seconds `in_flight_s` in the mean service time)."""
    reported_load = sum(r.running + r.queued for r in base.replicas)
    ongoing = max(in_flight, reported_load)
    wanted = min(
        bounds.max_replicas,
        max(bounds.min_replicas, math.ceil(ongoing / bounds.target_ongoing_requests)),
    )
    if base.target_replicas is not None:
        wanted = max(wanted, min(base.target_replicas, bounds.max_replicas))
    replicas = base.replicas
    missing = wanted - len(replicas)
    if missing > 0:
        replicas += (ReplicaLoad(0, 0, False, bounds.cold_start_s),) * missing
    if in_flight > reported_load and replicas:
        replicas = _queue_unreported(replicas, in_flight - reported_load)
    return ModelLoad(
        replicas=replicas,
        failure_rate=base.failure_rate,
        mean_service_s=_mean_service_s(base, in_flight, in_flight_s, ongoing),
        available=base.available,
    )


def _mean_service_s(
    base: ModelBase, in_flight: int, in_flight_s: float, ongoing: int
) -> float | None:
    """Mean service time of the `ongoing` requests on a model.

    This ingress's in-flight requests count at their predicted durations, or at what
    the replicas' running requests show (twice their mean age) when that is longer,
    so requests that outrun their prediction raise it as they run. The others count
    at the replicas' measured mean. The measured mean alone can be far off: it
    includes the recent past, so a burst of short requests after long ones would be
    priced as if each were long (and throttled for a queue wait that does not come).
    """
    measured_s = base.mean_service_s
    if in_flight <= 0 or in_flight_s <= 0:
        return measured_s
    mine_s = in_flight_s / in_flight
    if base.running_service_s is not None and base.running_service_s > mine_s:
        mine_s = base.running_service_s
    others = ongoing - in_flight
    if measured_s is None or others <= 0:
        return mine_s
    return (in_flight * mine_s + others * measured_s) / ongoing


def _replicas(
    reported: Mapping[str, ReplicaReport],
    deployment: DeploymentInfo | None,
    full_start_s: float,
    now: float,
    last_seen: Mapping[str, float],
) -> list[_Replica]:
    replicas: list[_Replica] = []
    listed: set[str] = set()
    if deployment is not None:
        for info in deployment.replicas:
            listed.add(info.replica_id)
            report = reported.get(info.replica_id)
            seen = last_seen.get(info.replica_id)
            if report is not None:
                replicas.append(_from_report(report, now))
            elif seen is not None and now - seen > SILENT_S:
                continue  # reported, then fell silent: lost
            elif info.state == "RUNNING":
                replicas.append(_Replica(0, 0, True, 0.0))
            else:
                elapsed = now - info.start_time_s if info.start_time_s > 0 else 0.0
                replicas.append(_Replica(0, 0, False, max(0.0, full_start_s - elapsed)))
    gone = deployment.gone if deployment is not None else frozenset()
    replicas += [
        _from_report(r, now) for rid, r in reported.items() if rid not in listed and rid not in gone
    ]
    return replicas


def _from_report(report: ReplicaReport, now: float) -> _Replica:
    remaining = 0.0
    if not report.warm:
        remaining = max(0.0, report.start_remaining_s - max(0.0, now - report.reported_at))
    return _Replica(report.running, report.queued, report.warm, remaining)


def _queue_unreported(replicas: tuple[ReplicaLoad, ...], excess: int) -> tuple[ReplicaLoad, ...]:
    """Queue `excess` requests one by one on the least loaded replica, warm before cold
    (ties: the first listed), in O(replicas) rather than one scan per request: fill the
    least loaded up to a common level, then the first ones at that level get one more."""
    group = [i for i, r in enumerate(replicas) if r.warm] or list(range(len(replicas)))
    loads = {i: replicas[i].running + replicas[i].queued for i in group}
    ordered = sorted(loads.values())
    level, below, left = ordered[0], 0, excess
    while True:
        while below < len(ordered) and ordered[below] <= level:
            below += 1
        if below < len(ordered) and (ordered[below] - level) * below <= left:
            left -= (ordered[below] - level) * below
            level = ordered[below]
            continue
        level, left = level + left // below, left % below
        break
    added: dict[int, int] = {}
    for i in group:  # in list order: the first ones at the level get the remainder
        if loads[i] <= level:
            extra = level - loads[i]
            if left > 0:
                extra, left = extra + 1, left - 1
            if extra:
                added[i] = extra
    return tuple(
        ReplicaLoad(r.running, r.queued + added[i], r.warm, r.start_remaining_s)
        if i in added
        else r
        for i, r in enumerate(replicas)
    )
