"""The served API description: an OpenAPI 3.1 document of every public route.

    GET /openapi.json   the document            no key (docs/decisions.md, "The API
    GET /docs           Swagger UI over it      description is public"): it describes
    GET /redoc          ReDoc over it           the API's shape, never a tenant's data

FastAPI documents the routes it serves from what `app.py` declares with them (the
keyword arguments below: summary, response model, error answers, security). The two
priced routes run as plain ASGI (`asgi.py`) and are registered in FastAPI without a
schema, so `IngressAPI.openapi()` documents them from declaration-only routes
(`priced_routes()`) that are never served. The models of the answers are in
`document_models.py`; requests are `protocol.ChatCompletionRequest`.

Security: every route but `/healthz` takes `Authorization: Bearer <key>`: a tenant's
key (`tenantKey`), or an admin key for `/v1/admin/*` (`adminKey`). Both are HTTP bearer
schemes; they differ in which keys they accept.

FastAPI adds a 422 answer to routes with parameters; rtcts answers invalid requests
with 400 (`errors.validation_error`), so the 422 entries are removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Body, FastAPI, Path
from fastapi.routing import APIRoute, APIRouter
from pydantic.json_schema import models_json_schema

from serve_app.ingress import dashboard_models as dd, document_models as dm
from serve_app.ingress.protocol import ChatCompletionRequest

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
REF_TEMPLATE = "#/components/schemas/{model}"

TENANT_KEY = "tenantKey"
ADMIN_KEY = "adminKey"
SECURITY_SCHEMES: dict[str, Any] = {
    TENANT_KEY: {
        "type": "http",
        "scheme": "bearer",
        "description": "A tenant's API key: `Authorization: Bearer <key>`.",
    },
    ADMIN_KEY: {
        "type": "http",
        "scheme": "bearer",
        "description": "An admin key (`admin_api_key_sha256` in the policy). A tenant's "
        "key on an admin route is answered 403.",
    },
}

DESCRIPTION = """\
rtcts serves LLMs behind an OpenAI-compatible API and prices every request from the
live state of the cluster: `POST /v1/chat/completions` answers like OpenAI's, with the
price, cost and decision in `x-rtcts-*` headers and an `rtcts` object; `POST /v1/quote`
shows the decision and every candidate model without running anything.

**Keys.** Every route but `/healthz` takes `Authorization: Bearer <key>`, a tenant's
key, or an admin key for `/v1/admin/*`. This document itself needs no key.

**Errors** have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
with the status that says what to do: 400 fix the request, 401 the key, 402 budget or
price cap, 403 not in your plan, 404 unknown model, 413 body over 4 MiB, 429 retry
after `Retry-After`, 502 the model failed (not billed), 503 retry shortly.
"""

# ---------------------------------------------------------------------- errors


def error_answers(**statuses: str) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route: `error_answers(s401=TEXT, ...)`, each
    with the OpenAI error body (and `Retry-After` / `WWW-Authenticate` where sent)."""
    answers: dict[int | str, dict[str, Any]] = {}
    for key, text in statuses.items():
        status = int(key.removeprefix("s"))
        answer: dict[str, Any] = {"model": dm.ErrorResponse, "description": text}
        if status in _HEADERS_OF_STATUS:
            answer["headers"] = _HEADERS_OF_STATUS[status]
        answers[status] = answer
    return answers


def _header(description: str, *, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


_RETRY_AFTER = _header("Whole seconds to wait before retrying (when known).")
_HEADERS_OF_STATUS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": _header("`Bearer`.", required=True)},
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}

NO_KEY = "No API key, or an unknown one (`invalid_api_key`)."
NOT_ADMIN = "A tenant's key: this route needs an admin key (`forbidden`)."
BAD_BODY = (
    "The body is not a valid request: the message names the field (`param`); "
    "`unsupported_parameter` for a field rtcts does not serve (legacy `functions`, "
    "audio or file content) or a feature no candidate model serves (the message names "
    "the model); `rejected_by_model` when the model refuses the request as invalid; "
    "`context_length_exceeded` when the prompt does not fit the model."
)
TOO_LARGE = "The body is over 4 MiB (`payload_too_large`); the connection is closed."
UNKNOWN_MODEL = "No such model or route alias (`model_not_found`)."
NOT_IN_PLAN = "The model is not in the caller's plan (`model_not_in_plan`)."
ADMISSION_DOWN = (
    "Admission (Redis) is down or not configured and the plan fails closed "
    "(`admission_unavailable`); retry shortly."
)

# ---------------------------------------------------------------------- routes

TENANT_ID = Path(
    description="The tenant's id (`tenants[].id` in the policy).",
    openapi_examples={"demo": {"summary": "The default policy's demo tenant", "value": "demo-pro"}},
)


def _security(scheme: str) -> dict[str, Any]:
    return {"security": [{scheme: []}]}


def documented(
    *,
    operation_id: str,
    summary: str,
    model: type[Any],
    tags: Sequence[str],
    key: str | None = TENANT_KEY,
    errors: dict[int | str, dict[str, Any]] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """`add_api_route` keyword arguments that document a route (they change nothing it
    does: the routes return their responses themselves)."""
    return {
        "operation_id": operation_id,
        "summary": summary,
        "description": description,
        "response_model": model,
        "response_description": "Success.",
        "responses": errors or {},
        "tags": list(tags),
        "openapi_extra": _security(key) if key else None,
    }


MODELS = documented(
    operation_id="listModels",
    summary="Models and route aliases of the caller's plan, with their prices",
    model=dm.PricedModelList,
    tags=["OpenAI-compatible"],
    errors=error_answers(s401=NO_KEY),
)
CLUSTER = documented(
    operation_id="getCluster",
    summary="Live state per model and the current cost per 1M tokens",
    model=dm.ClusterReport,
    tags=["rtcts"],
    errors=error_answers(s401=NO_KEY),
)
HEALTH = documented(
    operation_id="getHealth",
    summary="Liveness and the age of the live state (no key)",
    model=dm.Health,
    tags=["rtcts"],
    key=None,
)
USAGE = documented(
    operation_id="getUsage",
    summary="The caller's current minute and month against the plan's limits",
    model=dm.UsageReport,
    tags=["rtcts"],
    errors=error_answers(s401=NO_KEY, s503=ADMISSION_DOWN),
)
ADMIN_USAGE = documented(
    operation_id="getTenantUsage",
    summary="A tenant's usage (admin)",
    model=dm.UsageReport,
    tags=["admin"],
    key=ADMIN_KEY,
    errors=error_answers(
        s401=NO_KEY,
        s403=NOT_ADMIN,
        s404="No such tenant (`tenant_not_found`).",
        s503=ADMISSION_DOWN,
    ),
)
BILLING_DISABLED = "Billing is not configured (`billing_disabled`)."
ADMIN_BILLING = documented(
    operation_id="getBillingHealth",
    summary="Billing health per meter shard: open windows, outbox, lag, dead letters (admin)",
    model=dm.BillingHealth,
    tags=["admin"],
    key=ADMIN_KEY,
    errors=error_answers(s401=NO_KEY, s403=NOT_ADMIN, s404=BILLING_DISABLED),
)
ADMIN_DASHBOARD = documented(
    operation_id="getDashboard",
    summary="The live margin dashboard's figures: models, plans, billing health (admin)",
    description="What the page at `/dashboard` draws (the page itself needs no key: it "
    "holds no data, and asks for an admin key to read this): per model, replicas, queue, "
    "batch, cost per 1M tokens and realized margin against the floors; per plan, "
    "decisions, revenue and SLA credits; billing health. Counts cover the last "
    "`window_s` seconds in buckets of `bucket_s`.",
    model=dd.Dashboard,
    tags=["admin"],
    key=ADMIN_KEY,
    errors=error_answers(s401=NO_KEY, s403=NOT_ADMIN),
)
ADMIN_RECONCILE = documented(
    operation_id="reconcileBilling",
    summary="The local ledger of the last 30 days against Stripe's summaries (admin)",
    model=dm.ReconcileReport,
    tags=["admin"],
    key=ADMIN_KEY,
    errors=error_answers(s401=NO_KEY, s403=NOT_ADMIN, s404=BILLING_DISABLED),
)

# ------------------------------------------------------------- the priced routes

_CHAT_EXAMPLE = {
    "model": "auto",
    "messages": [{"role": "user", "content": "Say something short about GPUs."}],
    "max_tokens": 16,
}
ChatBody = Annotated[
    ChatCompletionRequest,
    Body(openapi_examples={"chat": {"summary": "A short chat", "value": _CHAT_EXAMPLE}}),
]


async def _declared_only(body: ChatBody) -> None:
    """Never served: the priced routes run as plain ASGI (`asgi.py`)."""
    raise AssertionError("a declaration-only route was served")


def _chat_headers() -> dict[str, Any]:
    always = {
        "x-rtcts-request-id": "rtcts's request id (the meter's, and `chatcmpl-<id>`).",
        "x-rtcts-model": "The model that serves the request.",
        "x-rtcts-decision": "The pricing decision (`allow`, `reroute`, `surcharge`, ...).",
        "x-rtcts-reason": "Why (machine-readable).",
        "x-rtcts-price-usd": "The quoted price; after a non-streamed answer, the billed one.",
        "x-rtcts-cost-usd": "The allocated cost-to-serve.",
        "x-rtcts-margin": "(price − cost) / price.",
        "x-rtcts-policy-version": "The pricing policy's version.",
    }
    headers = {name: _header(text, required=True) for name, text in always.items()}
    headers["x-rtcts-sla-met"] = _header("Non-streamed answers: whether the SLA was met.")
    headers["x-request-id"] = _header("Serve's request id (the client's X-Request-ID).")
    return headers


def answer_headers() -> dict[str, Any]:
    """The headers of a priced answer (`x-rtcts-*`)."""
    return _chat_headers()


def stream_event_schema(chunk_model: str = "ChatCompletionStreamChunk") -> dict[str, Any]:
    """One server-sent event of a streamed answer (`itemSchema`, as FastAPI writes it)."""
    chunk = {"$ref": REF_TEMPLATE.format(model=chunk_model)}
    error = {"$ref": REF_TEMPLATE.format(model="ErrorResponse")}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "description": f"A `{chunk_model}` as JSON; the last event is "
                "the literal `[DONE]`. A failure after the stream began is sent as an "
                "`ErrorResponse` event (nothing is billed) and ends the stream.",
                "anyOf": [
                    {"type": "string", "const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [chunk, error]},
                    },
                ],
            },
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    }


def priced_routes(chat_path: str, quote_path: str) -> list[APIRoute]:
    """Declaration-only routes that document `POST /v1/chat/completions` and
    `POST /v1/quote`."""
    router = APIRouter()
    router.add_api_route(
        chat_path,
        _declared_only,
        methods=["POST"],
        operation_id="createChatCompletion",
        summary="Chat completion, priced from the live cluster state",
        description=(
            "OpenAI's chat completions, streamed (`stream: true`, server-sent events) or "
            "not. `model` is a model id or a route alias (`auto`, `economy`, `premium`). "
            "`max_price_usd` (rtcts extension) caps what the request may cost. The "
            "decision and price are in the `x-rtcts-*` headers; the verified figures in "
            "the `rtcts` object (the last chunk of a stream)."
        ),
        response_model=dm.ChatCompletion,
        response_description="The completion (JSON), or its stream (`stream: true`).",
        responses={
            200: {
                "headers": _chat_headers(),
                "content": {"text/event-stream": {"itemSchema": stream_event_schema()}},
            },
            **error_answers(
                s400=BAD_BODY,
                s401=NO_KEY,
                s402=(
                    "The monthly budget would be exceeded (`budget_exceeded`), or the "
                    "price is over `max_price_usd` (`price_cap_exceeded`)."
                ),
                s403=NOT_IN_PLAN,
                s404=UNKNOWN_MODEL,
                s413=TOO_LARGE,
                s429=(
                    "The plan's requests or tokens per minute (`rate_limited`, "
                    "`tokens_limited`), or no candidate can be served within the "
                    "margin and SLA now (`margin_throttled`): retry after `Retry-After`."
                ),
                s502="The model failed while generating (`model_failed`); not billed.",
                s503=(
                    "No replica can take the request (`no_capacity`), the model is "
                    "unavailable (`model_unavailable`) or admission is down "
                    "(`admission_unavailable`); retry shortly."
                ),
            ),
        },
        tags=["OpenAI-compatible"],
        openapi_extra=_security(TENANT_KEY),
    )
    router.add_api_route(
        quote_path,
        _declared_only,
        methods=["POST"],
        operation_id="createQuote",
        summary="The decision for a chat request now, and every candidate (nothing run)",
        description=(
            "The same body as a chat completion. The decision a chat request would get "
            "now, its price, and per candidate model the predicted latency, cost, "
            "price, margin, feasibility and the live state used. Not billed; quotes "
            "count in a window of their own (the plan's `quotes_per_minute`, else its "
            "requests per minute), never in the requests'."
        ),
        response_model=dm.Quote,
        response_description="The decision (a throttle is a decision too: 200).",
        responses=error_answers(
            s400=BAD_BODY,
            s401=NO_KEY,
            s403=NOT_IN_PLAN,
            s404=UNKNOWN_MODEL,
            s413=TOO_LARGE,
            s429="The plan's quotes per minute (`rate_limited`): retry after `Retry-After`.",
            s503=ADMISSION_DOWN,
        ),
        tags=["rtcts"],
        openapi_extra=_security(TENANT_KEY),
    )
    return [route for route in router.routes if isinstance(route, APIRoute)]


# ---------------------------------------------------------------------- the app


class IngressAPI(FastAPI):
    """The FastAPI app of the ingress. Its document adds `declared_only` (routes served
    elsewhere: `priced_routes()`) and the security schemes, and drops FastAPI's 422
    answers (rtcts answers 400)."""

    def __init__(self, declared_only: Sequence[APIRoute] = (), **kwargs: Any) -> None:
        self.declared_only = list(declared_only)
        super().__init__(
            title="rtcts",
            summary="Real-Time Cost-to-Serve LLM gateway",
            description=DESCRIPTION,
            version="1",
            openapi_url=OPENAPI_PATH,
            docs_url=DOCS_PATH,
            redoc_url=REDOC_PATH,
            **kwargs,
        )

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            document = get_openapi(
                title=self.title,
                version=self.version,
                summary=self.summary,
                description=self.description,
                routes=[*self.declared_only, *self.routes],
                separate_input_output_schemas=False,
            )
            self.openapi_schema = finish(document)
        return self.openapi_schema


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """The security schemes in, FastAPI's 422 answers and their schemas out."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            operation.get("responses", {}).pop("422", None)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    # The streams' chunks are named only inside a stream event's `contentSchema`.
    _, chunk = models_json_schema(
        [
            (dm.ChatCompletionStreamChunk, "validation"),
            (dm.TextCompletionStreamChunk, "validation"),
        ],
        ref_template=REF_TEMPLATE,
    )
    for name, schema in chunk["$defs"].items():
        schemas.setdefault(name, schema)
    components["securitySchemes"] = SECURITY_SCHEMES
    return document
