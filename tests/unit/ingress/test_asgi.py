"""The ingress's ASGI entry: dispatch of the priced routes, reading the body.

Errors and body limits through the same entry are in test_errors.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope

from serve_app.errors import PayloadTooLarge
from serve_app.ingress.asgi import (
    IngressASGI,
    content_length,
    headers_of,
    read_body,
    route_path,
)
from serve_app.ingress.errors import error_for
from tests.factories import http_scope

ran: list[str] = []


async def priced(scope: Scope, receive: Receive) -> Response:
    body = await read_body(scope, receive, 100)
    ran.append(scope["path"])
    return PlainTextResponse(b"priced:" + body)


def make_app() -> IngressASGI:
    api = FastAPI()

    @api.get("/v1/models")
    async def models() -> PlainTextResponse:
        return PlainTextResponse("api")

    return IngressASGI(api, {("POST", "/v1/chat/completions"): priced})


def scope_of(method: str, path: str, root_path: str = "", **headers: str) -> dict[str, Any]:
    pairs = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return http_scope(method, path, pairs, root_path)


def run(app: IngressASGI, scope: dict[str, Any], messages: list[Message]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def body_of(sent: list[Message]) -> tuple[int, bytes]:
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def request(body: bytes) -> list[Message]:
    return [{"type": "http.request", "body": body, "more_body": False}]


def test_route_path_is_the_path_inside_serves_route_prefix() -> None:
    assert route_path({"path": "/priced/v1/quote", "root_path": "/priced"}) == "/v1/quote"
    assert route_path({"path": "/v1/quote", "root_path": ""}) == "/v1/quote"
    assert route_path({"path": "/v1/quote"}) == "/v1/quote"
    # A proxy that already stripped the prefix leaves the path as it is.
    assert route_path({"path": "/v1/quote", "root_path": "/priced"}) == "/v1/quote"


def test_priced_route_runs_under_a_route_prefix_and_others_reach_fastapi() -> None:
    app = make_app()
    scope = scope_of("POST", "/p/v1/chat/completions", root_path="/p")
    assert body_of(run(app, scope, request(b"hi"))) == (200, b"priced:hi")
    assert body_of(run(app, scope_of("GET", "/p/v1/models", root_path="/p"), [])) == (200, b"api")


def test_a_wrong_method_or_a_trailing_slash_is_answered_by_fastapi() -> None:
    app = make_app()
    ran.clear()
    status, _ = body_of(run(app, scope_of("GET", "/v1/chat/completions"), []))
    assert status == 405
    status, _ = body_of(run(app, scope_of("POST", "/v1/chat/completions/"), request(b"x")))
    assert status == 307  # FastAPI's redirect to the path without the slash
    assert not ran


def test_a_client_that_leaves_before_its_body_gets_nothing_and_runs_nothing() -> None:
    ran.clear()
    partial: list[Message] = [{"type": "http.request", "body": b"{", "more_body": True}]
    assert run(make_app(), scope_of("POST", "/v1/chat/completions"), partial) == []
    assert not ran


def test_read_body_joins_chunks_up_to_the_limit() -> None:
    chunks: list[Message] = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    ]

    async def receive() -> Message:
        return chunks.pop(0)

    assert asyncio.run(read_body(scope_of("POST", "/"), receive, 4)) == b"abcd"


@pytest.mark.parametrize(
    ("headers", "messages"),
    [
        ({"content_length": "5"}, request(b"12345")),  # declared: refused before reading
        ({}, [{"type": "http.request", "body": b"123", "more_body": True}, *request(b"45")]),
    ],
    ids=["declared", "counted"],
)
def test_read_body_over_the_limit_is_413_and_closes(
    headers: dict[str, str], messages: list[Message]
) -> None:
    async def receive() -> Message:
        return messages.pop(0)

    with pytest.raises(PayloadTooLarge) as raised:
        asyncio.run(read_body(scope_of("POST", "/", **headers), receive, 4))
    answer = error_for(raised.value)
    assert (answer.status, answer.code) == (413, "payload_too_large")
    assert answer.headers["Connection"] == "close"


def test_headers_of_takes_the_first_value_of_each_name() -> None:
    scope = {"headers": [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")]}
    assert headers_of(scope, b"authorization", b"x-request-id") == {b"authorization": "Bearer a"}


@pytest.mark.parametrize(
    ("value", "expected"), [("12", 12), (" 7 ", 7), ("-1", None), ("1e3", None), ("٣", None)]
)
def test_content_length(value: str, expected: int | None) -> None:
    assert content_length({"headers": [(b"content-length", value.encode())]}) == expected
    assert content_length({"headers": []}) is None


def test_an_oversized_streamed_body_is_read_to_its_end_before_the_413() -> None:
    """A proxy in front passes the 413 on only once the upload has ended."""
    messages: list[Message] = [
        {"type": "http.request", "body": b"123", "more_body": True},
        {"type": "http.request", "body": b"456", "more_body": True},
        {"type": "http.request", "body": b"789", "more_body": False},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(scope_of("POST", "/"), receive, 4))
    assert messages == []  # everything was read
