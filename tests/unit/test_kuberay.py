"""deploy/kuberay/rayservice.yaml: a KubeRay RayService with serve_config.yaml's Serve
config, the worker groups of cluster.yaml on instances that have what they ask for, and
the head's dashboard reachable by the KubeRay operator alone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import ray
import yaml

from tests.unit.test_cluster_yaml import INSTANCE_TYPES, cluster_config

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
INSTANCE_LABEL = "node.kubernetes.io/instance-type"


def _documents() -> dict[str, dict[str, Any]]:
    docs = list(yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")))
    return {doc["kind"]: doc for doc in docs}


def _service() -> dict[str, Any]:
    service = _documents()["RayService"]
    assert service["apiVersion"] == "ray.io/v1"
    return service


def _quantity_gib(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Gi|Mi)", text)
    assert match is not None, text
    number, unit = match.groups()
    return float(number) / (1024 if unit == "Mi" else 1)


def test_it_holds_a_rayservice_and_the_heads_network_policy() -> None:
    assert set(_documents()) == {"RayService", "NetworkPolicy"}
    assert _service()["metadata"]["name"] == "rtcts"


def test_the_serve_config_is_serve_config_yamls() -> None:
    serve_config = yaml.safe_load((ROOT / "serve_config.yaml").read_text(encoding="utf-8"))
    ours = yaml.safe_load(_service()["spec"]["serveConfigV2"])

    assert ours == {"applications": serve_config["applications"]}


def test_ray_and_the_image_are_the_installed_release() -> None:
    cluster = _service()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    dockerfile = (ROOT / "deploy" / "kuberay" / "Dockerfile").read_text(encoding="utf-8")
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert base == cluster_config()["docker"]["image"]
    assert base.startswith(f"rayproject/ray-llm:{ray.__version__}-")
    assert "'.[llm]'" in dockerfile


def _pods() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(group, group spec, pod spec) of the head and every worker group."""
    cluster = _service()["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    pods = [("head", head, head["template"]["spec"])]
    pods += [(g["groupName"], g, g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    return pods


def test_the_groups_are_cluster_yamls_node_types() -> None:
    node_types = cluster_config()["available_node_types"]
    assert {name for name, _, _ in _pods()} == set(node_types)
    for name, group, pod in _pods():
        node = node_types[name]
        assert pod["nodeSelector"][INSTANCE_LABEL] == node["node_config"]["InstanceType"]
        if name != "head":
            assert group["minReplicas"] == node["min_workers"]
            assert group["maxReplicas"] == node["max_workers"]
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_every_pod_fits_its_instance_and_takes_all_its_gpus() -> None:
    images = set()
    for name, _, pod in _pods():
        instance = INSTANCE_TYPES[pod["nodeSelector"][INSTANCE_LABEL]]
        (container,) = pod["containers"]
        images.add(container["image"])
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], name
        limits = resources["limits"]
        assert 0 < float(limits["cpu"]) < instance.vcpus, name
        assert 0 < _quantity_gib(limits["memory"]) < instance.memory_gib, name
        assert limits.get("nvidia.com/gpu", 0) == instance.gpus, name
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert len(images) == 1  # one image (Dockerfile) everywhere


def test_the_dashboard_is_for_the_operator_and_serve_for_everyone() -> None:
    policy = _documents()["NetworkPolicy"]["spec"]
    head_labels = _service()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert policy["podSelector"]["matchLabels"].items() <= head_labels["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    open_ports = [r for r in policy["ingress"] if "from" not in r]
    assert [p["port"] for r in open_ports for p in r["ports"]] == [8000]
    dashboard = [r for r in policy["ingress"] if any(p["port"] == 8265 for p in r.get("ports", []))]
    (rule,) = dashboard
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    own = [r for r in policy["ingress"] if "ports" not in r]
    (cluster_pods,) = own
    assert cluster_pods["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "rtcts"}}}
    ]
