"""A model replica's load reports to the registry, every `period_s`, from its first line.

`ReplicaReporter` keeps what a replica knows of itself besides its engine's figures:
the requests in flight (with their start times), the recent service times and
failures (`ServiceStats`), warmth and the progress of the cold start, and sends a
`ReplicaReport` built from them and from the engine's `LoadReport` (the `load`
callable) with `send`: to the registry actor from a model replica
(`registry_sends()`), to the ingress's own table for a model the ingress calls itself
(`direct.py`). Reports speak policy seconds: a simulation at `time_scale` 0.1 runs 10x
faster, and a cold start shortened by `cold_start_scale` counts down the policy's full
`cold_start_s`.

Used by the model deployment (`deployment.py`), the Ray Serve LLM deployment
(`ray_llm/server.py`) and the in-ingress upstream (`direct.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from serve_app.cluster.reports import ReplicaReport
from serve_app.models.backend import LoadReport, RequestRejected
from serve_app.models.stats import (
    ServiceStats,
    running_service_estimate,
    service_time_estimate,
)

__all__ = ["REPORT_PERIOD_S", "ReplicaReporter", "registry_sends"]

logger = logging.getLogger("rtcts.models")

REPORT_PERIOD_S = 0.1


class ReplicaReporter:
    """Live state of one replica, pushed where `send` puts it (fire and forget)."""

    def __init__(
        self,
        *,
        model_id: str,
        replica_id: str,
        send: Callable[[ReplicaReport], object],
        withdraw: Callable[[str], object],
        load: Callable[[], LoadReport],
        cold_start_s: float,
        time_scale: float = 1.0,
        cold_start_scale: float = 1.0,
        period_s: float = REPORT_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        app: str | None = None,
    ) -> None:
        self._app = app
        self._model_id = model_id
        self._replica_id = replica_id
        self._send = send
        self._withdraw = withdraw
        self._load = load
        self._cold_start_s = cold_start_s
        self._time_scale = time_scale or 1.0
        self._cold_start_scale = cold_start_scale or 1.0
        self._period_s = period_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._created = clock()
        self._warm = False
        self._stats = ServiceStats()
        self._running: dict[str, float] = {}
        """Start time of each request in this replica, by request id."""
        self._task: asyncio.Task[None] | None = None

    @property
    def inflight(self) -> int:
        """Requests this replica is serving now (queued in its engine or running)."""
        return len(self._running)

    def start(self) -> None:
        """Report now and every `period_s` (needs a running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._report_forever())

    def warm(self) -> None:
        """The engine has started: the replica serves."""
        self._warm = True
        self.report()

    def healthy(self) -> bool:
        """False once the reporting task died of an error (the replica should restart)."""
        task = self._task
        return task is None or not task.done() or task.cancelled()

    def stop(self) -> None:
        """Stop reporting and take this replica off the table it reports to."""
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            self._withdraw(self._replica_id)

    @contextlib.contextmanager
    def serving(self, request_id: str) -> Iterator[None]:
        """Count one request while it runs, and record how it ended.

        A cancel (the client left) is no failure of the model: not recorded, so a tenant
        who hangs up cannot raise the failure rate everyone's cost carries; neither is
        a request the engine refused as invalid (`RequestRejected`, the client's)."""
        started = self._clock()
        self._running[request_id] = started
        outcome: bool | None = None
        try:
            yield
            outcome = True
        except RequestRejected:
            raise
        except Exception:
            outcome = False
            raise
        finally:
            self._running.pop(request_id, None)
            if outcome is not None:
                self._stats.record(outcome, self._clock() - started)

    def report(self) -> None:
        """Send one report built from the engine's load and this replica's own figures."""
        load = self._load()
        warm = self._warm and load.warm
        scale = self._time_scale
        start_remaining = 0.0
        if not warm:
            elapsed = (self._clock() - self._created) / (scale * self._cold_start_scale)
            start_remaining = max(0.0, self._cold_start_s - elapsed)
        now = self._clock()
        ages = [now - t for t in self._running.values()]
        service_s = service_time_estimate(self._stats.mean_service_s, ages)
        running_s = running_service_estimate(ages)
        self._send(
            ReplicaReport(
                model_id=self._model_id,
                replica_id=self._replica_id,
                running=load.running,
                queued=load.queued,
                warm=warm,
                start_remaining_s=start_remaining,
                reported_at=self._wall_clock(),
                mean_service_s=None if service_s is None else service_s / scale,
                failure_rate=self._stats.failure_rate,
                kv_cache_usage=load.kv_cache_usage,
                running_service_s=None if running_s is None else running_s / scale,
                app=self._app,
            )
        )

    async def _report_forever(self) -> None:
        while True:
            try:
                self.report()
            except Exception:  # a registry hiccup must not kill the replica
                logger.warning("load report failed", exc_info=True)
            await asyncio.sleep(self._period_s)


def registry_sends() -> tuple[Callable[[ReplicaReport], object], Callable[[str], object]]:
    """`send` and `withdraw` to the cluster's load registry actor (in a model replica)."""
    from serve_app.cluster.registry import get_or_create_registry

    registry = get_or_create_registry()
    return registry.report.remote, registry.forget.remote
