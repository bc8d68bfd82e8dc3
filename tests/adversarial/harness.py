"""The real ingress (`compose()`) on a real Redis, with fake model handles.

Each harness adds a tenant of its own to the default policy (unique id and key), so tests
share one Redis without seeing each other's windows and budgets. One replica each of the
8B (8 running) and the 32B (16 running) has reported; the 70B has none.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from starlette.responses import Response

from serve_app.admission.types import TenantUsage
from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo
from serve_app.ingress.app import answer_chat
from serve_app.ingress.compose import IngressArgs, IngressParts, Platform, compose
from serve_app.ingress.protocol import ChatCompletionRequest
from serve_app.metering.meter import MemorySink, Meter
from serve_app.policy import Tenant, hash_api_key
from serve_app.telemetry import NoMetrics
from tests.fakes import FakeHandle

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"
NOW = 1_000.0
MODEL = "qwen2.5-32b"


@dataclass
class Adversary:
    parts: IngressParts
    handle: FakeHandle
    tenant: Tenant
    key: str
    args: IngressArgs
    platform: Platform

    @property
    def meters(self) -> list[Meter]:
        sink = self.parts.sink
        assert isinstance(sink, MemorySink)
        return list(sink.meters)

    async def chat(self, body: dict[str, Any], client_request_id: str | None = None) -> Response:
        request = ChatCompletionRequest.model_validate(body)
        return await answer_chat(self.parts.service, self.tenant, request, client_request_id)

    async def usage(self) -> TenantUsage:
        gate = self.parts.service._admission
        assert gate is not None
        return await gate.usage(self.tenant.id)

    async def settled(self) -> None:
        """Wait for the background settles of finished requests."""
        import asyncio

        background = self.parts.service._settlement._background
        while background:
            await asyncio.gather(*list(background), return_exceptions=True)


async def adversary(
    redis_url: str | None,
    handle: FakeHandle,
    *,
    plan: str = "pro",
    limits: dict[str, Any] | None = None,
) -> Adversary:
    """An ingress with a fresh tenant on `plan` (its plan's limits overridden by `limits`)."""
    policy: dict[str, Any] = yaml.safe_load(DEFAULT_POLICY.read_text("utf-8"))
    tenant_id = f"adv_{uuid.uuid4().hex[:10]}"
    key = f"key-{tenant_id}"
    policy["tenants"].append(
        {
            "id": tenant_id,
            "plan": plan,
            "stripe_customer_id": f"cus_{tenant_id}",
            "api_key_sha256": [hash_api_key(key)],
        }
    )
    if limits:
        for entry in policy["plans"]:
            if entry["id"] == plan:
                entry["limits"] = {**entry["limits"], **limits}

    async def fetch_reports() -> list[ReplicaReport]:
        return [
            ReplicaReport("llama-3.1-8b", "llama-r1", 8, 0, True, 0.0, NOW),
            ReplicaReport(MODEL, f"{MODEL}-r1", 16, 0, True, 0.0, NOW),
        ]

    async def fetch_deployments() -> dict[str, DeploymentInfo]:
        return {}

    platform = Platform(
        fetch_reports, fetch_deployments, NoMetrics(), lambda config: None, clock=lambda: NOW
    )
    args = IngressArgs(policy=policy, redis_url=redis_url)
    models = [m["id"] for m in policy["models"]]
    parts = compose(args, dict.fromkeys(models, handle), platform)
    await parts.state.refresh_load()
    tenant = parts.service.authenticate(f"Bearer {key}")
    return Adversary(parts, handle, tenant, key, args, platform)


async def another_replica(adv: Adversary, handle: FakeHandle) -> Adversary:
    """A second ingress replica of the same app (same policy, Redis and tenant)."""
    models = list(adv.parts.service.book.models)
    parts = compose(adv.args, dict.fromkeys(models, handle), adv.platform)
    await parts.state.refresh_load()
    return Adversary(parts, handle, adv.tenant, adv.key, adv.args, adv.platform)


def body(model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about GPUs."}],
        **extra,
    }


def micro(usd: str) -> int:
    return int(Decimal(usd) * 1_000_000)
