"""`build_app` and `AppArgs`: the builder's own rules, on what they return or raise.

No Ray cluster and none of Serve's private fields: a bound `Application` shows nothing
public but its type, so the deployment options are checked on the public functions
that make them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve import Application

import serve_app.builder as builder
from serve_app.builder import (
    SUPPORTED_BACKENDS,
    AppArgs,
    build_app,
    deployment_logging_options,
    model_deployment_options,
)
from serve_app.errors import PolicyError
from serve_app.policy import load_policy_dict
from serve_app.policy.schema import BackendKind
from serve_app.pricing.book import SCALE_DOWN_DELAY_S
from tests.fakes import model_dict, policy_dict

ROOT = Path(__file__).resolve().parents[2]
ONE_POLICY = "exactly one of policy_path and policy"


def _policy_file(tmp_path: Path, policy: dict[str, Any]) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return str(path)


# ------------------------------------------------------- exactly one policy source


def test_both_policy_and_policy_path_are_refused(tmp_path: Path) -> None:
    args = {"policy": policy_dict(), "policy_path": _policy_file(tmp_path, policy_dict())}

    with pytest.raises(ValidationError, match=ONE_POLICY):
        AppArgs.model_validate(args)
    with pytest.raises(ValidationError, match=ONE_POLICY):
        build_app(args)


def test_neither_policy_nor_policy_path_is_refused() -> None:
    with pytest.raises(ValidationError, match=ONE_POLICY):
        AppArgs.model_validate({})
    with pytest.raises(ValidationError, match=ONE_POLICY):
        build_app({"app_name": "no-policy"})


def test_either_one_alone_is_accepted(tmp_path: Path) -> None:
    path = _policy_file(tmp_path, policy_dict())

    assert AppArgs.model_validate({"policy": policy_dict()}).load_policy().policy.models
    assert AppArgs.model_validate({"policy_path": path}).load_policy().policy.models


# ------------------------------------------------------------ supported backends

SUPPORTED = sorted(SUPPORTED_BACKENDS, key=lambda kind: kind.value)


def _name(kind: BackendKind) -> str:
    return kind.value


def _model_on(backend: BackendKind, model_id: str) -> dict[str, Any]:
    extra: dict[str, Any] = {
        BackendKind.OPENAI_UPSTREAM: {"upstream_url": "http://127.0.0.1:8000"},
        BackendKind.RAY_SERVE_LLM: {"ray_serve_llm": {"engine": "simulated"}},
    }.get(backend, {})
    return model_dict(model_id, backend=backend.value, **extra)


def test_every_backend_is_supported() -> None:
    assert set(BackendKind) == SUPPORTED_BACKENDS


@pytest.mark.parametrize("backend", SUPPORTED, ids=_name)
def test_a_model_on_an_unsupported_backend_is_a_policy_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, backend: BackendKind
) -> None:
    # Every backend is supported today: the rule is kept, each backend in turn withdrawn.
    monkeypatch.setattr(builder, "SUPPORTED_BACKENDS", SUPPORTED_BACKENDS - {backend})
    served = next(kind for kind in SUPPORTED if kind is not backend)
    policy = policy_dict(models=[_model_on(served, "served"), _model_on(backend, "not-yet")])
    load_policy_dict(policy)  # a valid policy: only the builder refuses it

    with pytest.raises(PolicyError) as refused:
        build_app({"policy": policy})

    assert [issue.path for issue in refused.value.issues] == ["models[1].backend"]
    assert "models[1].backend" in str(refused.value)
    assert backend.value in str(refused.value)


@pytest.mark.parametrize("backend", SUPPORTED, ids=_name)
def test_a_model_on_a_supported_backend_builds_an_application(backend: BackendKind) -> None:
    app = build_app({"policy": policy_dict(models=[_model_on(backend, "m")])})

    assert isinstance(app, Application)


def test_a_ray_serve_llm_model_with_an_invalid_llm_config_is_a_policy_error() -> None:
    model = model_dict(
        "llm", backend="ray_serve_llm", ray_serve_llm={"accelerator_type": "not-a-gpu"}
    )
    policy = policy_dict(models=[model_dict("served"), model])
    load_policy_dict(policy)  # valid for the schema: Ray's LLMConfig refuses it

    with pytest.raises(PolicyError) as refused:
        build_app({"policy": policy})

    assert [issue.path for issue in refused.value.issues] == ["models[1].ray_serve_llm"]
    assert "not-a-gpu" in str(refused.value)


def test_a_model_scale_down_override_sets_the_delay_and_the_look_back() -> None:
    spec = load_policy_dict(policy_dict()).policy.models[0]

    default = model_deployment_options(spec)["autoscaling_config"]
    short = model_deployment_options(spec, scale_down_s=2.0)["autoscaling_config"]
    mid = model_deployment_options(spec, scale_down_s=20.0)["autoscaling_config"]

    assert default["downscale_delay_s"] == SCALE_DOWN_DELAY_S
    assert "look_back_period_s" not in default  # Serve's own (30 s)
    assert (short["downscale_delay_s"], short["look_back_period_s"]) == (2.0, 11.0)
    assert (mid["downscale_delay_s"], mid["look_back_period_s"]) == (20.0, 20.0)
    assert isinstance(build_app({"policy": policy_dict(), "model_scale_down_s": 2}), Application)


def test_the_shipped_policy_file_builds_an_application() -> None:
    app = build_app({"policy_path": str(ROOT / "policies" / "default.yaml")})

    assert isinstance(app, Application)


# ------------------------------------------------------------- deployment options


def test_model_options_come_from_the_policy() -> None:
    model = model_dict(
        "m",
        throughput={**model_dict()["throughput"], "max_concurrent_sequences": 24},
        autoscaling={"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 6},
    )
    spec = load_policy_dict(policy_dict(models=[model])).policy.models[0]

    options = model_deployment_options(spec)

    assert options["name"] == "m"
    assert options["max_ongoing_requests"] == 2 * 24
    scaling = options["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["initial_replicas"]) == (0, 0)
    assert scaling["max_replicas"] == 3
    assert scaling["target_ongoing_requests"] == 6


def test_a_models_ray_resources_pin_its_replicas() -> None:
    pinned = model_dict("m", ray_resources={"gpu_l4": 0.01})
    loaded = load_policy_dict(policy_dict(models=[pinned, model_dict("free")]))
    pinned_spec, free_spec = loaded.policy.models

    assert model_deployment_options(pinned_spec)["ray_actor_options"] == {
        "num_cpus": 0,
        "resources": {"gpu_l4": 0.01},
    }
    assert model_deployment_options(free_spec)["ray_actor_options"] == {"num_cpus": 0}


def test_logging_options() -> None:
    assert deployment_logging_options(True) == {}
    (config,) = deployment_logging_options(False).values()
    assert config.enable_access_log is False


@pytest.fixture
def access_logs(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The access_log each `build_app` resolved, as handed to `deployment_logging_options`."""
    seen: list[bool] = []

    def spy(access_log: bool) -> dict[str, Any]:
        seen.append(access_log)
        return deployment_logging_options(access_log)

    monkeypatch.setattr(builder, "deployment_logging_options", spy)
    return seen


@pytest.mark.parametrize(
    ("setting", "argument", "resolved"),
    [
        (None, None, False),  # off by default
        ("1", None, True),  # the setting turns access log lines back on
        ("1", False, False),  # an explicit argument wins over the setting
        ("0", True, True),
    ],
)
def test_access_log_argument_wins_over_the_setting_which_defaults_off(
    monkeypatch: pytest.MonkeyPatch,
    access_logs: list[bool],
    setting: str | None,
    argument: bool | None,
    resolved: bool,
) -> None:
    if setting is None:
        monkeypatch.delenv("RTCTS_ACCESS_LOG", raising=False)
    else:
        monkeypatch.setenv("RTCTS_ACCESS_LOG", setting)

    build_app({"policy": policy_dict(), "access_log": argument})

    assert access_logs == [resolved]


def test_an_app_without_redis_says_that_nothing_is_limited_or_billed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`serve run serve_config.yaml` as shipped has no redis_url: it serves, but whoever
    reads the logs learns that keys are not limited and nothing reaches Stripe."""
    with caplog.at_level("WARNING", logger="rtcts.builder"):
        build_app({"policy": policy_dict(), "app_name": "no-redis"})
    assert "no-redis has no redis_url" in caplog.text
    assert "billing are off" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rtcts.builder"):
        build_app({"policy": policy_dict(), "redis_url": "redis://127.0.0.1:1/0"})
    assert "redis_url" not in caplog.text
