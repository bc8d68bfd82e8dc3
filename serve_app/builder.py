"""`build_app(args)`: validate, then bind one ingress and one deployment per model
(but an `openai_upstream` server the ingress calls itself: `dispatch`, models/direct.py).

It is the import path for `serve run` / `serve deploy` (`serve_app.builder:build_app`,
see serve_config.yaml) and what `rtcts run` and the tests deploy.

Per model deployment, from the policy: autoscaling bounds (min_replicas 0 scales to
zero), `target_ongoing_requests`, and `max_ongoing_requests` = 2 x the model's max
concurrent sequences (a full batch plus an equal queue on the replica, which the
replica reports; beyond that requests wait at the caller's handle, which the
ingress counts).

A model's `ray_resources` (custom Ray resources, e.g. `{gpu_l4: 1}`) go into its
replicas' `ray_actor_options` (Ray Serve LLM's vLLM replicas: their first placement
group bundle), so its replicas run only on the nodes that declare them.

Serve's per-request access log lines are off for every deployment of the app unless
`access_log` (or the RTCTS_ACCESS_LOG setting) turns them on: `deployment_logging_options`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application
from ray.serve.schema import LoggingConfig

from serve_app.admission.gate import DEFAULT_TIMEOUT_S
from serve_app.errors import PolicyError, PolicyIssue
from serve_app.ingress.app import Ingress
from serve_app.ingress.compose import BillingArgs, IngressArgs
from serve_app.models.deployment import ModelServer
from serve_app.models.ray_llm.spec import deployment_options as ray_llm_options, ray_llm_issues
from serve_app.policy import LoadedPolicy, load_policy_dict, load_policy_file
from serve_app.policy.schema import BackendKind, ModelSpec
from serve_app.pricing.book import SCALE_DOWN_DELAY_S
from serve_app.settings import Settings

DEFAULT_APP_NAME = "rtcts"
SERVE_METRICS_INTERVAL_S = 10.0
"""Serve's autoscaling metrics interval (its default); a look-back must be longer."""
SERVE_LOOK_BACK_S = 30.0
"""Serve's default autoscaling look-back window."""
SUPPORTED_BACKENDS = frozenset(
    {BackendKind.SIMULATED, BackendKind.OPENAI_UPSTREAM, BackendKind.RAY_SERVE_LLM}
)


logger = logging.getLogger("rtcts.builder")


class AppArgs(BaseModel):
    """Arguments of `build_app` (the `args:` of a Serve config file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy_path: str | None = Field(
        default=None, description="Policy file; exactly one of policy_path and policy."
    )
    policy: dict[str, Any] | None = Field(default=None, description="Policy as a dict.")
    app_name: str = Field(
        default=DEFAULT_APP_NAME, description="Serve application name the app is deployed as."
    )
    time_scale: float = Field(
        default=1.0, ge=0, description="Simulated models run this much slower (1 = real time)."
    )
    cold_start_scale: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Simulated cold starts take this share of the policy's cold_start_s "
        "(times time_scale); the pricing still sees the policy's figure. `rtcts run` "
        "shortens them (--cold-start-scale); 1 elsewhere.",
    )
    failure_rate: float = Field(
        default=0.0, ge=0, lt=1, description="Simulated models fail this share of requests."
    )
    model_scale_down_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a model deployment waits before dropping an idle replica "
        "(Serve's downscale_delay_s; its look-back window shrinks to at most this, not "
        "below 11 s); tests and demos shorten it. None: SCALE_DOWN_DELAY_S, which the "
        "pricing amortizes cold starts over whatever this says.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for admission (limits, budgets); None serves without admission.",
        repr=False,
    )
    redis_timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S,
        gt=0,
        le=10,
        description="Longest wait on Redis in the request path.",
    )
    data_dir: str = Field(
        default=".rtcts", description="Local state of the ingress: the meter spool."
    )
    meter_shards: int = Field(
        default=1, ge=1, le=64, description="Meter streams (one aggregator actor each)."
    )
    window_s: int = Field(default=60, ge=1, description="Billing window length, seconds.")
    grace_s: int = Field(default=10, ge=0, description="Seconds a window stays open after its end.")
    stripe_api_base: str | None = Field(
        default=None,
        description="Stripe-compatible server (the emulator); the key comes from "
        "STRIPE_API_KEY in the aggregator's environment.",
    )
    stripe_mode: str = Field(
        default="v1", pattern="^v[12]$", description="v1 meter events or v2 meter event streams."
    )
    natural_output: bool = Field(
        default=True,
        description="Simulated answers stop at a natural length (else always at max_tokens).",
    )
    ingress_replicas: int = Field(default=1, ge=1, description="Ingress replicas.")
    ingress_max_ongoing_requests: int = Field(
        default=1024, ge=1, description="Concurrent requests per ingress replica."
    )
    access_log: bool | None = Field(
        default=None,
        description="Serve's per-request access log lines for the ingress and the models; "
        "None: the RTCTS_ACCESS_LOG setting (off unless set).",
    )

    @model_validator(mode="after")
    def _one_policy(self) -> AppArgs:
        if (self.policy_path is None) == (self.policy is None):
            raise ValueError("give exactly one of policy_path and policy")
        return self

    def load_policy(self) -> LoadedPolicy:
        if self.policy is not None:
            return load_policy_dict(self.policy)
        assert self.policy_path is not None
        return load_policy_file(Path(self.policy_path))


def model_deployment_options(
    spec: ModelSpec, *, scale_down_s: float | None = None
) -> dict[str, Any]:
    """Serve options of one model's deployment, from the policy (also serve_config.yaml)."""
    scaling = spec.autoscaling
    idle: dict[str, float] = {"downscale_delay_s": SCALE_DOWN_DELAY_S}
    if scale_down_s is not None:  # Serve wants a look-back longer than its metrics interval
        look_back_s = min(SERVE_LOOK_BACK_S, max(scale_down_s, SERVE_METRICS_INTERVAL_S + 1))
        idle = {"downscale_delay_s": scale_down_s, "look_back_period_s": look_back_s}
    return {
        "name": spec.id,
        "max_ongoing_requests": 2 * spec.throughput.max_concurrent_sequences,
        "autoscaling_config": {
            "min_replicas": scaling.min_replicas,
            "initial_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
            "upscale_delay_s": 0.5,
            **idle,
        },
        "ray_actor_options": ray_actor_options(spec),
        "health_check_period_s": 2.0,
    }


def ray_actor_options(spec: ModelSpec) -> dict[str, Any]:
    """A model replica's Ray resources: no CPU, and the policy's `ray_resources` (custom
    resources that pin it to the nodes declaring them, e.g. a GPU type's nodes)."""
    if not spec.ray_resources:
        return {"num_cpus": 0}
    return {"num_cpus": 0, "resources": dict(spec.ray_resources)}


def deployment_logging_options(access_log: bool) -> dict[str, Any]:
    """Serve options that switch a deployment's access log lines off (empty when on).

    Off: `LoggingConfig(enable_access_log=False)`, everything else Serve's default.
    On: no `logging_config` at all, so Serve's defaults (or an application-level
    `logging_config` of a Serve config file) apply as if rtcts set nothing."""
    if access_log:
        return {}
    return {"logging_config": LoggingConfig(enable_access_log=False)}


def build_app(args: dict[str, Any] | AppArgs) -> Application:
    """Validate everything first, then bind the deployments of the policy."""
    app_args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    loaded = app_args.load_policy()
    unsupported = [
        PolicyIssue(f"models[{i}].backend", f"backend '{m.backend.value}' is not supported yet")
        for i, m in enumerate(loaded.policy.models)
        if m.backend not in SUPPORTED_BACKENDS
    ]
    if unsupported:
        raise PolicyError(loaded.source, unsupported)
    ray_llm = [  # the llm extra installed, a valid LLMConfig, vLLM where it is asked for
        issue
        for i, m in enumerate(loaded.policy.models)
        if m.backend is BackendKind.RAY_SERVE_LLM
        for issue in ray_llm_issues(i, m)
    ]
    if ray_llm:
        raise PolicyError(loaded.source, ray_llm)
    # The environment is read here, once, and passed down as typed arguments.
    settings = Settings.from_env()
    access_log = settings.access_log if app_args.access_log is None else app_args.access_log
    logging_options = deployment_logging_options(access_log)

    handles = {
        spec.id: _model_deployment(spec, app_args)
        .options(**logging_options)
        .bind(
            spec.model_dump(mode="json"),
            app_args.time_scale,
            app_args.failure_rate,
            app_args.natural_output,
            cold_start_scale=app_args.cold_start_scale,
        )
        for spec in loaded.policy.models
        if not spec.dispatched_from_ingress  # the ingress calls those itself (direct.py)
    }
    ingress = Ingress.options(  # type: ignore[attr-defined]
        num_replicas=app_args.ingress_replicas,
        max_ongoing_requests=app_args.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
        **logging_options,
    )
    return ingress.bind(ingress_args(app_args, loaded, settings), handles)  # type: ignore[no-any-return]


def _model_deployment(spec: ModelSpec, app_args: AppArgs) -> Any:
    """The deployment of one model with its options: `ModelServer` with its backend, or
    Ray Serve LLM's `LLMServer` (`RayLLMServer`, imported only then: the llm extra)."""
    options = model_deployment_options(spec, scale_down_s=app_args.model_scale_down_s)
    if spec.backend is BackendKind.RAY_SERVE_LLM:
        from serve_app.models.ray_llm.server import RayLLMServer

        options = ray_llm_options(spec, options)
        return serve.deployment(RayLLMServer).options(**options)  # type: ignore[attr-defined]
    return serve.deployment(ModelServer).options(**options)  # type: ignore[attr-defined]


def ingress_args(app_args: AppArgs, loaded: LoadedPolicy, settings: Settings) -> IngressArgs:
    """The ingress's typed arguments: the validated policy, Redis, and billing (only with
    Redis: meters need its stream). The Stripe key comes from `settings`."""
    billing = None
    if app_args.redis_url is None:
        logger.warning(
            "app %s has no redis_url: admission (keys' limits and budgets) and billing are "
            "off, meters stay in memory; give redis_url in the application's args",
            app_args.app_name,
        )
    else:
        billing = BillingArgs(
            data_dir=app_args.data_dir,
            meter_shards=app_args.meter_shards,
            window_s=app_args.window_s,
            grace_s=app_args.grace_s,
            stripe_api_base=app_args.stripe_api_base,
            stripe_api_key=settings.stripe_api_key,
            stripe_mode=app_args.stripe_mode,
        )
    return IngressArgs(
        policy=loaded.policy.model_dump(mode="json"),
        policy_source=loaded.source,
        app_name=app_args.app_name,
        redis_url=app_args.redis_url,
        redis_timeout_s=app_args.redis_timeout_s,
        billing=billing,
        ingress_replicas=app_args.ingress_replicas,
        policy_path=None
        if app_args.policy_path is None
        else str(Path(app_args.policy_path).resolve()),
    )


__all__ = ["AppArgs", "build_app", "deployment_logging_options"]
