"""What a model replica reports about itself, several times a second."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplicaReport:
    """Live load and recent health of one model replica.

    `reported_at` is the replica's wall clock (`time.time()`); the registry drops a
    replica whose last report is older than its expiry, so a dead replica stops
    counting within about a second.
    """

    model_id: str
    replica_id: str
    running: int
    queued: int
    warm: bool
    start_remaining_s: float
    reported_at: float
    mean_service_s: float | None = None
    """Mean request duration to expect now (`service_time_estimate`: the larger of the
    recent completed mean and what the running requests' ages imply)."""
    failure_rate: float = 0.0
    kv_cache_usage: float | None = None
    running_service_s: float | None = None
    """The running requests' part of `mean_service_s` alone (twice their mean age):
    what is running now, without the past; None when nothing runs."""
    app: str | None = None
    """The Serve application of the replica: the registry is one per Ray cluster, and an
    ingress counts only its own application's replicas (None: a report made inside the
    ingress itself, `models/direct.py`)."""


def of_app(reports: list[ReplicaReport], app: str) -> list[ReplicaReport]:
    """The reports of `app`'s replicas (and the ingress's own, `app` None): the registry
    is one per Ray cluster, and another application's replica of a model with the same
    id is not this application's capacity."""
    return [r for r in reports if r.app is None or r.app == app]
