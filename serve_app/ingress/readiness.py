"""When the app is ready: the rule behind `GET /readyz` and `rtcts run`'s "serving" (pure).

Ready means a request sent now is served without waiting on start-up:

- the live state is fresh: replica load and deployment states have both been
  refreshed, each within `FRESH_S` (the pricing sees the cluster as it is);
- admission answers, where Redis is configured (the gate sees Redis up);
- billing runs, where it is configured: every shard's aggregator runs its loop
  (Stripe set up, the meter stream read);
- every model is usable: a model the policy keeps running (`min_replicas` >= 1) has a
  warm replica; a model that may scale to zero (`min_replicas` 0) is never waited
  for, at zero or starting, since a request to it waits for a cold start that the
  pricing already prices (and `/v1/cluster` shows as starting). So every route alias
  has a model that takes requests at once, or one the policy chose to start on demand.

A failed deployment is not ready. The rule is not sticky: a model that loses its last
warm replica makes the app unready until another one is warm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serve_app.pricing.types import NO_REPLICAS, ModelLoad

FRESH_S = 10.0
"""The live state counts as fresh while both refreshes are younger than this."""

READY, STARTING, SCALED_TO_ZERO, FAILED = "ready", "starting", "scaled_to_zero", "failed"


@dataclass(frozen=True, slots=True)
class ModelReadiness:
    state: str
    """ready (a warm replica), starting, scaled_to_zero or failed."""
    ok: bool
    """Whether the model lets the app be ready (see the module docstring)."""
    warm_replicas: int
    starting_replicas: int
    start_remaining_s: float | None
    """Policy seconds until the first starting replica is warm; None if none starts."""
    min_replicas: int

    def document(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "ok": self.ok,
            "warm_replicas": self.warm_replicas,
            "starting_replicas": self.starting_replicas,
            "start_remaining_s": None
            if self.start_remaining_s is None
            else round(self.start_remaining_s, 3),
            "min_replicas": self.min_replicas,
        }


def model_readiness(load: ModelLoad, min_replicas: int) -> ModelReadiness:
    warm = sum(1 for r in load.replicas if r.warm)
    starting = [r.start_remaining_s for r in load.replicas if not r.warm]
    remaining = min(starting) if starting else None
    if not load.available:
        state = FAILED
    elif warm:
        state = READY
    elif starting:
        state = STARTING
    else:
        state = SCALED_TO_ZERO if min_replicas == 0 else STARTING
    ok = state == READY or (state != FAILED and min_replicas == 0)
    return ModelReadiness(state, ok, warm, len(starting), remaining, min_replicas)


@dataclass(frozen=True, slots=True)
class Readiness:
    models: Mapping[str, ModelReadiness]
    live_state: bool
    admission: bool | None
    """None: no Redis configured, nothing to wait for."""
    billing: bool | None
    """None: no billing configured, nothing to wait for."""

    @property
    def waiting_for(self) -> list[str]:
        """What is not ready yet, by name: checks first, then models in policy order."""
        checks = {
            "live_state": self.live_state,
            "admission": self.admission,
            "billing": self.billing,
        }
        waiting = [name for name, ok in checks.items() if ok is False]
        return waiting + [model_id for model_id, m in self.models.items() if not m.ok]

    @property
    def ready(self) -> bool:
        return not self.waiting_for

    def document(self, policy_version: str) -> dict[str, Any]:
        """The JSON document of `GET /readyz` (200 when ready, else 503)."""
        return {
            "object": "rtcts.readiness",
            "ready": self.ready,
            "policy_version": policy_version,
            "waiting_for": self.waiting_for,
            "checks": {
                "live_state": self.live_state,
                "admission": self.admission,
                "billing": self.billing,
            },
            "models": {model_id: m.document() for model_id, m in self.models.items()},
        }


def assess(
    loads: Mapping[str, ModelLoad],
    min_replicas: Mapping[str, int],
    *,
    live_state: bool,
    admission: bool | None,
    billing: bool | None,
) -> Readiness:
    """The readiness of the models in `min_replicas` (policy order) and of the checks."""
    models = {
        model_id: model_readiness(loads.get(model_id, NO_REPLICAS), bound)
        for model_id, bound in min_replicas.items()
    }
    return Readiness(models, live_state, admission, billing)


def fresh(refreshed_at: tuple[float, float], now: float) -> bool:
    """Whether both refreshes of the live state happened, each within `FRESH_S`."""
    return all(at > 0 and now - at < FRESH_S for at in refreshed_at)
