"""build_app's deployment options: the policy's per-model options and Serve's access log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.builder import build_app, deployment_logging_options

ROOT = Path(__file__).resolve().parents[2]
POLICY: dict[str, Any] = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())


def _configs(args: dict[str, Any]) -> dict[str, Any]:
    """Deployment name -> DeploymentConfig of the ingress and every model of the app."""
    ingress = build_app({"policy": POLICY, **args})._bound_deployment
    handles: dict[str, Any] = ingress.init_args[1]
    configs = {ingress.name: ingress._deployment_config}
    for name, model in handles.items():
        configs[name] = model._bound_deployment._deployment_config
    return configs


def test_access_log_lines_are_off_for_every_deployment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RTCTS_ACCESS_LOG", raising=False)
    configs = _configs({})
    assert set(configs) == {"Ingress"} | {m["id"] for m in POLICY["models"]}
    for config in configs.values():
        assert config.logging_config is not None
        assert config.logging_config["enable_access_log"] is False
        assert config.logging_config["log_level"] == "INFO"  # the rest is Serve's default


def test_the_setting_turns_them_back_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTCTS_ACCESS_LOG", "1")
    for config in _configs({}).values():
        assert config.logging_config is None  # Serve's defaults: access log lines on


def test_an_explicit_argument_wins_over_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTCTS_ACCESS_LOG", "1")
    for config in _configs({"access_log": False}).values():
        assert config.logging_config["enable_access_log"] is False
    monkeypatch.setenv("RTCTS_ACCESS_LOG", "0")
    for config in _configs({"access_log": True}).values():
        assert config.logging_config is None


def test_model_options_come_from_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTCTS_ACCESS_LOG", raising=False)
    configs = _configs({"ingress_replicas": 2, "ingress_max_ongoing_requests": 256})
    assert configs["Ingress"].num_replicas == 2
    assert configs["Ingress"].max_ongoing_requests == 256
    for spec in POLICY["models"]:
        config = configs[spec["id"]]
        batch = spec["throughput"]["max_concurrent_sequences"]
        assert config.max_ongoing_requests == 2 * batch
        assert config.autoscaling_config.min_replicas == spec["autoscaling"]["min_replicas"]


def test_logging_options() -> None:
    assert deployment_logging_options(True) == {}
    (config,) = deployment_logging_options(False).values()
    assert config.enable_access_log is False
