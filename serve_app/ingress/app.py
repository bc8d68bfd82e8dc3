"""The HTTP edge: the ingress Serve deployment. Routes are thin; the work is in
`service.py` (priced requests) and `views.py` (read-only documents).

    POST /v1/chat/completions   OpenAI chat completions, streamed or not, priced
    POST /v1/completions        OpenAI (legacy) text completions, streamed or not, priced
    POST /v1/embeddings         OpenAI embeddings, priced per input token
    POST /v1/quote              the same body: the decision and every candidate, nothing run
    GET  /v1/models             models and aliases of the caller's plan, with prices
    GET  /v1/cluster            live state and current cost per 1M tokens per model
    GET  /healthz               liveness and freshness of the live state
    GET  /readyz                200 once a request is served without waiting on start-up
                                (the rule: readiness.py), else 503 and what it waits for
    GET  /v1/usage, /v1/admin/* usage, billing health and reconciliation
    GET  /dashboard             the live margin dashboard (the page: no key; its figures:
                                GET /v1/admin/dashboard, admin key; dashboard.py)

    GET  /openapi.json          the API description (no key); /docs and /redoc over it

The priced routes run as plain ASGI (`asgi.py`); the others are a FastAPI app built
per replica (`build_asgi`). Each route authenticates, calls the service or a view
(values out) and hands the result to `render.py`; the replica's parts are wired by
`compose.py`; the description of every route is `openapi.py`'s. The API key is checked
before the body is read, so an unauthenticated caller gets 401 whatever it sent.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures.
import time
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.types import Receive, Scope

from serve_app.ingress import errors, openapi, render
from serve_app.ingress.asgi import IngressASGI, Route, headers_of, read_chat_body, read_model
from serve_app.ingress.call import GenerationBody
from serve_app.ingress.compose import IngressArgs, IngressParts, compose, ray_platform
from serve_app.ingress.dashboard import DashboardRoutes
from serve_app.ingress.openapi_endpoints import endpoint_routes
from serve_app.ingress.protocol import ChatCompletionRequest
from serve_app.ingress.protocol_endpoints import CompletionRequest, EmbeddingsRequest
from serve_app.ingress.request_span import TracedIngressASGI
from serve_app.ingress.service import ChatService
from serve_app.metering.probe import AggregatorProbe
from serve_app.policy.schema import Tenant
from serve_app.telemetry import tracing

MAX_BODY_BYTES = 4 * 1024 * 1024
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
QUOTE_PATH = "/v1/quote"


async def answer_chat(
    service: ChatService,
    tenant: Tenant,
    body: GenerationBody,
    client_request_id: str | None,
    arrived_s: float | None = None,
) -> Response:
    """A chat (or text completion) request's answer: the service's values, rendered
    (refusals are raised)."""
    call = await service.start(tenant, body, client_request_id, arrived_s)
    if body.stream:
        return render.stream_response(call, service.stream(call))
    return render.chat_response(await service.complete(call))


class Routes:
    """The routes of one ingress replica, over its parts."""

    def __init__(self, parts: IngressParts, billing: AggregatorProbe | None = None) -> None:
        self.parts = parts
        self.service = parts.service
        self.views = parts.views
        self.billing = billing
        """Whether the aggregators run (for /readyz); None where billing is off."""

    def priced(self) -> dict[tuple[str, str], Route]:
        """The routes that run as plain ASGI, by (method, path)."""
        return {
            ("POST", CHAT_PATH): self.chat_completions,
            ("POST", COMPLETIONS_PATH): self.completions,
            ("POST", EMBEDDINGS_PATH): self.embeddings,
            ("POST", QUOTE_PATH): self.quote,
        }

    def api(self) -> FastAPI:
        """The FastAPI app of every route but the priced ones, and the API description
        (`openapi.py`: /openapi.json, /docs, /redoc, no key)."""
        api = openapi.IngressAPI(
            [
                *openapi.priced_routes(CHAT_PATH, QUOTE_PATH),
                *endpoint_routes(COMPLETIONS_PATH, EMBEDDINGS_PATH),
            ]
        )
        errors.install_error_handlers(api)
        api.add_api_route("/v1/models", self.models, methods=["GET"], **openapi.MODELS)
        api.add_api_route("/v1/cluster", self.cluster, methods=["GET"], **openapi.CLUSTER)
        api.add_api_route("/healthz", self.healthz, methods=["GET"], **openapi.HEALTH)
        api.add_api_route("/readyz", self.readyz, methods=["GET"], include_in_schema=False)
        api.add_api_route("/v1/usage", self.usage, methods=["GET"], **openapi.USAGE)
        api.add_api_route(
            "/v1/admin/usage/{tenant_id}",
            self.admin_usage,
            methods=["GET"],
            **openapi.ADMIN_USAGE,
        )
        api.add_api_route(
            "/v1/admin/billing", self.admin_billing, methods=["GET"], **openapi.ADMIN_BILLING
        )
        api.add_api_route(
            "/v1/admin/reconcile",
            self.admin_reconcile,
            methods=["POST"],
            **openapi.ADMIN_RECONCILE,
        )
        if self.parts.figures is not None:
            DashboardRoutes(self.parts.figures, self.views).install(api)
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
        arrived_s = time.monotonic()
        tenant, body, client_request_id = await self._tenant_and_body(scope, receive)
        # Serve's RequestIdMiddleware echoes the client's X-Request-ID (or one of its
        # own); rtcts records it and keys everything on an id of its own.
        return await answer_chat(self.service, tenant, body, client_request_id, arrived_s)

    async def completions(self, scope: Scope, receive: Receive) -> Response:
        arrived_s = time.monotonic()
        headers = headers_of(scope, b"authorization", b"x-request-id")
        tenant = self.service.authenticate(headers.get(b"authorization"))
        body = await read_model(scope, receive, MAX_BODY_BYTES, CompletionRequest)
        return await answer_chat(
            self.service, tenant, body, headers.get(b"x-request-id"), arrived_s
        )

    async def embeddings(self, scope: Scope, receive: Receive) -> Response:
        arrived_s = time.monotonic()
        headers = headers_of(scope, b"authorization", b"x-request-id")
        tenant = self.service.authenticate(headers.get(b"authorization"))
        body = await read_model(scope, receive, MAX_BODY_BYTES, EmbeddingsRequest)
        call = await self.service.start(tenant, body, headers.get(b"x-request-id"), arrived_s)
        return render.embeddings_response(await self.service.embed(call))

    async def quote(self, scope: Scope, receive: Receive) -> Response:
        tenant = self.service.authenticate(
            headers_of(scope, b"authorization").get(b"authorization")
        )
        await self.service.admit_quote(tenant)  # before the body is read and priced
        body = await read_chat_body(scope, receive, MAX_BODY_BYTES)
        return render.quote_response(self.service.quote(tenant, body))

    async def models(self, request: Request) -> JSONResponse:
        tenant = self.service.authenticate(request.headers.get("authorization"))
        return JSONResponse(self.views.models(tenant))

    async def usage(self, request: Request) -> JSONResponse:
        tenant = self.service.authenticate(request.headers.get("authorization"))
        return JSONResponse(await self.views.usage(tenant))

    async def admin_usage(
        self, tenant_id: Annotated[str, openapi.TENANT_ID], request: Request
    ) -> JSONResponse:
        self.views.require_admin(request.headers.get("authorization"))
        return JSONResponse(await self.views.usage(self.views.tenant_by_id(tenant_id)))

    async def admin_billing(self, request: Request) -> JSONResponse:
        self.views.require_admin(request.headers.get("authorization"))
        return JSONResponse(await self.views.billing_health())

    async def admin_reconcile(self, request: Request) -> JSONResponse:
        self.views.require_admin(request.headers.get("authorization"))
        sink = self.parts.stripe_sink()
        try:
            return JSONResponse(await self.views.reconcile(sink.client))
        finally:
            await sink.aclose()

    async def cluster(self, request: Request) -> JSONResponse:
        tenant = self.service.authenticate(request.headers.get("authorization"))
        return JSONResponse(self.views.cluster(tenant))

    async def healthz(self) -> JSONResponse:
        return JSONResponse(self.views.health())

    async def readyz(self) -> JSONResponse:
        running = None if self.billing is None else await self.billing.running()
        document = self.views.ready(running)
        return JSONResponse(document, status_code=200 if document["ready"] else 503)


def build_asgi(parts: IngressParts, billing: AggregatorProbe | None = None) -> IngressASGI:
    """The ASGI app of one ingress replica over its parts: what Serve serves, and what
    tests serve without Ray."""
    routes = Routes(parts, billing)
    # With a tracer provider, each priced request is a `rtcts.request` span (traces.py).
    asgi = TracedIngressASGI if tracing() else IngressASGI
    return asgi(routes.api(), routes.priced())


@serve.deployment
@serve.ingress()
class Ingress:
    """The ingress deployment; the builder binds it with its typed args and model handles."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self, args: IngressArgs, handles: dict[str, Any]
    ) -> None:
        self.parts: IngressParts = compose(args, handles, ray_platform(args.app_name))
        self.parts.start()
        self.billing = None
        if args.billing is not None:
            self.billing = AggregatorProbe(args.app_name, args.billing.meter_shards)

    def __serve_build_asgi_app__(self) -> IngressASGI:
        """Serve calls this once the constructor has run: the ASGI app of this replica."""
        return build_asgi(self.parts, self.billing)

    async def __del__(self) -> None:
        parts = getattr(self, "parts", None)  # absent if the constructor failed
        if parts is not None:
            await parts.stop()
