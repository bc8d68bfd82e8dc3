"""The HTTP edge: the ingress Serve deployment. Routes are thin; the work is in
`service.py`.

    POST /v1/chat/completions   OpenAI chat completions, streamed or not, priced
    POST /v1/quote              the same body: the decision and every candidate, nothing run
    GET  /v1/models             models and aliases of the caller's plan, with prices
    GET  /v1/cluster            live state and current cost per 1M tokens per model
    GET  /healthz               liveness and freshness of the live state
    GET  /v1/usage, /v1/admin/* usage, billing health and reconciliation

The two priced routes run as plain ASGI (`asgi.py`); the others are a FastAPI app built
per replica. The API key is checked before the body is read, so an unauthenticated
caller learns nothing about the API but 401.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures.
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.types import Receive, Scope

from serve_app.admission import AdmissionGate, RedisAdmission
from serve_app.admission.gate import DEFAULT_TIMEOUT_S
from serve_app.cluster.registry import get_or_create_registry
from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import ServeControllerAdapter
from serve_app.cluster.snapshot import Scaling
from serve_app.cluster.state import ClusterState
from serve_app.ingress import errors
from serve_app.ingress.asgi import IngressASGI, Route, headers_of, read_chat_body
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
CHAT_PATH = "/v1/chat/completions"
QUOTE_PATH = "/v1/quote"


@serve.deployment
@serve.ingress()
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

    def __serve_build_asgi_app__(self) -> IngressASGI:
        """Serve calls this once the constructor has run: the ASGI app of this replica."""
        priced: dict[tuple[str, str], Route] = {
            ("POST", CHAT_PATH): self.chat_completions,
            ("POST", QUOTE_PATH): self.quote,
        }
        return IngressASGI(self._api(), priced)

    def _api(self) -> FastAPI:
        """The FastAPI app of every route but the priced ones."""
        api = FastAPI(
            title="rtcts", description="Real-Time Cost-to-Serve LLM gateway", docs_url=None
        )
        errors.install_error_handlers(api)
        api.add_api_route("/v1/models", self.models, methods=["GET"])
        api.add_api_route("/v1/cluster", self.cluster, methods=["GET"])
        api.add_api_route("/healthz", self.healthz, methods=["GET"])
        api.add_api_route("/v1/usage", self.usage, methods=["GET"])
        api.add_api_route("/v1/admin/usage/{tenant_id}", self.admin_usage, methods=["GET"])
        api.add_api_route("/v1/admin/billing", self.admin_billing, methods=["GET"])
        api.add_api_route("/v1/admin/reconcile", self.admin_reconcile, methods=["POST"])
        return api

    async def _tenant_and_body(
        self, scope: Scope, receive: Receive
    ) -> tuple[Tenant, ChatCompletionRequest, str | None]:
        """The caller's tenant (401 first), the validated body and Serve's request id."""
        headers = headers_of(scope, b"authorization", b"x-request-id")
        tenant = self.service.authenticate(headers.get(b"authorization"))
        body = await read_chat_body(scope, receive, MAX_BODY_BYTES)
        return tenant, body, headers.get(b"x-request-id")

    async def chat_completions(self, scope: Scope, receive: Receive) -> Response:
        tenant, body, request_id = await self._tenant_and_body(scope, receive)
        # Serve's RequestIdMiddleware puts the id (the client's, or a new one) in the
        # request headers and sends it back as x-request-id.
        return await self.service.chat(tenant, body, request_id)

    async def quote(self, scope: Scope, receive: Receive) -> Response:
        tenant, body, _ = await self._tenant_and_body(scope, receive)
        return JSONResponse(self.service.quote(tenant, body))

    async def models(self, request: Request) -> JSONResponse:
        tenant = self.service.authenticate(request.headers.get("authorization"))
        return JSONResponse(self.service.models(tenant).model_dump(mode="json", exclude_none=True))

    async def usage(self, request: Request) -> JSONResponse:
        tenant = self.service.authenticate(request.headers.get("authorization"))
        return JSONResponse(await self.service.usage(tenant))

    async def admin_usage(self, tenant_id: str, request: Request) -> JSONResponse:
        self._require_admin(request)
        tenant = self.service.tenant_by_id(tenant_id)
        if tenant is None:
            raise errors.ApiError(404, f"No tenant '{tenant_id}'.", code="tenant_not_found")
        return JSONResponse(await self.service.usage(tenant))

    async def admin_billing(self, request: Request) -> JSONResponse:
        self._require_admin(request)
        return JSONResponse(await self.service.billing_health())

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

    async def cluster(self, request: Request) -> JSONResponse:
        tenant = self.service.authenticate(request.headers.get("authorization"))
        return JSONResponse(self.service.cluster(tenant))

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
