"""`parse_instance_details` on the shape Ray Serve 2.60's controller returns."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from serve_app.cluster.serve_adapter import DeploymentInfo, ReplicaInfo, parse_instance_details

APP = "rtcts"


def _replica(replica_id: str, state: Any, start_time_s: float = 1.0) -> dict[str, Any]:
    """A replica as `ReplicaDetails.model_dump()` gives it (node and actor fields too)."""
    return {
        "node_id": "node-1",
        "node_ip": "10.0.0.1",
        "node_instance_id": None,
        "actor_id": f"actor-{replica_id}",
        "actor_name": f"SERVE_REPLICA::{APP}#llama#{replica_id}",
        "worker_id": f"worker-{replica_id}",
        "log_file_path": f"/serve/replica_{APP}_llama_{replica_id}.log",
        "replica_id": replica_id,
        "state": state,
        "pid": 4242,
        "start_time_s": start_time_s,
    }


def _details(deployments: dict[str, Any], app: str = APP) -> dict[str, Any]:
    """`ServeInstanceDetails` as a dict: one application with the given deployments."""
    return {
        "controller_info": {"node_id": "node-1", "actor_name": "SERVE_CONTROLLER_ACTOR"},
        "proxy_location": "EveryNode",
        "proxies": {},
        "applications": {
            app: {
                "name": app,
                "route_prefix": "/",
                "status": "RUNNING",
                "message": "",
                "last_deployed_time_s": 1.0,
                "deployments": deployments,
            }
        },
        "target_capacity": None,
    }


def _deployment(
    name: str, replicas: list[dict[str, Any]], target: int, status: Any = "HEALTHY"
) -> dict[str, Any]:
    return {
        "name": name,
        "status": status,
        "status_trigger": "CONFIG_UPDATE_COMPLETED",
        "message": "",
        "deployment_config": {"name": name},
        "target_num_replicas": target,
        "required_resources": {"CPU": 1},
        "replicas": replicas,
    }


LLAMA = _deployment(
    "llama",
    [
        _replica("abc", "RUNNING", 100.0),
        _replica("def", "STARTING", 150.0),
        _replica("x", "STOPPING", 50.0),
    ],
    target=2,
)


def test_deployments_of_the_app_are_parsed() -> None:
    parsed = parse_instance_details(_details({"llama": LLAMA}), APP)
    assert parsed == {
        "llama": DeploymentInfo(
            name="llama",
            status="HEALTHY",
            target_replicas=2,
            replicas=(ReplicaInfo("abc", "RUNNING", 100.0), ReplicaInfo("def", "STARTING", 150.0)),
            gone=frozenset({"x"}),
        )
    }


def test_stopping_and_stopped_replicas_are_left_out() -> None:
    deployment = _deployment(
        "llama", [_replica("a", "STOPPING"), _replica("b", "STOPPED")], target=0
    )
    parsed = parse_instance_details(_details({"llama": deployment}), APP)["llama"]
    assert parsed.replicas == ()
    assert parsed.gone == {"a", "b"}


@pytest.mark.parametrize("state", ["STARTING", "UPDATING", "RECOVERING", "RUNNING"])
def test_live_replica_states_are_kept(state: str) -> None:
    deployment = _deployment("llama", [_replica("a", state)], target=1)
    (replica,) = parse_instance_details(_details({"llama": deployment}), APP)["llama"].replicas
    assert replica.state == state


def test_running_and_starting_counts() -> None:
    info = parse_instance_details(_details({"llama": LLAMA}), APP)["llama"]
    assert (info.running, info.starting) == (1, 1)


def test_updating_and_recovering_count_as_starting() -> None:
    deployment = _deployment(
        "llama",
        [_replica("a", "RUNNING"), _replica("b", "UPDATING"), _replica("c", "RECOVERING")],
        target=3,
    )
    info = parse_instance_details(_details({"llama": deployment}), APP)["llama"]
    assert (info.running, info.starting) == (1, 2)


def test_enum_member_states_are_read_by_value() -> None:
    from ray.serve._private.common import DeploymentStatus, ReplicaState

    deployment = _deployment(
        "llama",
        [_replica("a", ReplicaState.RUNNING), _replica("b", ReplicaState.STOPPING)],
        target=1,
        status=DeploymentStatus.UPSCALING,
    )
    info = parse_instance_details(_details({"llama": deployment}), APP)["llama"]
    assert info.status == "UPSCALING"
    assert info.replicas == (ReplicaInfo("a", "RUNNING", 1.0),)


def test_enum_names_as_text_are_read_as_the_state() -> None:
    deployment = _deployment(
        "llama",
        [_replica("a", "ReplicaState.RUNNING")],
        target=1,
        status="DeploymentStatus.HEALTHY",
    )
    info = parse_instance_details(_details({"llama": deployment}), APP)["llama"]
    assert (info.status, info.replicas[0].state) == ("HEALTHY", "RUNNING")


def test_several_deployments_and_a_failed_one() -> None:
    failed = _deployment("qwen", [], target=1, status="DEPLOY_FAILED")
    parsed = parse_instance_details(_details({"llama": LLAMA, "qwen": failed}), APP)
    assert set(parsed) == {"llama", "qwen"}
    assert (parsed["qwen"].status, parsed["qwen"].replicas) == ("DEPLOY_FAILED", ())


def test_missing_start_time_reads_as_zero() -> None:
    replica = _replica("a", "STARTING")
    del replica["start_time_s"]
    deployment = _deployment("llama", [replica], target=1)
    info = parse_instance_details(_details({"llama": deployment}), APP)["llama"]
    assert info.replicas == (ReplicaInfo("a", "STARTING", 0.0),)


def test_other_applications_are_ignored() -> None:
    details = _details({"llama": LLAMA}, app="someone-else")
    assert parse_instance_details(details, APP) == {}


@pytest.mark.parametrize(
    "details",
    [{}, {"applications": {}}, {"applications": None}, _details({})],
    ids=["no-applications-key", "no-applications", "applications-none", "no-deployments"],
)
def test_missing_app_or_deployments_give_nothing(details: dict[str, Any]) -> None:
    assert parse_instance_details(details, APP) == {}


def test_real_ray_schema_models_dump_to_a_shape_we_parse() -> None:
    from ray.serve._private.common import (
        DeploymentStatus,
        DeploymentStatusTrigger,
        ReplicaState,
    )
    from ray.serve.schema import DeploymentDetails, DeploymentSchema, ReplicaDetails

    def replica(replica_id: str, state: ReplicaState, start: float) -> ReplicaDetails:
        return ReplicaDetails(
            replica_id=replica_id,
            state=state,
            start_time_s=start,
            actor_name=f"SERVE_REPLICA::{APP}#llama#{replica_id}",
            pid=4242,
        )

    deployment = DeploymentDetails(
        name="llama",
        status=DeploymentStatus.UPSCALING,
        status_trigger=DeploymentStatusTrigger.AUTOSCALING,
        message="",
        deployment_config=DeploymentSchema(name="llama"),
        target_num_replicas=3,
        required_resources={"CPU": 1},
        replicas=[
            replica("abc", ReplicaState.RUNNING, 100.0),
            replica("def", ReplicaState.STARTING, 150.0),
            replica("x", ReplicaState.STOPPING, 50.0),
        ],
    )
    expected = DeploymentInfo(
        name="llama",
        status="UPSCALING",
        target_replicas=3,
        replicas=(ReplicaInfo("abc", "RUNNING", 100.0), ReplicaInfo("def", "STARTING", 150.0)),
        gone=frozenset({"x"}),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Ray's DEFAULT sentinels warn when serialized
        python_dump = deployment.model_dump()  # enum members, as the controller returns
        json_dump = deployment.model_dump(mode="json")  # plain strings
    for dumped in (python_dump, json_dump):
        parsed = parse_instance_details(
            {"applications": {APP: {"deployments": {"llama": dumped}}}}, APP
        )
        assert parsed == {"llama": expected}
