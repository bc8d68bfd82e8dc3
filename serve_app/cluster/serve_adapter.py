"""The one place rtcts touches private Ray Serve APIs: replica states and targets.

`serve.status()` gives replica states but no autoscaling target and takes ≈8 ms with a
blocking call; the controller's instance details give both in ≈1.7 ms and can be
awaited (both figures as issue 3 measured them). They are private (Ray 2.60), so they
stay behind this adapter, and `parse_instance_details` is unit-tested on the shape Ray
returns. If Ray changes the shape, only this module changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray

SERVE_CONTROLLER_NAME = "SERVE_CONTROLLER_ACTOR"
SERVE_NAMESPACE = "serve"
LIVE_STATES = frozenset({"STARTING", "UPDATING", "RECOVERING", "RUNNING"})


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    replica_id: str
    state: str
    """RUNNING, STARTING, UPDATING or RECOVERING (stopping ones are left out)."""
    start_time_s: float
    """Wall-clock time the replica actor started (0 while not yet scheduled)."""


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    name: str
    status: str
    target_replicas: int
    replicas: tuple[ReplicaInfo, ...]
    gone: frozenset[str] = frozenset()
    """Replicas stopping or stopped: their last reports must not count as capacity."""

    @property
    def running(self) -> int:
        return sum(1 for r in self.replicas if r.state == "RUNNING")

    @property
    def starting(self) -> int:
        return len(self.replicas) - self.running


def parse_instance_details(details: Mapping[str, Any], app_name: str) -> dict[str, DeploymentInfo]:
    """Deployments of `app_name` from the controller's instance details (a dict)."""
    app = (details.get("applications") or {}).get(app_name) or {}
    result: dict[str, DeploymentInfo] = {}
    for name, deployment in (app.get("deployments") or {}).items():
        replicas = tuple(
            ReplicaInfo(
                replica_id=str(r["replica_id"]),
                state=_state(r.get("state")),
                start_time_s=float(r.get("start_time_s") or 0.0),
            )
            for r in deployment.get("replicas") or ()
            if _state(r.get("state")) in LIVE_STATES
        )
        listed = [
            *(deployment.get("replicas") or ()),
            *(deployment.get("recent_dead_replicas") or ()),
        ]
        result[name] = DeploymentInfo(
            name=name,
            status=_state(deployment.get("status")),
            target_replicas=int(deployment.get("target_num_replicas") or 0),
            replicas=replicas,
            gone=frozenset(
                str(r["replica_id"]) for r in listed if _state(r.get("state")) not in LIVE_STATES
            ),
        )
    return result


def _state(value: Any) -> str:
    """Enum members and plain strings alike ('ReplicaState.RUNNING' -> 'RUNNING')."""
    text = str(getattr(value, "value", value) or "")
    return text.rsplit(".", 1)[-1]


class ServeControllerAdapter:
    """Reads deployment states of one application from the Serve controller."""

    def __init__(self, app_name: str) -> None:
        self._app_name = app_name
        self._controller: Any = None

    async def deployments(self) -> dict[str, DeploymentInfo]:
        if self._controller is None:
            self._controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        details = await self._controller.get_serve_instance_details.remote()
        return parse_instance_details(details, self._app_name)
