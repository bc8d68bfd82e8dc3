"""OpenAI-shaped HTTP errors: domain mapping, validation, 404/405/413/500, Retry-After.

The app under test is driven through its ASGI interface directly (no server, no
network): that also lets a test stream a body in chunks without a Content-Length.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope

from serve_app.errors import (
    ContextWindowError,
    ModelNotInPlanError,
    PolicyError,
    PolicyIssue,
    PricingError,
    UnknownModelError,
)
from serve_app.ingress.asgi import IngressASGI, read_chat_body
from serve_app.ingress.errors import (
    GENERIC_MESSAGE,
    ApiError,
    error_for,
    field_path,
    install_error_handlers,
    no_capacity,
    payload_too_large,
    price_cap_exceeded,
    retry_after_header,
    throttled,
    unauthorized,
)
from serve_app.ingress.protocol import ChatCompletionRequest
from serve_app.models.backend import BackendError, BackendUnavailable, GenerationFailed
from serve_app.pricing.types import Reason
from tests.factories import http_scope

LIMIT = 4096
SECRET = "s3cr3t-internal-detail"
API_KEY = "sk-live-do-not-echo"

# ------------------------------------------------------------------- ASGI driver


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raised: Exception | None
    """What escaped the app after answering (Starlette re-raises unhandled errors)."""
    body_bytes_read: int
    """How many request body bytes the app pulled through `receive`."""

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    app: ASGIApp,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    body: bytes | None = None,
    chunks: Sequence[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """One HTTP request through the ASGI app.

    `chunks` sends the body in pieces with `Transfer-Encoding: chunked` and no
    Content-Length; otherwise Content-Length is set unless `headers` gives one.
    """
    sent_headers = {k.lower(): v for k, v in (headers or {}).items()}
    if json_body is not None:
        body = json.dumps(json_body).encode()
        sent_headers.setdefault("content-type", "application/json")
    if chunks is None:
        pieces = [body or b""]
        sent_headers.setdefault("content-length", str(len(body or b"")))
    else:
        pieces = list(chunks)
        sent_headers["transfer-encoding"] = "chunked"
    return asyncio.run(_call(app, method, path, pieces, sent_headers))


async def _call(
    app: ASGIApp, method: str, path: str, pieces: list[bytes], headers: dict[str, str]
) -> Reply:
    scope = http_scope(
        method, path, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    )
    messages: list[Message] = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    done = asyncio.Event()
    read = 0
    status = 0
    reply_headers: dict[str, str] = {}
    reply_body = bytearray()

    async def receive() -> Message:
        nonlocal read
        if messages:
            message = messages.pop(0)
            read += len(message["body"])
            return message
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            assert status == 0, "response started twice"
            status = message["status"]
            for name, value in message.get("headers", []):
                reply_headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            reply_body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    raised: Exception | None = None
    try:
        await app(scope, receive, send)
    except Exception as exc:
        raised = exc
    return Reply(status, reply_headers, bytes(reply_body), raised, read)


# -------------------------------------------------------------------- app under test

DOMAIN_ERRORS: dict[str, Exception] = {
    "unknown_model": UnknownModelError("model 'gpt-9' does not exist"),
    "not_in_plan": ModelNotInPlanError("plan 'free' does not include 'llama-70b'"),
    "context": ContextWindowError("5000 prompt tokens plus max_tokens exceed the window"),
    "pricing": PricingError("cannot price that"),
    "policy": PolicyError("/etc/rtcts/policy.yaml", [PolicyIssue("plans[0]", SECRET)]),
    "unavailable": BackendUnavailable(f"upstream http://10.0.0.7:8000 refused: {SECRET}"),
    "failed": GenerationFailed(f"CUDA error: {SECRET}"),
    "backend": BackendError(SECRET),
}

handled: list[ChatCompletionRequest] = []


def make_app() -> IngressASGI:
    """The ingress's shape: a priced route as plain ASGI, the others in FastAPI."""
    app = FastAPI()
    install_error_handlers(app)

    async def chat(scope: Scope, receive: Receive) -> Response:
        body = await read_chat_body(scope, receive, LIMIT)
        handled.append(body)
        return JSONResponse({"model": body.model, "cap": body.output_cap()})

    async def raise_priced(scope: Scope, receive: Receive) -> Response:
        name = scope["path"].rsplit("/", 1)[-1]
        raise DOMAIN_ERRORS[name] if name in DOMAIN_ERRORS else RuntimeError(SECRET)

    @app.get("/raise/{name}")
    async def raise_domain(name: str) -> None:
        raise DOMAIN_ERRORS[name]

    @app.get("/throttle")
    async def throttle() -> None:
        raise throttled(2.5, Reason.NO_FEASIBLE_CANDIDATE)

    @app.get("/auth")
    async def auth(request: Request) -> None:
        raise unauthorized()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"database password is {SECRET}")

    priced = {("POST", "/v1/chat/completions"): chat}
    priced |= {("POST", f"/priced/raise/{name}"): raise_priced for name in [*DOMAIN_ERRORS, "boom"]}
    return IngressASGI(app, priced)


@pytest.fixture(scope="module")
def app() -> IngressASGI:
    return make_app()


def valid_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "llama-8b", "messages": [{"role": "user", "content": "hi"}]}
    body.update(overrides)
    return body


def assert_openai_error(reply: Reply, status: int) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    payload = reply.json()
    assert set(payload) == {"error"}
    error: dict[str, Any] = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    return error


# ---------------------------------------------------------------- request validation


INVALID_BODIES: list[tuple[str, dict[str, Any], str, str]] = [
    # id, body, param, fragment of the message
    ("missing model", {"messages": [{"role": "user", "content": "hi"}]}, "model", "required"),
    ("empty model", valid_body(model=""), "model", "at least 1 character"),
    ("missing messages", {"model": "llama-8b"}, "messages", "required"),
    ("empty messages", valid_body(messages=[]), "messages", "at least one message"),
    ("messages not a list", valid_body(messages="hi"), "messages", "valid array"),
    (
        "bad role",
        valid_body(messages=[{"role": "robot", "content": "hi"}]),
        "messages[0].role",
        "Input should be 'system', 'user', 'assistant', 'tool' or 'developer'",
    ),
    (
        "audio part",
        valid_body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
                    ],
                }
            ]
        ),
        "messages[0].content",
        "only text and image_url content is supported",
    ),
    (
        "only empty contents",
        valid_body(messages=[{"role": "system", "content": ""}, {"role": "user", "content": " "}]),
        "messages",
        "non-empty content",
    ),
    (
        "user content null",
        valid_body(messages=[{"role": "user", "content": None}]),
        "messages[0]",
        "content is required",
    ),
    ("n=0", valid_body(n=0), "n", "greater than or equal to 1"),
    ("n=129", valid_body(n=129), "n", "less than or equal to 128"),
    (
        "tool without a name",
        valid_body(tools=[{"type": "function", "function": {"parameters": {}}}]),
        "tools",
        "tools[0].function.name must be",
    ),
    (
        "tool_choice without tools",
        valid_body(tool_choice="auto"),
        "tool_choice",
        "tool_choice is only allowed when tools are given",
    ),
    ("functions", valid_body(functions=[{"name": "f", "parameters": {}}]), "functions", "not"),
    ("logprobs string", valid_body(logprobs="yes"), "logprobs", "valid boolean"),
    (
        "top_logprobs without logprobs",
        valid_body(top_logprobs=2),
        "top_logprobs",
        "top_logprobs is only allowed when logprobs is true",
    ),
    (
        "response_format unknown",
        valid_body(response_format={"type": "yaml"}),
        "response_format",
        "must be text, json_object or json_schema",
    ),
    ("logit_bias word", valid_body(logit_bias={"hello": 5}), "logit_bias", "not a token id"),
    ("temperature 3", valid_body(temperature=3), "temperature", "less than or equal to 2"),
    ("temperature string", valid_body(temperature="hot"), "temperature", "valid number"),
    ("top_p 0", valid_body(top_p=0), "top_p", "greater than 0"),
    ("max_tokens 0", valid_body(max_tokens=0), "max_tokens", "greater than or equal to 1"),
    ("max_tokens float", valid_body(max_tokens=5.5), "max_tokens", "valid integer"),
    (
        "max_completion_tokens -1",
        valid_body(max_completion_tokens=-1),
        "max_completion_tokens",
        "greater than or equal to 1",
    ),
    (
        "stream_options without stream",
        valid_body(stream_options={"include_usage": True}),
        "stream_options",
        "only allowed when stream is true",
    ),
    (
        "stream_options with stream false",
        valid_body(stream=False, stream_options={"include_usage": True}),
        "stream_options",
        "only allowed when stream is true",
    ),
    ("stream string", valid_body(stream="yes"), "stream", "valid boolean"),
    ("max_price_usd negative", valid_body(max_price_usd=-0.01), "max_price_usd", "greater"),
    ("max_price_usd huge", valid_body(max_price_usd="1e999999"), "max_price_usd", "less"),
    ("max_price_usd nan", valid_body(max_price_usd="NaN"), "max_price_usd", "finite"),
    ("stop list of 5", valid_body(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    ("stop of numbers", valid_body(stop=[1, 2]), "stop", "list of strings"),
    ("presence_penalty 3", valid_body(presence_penalty=3), "presence_penalty", "less"),
    ("frequency_penalty -3", valid_body(frequency_penalty=-3), "frequency_penalty", "greater"),
]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [case[1:] for case in INVALID_BODIES],
    ids=[case[0] for case in INVALID_BODIES],
)
def test_invalid_request_is_400_in_openai_shape(
    app: IngressASGI, body: dict[str, Any], param: str, fragment: str
) -> None:
    reply = call(app, "POST", "/v1/chat/completions", json_body=body)
    error = assert_openai_error(reply, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: "), error["message"]
    assert fragment in error["message"]
    assert reply.raised is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (valid_body(tools=[{"type": "code_interpreter"}]), "tools"),
        (valid_body(functions=[{"name": "f"}]), "functions"),
        (
            valid_body(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]),
            "messages[0].content",
        ),
    ],
)
def test_unsupported_features_carry_a_code(
    app: IngressASGI, body: dict[str, Any], param: str
) -> None:
    error = assert_openai_error(call(app, "POST", "/v1/chat/completions", json_body=body), 400)
    assert error["code"] == "unsupported_parameter"
    assert error["param"] == param


@pytest.mark.parametrize(
    "body",
    [
        valid_body(n=1),
        valid_body(n=2),
        valid_body(logprobs=False),
        valid_body(logprobs=True, top_logprobs=2),
        valid_body(tools=[]),
        valid_body(
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            tool_choice={"type": "function", "function": {"name": "f"}},
        ),
        valid_body(response_format={"type": "json_object"}),
        valid_body(logit_bias={"42": -100}, presence_penalty=0.5),
        valid_body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                }
            ]
        ),
        valid_body(tools=None, functions=None, logprobs=None),
        valid_body(stream=True, stream_options={"include_usage": False}),
        valid_body(stream_options=None),
        valid_body(unknown_future_field={"x": 1}, response_format={"type": "text"}),
        valid_body(stop=["a", "b", "c", "d"]),
        valid_body(max_price_usd="0.0025"),
        valid_body(
            messages=[{"role": "assistant", "content": None}, {"role": "user", "content": "x"}]
        ),
    ],
)
def test_accepted_bodies(app: IngressASGI, body: dict[str, Any]) -> None:
    reply = call(app, "POST", "/v1/chat/completions", json_body=body)
    assert reply.status == 200, reply.body


def test_several_issues_are_listed_and_the_first_is_the_param(app: IngressASGI) -> None:
    body = valid_body(temperature=9, top_p=9, max_tokens=0)
    error = assert_openai_error(call(app, "POST", "/v1/chat/completions", json_body=body), 400)
    assert error["param"] == "max_tokens"
    for name in ("max_tokens: ", "temperature: ", "top_p: "):
        assert name in error["message"]


def test_malformed_json_is_400_invalid_json_body(app: IngressASGI) -> None:
    reply = call(
        app,
        "POST",
        "/v1/chat/completions",
        body=b'{"model": "llama-8b", "messages": [',
        headers={"content-type": "application/json"},
    )
    error = assert_openai_error(reply, 400)
    assert error["message"] == "invalid JSON body"
    assert error["type"] == "invalid_request_error"


def test_missing_body_is_400(app: IngressASGI) -> None:
    reply = call(app, "POST", "/v1/chat/completions", headers={"content-type": "application/json"})
    assert "body is required" in assert_openai_error(reply, 400)["message"]


def test_body_that_is_not_an_object_is_400(app: IngressASGI) -> None:
    reply = call(app, "POST", "/v1/chat/completions", json_body=["not", "an", "object"])
    error = assert_openai_error(reply, 400)
    assert error["param"] is None
    assert error["message"] == "The request body must be a JSON object."


def test_a_json_body_is_read_whatever_its_content_type(app: IngressASGI) -> None:
    reply = call(
        app,
        "POST",
        "/v1/chat/completions",
        body=json.dumps(valid_body(max_tokens=3)).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},  # as `curl -d` sends
    )
    assert reply.status == 200
    assert reply.json() == {"model": "llama-8b", "cap": 3}


def test_a_body_that_is_not_json_is_400(app: IngressASGI) -> None:
    reply = call(app, "POST", "/v1/chat/completions", body=b"model=llama-8b")
    assert assert_openai_error(reply, 400)["message"] == "invalid JSON body"


def test_field_path() -> None:
    assert (
        field_path(("body", "messages", 0, "content", 1, "text")) == "messages[0].content[1].text"
    )
    assert field_path(("body",)) == ""
    assert field_path(("query", "limit")) == "limit"
    assert field_path(()) == ""


# ------------------------------------------------------------------- domain errors


MAPPING: list[tuple[str, int, str, str | None]] = [
    ("unknown_model", 404, "invalid_request_error", "model_not_found"),
    ("not_in_plan", 403, "invalid_request_error", "model_not_in_plan"),
    ("context", 400, "invalid_request_error", "context_length_exceeded"),
    ("pricing", 400, "invalid_request_error", None),
    ("policy", 500, "server_error", None),
    ("unavailable", 503, "server_error", "model_unavailable"),
    ("failed", 502, "server_error", "model_failed"),
    ("backend", 502, "server_error", "model_failed"),
]


@pytest.mark.parametrize(("name", "status", "kind", "code"), MAPPING)
def test_error_for_maps_domain_errors(name: str, status: int, kind: str, code: str | None) -> None:
    error = error_for(DOMAIN_ERRORS[name])
    assert (error.status, error.type, error.code) == (status, kind, code)


@pytest.mark.parametrize(("name", "status", "kind", "code"), MAPPING)
def test_domain_errors_raised_by_an_endpoint_are_answered_in_openai_shape(
    app: IngressASGI, name: str, status: int, kind: str, code: str | None
) -> None:
    for method, path in [("GET", f"/raise/{name}"), ("POST", f"/priced/raise/{name}")]:
        reply = call(app, method, path)
        error = assert_openai_error(reply, status)
        assert (error["type"], error["code"]) == (kind, code)
        assert SECRET not in reply.body.decode()
        assert reply.raised is None


def test_client_safe_messages_are_passed_through() -> None:
    assert error_for(DOMAIN_ERRORS["unknown_model"]).message == "model 'gpt-9' does not exist"
    assert error_for(DOMAIN_ERRORS["context"]).message.startswith("5000 prompt tokens")


def test_internal_details_never_reach_the_client() -> None:
    policy = error_for(DOMAIN_ERRORS["policy"])
    assert policy.message == GENERIC_MESSAGE
    assert "policy.yaml" not in policy.message
    assert "10.0.0.7" not in error_for(DOMAIN_ERRORS["unavailable"]).message
    failed = error_for(DOMAIN_ERRORS["failed"])
    assert failed.message == "The model failed while generating; you were not billed."


def test_unexpected_exception_is_generic_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="serve_app.ingress.errors"):
        error = error_for(KeyError(SECRET))
    assert (error.status, error.type, error.code, error.message) == (
        500,
        "server_error",
        None,
        GENERIC_MESSAGE,
    )
    assert caplog.records
    assert caplog.records[0].exc_info is not None


def test_error_for_returns_an_api_error_as_is() -> None:
    error = no_capacity()
    assert error_for(error) is error


def test_unhandled_exception_is_500_without_its_text(app: IngressASGI) -> None:
    reply = call(app, "GET", "/boom")
    error = assert_openai_error(reply, 500)
    assert error["type"] == "server_error"
    assert error["message"] == GENERIC_MESSAGE
    text = reply.body.decode()
    assert SECRET not in text
    assert "Traceback" not in text
    assert "RuntimeError" not in text
    assert isinstance(reply.raised, RuntimeError)  # re-raised for the server to log


def test_unhandled_exception_in_a_priced_route_is_500_and_logged(
    app: IngressASGI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="serve_app.ingress.errors"):
        reply = call(app, "POST", "/priced/raise/boom")
    error = assert_openai_error(reply, 500)
    assert error["message"] == GENERIC_MESSAGE
    assert SECRET not in reply.body.decode()
    assert reply.raised is None
    assert caplog.records
    assert caplog.records[0].exc_info is not None


# ------------------------------------------------------------------------- helpers


def test_unauthorized_never_echoes_the_key(app: IngressASGI) -> None:
    reply = call(app, "GET", "/auth", headers={"authorization": f"Bearer {API_KEY}"})
    error = assert_openai_error(reply, 401)
    assert error["message"] == "Invalid API key"
    assert error["code"] == "invalid_api_key"
    assert API_KEY not in reply.body.decode()


def test_throttled_is_429_with_integer_retry_after(app: IngressASGI) -> None:
    reply = call(app, "GET", "/throttle")
    error = assert_openai_error(reply, 429)
    assert (error["type"], error["code"]) == ("rate_limit_error", "margin_throttled")
    assert reply.headers["retry-after"] == "3"
    assert "no_feasible_candidate" in error["message"]


@pytest.mark.parametrize(
    ("seconds", "header"),
    [
        (0.0, "1"),
        (0.001, "1"),
        (1.0, "1"),
        (1.01, "2"),
        (2.5, "3"),
        (59.0, "59"),
        (-4.0, "1"),
        (math.nan, "1"),
        (math.inf, "86400"),
        (1e12, "86400"),
    ],
)
def test_retry_after_is_a_whole_number_of_seconds_at_least_one(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header
    error = throttled(seconds, "no_capacity")
    value = error.headers["Retry-After"]
    assert value == header
    assert value.isdigit()
    assert int(value) >= 1


def test_no_capacity() -> None:
    error = no_capacity()
    assert (error.status, error.code, error.headers) == (503, "no_capacity", {})
    assert no_capacity(0.4).headers == {"Retry-After": "1"}


def test_price_cap_exceeded() -> None:
    error = price_cap_exceeded()
    assert (error.status, error.code, error.param) == (402, "price_cap_exceeded", "max_price_usd")
    detailed = price_cap_exceeded(price_micro=1200, cap_micro=1000)
    assert "0.0012 USD" in detailed.message
    assert "0.001 USD" in detailed.message


def test_payload_too_large() -> None:
    error = payload_too_large(1024)
    assert (error.status, error.code) == (413, "payload_too_large")
    assert "1024" in error.message


def test_api_error_response_and_sse() -> None:
    error = ApiError(418, "short and stout", code="teapot", param="x", headers={"X-A": "1"})
    response = error.to_response()
    assert response.status_code == 418
    assert response.headers["x-a"] == "1"
    assert json.loads(bytes(response.body)) == {
        "error": {
            "message": "short and stout",
            "type": "invalid_request_error",
            "param": "x",
            "code": "teapot",
        }
    }
    event = error.to_sse()
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert json.loads(event[len(b"data: ") :]) == error.body()


# ----------------------------------------------------------------- 404, 405, 413


def test_unknown_route_is_404_in_openai_shape(app: IngressASGI) -> None:
    error = assert_openai_error(call(app, "GET", "/v1/nope"), 404)
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "Invalid URL (GET /v1/nope)"


def test_wrong_method_is_405_in_openai_shape(app: IngressASGI) -> None:
    reply = call(app, "GET", "/v1/chat/completions")
    assert_openai_error(reply, 405)
    assert "POST" in reply.headers["allow"]


def test_413_from_content_length_without_reading_the_body(app: IngressASGI) -> None:
    body = json.dumps(valid_body(messages=[{"role": "user", "content": "x" * LIMIT}])).encode()
    handled.clear()
    reply = call(
        app,
        "POST",
        "/v1/chat/completions",
        body=body,
        headers={"content-type": "application/json"},
    )
    error = assert_openai_error(reply, 413)
    assert error["code"] == "payload_too_large"
    assert reply.body_bytes_read == 0
    assert not handled


def test_413_from_a_chunked_body_counted_as_it_streams(app: IngressASGI) -> None:
    body = json.dumps(valid_body(messages=[{"role": "user", "content": "x" * LIMIT}])).encode()
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    handled.clear()
    reply = call(
        app,
        "POST",
        "/v1/chat/completions",
        chunks=chunks,
        headers={"content-type": "application/json"},
    )
    error = assert_openai_error(reply, 413)
    assert error["code"] == "payload_too_large"
    assert reply.body_bytes_read <= LIMIT + 1000  # stopped reading soon after the limit
    assert reply.raised is None
    assert not handled


def test_413_when_the_body_is_longer_than_its_content_length(app: IngressASGI) -> None:
    body = json.dumps(valid_body(messages=[{"role": "user", "content": "x" * LIMIT}])).encode()
    reply = call(
        app,
        "POST",
        "/v1/chat/completions",
        chunks=[body[:100], body[100:]],
        headers={"content-type": "application/json", "content-length": "100"},
    )
    assert_openai_error(reply, 413)


def test_chunked_body_under_the_limit_passes(app: IngressASGI) -> None:
    body = json.dumps(valid_body(max_tokens=7)).encode()
    reply = call(
        app,
        "POST",
        "/v1/chat/completions",
        chunks=[body[:10], body[10:20], body[20:]],
        headers={"content-type": "application/json"},
    )
    assert reply.status == 200
    assert reply.json() == {"model": "llama-8b", "cap": 7}


def test_body_exactly_at_the_limit_passes(app: IngressASGI) -> None:
    body = json.dumps(valid_body()).encode()
    padded = body + b" " * (LIMIT - len(body))
    assert len(padded) == LIMIT
    reply = call(
        app,
        "POST",
        "/v1/chat/completions",
        body=padded,
        headers={"content-type": "application/json"},
    )
    assert reply.status == 200
