"""cluster.yaml is a config Ray's cluster launcher accepts (its own schema and validator),
whose node types declare what their instance types have, that keeps Ray off Redis's
port and its dashboard (job submission: code execution) on the head's loopback."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instance:
    """An instance type as its cloud lists it."""

    vcpus: int
    memory_gib: int
    gpus: int = 0
    gpu: str | None = None
    """Ray's accelerator type of its GPUs."""


INSTANCE_TYPES = {  # AWS EC2's published specifications
    "m6i.2xlarge": Instance(vcpus=8, memory_gib=32),
    "g6.xlarge": Instance(vcpus=4, memory_gib=16, gpus=1, gpu="L4"),
    "p4de.24xlarge": Instance(vcpus=96, memory_gib=1152, gpus=8, gpu="A100-80G"),
    "p5.48xlarge": Instance(vcpus=192, memory_gib=2048, gpus=8, gpu="H100"),
}
POLICY_ACCELERATORS = {
    "NVIDIA L4": "L4",
    "NVIDIA A100 80GB": "A100-80G",
    "NVIDIA H100 80GB": "H100",
}
"""policies/default.yaml's accelerator names, as Ray's accelerator types."""


def cluster_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "cluster.yaml").read_text(encoding="utf-8"))
    return config


def test_rays_cluster_launcher_validates_it() -> None:
    # What `ray up` does before it calls the cloud: fill in the provider's defaults, then
    # check against ray/autoscaler/ray-schema.json and the node types' rules.
    validate_config(prepare_config(cluster_config()))


def test_the_validator_refuses_what_ray_up_would() -> None:
    config = cluster_config()
    unknown = {**copy.deepcopy(config), "head_node": {"InstanceType": "m6i.2xlarge"}}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(unknown))
    no_head = copy.deepcopy(config)
    no_head["head_node_type"] = "missing"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(no_head))


@pytest.mark.parametrize("name", sorted(cluster_config()["available_node_types"]))
def test_each_node_type_declares_what_its_instance_type_has(name: str) -> None:
    node = cluster_config()["available_node_types"][name]
    instance = INSTANCE_TYPES[node["node_config"]["InstanceType"]]
    resources = node["resources"]

    assert resources["CPU"] == instance.vcpus
    assert resources.get("GPU", 0) == instance.gpus
    accelerators = {k.split(":", 1)[1]: v for k, v in resources.items() if ":" in k}
    # Ray sets accelerator_type:<type> to 1 on a node with that GPU
    assert accelerators == ({instance.gpu: 1} if instance.gpu else {})
    assert "REPLACE" not in node["node_config"]["ImageId"]


def test_every_policy_accelerator_has_a_node_type_that_fits_a_replica() -> None:
    policy = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text(encoding="utf-8"))
    nodes = [
        INSTANCE_TYPES[n["node_config"]["InstanceType"]]
        for n in cluster_config()["available_node_types"].values()
    ]
    for model in policy["models"]:
        count, _, name = model["accelerator"].partition("x ")
        gpu = POLICY_ACCELERATORS[name]
        assert any(n.gpu == gpu and n.gpus >= int(count) for n in nodes), model["id"]


def test_ray_avoids_port_6379_and_runs_from_the_image() -> None:
    config = cluster_config()
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--port=6380" in head_start
    assert "6379" not in head_start
    assert all(":6380" in c for c in config["worker_start_ray_commands"] if "--address" in c)
    assert config["docker"]["image"].startswith("rayproject/ray-llm:")


def test_dashboard_listens_on_the_heads_loopback_only() -> None:
    config = cluster_config()
    head_start = " ".join(config["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head_start)
    assert hosts == ["127.0.0.1"], head_start
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert not any("0.0.0.0" in c or "::" in c for c in commands)
