"""A `ray_serve_llm` model of the policy as Ray Serve LLM sees it: its `LLMConfig`, the
checks the builder runs before binding, and its deployment's options.

The policy's `ray_serve_llm` section holds the `LLMConfig` fields; the rest comes from
the model spec, so Ray's view of the deployment agrees with the pricing's: the
autoscaling bounds, and `max_num_seqs` / `max_model_len` (the batch and the context the
pricing assumes) unless the policy sets them (schema.py checks they agree).
Importing this module needs nothing beyond rtcts; building an `LLMConfig` needs the
`llm` extra.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from pydantic import ValidationError

from serve_app.errors import PolicyIssue
from serve_app.models.ray_llm.protocol import serve_llm
from serve_app.policy.schema import LLMEngineKind, ModelSpec

__all__ = ["deployment_options", "llm_config", "llm_config_fields", "ray_llm_issues"]

EXTRA_HINT = "pip install 'rtcts[llm]'"
VLLM_HINT = "pip install 'rtcts[llm]' 'ray[llm]' on GPU nodes and where the app is built"


def llm_config_fields(spec: ModelSpec) -> dict[str, Any]:
    """The `LLMConfig` fields of a `ray_serve_llm` model."""
    section = spec.ray_serve_llm
    if section is None:
        raise ValueError(f"model {spec.id} is not on backend ray_serve_llm")
    loading: dict[str, Any] = {"model_id": section.model_id or spec.id}
    if section.model_source is not None:
        loading["model_source"] = section.model_source
    engine_kwargs = {
        "max_num_seqs": spec.throughput.max_concurrent_sequences,
        "max_model_len": spec.context_window_tokens,
        **section.engine_kwargs,
    }
    scaling = spec.autoscaling
    fields: dict[str, Any] = {
        "model_loading_config": loading,
        "engine_kwargs": engine_kwargs,
        "accelerator_type": section.accelerator_type,
        "log_engine_metrics": section.log_engine_metrics,
        "deployment_config": {
            "autoscaling_config": {
                "min_replicas": scaling.min_replicas,
                "initial_replicas": scaling.min_replicas,
                "max_replicas": scaling.max_replicas,
                "target_ongoing_requests": scaling.target_ongoing_requests,
            },
        },
    }
    if section.stream_batching_interval_ms is not None:
        fields["experimental_configs"] = {
            "stream_batching_interval_ms": section.stream_batching_interval_ms
        }
    return fields


def llm_config(spec: ModelSpec) -> Any:
    """The validated `LLMConfig` of a `ray_serve_llm` model (needs the `llm` extra)."""
    return serve_llm().LLMConfig.model_validate(llm_config_fields(spec))


def ray_llm_issues(index: int, spec: ModelSpec) -> list[PolicyIssue]:
    """What keeps a `ray_serve_llm` model from being bound here, as policy issues."""
    path = f"models[{index}]"
    try:
        llm_config(spec)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "a package of Ray Serve LLM"
        return [
            PolicyIssue(
                f"{path}.backend",
                f"backend 'ray_serve_llm' needs the llm extra ({missing} is missing): {EXTRA_HINT}",
            )
        ]
    except (ValidationError, ValueError) as exc:
        return [PolicyIssue(f"{path}.ray_serve_llm", f"not a valid LLMConfig: {exc}")]
    section = spec.ray_serve_llm
    assert section is not None  # llm_config raised otherwise
    if section.engine is LLMEngineKind.VLLM and importlib.util.find_spec("vllm") is None:
        return [
            PolicyIssue(
                f"{path}.ray_serve_llm.engine",
                f"engine 'vllm' needs vLLM where the app is built: {VLLM_HINT}",
            )
        ]
    return []


def deployment_options(spec: ModelSpec, options: dict[str, Any]) -> dict[str, Any]:
    """The deployment options of a `ray_serve_llm` model, from rtcts's `options`.

    The simulated engine runs in the replica's process on CPU: rtcts's options as they
    are. vLLM's replica takes Ray Serve LLM's own resources (placement group bundles
    from the engine's parallelism and accelerator, runtime env) under rtcts's name,
    autoscaling, `max_ongoing_requests` and health check period; the policy's
    `ray_resources` join the replica's own bundle (the first), which pins it to the nodes
    declaring them."""
    section = spec.ray_serve_llm
    if section is None or section.engine is LLMEngineKind.SIMULATED:
        return options
    ray_options: dict[str, Any] = serve_llm().LLMServer.get_deployment_options(llm_config(spec))
    ours = {key: value for key, value in options.items() if key != "ray_actor_options"}
    return with_resources({**ray_options, **ours}, spec.ray_resources)


def with_resources(options: dict[str, Any], resources: dict[str, float]) -> dict[str, Any]:
    """`options` with custom `resources` added to the replica's placement group bundle
    (the first), or to its actor options where it has no placement group."""
    if not resources:
        return options
    bundles = options.get("placement_group_bundles")
    if bundles:
        first = {**bundles[0], **resources}
        return {**options, "placement_group_bundles": [first, *bundles[1:]]}
    actor = dict(options.get("ray_actor_options") or {})
    actor["resources"] = {**(actor.get("resources") or {}), **resources}
    return {**options, "ray_actor_options": actor}
