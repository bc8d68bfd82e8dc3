"""The upstream backend's network layer (`AiohttpTransport`) against a real local server.

The backend's own tests inject `httpx.MockTransport`; these run the transport it uses by
default over loopback sockets (an aiohttp web server on a free port): bodies and headers
both ways, keep-alive reuse, streamed answers passed on as they arrive, encoded bodies
decoded once, and every network failure raised as the httpx error the backend maps.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import pytest
from aiohttp import web

from serve_app.models.aiohttp_transport import AiohttpTransport
from serve_app.models.backend import ChatMessage, GenerationFailed, GenerationRequest
from serve_app.models.upstream import OpenAIUpstream

T = TypeVar("T")
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@asynccontextmanager
async def server(routes: Mapping[tuple[str, str], Handler]) -> AsyncIterator[tuple[str, list[Any]]]:
    """A web server on a free loopback port: (its base URL, the peer port of each request)."""
    peers: list[Any] = []
    app = web.Application()

    def route(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
            return await handler(request)

        return wrapped

    for (method, path), handler in routes.items():
        app.router.add_route(method, path, route(handler))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", peers
    finally:
        await runner.cleanup()


def client(base_url: str, transport: AiohttpTransport, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, transport=transport, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_json_post_round_trips_and_reuses_its_connection() -> None:
    seen: list[tuple[str, str | None, str | None, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(
            (
                request.method,
                request.headers.get("Authorization"),
                request.headers.get("Content-Type"),
                await request.json(),
            )
        )
        return web.json_response({"ok": True, "n": len(seen)})

    async def scenario() -> None:
        async with server({("POST", "/v1/chat/completions"): chat}) as (url, peers):
            transport = AiohttpTransport()
            async with client(url, transport, headers={"Authorization": "Bearer k"}) as http:
                for n in (1, 2, 3):
                    response = await http.post("/v1/chat/completions", json={"model": MODEL})
                    assert response.status_code == 200
                    assert response.json() == {"ok": True, "n": n}
                    assert response.headers["content-type"].startswith("application/json")
            assert seen == [("POST", "Bearer k", "application/json", {"model": MODEL})] * 3
            assert len(set(peers)) == 1  # one keep-alive connection for the three

    run(scenario())


def test_an_error_status_and_its_body_pass_through() -> None:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "no such model"}}, status=404)

    async def scenario() -> None:
        async with (
            server({("POST", "/v1/chat/completions"): chat}) as (url, _),
            client(url, AiohttpTransport()) as http,
        ):
            response = await http.post("/v1/chat/completions", json={})
            assert response.status_code == 404
            assert response.json() == {"error": {"message": "no such model"}}

    run(scenario())


def test_a_gzip_body_is_decoded_once() -> None:
    payload = json.dumps({"text": "x" * 2000}).encode()

    async def metrics(request: web.Request) -> web.Response:
        assert "gzip" in request.headers.get("Accept-Encoding", "")
        return web.Response(
            body=gzip.compress(payload),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async def scenario() -> None:
        async with (
            server({("GET", "/metrics"): metrics}) as (url, _),
            client(url, AiohttpTransport()) as http,
        ):
            response = await http.get("/metrics")
            assert response.content == payload

    run(scenario())


def test_a_streamed_answer_is_passed_on_as_it_arrives() -> None:
    """The first event reaches the caller while the server still holds the rest back."""
    released = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await released.wait()
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    async def scenario() -> None:
        async with (
            server({("POST", "/v1/chat/completions"): stream}) as (url, _),
            client(url, AiohttpTransport()) as http,
        ):
            request = http.build_request("POST", "/v1/chat/completions", json={})
            response = await http.send(request, stream=True)
            lines: list[str] = []

            async def read() -> None:
                async for line in response.aiter_lines():
                    if line:
                        lines.append(line)
                        released.set()

            # A guard against a transport that buffers the whole body (it would hang),
            # not a timing assertion.
            await asyncio.wait_for(read(), timeout=30)
            await response.aclose()
            assert lines == ["data: first", "data: second"]

    run(scenario())


def test_a_stream_dropped_early_closes_its_connection_and_the_next_request_works() -> None:
    dropped = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: x\n\n")
        await dropped.wait()  # the rest only after the client dropped the answer
        with contextlib.suppress(ConnectionError):
            await response.write(b"data: y\n\n")
            await response.write_eof()
        return response

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def scenario() -> None:
        routes = {("POST", "/stream"): stream, ("GET", "/ok"): ok}
        async with (
            server(routes) as (url, peers),
            client(url, AiohttpTransport()) as http,
        ):
            response = await http.send(http.build_request("POST", "/stream"), stream=True)
            async for _ in response.aiter_bytes():
                break
            await response.aclose()
            dropped.set()
            assert (await http.get("/ok")).json() == {"ok": True}
            assert len(peers) == 2
            assert peers[0] != peers[1]  # the first connection was not reused

    run(scenario())


def test_a_refused_connection_is_a_connect_error() -> None:
    async def scenario() -> None:
        async with client(f"http://127.0.0.1:{free_port()}", AiohttpTransport()) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/v1/models")

    run(scenario())


def test_a_server_silent_past_the_read_timeout_is_a_read_timeout() -> None:
    timed_out = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await timed_out.wait()  # answers only once the client gave up
        return web.json_response({})

    async def scenario() -> None:
        async with (
            server({("GET", "/slow"): slow}) as (url, _),
            client(url, AiohttpTransport(), timeout=httpx.Timeout(5, read=0.2)) as http,
        ):
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/slow")
            timed_out.set()

    run(scenario())


def test_a_stream_cut_off_is_a_transport_error_and_the_backend_says_it_broke_off() -> None:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL}]})

    async def no_metrics(request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        assert request.transport is not None
        request.transport.close()  # mid-body: the chunked answer never ends
        return response

    async def scenario() -> None:
        routes = {
            ("GET", "/v1/models"): models,
            ("GET", "/metrics"): no_metrics,
            ("POST", "/v1/chat/completions"): cut,
        }
        async with (
            server(routes) as (url, _),
            client(url, AiohttpTransport()) as http,
        ):
            response = await http.send(
                http.build_request("POST", "/v1/chat/completions"), stream=True
            )
            with pytest.raises(httpx.TransportError):
                async for _ in response.aiter_bytes():
                    pass
            backend = OpenAIUpstream(url, start_timeout_s=5)
            await backend.start()
            request = GenerationRequest("r1", (ChatMessage("user", "hi"),), max_tokens=8)
            with pytest.raises(GenerationFailed, match="broke off"):
                async for _ in backend.stream(request):
                    pass
            await backend.close()

    run(scenario())


def test_the_backend_serves_and_reads_load_over_it_by_default() -> None:
    """`OpenAIUpstream` without a transport: start, a completion, a stream, /metrics."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL}]})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            text=f'vllm:num_requests_running{{model_name="{MODEL}"}} 3.0\n'
            f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 1.0\n'
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert body["model"] == MODEL
        assert request.headers["Authorization"] == "Bearer sk-local"
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "Hi there"}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            return web.json_response({"choices": [choice], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece, finish in (("Hi", None), (" there", "stop")):
            choice = {"index": 0, "delta": {"content": piece}, "finish_reason": finish}
            await response.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def scenario() -> None:
        routes = {
            ("GET", "/v1/models"): models,
            ("GET", "/metrics"): metrics,
            ("POST", "/v1/chat/completions"): chat,
        }
        async with server(routes) as (url, _):
            backend = OpenAIUpstream(
                url + "/v1", api_key="sk-local", metrics_poll_s=3600, start_timeout_s=5
            )
            await backend.start()
            load = backend.load()
            assert (load.running, load.queued, load.warm) == (3, 1, True)
            request = GenerationRequest("r1", (ChatMessage("user", "hi"),), max_tokens=8)
            completion = await backend.generate(request)
            assert (completion.text, completion.finish_reason) == ("Hi there", "length")
            assert (completion.input_tokens, completion.output_tokens) == (5, 2)
            deltas = [d async for d in backend.stream(request)]
            assert "".join(d.text for d in deltas) == "Hi there"
            assert deltas[-1].finish_reason == "stop"
            assert (deltas[-1].input_tokens, deltas[-1].output_tokens) == (5, 2)
            await backend.close()

    run(scenario())


def test_the_environment_proxy_is_read_once_per_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "vllm.local")
    transport = AiohttpTransport()
    assert transport._proxy(httpx.URL("http://vllm.remote:8000/v1/models"))[0] == (
        "http://proxy.internal:3128"
    )
    assert transport._proxy(httpx.URL("http://vllm.local:8000/v1/models")) == (None, None)
    monkeypatch.delenv("HTTP_PROXY")
    # Kept: looked up once per origin, as httpx's client reads the environment once.
    assert transport._proxy(httpx.URL("http://vllm.remote:8000/metrics"))[0] == (
        "http://proxy.internal:3128"
    )
