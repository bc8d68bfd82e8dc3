"""The ingress's ASGI entry: the priced routes run as plain ASGI, the rest in FastAPI.

`POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and `/v1/quote` are
served by small async functions that take the ASGI scope and `receive` and return a
Starlette response. Every other
request (other routes, a wrong method, a trailing slash, lifespan) goes to the FastAPI
app, which answers it exactly as before. FastAPI's routing, dependency solving and
middleware stack cost about 0.3 ms of CPU per request on the 2-core benchmark host,
which was as much as all of rtcts's own pricing work (docs/decisions.md, "The priced
routes are plain ASGI").

Guarantees kept here:
- every error a client can cause gets an OpenAI-shaped answer with its status
  (`errors.error_for`), never a bare 500: an unexpected exception is logged and
  answered with the generic 500 body;
- a body over the limit is refused with 413 and `Connection: close`, from a declared
  Content-Length before anything is read, or while it streams in;
- a client that leaves before its body arrived gets nothing and costs nothing (no
  pricing, no meter).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from serve_app.errors import ClientDisconnected, PayloadTooLarge
from serve_app.ingress import errors
from serve_app.ingress.protocol import ChatCompletionRequest

Body = TypeVar("Body", bound=BaseModel)

DRAIN_LIMIT_BYTES = 256 * 1024 * 1024
"""The most of an oversized streamed body read and dropped before its 413."""

Route = Callable[[Scope, Receive], Awaitable[Response]]
"""A priced route: the request's scope and `receive`, returning the answer to send."""


def route_path(scope: Scope) -> str:
    """The path inside the app: Serve puts its route prefix in `root_path`."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def headers_of(scope: Scope, *names: bytes) -> dict[bytes, str]:
    """The first value of each named header (names lowercase, as ASGI servers give)."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in names and name not in found:
            found[name] = value.decode("latin-1")
    return found


def content_length(scope: Scope) -> int | None:
    """The declared Content-Length, None when absent or not a number."""
    value = headers_of(scope, b"content-length").get(b"content-length")
    if value is None:
        return None
    text = value.strip()
    return int(text) if text.isascii() and text.isdigit() else None


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """The whole request body, at most `max_bytes` (413 beyond: `PayloadTooLarge`).

    Raises ClientDisconnected when the client disconnects first. A body that streams in
    past the limit (no Content-Length) is read on and dropped, up to `DRAIN_LIMIT_BYTES`,
    before the 413: a proxy in front (HAProxy on the public port) passes an answer on
    only once the upload it is forwarding has ended."""
    declared = content_length(scope)
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            await _drain(receive, message, DRAIN_LIMIT_BYTES)
            raise PayloadTooLarge(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _drain(receive: Receive, message: Message, limit_bytes: int) -> None:
    """Read and drop the rest of a body, at most `limit_bytes` more (the 413 closes the
    connection anyway, so a longer upload is cut there)."""
    dropped = 0
    while message.get("more_body", False) and dropped <= limit_bytes:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        dropped += len(message.get("body", b""))


async def read_chat_body(scope: Scope, receive: Receive, max_bytes: int) -> ChatCompletionRequest:
    """The validated chat body (400 naming the field; 413 over `max_bytes`)."""
    return await read_model(scope, receive, max_bytes, ChatCompletionRequest)


async def read_model(scope: Scope, receive: Receive, max_bytes: int, model: type[Body]) -> Body:
    """The validated body of a priced route (400 naming the field; 413 over `max_bytes`).

    The body is read as JSON whatever its Content-Type (`curl -d` sends a form type)."""
    raw = await read_body(scope, receive, max_bytes)
    if not raw.strip():
        raise errors.ApiError(400, "A JSON request body is required.")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise errors.validation_error(exc.errors()) from None


async def serve_route(route: Route, scope: Scope, receive: Receive, send: Send) -> None:
    """Run a priced route and send its answer, or the error's OpenAI-shaped answer."""
    try:
        response = await route(scope, receive)
    except ClientDisconnected:
        return
    except Exception as exc:  # every error gets its HTTP answer; unexpected ones are logged
        response = errors.error_for(exc).to_response()
    await response(scope, receive, send)


class IngressASGI:
    """Dispatch: an exact (method, path) match of `routes` runs as plain ASGI, anything
    else goes to `api`. The routes are added to `api` too, so that a wrong method gets
    FastAPI's 405, a trailing slash its redirect, and Serve names the route in its
    metrics."""

    def __init__(self, api: FastAPI, routes: Mapping[tuple[str, str], Route]) -> None:
        self._api = api
        self._routes = dict(routes)
        for (method, path), route in self._routes.items():
            api.add_route(path, _endpoint(route), methods=[method], include_in_schema=False)

    @property
    def routes(self) -> list[Any]:
        """The FastAPI app's routes: Serve reads them to label its request metrics."""
        return self._api.routes

    @property
    def router(self) -> Any:
        return self._api.router

    def add_exception_handler(self, exc_class: type[Exception], handler: Any) -> None:
        """Serve registers its overload errors (503) here; they apply to `api`'s routes
        (the priced routes map their own errors)."""
        self._api.add_exception_handler(exc_class, handler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self._routes.get((scope["method"], route_path(scope)))
            if route is not None:
                await serve_route(route, scope, receive, send)
                return
        await self._api(scope, receive, send)


def _endpoint(route: Route) -> Callable[[Request], Awaitable[Response]]:
    """The route as a Starlette endpoint (what FastAPI would run if the dispatch missed)."""

    async def endpoint(request: Request) -> Response:
        return await route(request.scope, request.receive)

    return endpoint
