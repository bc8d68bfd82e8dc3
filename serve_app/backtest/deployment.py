"""One model deployment in simulated time: its replicas, Serve-like routing and
autoscaling, and the `ModelLoad` the pricing core reads.

- **Routing.** A request goes to the warm replica with the fewest ongoing requests
  (what Serve's power-of-two router tends to), ties to the oldest, among those below
  `max_ongoing_requests` = 2 B (as `serve_app.builder` sets it); when none has room
  (or none is warm yet) it waits at the handle, first come first served, and goes to
  the first replica that gets room.
- **Autoscaling.** Every control period the deployment's ongoing requests (handle
  included) are sampled; their mean over the look-back feeds `autoscale.step`. A
  higher target adds cold replicas at once; a lower one removes starting replicas
  first, then the least busy warm ones, which stop taking requests and are removed
  (and stop costing) once their last request ends.
- **Live state** (`load`): what `serve_app/cluster/snapshot.py` builds from replica
  reports, without their delay: each live replica's slots and queue, warm or starting
  with its start left; requests at the handle queued on the least loaded replicas; a
  scale-up the load calls for (or the target already set) as cold replicas with the
  full cold start; the recent failure rate and mean service time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from serve_app.backtest.autoscale import LOOK_BACK_S, ScaleState, ScalingBounds, step
from serve_app.backtest.replica import EventQueue, Job, Replica
from serve_app.pricing.book import ModelProfile
from serve_app.pricing.types import ModelLoad, ReplicaLoad

EWMA_WEIGHT = 0.02
"""Weight of the newest request in the recent failure rate and mean service time."""

ReplicaChange = Callable[[str, float, int], None]
"""Called with (model id, time, replicas paid for from then on) whenever that changes."""


class Deployment:
    """A model's replicas, handle queue and autoscaler."""

    def __init__(
        self,
        profile: ModelProfile,
        bounds: ScalingBounds,
        events: EventQueue,
        done: Callable[[Job, float], None],
        on_replicas: ReplicaChange,
        control_period_s: float,
    ) -> None:
        self.profile = profile
        self.bounds = bounds
        self.events = events
        self._done = done
        self._on_replicas = on_replicas
        self.max_ongoing = 2 * profile.max_concurrent_sequences
        self.replicas: list[Replica] = []
        """Live replicas that take requests (warm or starting), oldest first."""
        self.draining: list[Replica] = []
        self.handle: deque[Job] = deque()
        self.ongoing = 0
        """Requests routed to this model and not ended (handle included)."""
        self.scale = ScaleState(bounds.min_replicas)
        self._samples: deque[int] = deque(maxlen=max(1, round(LOOK_BACK_S / control_period_s)))
        self._sample_sum = 0
        self.failure_rate = 0.0
        self.mean_service_s: float | None = None
        self.intervals: list[tuple[float, float]] = []
        """(created, removed) of every replica that has been removed."""
        self.peak_replicas = 0
        self._load: ModelLoad | None = None
        self._cold = 0
        self._paid = 0

    # -- replicas --------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The deployment as Serve deploys it: `min_replicas` replicas, already warm."""
        for _ in range(self.bounds.min_replicas):
            self.replicas.append(Replica(self.profile, self.events, now, self._end, warm=True))
        self._paid_changed(now)

    def _add_replica(self, now: float) -> None:
        self.replicas.append(Replica(self.profile, self.events, now, self._end))
        self._cold += 1
        self._paid_changed(now)

    def replica_warm(self, replica: Replica, now: float) -> None:
        if replica.removed_s is not None or replica.draining:
            return
        replica.became_warm()
        self._cold -= 1
        self._load = None
        self._pull(replica, now)

    def _remove(self, replica: Replica, now: float) -> None:
        replica.removed_s = now
        self.intervals.append((replica.created_s, now))
        self._paid_changed(now)

    def _paid_changed(self, now: float) -> None:
        self._paid = len(self.replicas) + len(self.draining)
        self.peak_replicas = max(self.peak_replicas, self._paid)
        self._load = None
        self._on_replicas(self.profile.id, now, self._paid)

    def close(self, now: float) -> None:
        """End of the backtest: every replica stops costing at `now`."""
        for replica in [*self.replicas, *self.draining]:
            self._remove(replica, now)
        self.replicas, self.draining = [], []

    # -- requests --------------------------------------------------------------------------

    def below_concurrency_limit(self) -> bool:
        """Fewer requests in flight than a full batch on every replica its quota allows
        (`max_replicas` × B): the static limit a gateway sets in front of it."""
        return self.ongoing < self.bounds.max_replicas * self.profile.max_concurrent_sequences

    def route(self, job: Job, now: float) -> None:
        self.ongoing += 1
        self._load = None
        if self.handle:
            self.handle.append(job)
            return
        best: Replica | None = None
        least = self.max_ongoing
        for replica in self.replicas:
            if replica.warm:
                ongoing = replica.slots_used + len(replica.queue)
                if ongoing < least:
                    best, least = replica, ongoing
        if best is None:
            self.handle.append(job)
            return
        best.admit(job, now)

    def _pull(self, replica: Replica, now: float) -> None:
        while self.handle and replica.ongoing < self.max_ongoing:
            replica.admit(self.handle.popleft(), now)

    def _end(self, job: Job, now: float) -> None:
        self.ongoing -= 1
        self._load = None
        w = EWMA_WEIGHT
        self.failure_rate += w * ((1.0 if job.failed else 0.0) - self.failure_rate)
        service_s = now - job.start_s
        self.mean_service_s = (
            service_s
            if self.mean_service_s is None
            else self.mean_service_s + w * (service_s - self.mean_service_s)
        )
        replica = job.replica
        assert replica is not None
        if replica.draining:
            if replica.ongoing == 0:
                self.draining.remove(replica)
                self._remove(replica, now)
        elif self.handle:
            self._pull(replica, now)
        self._done(job, now)

    # -- autoscaling -----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """One control period: sample the load, step the autoscaler, apply its target."""
        samples = self._samples
        if len(samples) == samples.maxlen:
            self._sample_sum -= samples[0]
        samples.append(self.ongoing)
        self._sample_sum += self.ongoing
        self.scale = step(self.bounds, self.scale, self._sample_sum / len(samples), now)
        target = self.scale.target
        while len(self.replicas) < target:
            self._add_replica(now)
        while len(self.replicas) > target:
            self._retire(now)

    def _retire(self, now: float) -> None:
        starting = [r for r in self.replicas if not r.warm]
        replica = (
            starting[-1] if starting else min(reversed(self.replicas), key=lambda r: r.ongoing)
        )
        self.replicas.remove(replica)
        if not replica.warm:
            self._cold -= 1
        if replica.ongoing == 0:
            self._remove(replica, now)
        else:
            replica.draining = True
            self.draining.append(replica)
            self._paid_changed(now)

    # -- live state ------------------------------------------------------------------------

    def load(self, now: float) -> ModelLoad:
        """The pricing core's view of this model now (cached until something changes)."""
        if self._load is not None and not self._cold:
            return self._load
        replicas = [r.view(now) for r in self.replicas]
        bounds = self.bounds
        wanted = min(
            bounds.max_replicas,
            max(
                bounds.min_replicas,
                self.scale.target,
                math.ceil(self.ongoing / bounds.target_ongoing_requests - 1e-9),
            ),
        )
        replicas += [ReplicaLoad(0, 0, False, self.profile.cold_start_s)] * (wanted - len(replicas))
        if self.handle and replicas:
            replicas = _queue_on_least_loaded(replicas, len(self.handle))
        self._load = ModelLoad(
            replicas=tuple(replicas),
            failure_rate=self.failure_rate,
            mean_service_s=self.mean_service_s,
        )
        return self._load


def _queue_on_least_loaded(replicas: list[ReplicaLoad], count: int) -> list[ReplicaLoad]:
    """`count` more requests queued one by one on the least loaded replica, warm ones
    first (ties: the first listed), by filling the lowest up to a common level."""
    group = [i for i, r in enumerate(replicas) if r.warm] or list(range(len(replicas)))
    loads = sorted((replicas[i].running + replicas[i].queued, i) for i in group)
    level, left, k = loads[0][0], count, 1
    while k < len(loads) and (loads[k][0] - level) * k <= left:
        left -= (loads[k][0] - level) * k
        level = loads[k][0]
        k += 1
    level, extra = level + left // k, left % k
    added: dict[int, int] = {}
    for load, i in sorted(loads[:k], key=lambda li: li[1]):
        more = level - load + (1 if extra > 0 else 0)
        extra -= 1 if extra > 0 else 0
        if more:
            added[i] = more
    out = list(replicas)
    for i, more in added.items():
        r = out[i]
        out[i] = ReplicaLoad(r.running, r.queued + more, r.warm, r.start_remaining_s)
    return out
