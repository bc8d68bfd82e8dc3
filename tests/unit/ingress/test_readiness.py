"""The readiness rule (`GET /readyz`, `rtcts run`'s "serving"): what each model's state
lets through, and what the document says it waits for."""

from __future__ import annotations

from serve_app.ingress.readiness import assess, fresh, model_readiness
from serve_app.pricing.types import ModelLoad, ReplicaLoad

WARM = ReplicaLoad(0, 0, True, 0.0)


def cold(left_s: float) -> ReplicaLoad:
    return ReplicaLoad(0, 0, False, left_s)


def test_a_model_kept_running_must_have_a_warm_replica() -> None:
    starting = model_readiness(ModelLoad((cold(40.0), cold(12.5))), min_replicas=1)
    assert (starting.state, starting.ok, starting.start_remaining_s) == ("starting", False, 12.5)
    ready = model_readiness(ModelLoad((WARM, cold(60.0))), min_replicas=1)
    assert (ready.state, ready.ok, ready.warm_replicas, ready.starting_replicas) == (
        "ready",
        True,
        1,
        1,
    )
    nothing_yet = model_readiness(ModelLoad(()), min_replicas=1)
    assert (nothing_yet.state, nothing_yet.ok) == ("starting", False)


def test_a_model_that_may_scale_to_zero_is_never_waited_for() -> None:
    at_zero = model_readiness(ModelLoad(()), min_replicas=0)
    assert (at_zero.state, at_zero.ok, at_zero.start_remaining_s) == ("scaled_to_zero", True, None)
    scaling_up = model_readiness(ModelLoad((cold(170.0),)), min_replicas=0)
    assert (scaling_up.state, scaling_up.ok) == ("starting", True)


def test_a_failed_deployment_is_never_ready() -> None:
    failed = model_readiness(ModelLoad((WARM,), available=False), min_replicas=0)
    assert (failed.state, failed.ok) == ("failed", False)


def test_ready_needs_every_check_and_every_model() -> None:
    loads = {"small": ModelLoad((WARM,)), "mid": ModelLoad((cold(3.0),)), "big": ModelLoad(())}
    bounds = {"small": 1, "mid": 1, "big": 0}
    waiting = assess(loads, bounds, live_state=True, admission=True, billing=False)
    assert not waiting.ready
    assert waiting.waiting_for == ["billing", "mid"]
    document = waiting.document("v1")
    assert document["object"] == "rtcts.readiness"
    assert document["ready"] is False
    assert document["models"]["mid"]["start_remaining_s"] == 3.0
    assert document["models"]["big"]["state"] == "scaled_to_zero"

    loads["mid"] = ModelLoad((WARM,))
    ready = assess(loads, bounds, live_state=True, admission=True, billing=True)
    assert ready.ready
    assert ready.document("v1")["waiting_for"] == []


def test_checks_that_are_not_configured_are_not_waited_for() -> None:
    ready = assess(
        {"small": ModelLoad((WARM,))}, {"small": 1}, live_state=True, admission=None, billing=None
    )
    assert ready.ready
    assert ready.document("v1")["checks"] == {
        "live_state": True,
        "admission": None,
        "billing": None,
    }
    stale = assess(
        {"small": ModelLoad((WARM,))}, {"small": 1}, live_state=False, admission=None, billing=None
    )
    assert stale.waiting_for == ["live_state"]


def test_the_live_state_is_fresh_when_both_refreshes_are_recent() -> None:
    assert fresh((995.0, 999.0), now=1000.0)
    assert not fresh((0.0, 999.0), now=1000.0)  # never refreshed
    assert not fresh((980.0, 999.0), now=1000.0)  # the load is 20 s old
