"""The served API description: where it is, what it lists, and that it tells the truth.

The real ingress ASGI app (`build_asgi`, tests/ingress_app.py) without Ray or Redis:
no admission, so `/v1/usage` answers its documented 503, and no billing, so the admin
billing routes answer their documented 404. Every answer below is checked against the
schema the served document gives for its route, status and content type. The fuzz test
(tests/integration/test_openapi_fuzz.py) does the same with real Redis and generated
requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from pydantic import BaseModel, ValidationError
from starlette.testclient import TestClient

from serve_app.errors import (
    AdmissionUnavailable,
    BudgetExceeded,
    ContextWindowError,
    Forbidden,
    GenerationFailed,
    MarginThrottled,
    ModelNotInPlanError,
    NoCapacity,
    NotFound,
    PayloadTooLarge,
    PriceCapExceeded,
    RateLimited,
    Unauthorized,
    UnknownModelError,
)
from serve_app.ingress import document_models as dm, errors
from serve_app.ingress.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from serve_app.models.backend import BackendUnavailable, Delta
from tests.fakes import FakeHandle
from tests.ingress_app import ADMIN_KEY, TENANT_KEY, ingress_app, ingress_parts

ROUTES = {
    ("post", "/v1/chat/completions"),
    ("post", "/v1/completions"),
    ("post", "/v1/embeddings"),
    ("post", "/v1/quote"),
    ("get", "/v1/models"),
    ("get", "/v1/cluster"),
    ("get", "/v1/usage"),
    ("get", "/v1/admin/usage/{tenant_id}"),
    ("get", "/v1/admin/billing"),
    ("post", "/v1/admin/reconcile"),
    ("get", "/v1/admin/dashboard"),
    ("get", "/healthz"),
}
COMPLETION = {"model": "auto", "prompt": ["Once upon", "a time"], "max_tokens": 8, "n": 2}
EMBEDDING = {"model": "bge-m3", "input": ["GPUs are fast."], "encoding_format": "float"}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
DOCUMENT_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
TENANT = {"Authorization": f"Bearer {TENANT_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {
    "model": "auto",
    "messages": [{"role": "user", "content": "Tell me about GPUs."}],
    "max_tokens": 16,
}


def _client(handle: FakeHandle | None = None) -> Iterator[TestClient]:
    with TestClient(
        ingress_app(ingress_parts(handle=handle)), raise_server_exceptions=False
    ) as client:
        yield client


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    yield from _client()


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def documented(
    doc: dict[str, Any], method: str, path: str, status: int, media: str = "application/json"
) -> dict[str, Any]:
    """The schema the document gives for this answer (its `itemSchema` for a stream)."""
    operation = doc["paths"][path][method]
    assert str(status) in operation["responses"], (method, path, status)
    content = operation["responses"][str(status)]["content"][media]
    schema: dict[str, Any] = content.get("schema") or content["itemSchema"]
    return schema


def check(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    """Validate `value` against `schema`, its references resolved in the document."""
    jsonschema.Draft202012Validator(
        {**schema, "components": doc["components"]},
        format_checker=jsonschema.FormatChecker(),
    ).validate(value)


def check_answer(doc: dict[str, Any], method: str, path: str, route: str, response: Any) -> None:
    """The answer's status is documented for the route, and its JSON body and required
    headers are what the document says."""
    assert response.headers["content-type"].startswith("application/json")
    check(doc, documented(doc, method, route, response.status_code), response.json())
    answer = doc["paths"][route][method]["responses"][str(response.status_code)]
    for name, header in answer.get("headers", {}).items():
        if header.get("required"):
            assert name.lower() in response.headers, (path, name)


def events(text: str) -> list[str]:
    """The `data:` payloads of a server-sent event stream."""
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


# ---------------------------------------------------------------------- where, who


def test_the_document_lists_every_public_route_the_priced_ones_too(
    document: dict[str, Any],
) -> None:
    listed = {(m, p) for p, item in document["paths"].items() for m in item}
    assert listed == ROUTES


def test_the_document_and_its_readers_are_served_without_a_key(client: TestClient) -> None:
    served = client.get("/openapi.json")
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200, page
        assert html.headers["content-type"].startswith("text/html")
        assert "/openapi.json" in html.text
    # One public document: a key changes nothing in it (no tenant's data, plan or price).
    assert client.get("/openapi.json", headers=TENANT).json() == served.json()
    assert client.get("/openapi.json", headers=ADMIN).json() == served.json()


def test_every_route_but_healthz_needs_a_bearer_key_and_admin_routes_an_admin_key(
    document: dict[str, Any],
) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes == {
        "tenantKey": {
            "type": "http",
            "scheme": "bearer",
            "description": schemes["tenantKey"]["description"],
        },
        "adminKey": {
            "type": "http",
            "scheme": "bearer",
            "description": schemes["adminKey"]["description"],
        },
    }
    for method, path in ROUTES:
        operation = document["paths"][path][method]
        if path == "/healthz":
            assert "security" not in operation
            continue
        scheme = "adminKey" if path.startswith("/v1/admin/") else "tenantKey"
        assert operation["security"] == [{scheme: []}], (method, path)
        assert "401" in operation["responses"], (method, path)
        if scheme == "adminKey":
            assert "403" in operation["responses"], (method, path)


def test_every_served_route_is_documented_and_nothing_else(
    client: TestClient, document: dict[str, Any]
) -> None:
    app: Any = client.app
    # documented by declaration-only routes
    priced = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/quote"}
    served = {
        (method.lower(), route.path)
        for route in app.routes
        if route.path not in DOCUMENT_PATHS
        and (route.include_in_schema or route.path in priced)  # or opted out, by name
        for method in route.methods - {"HEAD"}
    }
    assert served == ROUTES
    assert {(m, p) for p, item in document["paths"].items() for m in item} == served


def test_invalid_requests_are_documented_as_400_not_fastapis_422(
    document: dict[str, Any],
) -> None:
    for item in document["paths"].values():
        for operation in item.values():
            assert "422" not in operation["responses"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_priced_routes_document_their_body_answers_and_errors(
    document: dict[str, Any],
) -> None:
    chat = document["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert set(chat["responses"]) == {
        "200", "400", "401", "402", "403", "404", "413", "429", "502", "503"
    }  # fmt: skip
    ok = chat["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    assert "text/event-stream" in ok
    for status in set(chat["responses"]) - {"200"}:
        error = chat["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorResponse"}, status
    quote = document["paths"]["/v1/quote"]["post"]
    assert quote["requestBody"]["content"]["application/json"]["schema"] == body
    assert quote["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Quote"
    }


# ------------------------------------------------------------- it tells the truth


ANSWERS = [
    # (method, path, documented route, headers, body, status)
    ("post", "/v1/chat/completions", None, TENANT, CHAT, 200),
    ("post", "/v1/quote", None, TENANT, CHAT, 200),
    ("post", "/v1/quote", None, TENANT, {**CHAT, "max_price_usd": "0"}, 200),
    ("get", "/v1/models", None, TENANT, None, 200),
    ("get", "/v1/cluster", None, TENANT, None, 200),
    ("get", "/healthz", None, {}, None, 200),
    ("post", "/v1/chat/completions", None, {}, CHAT, 401),
    ("post", "/v1/chat/completions", None, TENANT, {**CHAT, "n": 0}, 400),
    ("post", "/v1/chat/completions", None, TENANT, {**CHAT, "tools": [TOOL], "n": 2}, 200),
    ("post", "/v1/chat/completions", None, TENANT, {**CHAT, "logprobs": True}, 200),
    ("post", "/v1/chat/completions", None, TENANT, {**CHAT, "model": "bge-m3"}, 400),
    ("post", "/v1/completions", None, TENANT, COMPLETION, 200),
    ("post", "/v1/completions", None, TENANT, {**COMPLETION, "echo": True}, 400),
    ("post", "/v1/completions", None, {}, COMPLETION, 401),
    ("post", "/v1/embeddings", None, TENANT, EMBEDDING, 200),
    ("post", "/v1/embeddings", None, TENANT, {**EMBEDDING, "encoding_format": "base64"}, 200),
    ("post", "/v1/embeddings", None, TENANT, {**EMBEDDING, "model": "auto"}, 400),
    ("post", "/v1/embeddings", None, TENANT, {**EMBEDDING, "model": "nope"}, 404),
    ("post", "/v1/embeddings", None, {}, EMBEDDING, 401),
    ("post", "/v1/chat/completions", None, TENANT, {**CHAT, "model": "gpt-9"}, 404),
    ("post", "/v1/chat/completions", None, TENANT, {**CHAT, "max_price_usd": 0}, 402),
    ("post", "/v1/quote", None, {}, CHAT, 401),
    ("post", "/v1/quote", None, TENANT, {"model": "auto"}, 400),
    ("get", "/v1/models", None, {"Authorization": "Bearer nope"}, None, 401),
    ("get", "/v1/cluster", None, {}, None, 401),
    ("get", "/v1/usage", None, {}, None, 401),
    ("get", "/v1/usage", None, TENANT, None, 503),  # no admission configured
    ("get", "/v1/admin/usage/demo-pro", "/v1/admin/usage/{tenant_id}", TENANT, None, 403),
    ("get", "/v1/admin/usage/nobody", "/v1/admin/usage/{tenant_id}", ADMIN, None, 404),
    ("get", "/v1/admin/usage/demo-pro", "/v1/admin/usage/{tenant_id}", ADMIN, None, 503),
    ("get", "/v1/admin/billing", None, {}, None, 401),
    ("get", "/v1/admin/billing", None, TENANT, None, 403),
    ("get", "/v1/admin/billing", None, ADMIN, None, 404),  # billing not configured
    ("post", "/v1/admin/reconcile", None, ADMIN, None, 404),
    ("get", "/v1/admin/dashboard", None, {}, None, 401),
    ("get", "/v1/admin/dashboard", None, TENANT, None, 403),
    ("get", "/v1/admin/dashboard", None, ADMIN, None, 200),  # after the chats above
]


@pytest.mark.parametrize(
    ("method", "path", "route", "headers", "body", "status"),
    ANSWERS,
    ids=[f"{a[0]} {a[1]} {a[5]}" for a in ANSWERS],
)
def test_real_answers_are_what_the_document_says(
    client: TestClient,
    document: dict[str, Any],
    method: str,
    path: str,
    route: str | None,
    headers: dict[str, str],
    body: dict[str, Any] | None,
    status: int,
) -> None:
    response = client.request(method.upper(), path, headers=headers, json=body)
    assert response.status_code == status, response.text
    check_answer(document, method, path, route or path, response)


def test_a_streamed_answer_is_the_documented_events(document: dict[str, Any]) -> None:
    schema = documented(document, "post", "/v1/chat/completions", 200, "text/event-stream")
    for client in _client():
        response = client.post(
            "/v1/chat/completions", headers=TENANT, json={**CHAT, "stream": True}
        )
        assert response.headers["content-type"].startswith("text/event-stream")
        answer = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
        required = [n for n, h in answer["headers"].items() if h["required"]]
        assert all(name in response.headers for name in required)
        payloads = events(response.text)
    assert payloads[-1] == "[DONE]"
    chunk = {"$ref": "#/components/schemas/ChatCompletionStreamChunk"}
    for data in payloads:
        check(document, schema, {"data": data})
        if data != "[DONE]":
            check(document, chunk, json.loads(data))
    assert "rtcts" in json.loads(payloads[-2])


@pytest.mark.parametrize(
    ("path", "body", "chunk_model", "handle"),
    [
        ("/v1/completions", {**COMPLETION, "n": 1}, "TextCompletionStreamChunk", None),
        (
            "/v1/chat/completions",
            {**CHAT, "tools": [TOOL], "n": 2, "logprobs": True},
            "ChatCompletionStreamChunk",
            FakeHandle(
                deltas=(
                    Delta(
                        "",
                        tool_calls=(
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "f", "arguments": ""},
                            },
                        ),
                    ),
                    Delta("Hi", index=1, logprobs={"content": []}),
                    Delta("", finish_reason="tool_calls"),
                    Delta("", index=1, finish_reason="stop", input_tokens=9, output_tokens=3),
                )
            ),
        ),
    ],
)
def test_other_streams_are_the_documented_events(
    document: dict[str, Any],
    path: str,
    body: dict[str, Any],
    chunk_model: str,
    handle: FakeHandle | None,
) -> None:
    schema = documented(document, "post", path, 200, "text/event-stream")
    for client in _client(handle):
        response = client.post(
            path,
            headers=TENANT,
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        )
        assert response.status_code == 200, response.text
        payloads = events(response.text)
    assert payloads[-1] == "[DONE]"
    chunk = {"$ref": f"#/components/schemas/{chunk_model}"}
    for data in payloads:
        check(document, schema, {"data": data})
        if data != "[DONE]":
            check(document, chunk, json.loads(data))
    assert "usage" in json.loads(payloads[-2])


def test_a_stream_that_fails_ends_with_a_documented_error_event(document: dict[str, Any]) -> None:
    schema = documented(document, "post", "/v1/chat/completions", 200, "text/event-stream")
    failing = FakeHandle(
        deltas=[Delta("GPUs"), Delta(" are")], error=BackendUnavailable("x"), fail_after=1
    )
    for client in _client(failing):
        response = client.post(
            "/v1/chat/completions", headers=TENANT, json={**CHAT, "stream": True}
        )
        payloads = events(response.text)
    error = json.loads(payloads[-1])
    check(document, schema, {"data": payloads[-1]})
    check(document, {"$ref": "#/components/schemas/ErrorResponse"}, error)
    assert error["error"]["code"] == "model_unavailable"


@pytest.mark.parametrize(
    "exc",
    [
        Unauthorized("k"),
        Forbidden("no"),
        NotFound("none", code="tenant_not_found"),
        PayloadTooLarge(10),
        PriceCapExceeded(5, 1),
        BudgetExceeded("over"),
        RateLimited("rate_limited", 2.0),
        RateLimited("tokens_limited", None),
        MarginThrottled(3.0, "no_feasible_candidate"),
        NoCapacity(),
        AdmissionUnavailable("down"),
        UnknownModelError("gpt-9"),
        ModelNotInPlanError("m"),
        ContextWindowError("long"),
        BackendUnavailable("down"),
        GenerationFailed("boom"),
        RuntimeError("secret"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_every_error_body_is_the_documented_error_response(
    document: dict[str, Any], exc: Exception
) -> None:
    body = errors.error_for(exc).body()
    check(document, {"$ref": "#/components/schemas/ErrorResponse"}, body)
    dm.ErrorResponse.model_validate(body)


@pytest.mark.parametrize(
    ("documented_model", "runtime_model"),
    [
        (dm.ChatCompletion, ChatCompletionResponse),
        (dm.ChatCompletionStreamChunk, ChatCompletionChunk),
    ],
)
def test_documented_answers_have_the_runtime_models_fields(
    documented_model: type[BaseModel], runtime_model: type[BaseModel]
) -> None:
    assert list(documented_model.model_fields) == list(runtime_model.model_fields)


# ----------------------------------------------- the request schema is the validator


BODIES: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("n 1", {"n": 1}),
    ("n 1.0", {"n": 1.0}),
    ("n 2", {"n": 2}),
    ("max_tokens 16.0", {"max_tokens": 16.0}),
    ("max_tokens 0", {"max_tokens": 0}),
    ("max_tokens 1.5", {"max_tokens": 1.5}),
    ("logprobs false", {"logprobs": False}),
    ("logprobs true", {"logprobs": True}),
    ("logprobs 0", {"logprobs": 0}),
    ("logprobs object", {"logprobs": {}}),
    ("tools empty", {"tools": []}),
    ("tools", {"tools": [{"type": "function"}]}),
    ("tools false", {"tools": False}),
    ("functions object", {"functions": {}}),
    ("stop 4", {"stop": ["a", "b", "c", "d"]}),
    ("stop 5", {"stop": ["a", "b", "c", "d", "e"]}),
    ("stream_options with stream", {"stream": True, "stream_options": {"include_usage": True}}),
    ("stream_options alone", {"stream_options": {"include_usage": True}}),
    ("stream_options null", {"stream_options": None}),
    ("no messages", {"messages": []}),
    ("blank messages", {"messages": [{"role": "user", "content": " \n\x1c"}]}),
    ("blank parts", {"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]}),
    ("text part", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
    ("part without type", {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}),
    ("user without content", {"messages": [{"role": "user"}, {"role": "user", "content": "x"}]}),
    (
        "assistant without content",
        {"messages": [{"role": "assistant", "content": None}, {"role": "user", "content": "x"}]},
    ),
    ("price cap", {"max_price_usd": 0.25}),
    ("price cap string", {"max_price_usd": "0.000185"}),
    ("price cap negative", {"max_price_usd": -1}),
    ("price cap over", {"max_price_usd": 1_000_001}),
    ("temperature 1", {"temperature": 1}),
    ("temperature 3", {"temperature": 3}),
    ("unknown field", {"response_format": {"type": "text"}}),
]


@pytest.mark.parametrize(("name", "change"), BODIES, ids=[b[0] for b in BODIES])
def test_the_request_schema_accepts_exactly_what_the_validator_accepts(
    document: dict[str, Any], name: str, change: dict[str, Any]
) -> None:
    body = {**CHAT, **change}
    try:
        ChatCompletionRequest.model_validate_json(json.dumps(body))
        accepted = True
    except ValidationError:
        accepted = False
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/ChatCompletionRequest", "components": document["components"]}
    )
    assert validator.is_valid(body) == accepted, (name, accepted)
