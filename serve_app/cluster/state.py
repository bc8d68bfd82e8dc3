"""The live cluster state inside an ingress replica, refreshed in the background.

Never a remote call on the request path: two background tasks refresh replica load
from the registry (every 100 ms) and deployment states from the controller (every
second); `snapshot()` combines them with the exact in-flight counts of this ingress.
A failed refresh keeps the last good view (logged once per outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo
from serve_app.cluster.snapshot import ModelBase, Scaling, model_bases, model_load
from serve_app.pricing.types import ClusterSnapshot, ModelLoad

logger = logging.getLogger("rtcts.cluster")

LOAD_PERIOD_S = 0.1
REPLICA_PERIOD_S = 1.0


class ClusterState:
    """Live state of the models of one application, as seen by one ingress replica."""

    def __init__(
        self,
        scaling: Mapping[str, Scaling],
        fetch_reports: Callable[[], Awaitable[list[ReplicaReport]]],
        fetch_deployments: Callable[[], Awaitable[dict[str, DeploymentInfo]]],
        *,
        clock: Callable[[], float] = time.time,
        load_period_s: float = LOAD_PERIOD_S,
        replica_period_s: float = REPLICA_PERIOD_S,
        on_replicas: Callable[[ClusterSnapshot], None] | None = None,
    ) -> None:
        self._scaling = dict(scaling)
        self._fetch_reports = fetch_reports
        self._fetch_deployments = fetch_deployments
        self._clock = clock
        self._periods = (load_period_s, replica_period_s)
        self._on_replicas = on_replicas
        """Called with a fresh snapshot after each replica refresh (metrics)."""
        self._reports: list[ReplicaReport] = []
        self._last_seen: dict[str, float] = {}
        """Replica id -> time of its latest report ever seen: a replica that falls
        silent is lost (`snapshot.SILENT_S`). Kept while the controller lists it."""
        self._deployments: dict[str, DeploymentInfo] | None = None
        self._in_flight: Counter[str] = Counter()
        self._in_flight_s: defaultdict[str, float] = defaultdict(float)
        """Per model, the predicted service seconds of this ingress's in-flight requests."""
        self._cached: ClusterSnapshot | None = None
        self._bases: dict[str, ModelBase] | None = None
        """Per model, its load without the in-flight count, as of the last refresh."""
        self._loads: dict[str, ModelLoad] = {}
        self._stale: set[str] = set()
        """Models whose in-flight count changed since their `ModelLoad` was built."""
        self._reported: dict[str, int] = {}
        """Per model, the load the replicas reported in the cached snapshot, when known."""
        self._tasks: list[asyncio.Task[None]] = []
        self.refreshed_at = (0.0, 0.0)
        """Clock time of the last good load and replica refresh."""

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self._periods[0], self.refresh_load, "load")),
            loop.create_task(self._every(self._periods[1], self.refresh_replicas, "replicas")),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def refresh_load(self) -> None:
        self._reports = await self._fetch_reports()
        for report in self._reports:
            seen = self._last_seen.get(report.replica_id, 0.0)
            self._last_seen[report.replica_id] = max(seen, report.reported_at)
        self._cached = self._bases = None
        self.refreshed_at = (self._clock(), self.refreshed_at[1])

    async def refresh_replicas(self) -> None:
        self._deployments = await self._fetch_deployments()
        listed = {r.replica_id for d in self._deployments.values() for r in d.replicas}
        reporting = {r.replica_id for r in self._reports}
        for replica_id in self._last_seen.keys() - listed - reporting:
            del self._last_seen[replica_id]  # gone from the controller and the registry
        self._cached = self._bases = None
        self.refreshed_at = (self.refreshed_at[0], self._clock())
        if self._on_replicas is not None:
            self._on_replicas(self.snapshot())

    def begin(self, model_id: str, service_s: float = 0.0) -> None:
        """A request was sent to `model_id` (exact, immediate); `service_s` is how long
        it is predicted to hold a batch slot (`full_batch_service_s`), 0 if unknown."""
        self._in_flight[model_id] += 1
        self._in_flight_s[model_id] += service_s
        self._in_flight_changed(model_id, self._in_flight[model_id])

    def end(self, model_id: str, service_s: float = 0.0) -> None:
        """A request to `model_id` finished, however it ended (`service_s` as given to
        `begin`)."""
        self._in_flight[model_id] -= 1
        self._in_flight_s[model_id] -= service_s
        if not self._in_flight[model_id]:
            self._in_flight_s[model_id] = 0.0  # no float residue once nothing is in flight
        self._in_flight_changed(model_id, self._in_flight[model_id] + 1)

    def _in_flight_changed(self, model_id: str, highest: int) -> None:
        """The snapshot uses this ingress's in-flight count only where it exceeds what the
        replicas reported; below that, a begin or end changes nothing and the cached
        snapshot stays (a busy model's requests do not each rebuild it). Above it, only
        this model's `ModelLoad` is rebuilt, from its base of the last refresh."""
        reported = self._reported.get(model_id)
        if reported is None or highest > reported:
            self._cached = None
            self._stale.add(model_id)

    def snapshot(self) -> ClusterSnapshot:
        if self._cached is not None:
            return self._cached
        if self._bases is None:
            self._bases = model_bases(
                self._scaling, self._reports, self._deployments, self._clock(), self._last_seen
            )
            stale: Iterable[str] = self._scaling
        else:
            stale = self._stale & self._scaling.keys()
        for model_id in stale:
            in_flight = self._in_flight[model_id]
            load = model_load(
                self._bases[model_id],
                self._scaling[model_id],
                in_flight,
                self._in_flight_s[model_id],
            )
            self._loads[model_id] = load
            total = sum(r.running + r.queued for r in load.replicas)
            # total = max(reported, in_flight): exact only when in_flight is below it.
            if total > in_flight or in_flight == 0:
                self._reported[model_id] = total
            else:
                self._reported.pop(model_id, None)
        self._stale = set()
        self._cached = ClusterSnapshot(dict(self._loads))
        return self._cached

    def view(self) -> dict[str, Any]:
        """Raw state per model, for `/v1/cluster`."""
        reports: dict[str, list[ReplicaReport]] = {}
        for report in self._reports:
            reports.setdefault(report.model_id, []).append(report)
        result: dict[str, Any] = {}
        for model_id in self._scaling:
            deployment = (self._deployments or {}).get(model_id)
            result[model_id] = {
                "status": deployment.status if deployment else "UNKNOWN",
                "target_replicas": deployment.target_replicas if deployment else None,
                "running_replicas": deployment.running if deployment else None,
                "starting_replicas": deployment.starting if deployment else None,
                "in_flight_here": self._in_flight[model_id],
                "in_flight_service_s": round(self._in_flight_s[model_id], 6),
                "replicas": [
                    {
                        "replica_id": r.replica_id,
                        "warm": r.warm,
                        "running": r.running,
                        "queued": r.queued,
                        "start_remaining_s": round(r.start_remaining_s, 3),
                        "mean_service_s": r.mean_service_s,
                        "failure_rate": r.failure_rate,
                        "kv_cache_usage": r.kv_cache_usage,
                        "age_s": round(max(0.0, self._clock() - r.reported_at), 3),
                    }
                    for r in sorted(reports.get(model_id, []), key=lambda r: r.replica_id)
                ],
            }
        return result

    async def _every(
        self, period_s: float, refresh: Callable[[], Awaitable[None]], what: str
    ) -> None:
        failing = False
        while True:
            try:
                await refresh()
                if failing:
                    logger.info("cluster %s refresh recovered", what)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:
                    logger.warning(
                        "cluster %s refresh failed; keeping the last view", what, exc_info=True
                    )
                failing = True
            await asyncio.sleep(period_s)
