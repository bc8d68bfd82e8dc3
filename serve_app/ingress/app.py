"""The HTTP edge: a FastAPI app inside a Serve deployment. Routes are thin; the work is
in `service.py`.

    POST /v1/chat/completions   OpenAI chat completions, streamed or not, priced
    POST /v1/quote              the same body: the decision and every candidate, nothing run
    GET  /v1/models             models and aliases of the caller's plan, with prices
    GET  /v1/cluster            live state and current cost per 1M tokens per model
    GET  /healthz               liveness and freshness of the live state

The API key is checked before the body is parsed, so an unauthenticated caller learns
nothing about the API but 401.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures.
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve

from serve_app.admission import AdmissionGate, RedisAdmission
from serve_app.admission.gate import DEFAULT_TIMEOUT_S
from serve_app.cluster.registry import get_or_create_registry
from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import ServeControllerAdapter
from serve_app.cluster.snapshot import Scaling
from serve_app.cluster.state import ClusterState
from serve_app.ingress import errors
from serve_app.ingress.protocol import ChatCompletionRequest
from serve_app.ingress.service import ChatService
from serve_app.metering.aggregator import AggregatorConfig, ensure_aggregators, stripe_sink_for
from serve_app.metering.meter import MemorySink, MeterSink
from serve_app.metering.stream import MeterStreamWriter
from serve_app.metering.view import BillingView
from serve_app.policy import load_policy_dict
from serve_app.policy.schema import Tenant
from serve_app.telemetry import RayMetrics

MAX_BODY_BYTES = 4 * 1024 * 1024
REDIS_CONNECTIONS = 64
"""Redis connections per ingress replica (admission and billing views)."""

app = FastAPI(title="rtcts", description="Real-Time Cost-to-Serve LLM gateway", docs_url=None)
errors.install_error_handlers(app)
app.add_middleware(errors.BodySizeLimitMiddleware, max_bytes=MAX_BODY_BYTES)


@serve.deployment
@serve.ingress(app)
class Ingress:
    """The ingress deployment; the builder binds it with the policy and model handles."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        policy: dict[str, Any],
        handles: dict[str, Any],
        app_name: str,
        policy_source: str = "<policy>",
        redis_url: str | None = None,
        redis_timeout_s: float = DEFAULT_TIMEOUT_S,
        billing: dict[str, Any] | None = None,
    ) -> None:
        loaded = load_policy_dict(policy, source=policy_source)
        registry = get_or_create_registry()
        adapter = ServeControllerAdapter(app_name)

        async def fetch_reports() -> list[ReplicaReport]:
            reports: list[ReplicaReport] = await registry.snapshot.remote()
            return reports

        metrics = RayMetrics()
        state = ClusterState(
            {
                m.id: Scaling(
                    m.cold_start_s,
                    m.autoscaling.target_ongoing_requests,
                    m.autoscaling.min_replicas,
                    m.autoscaling.max_replicas,
                )
                for m in loaded.policy.models
            },
            fetch_reports,
            adapter.deployments,
            on_replicas=metrics.live_state,
        )
        state.start()
        admission = None
        billing_view = None
        sink: MeterSink = MemorySink()
        self._writer: MeterStreamWriter | None = None
        self._stripe_base = None if billing is None else billing["stripe_api_base"]
        if redis_url is not None:
            # A blocking pool: under a burst, requests wait for a free connection
            # (within the gate's time bound) instead of failing with "too many
            # connections", which would look like an outage.
            pool = aioredis.BlockingConnectionPool.from_url(
                redis_url,
                max_connections=REDIS_CONNECTIONS,
                timeout=None,
                socket_timeout=redis_timeout_s,
                socket_connect_timeout=redis_timeout_s,
            )
            client = aioredis.Redis(connection_pool=pool)
            admission = AdmissionGate(RedisAdmission(client), timeout_s=redis_timeout_s)
        if redis_url is not None and billing is not None:
            # Verified meters go to the Redis stream (spooled to disk while Redis is
            # down); the aggregator actors that read it are created once, detached.
            self._writer = MeterStreamWriter.from_url(
                redis_url,
                Path(billing["data_dir"]) / "spool",
                shards=billing["meter_shards"],
            )
            self._writer.start()
            sink = self._writer
            billing_view = BillingView(
                client,
                billing["meter_shards"],
                window_s=billing["window_s"],
                grace_s=billing["grace_s"],
            )
            ensure_aggregators(
                AggregatorConfig(
                    redis_url=redis_url,
                    instance=app_name,
                    shards=billing["meter_shards"],
                    window_s=billing["window_s"],
                    grace_s=billing["grace_s"],
                    stripe_api_base=billing["stripe_api_base"],
                    stripe_mode=billing["stripe_mode"],
                    customers=tuple((t.stripe_customer_id, t.id) for t in loaded.policy.tenants),
                )
            )
        self.service = ChatService(
            loaded, state, handles, sink, metrics, admission=admission, billing=billing_view
        )

    async def _tenant_and_body(self, request: Request) -> tuple[Tenant, ChatCompletionRequest]:
        tenant = self.service.authenticate(request.headers.get("authorization"))
        raw = await request.body()
        try:
            body = ChatCompletionRequest.model_validate_json(raw or b"null")
        except ValidationError as exc:
            raise errors.validation_error(exc.errors()) from None
        return tenant, body

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        tenant, body = await self._tenant_and_body(request)
        # Serve's RequestIdMiddleware puts the id (the client's, or a new one) in the
        # request headers and sends it back as x-request-id.
        return await self.service.chat(tenant, body, request.headers.get("x-request-id"))

    @app.post("/v1/quote")
    async def quote(self, request: Request) -> JSONResponse:
        tenant, body = await self._tenant_and_body(request)
        return JSONResponse(self.service.quote(tenant, body))

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        tenant = self.service.authenticate(request.headers.get("authorization"))
        return JSONResponse(self.service.models(tenant).model_dump(mode="json", exclude_none=True))

    @app.get("/v1/usage")
    async def usage(self, request: Request) -> JSONResponse:
        tenant = self.service.authenticate(request.headers.get("authorization"))
        return JSONResponse(await self.service.usage(tenant))

    @app.get("/v1/admin/usage/{tenant_id}")
    async def admin_usage(self, tenant_id: str, request: Request) -> JSONResponse:
        self._require_admin(request)
        tenant = self.service.tenant_by_id(tenant_id)
        if tenant is None:
            raise errors.ApiError(404, f"No tenant '{tenant_id}'.", code="tenant_not_found")
        return JSONResponse(await self.service.usage(tenant))

    @app.get("/v1/admin/billing")
    async def admin_billing(self, request: Request) -> JSONResponse:
        self._require_admin(request)
        return JSONResponse(await self.service.billing_health())

    @app.post("/v1/admin/reconcile")
    async def admin_reconcile(self, request: Request) -> JSONResponse:
        self._require_admin(request)
        sink = stripe_sink_for(self._stripe_base)
        try:
            return JSONResponse(await self.service.reconcile(sink.client))
        finally:
            await sink.aclose()

    def _require_admin(self, request: Request) -> None:
        authorization = request.headers.get("authorization")
        if not self.service.is_admin(authorization):
            if self.service.tenants.authenticate(authorization) is not None:
                raise errors.forbidden("This endpoint needs an admin key.")
            raise errors.unauthorized()

    @app.get("/v1/cluster")
    async def cluster(self, request: Request) -> JSONResponse:
        tenant = self.service.authenticate(request.headers.get("authorization"))
        return JSONResponse(self.service.cluster(tenant))

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        load_at, replicas_at = self.service.state.refreshed_at
        now = time.time()
        return JSONResponse(
            {
                "status": "ok",
                "policy_version": self.service.policy.version,
                "load_age_s": round(now - load_at, 3) if load_at else None,
                "replicas_age_s": round(now - replicas_at, 3) if replicas_at else None,
                "admission": self.service.admission_health(),
            }
        )

    async def __del__(self) -> None:
        service = getattr(self, "service", None)  # absent if the constructor failed
        if service is not None:
            await service.state.stop()
        writer = getattr(self, "_writer", None)
        if writer is not None:
            await writer.stop()  # flushes every buffered meter (or spools it)
