"""cluster.yaml stays a valid Ray cluster config that keeps Ray off Redis's port and its
dashboard (job submission: code execution) on the head's loopback."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_parses_and_ray_avoids_port_6379() -> None:
    text = (ROOT / "cluster.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    assert config["head_node_type"] in config["available_node_types"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--port=6380" in head_start
    assert "6379" not in head_start
    assert all(":6380" in c for c in config["worker_start_ray_commands"] if "--address" in c)


def test_dashboard_listens_on_the_heads_loopback_only() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text(encoding="utf-8"))
    head_start = " ".join(config["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head_start)
    assert hosts == ["127.0.0.1"], head_start
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert not any("0.0.0.0" in c or "::" in c for c in commands)
