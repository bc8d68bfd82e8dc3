"""The load registry: a small named Ray actor that model replicas push their load to.

Replicas push a `ReplicaReport` every 100 ms (fire and forget); each ingress replica
pulls the whole table every 100 ms in the background, one call (≈0.6 ms, as issue 3
measured). Nothing is called on the request path. The actor holds only soft state: if
it dies, Ray restarts it and the next round of pushes rebuilds the table within 100 ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray

from serve_app.cluster.reports import ReplicaReport

REGISTRY_NAME = "rtcts-load-registry"
REGISTRY_NAMESPACE = "rtcts"
REPORT_EXPIRY_S = 1.5
"""A replica silent for this long is treated as gone."""


class LoadTable:
    """The registry's state, kept apart from Ray so it can be unit-tested."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._reports: dict[str, ReplicaReport] = {}

    def report(self, report: ReplicaReport) -> None:
        self._reports[report.replica_id] = report

    def forget(self, replica_id: str) -> None:
        self._reports.pop(replica_id, None)

    def snapshot(self) -> list[ReplicaReport]:
        """Reports fresher than the expiry; expired ones are dropped."""
        oldest = self._clock() - REPORT_EXPIRY_S
        expired = [rid for rid, r in self._reports.items() if r.reported_at < oldest]
        for replica_id in expired:
            del self._reports[replica_id]
        return list(self._reports.values())


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class LoadRegistry:
    """Ray actor wrapper of `LoadTable`."""

    def __init__(self) -> None:
        self._table = LoadTable()

    def report(self, report: ReplicaReport) -> None:
        self._table.report(report)

    def forget(self, replica_id: str) -> None:
        self._table.forget(replica_id)

    def snapshot(self) -> list[ReplicaReport]:
        return self._table.snapshot()


def get_or_create_registry() -> Any:
    """The cluster's one registry actor (created on first use, detached, restarted by Ray)."""
    return LoadRegistry.options(  # type: ignore[attr-defined]
        name=REGISTRY_NAME,
        namespace=REGISTRY_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote()
