"""Serve-like autoscaling of one model deployment, as a pure function (state in, state out).

What Ray Serve's default policy (`ray.serve.autoscaling_policy`, Ray 2.5x) does with the
options `serve_app.builder.model_deployment_options` sets: each control-loop period it
averages the deployment's ongoing requests (running, queued at the replicas, waiting at
the handles) over the look-back period, wants `ceil(average / target_ongoing_requests)`
replicas within [min_replicas, max_replicas], and moves its target there only once
that wish has held for `upscale_delay_s` (up) or `downscale_delay_s` (down) of clock
time; a wish in the other direction, or none, starts the count again. Two special
cases, as in Serve: a deployment at zero replicas with requests waiting scales to one
at once (no delay), and it scales down to zero only from one replica.

The backtest runs the control loop every 0.5 s (Serve: every 0.1 s); the delays keep
their meaning in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from serve_app.policy.schema import ModelSpec

UPSCALE_DELAY_S = 0.5
DOWNSCALE_DELAY_S = 60.0
"""As `serve_app.builder.model_deployment_options` sets them."""
LOOK_BACK_S = 30.0
"""Serve's default `look_back_period_s`."""
CONTROL_PERIOD_S = 0.5


@dataclass(frozen=True, slots=True)
class ScalingBounds:
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    upscale_delay_s: float = UPSCALE_DELAY_S
    downscale_delay_s: float = DOWNSCALE_DELAY_S

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ScalingBounds:
        scaling = spec.autoscaling
        return cls(scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests)


@dataclass(frozen=True, slots=True)
class ScaleState:
    """The autoscaler's memory between two periods."""

    target: int
    """Replicas the deployment should have."""
    wish_since_s: float | None = None
    """When the present wish to move the target began (None: no wish)."""
    wish_up: bool = False


def desired_replicas(bounds: ScalingBounds, ongoing: float) -> int:
    """Replicas wanted for `ongoing` requests (averaged over the look-back), within bounds."""
    wanted = math.ceil(ongoing / bounds.target_ongoing_requests - 1e-9)
    return min(bounds.max_replicas, max(bounds.min_replicas, wanted))


def step(bounds: ScalingBounds, state: ScaleState, ongoing: float, now: float) -> ScaleState:
    """The autoscaler's state after one control-loop period at `now`."""
    target = state.target
    if target == 0:
        return ScaleState(1) if ongoing > 0 else ScaleState(0)
    wanted = desired_replicas(bounds, ongoing)
    if wanted == target:
        return ScaleState(target)
    up = wanted > target
    if not up and target > 1:
        wanted = max(1, wanted)  # to zero only from one replica
    since = state.wish_since_s if state.wish_since_s is not None and state.wish_up == up else now
    delay = bounds.upscale_delay_s if up else bounds.downscale_delay_s
    if now - since + 1e-9 >= delay:
        return ScaleState(wanted)
    return ScaleState(target, since, up)
