"""The OpenAI-compatible upstream backend against an in-process fake server (no network)."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from serve_app.models.backend import (
    Backend,
    BackendUnavailable,
    ChatMessage,
    Delta,
    GenerationFailed,
    GenerationRequest,
    RequestRejected,
)
from serve_app.models.upstream import OpenAIUpstream
from tests.fakes import FakeClock

T = TypeVar("T")
API_KEY = "sk-test-7f3a9c1e5b"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"

VLLM_METRICS = f"""\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="{MODEL}"}} @RUNNING@
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="{MODEL}"}} @WAITING@
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{model_name="{MODEL}"}} @KV@
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{model_name="{MODEL}"}} 1.2e+04
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def vllm_metrics(running: int, waiting: int, kv: float) -> str:
    page = VLLM_METRICS.replace("@RUNNING@", f"{running}.0").replace("@WAITING@", f"{waiting}.0")
    return page.replace("@KV@", repr(kv))


def sse(*events: dict[str, Any] | str) -> bytes:
    lines = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        lines.append(f"data: {data}\n\n")
    return "".join(lines).encode()


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class FakeServer:
    """Routes like vLLM's OpenAI server; each route can be replaced by a test."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.metrics: str | None = vllm_metrics(0, 0, 0.0)
        self.models_status = 200
        self.chat: Handler = self._chat_ok
        self.down = False

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        path = request.url.path
        if path == "/v1/models":
            body = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
            return httpx.Response(self.models_status, json=body)
        if path == "/health":
            return httpx.Response(200)
        if path == "/metrics":
            if self.metrics is None:
                return httpx.Response(404, text="Not Found")
            return httpx.Response(200, text=self.metrics)
        if path == "/v1/chat/completions":
            return await self.chat(request)
        return httpx.Response(404, json={"detail": "Not Found"})

    @staticmethod
    async def _chat_ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello there!"},
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
            },
        )

    def paths(self, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == path]

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.paths("/v1/chat/completions")]


def make(server: FakeServer, clock: FakeClock | None = None, **kwargs: Any) -> OpenAIUpstream:
    options: dict[str, Any] = {"metrics_poll_s": 3600.0, "start_timeout_s": 0.0}
    options.update(kwargs)
    return OpenAIUpstream(
        "http://vllm.internal:8000",
        transport=httpx.MockTransport(server),
        clock=clock or FakeClock(),
        **options,
    )


def request(**kwargs: Any) -> GenerationRequest:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "messages": (
            ChatMessage("system", "You are terse."),
            ChatMessage("user", "Say hello to the world"),
        ),
        "max_tokens": 64,
    }
    fields.update(kwargs)
    return GenerationRequest(**fields)


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in stream]


class StreamBody(httpx.AsyncByteStream):
    """A response body sent in pieces that may break off with a network error."""

    def __init__(self, pieces: list[bytes], error: Exception | None = None) -> None:
        self.pieces = pieces
        self.error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.error is not None:
            raise self.error


# ----------------------------------------------------------------- lifecycle


def test_is_a_backend_and_warm_only_after_start() -> None:
    server = FakeServer()

    async def scenario() -> None:
        backend = make(server)
        assert isinstance(backend, Backend)
        assert backend.load().warm is False
        with pytest.raises(BackendUnavailable, match="not started"):
            await backend.generate(request())
        await backend.start()
        assert backend.load().warm is True
        await backend.close()
        assert backend.load().warm is False
        with pytest.raises(BackendUnavailable, match="closed"):
            await backend.generate(request())
        with pytest.raises(BackendUnavailable, match="closed"):
            await collect(backend.stream(request()))

    run(scenario())


def test_start_retries_while_the_server_loads() -> None:
    server = FakeServer()
    server.models_status = 503
    attempts = 0
    inner = server.__call__

    async def loading(req: httpx.Request) -> httpx.Response:
        nonlocal attempts
        if req.url.path == "/v1/models":
            attempts += 1
            server.models_status = 503 if attempts < 3 else 200
        return await inner(req)

    async def scenario() -> None:
        backend = OpenAIUpstream(
            "http://vllm.internal:8000",
            transport=httpx.MockTransport(loading),
            start_timeout_s=30.0,
            metrics_poll_s=3600.0,
        )
        await backend.start()
        assert attempts == 3
        assert backend.load().warm is True
        await backend.close()

    run(scenario())


def test_start_gives_up_after_its_timeout() -> None:
    server = FakeServer()
    server.models_status = 503

    async def scenario() -> None:
        backend = make(server, start_timeout_s=0.005)
        with pytest.raises(BackendUnavailable, match=r"did not come up within .*HTTP 503"):
            await backend.start()
        assert backend.load().warm is False

    run(scenario())


def test_connection_refused_at_start_is_unavailable() -> None:
    server = FakeServer()
    server.down = True

    async def scenario() -> None:
        with pytest.raises(BackendUnavailable, match="Connection refused"):
            await make(server).start()

    run(scenario())


def test_model_is_learned_from_the_server_unless_given() -> None:
    server = FakeServer()

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        await backend.generate(request())
        await backend.generate(request(upstream_model="other-name"))
        await backend.close()
        named = make(server, model="served-name")
        await named.start()
        await named.generate(request())
        await named.close()

    run(scenario())
    assert [body["model"] for body in server.chat_bodies()] == [MODEL, "other-name", "served-name"]


def test_base_url_with_v1_suffix_is_accepted() -> None:
    server = FakeServer()

    async def scenario() -> None:
        backend = OpenAIUpstream(
            "http://vllm.internal:8000/v1/",
            transport=httpx.MockTransport(server),
            metrics_poll_s=3600.0,
        )
        await backend.start()
        await backend.generate(request())
        await backend.close()

    run(scenario())
    assert [str(r.url) for r in server.paths("/v1/chat/completions")] == [
        "http://vllm.internal:8000/v1/chat/completions"
    ]


def test_bad_base_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="http"):
        OpenAIUpstream("vllm.internal:8000")


# ----------------------------------------------------------------- generate


def test_generate_maps_text_finish_reason_usage_and_timing() -> None:
    server = FakeServer()
    clock = FakeClock()

    async def slow_chat(req: httpx.Request) -> httpx.Response:
        clock.now += 0.25
        return await FakeServer._chat_ok(req)

    server.chat = slow_chat

    async def scenario() -> None:
        backend = make(server, clock)
        await backend.start()
        completion = await backend.generate(
            request(temperature=0.2, stop=("\n\n",), seed=7, top_p=None)
        )
        await backend.close()
        assert completion.text == "Hello there!"
        assert completion.finish_reason == "length"
        assert (completion.input_tokens, completion.output_tokens) == (11, 3)
        assert completion.total_s == pytest.approx(0.25)
        assert completion.ttft_s == completion.total_s

    run(scenario())
    (body,) = server.chat_bodies()
    assert body == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the world"},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
        "stop": ["\n\n"],
        "seed": 7,
    }


def test_generate_without_usage_counts_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without serve_app.models.tokens the count falls back to whitespace words.
    monkeypatch.setitem(sys.modules, "serve_app.models.tokens", None)
    server = FakeServer()

    async def no_usage(req: httpx.Request) -> httpx.Response:
        message = {"role": "assistant", "content": "one two three four"}
        return httpx.Response(200, json={"choices": [{"message": message, "finish_reason": None}]})

    server.chat = no_usage

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        completion = await backend.generate(request())
        await backend.close()
        assert completion.finish_reason == "stop"
        assert completion.output_tokens == 4
        assert completion.input_tokens == 3 + 5

    run(scenario())


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, {"object": "error", "message": "CUDA out of memory", "code": 500}, "CUDA out of"),
        (502, "<html>Bad Gateway</html>", "Bad Gateway"),
        (429, {"error": {"message": "too many requests"}}, "too many"),
    ],
)
def test_http_errors_fail_the_generation(status: int, body: Any, message: str) -> None:
    server = FakeServer()

    async def failing(req: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    server.chat = failing

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        with pytest.raises(GenerationFailed, match=f"HTTP {status}: .*{message}"):
            await backend.generate(request())
        with pytest.raises(GenerationFailed, match=f"HTTP {status}: .*{message}"):
            await collect(backend.stream(request()))
        assert backend.load().running == 0
        await backend.close()

    run(scenario())


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"choices": []}', b'{"choices": [{"message": {"content": 5}}]}'],
)
def test_malformed_body_fails_the_generation(body: bytes) -> None:
    server = FakeServer()

    async def malformed(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    server.chat = malformed

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        with pytest.raises(GenerationFailed, match="malformed"):
            await backend.generate(request())
        await backend.close()

    run(scenario())


def test_aborted_generation_fails() -> None:
    server = FakeServer()

    async def aborted(req: httpx.Request) -> httpx.Response:
        message = {"role": "assistant", "content": "partial"}
        return httpx.Response(
            200, json={"choices": [{"message": message, "finish_reason": "abort"}]}
        )

    server.chat = aborted

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        with pytest.raises(GenerationFailed, match="abort"):
            await backend.generate(request())
        await backend.close()

    run(scenario())


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
)
def test_network_errors_make_the_backend_unavailable(error: httpx.TransportError) -> None:
    server = FakeServer()

    async def broken(req: httpx.Request) -> httpx.Response:
        raise error

    server.chat = broken

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        with pytest.raises(BackendUnavailable, match=r"vllm\.internal:8000"):
            await backend.generate(request())
        with pytest.raises(BackendUnavailable, match=r"vllm\.internal:8000"):
            await collect(backend.stream(request()))
        assert backend.load().running == 0
        await backend.close()

    run(scenario())


# ----------------------------------------------------------------- stream


def test_stream_yields_deltas_then_finish_and_usage() -> None:
    server = FakeServer()

    async def streaming(req: httpx.Request) -> httpx.Response:
        body = sse(
            {**chunk(""), "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
            chunk("Hel"),
            chunk("lo"),
            chunk(" world", finish="stop"),
            usage_chunk(12, 3),
            "[DONE]",
        )
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, stream=StreamBody([body[:37], body[37:]]))

    server.chat = streaming

    async def scenario() -> list[Delta]:
        backend = make(server)
        await backend.start()
        deltas = await collect(backend.stream(request()))
        await backend.close()
        return deltas

    deltas = run(scenario())
    assert deltas == [
        Delta("Hel"),
        Delta("lo"),
        Delta(" world"),
        Delta("", finish_reason="stop", input_tokens=12, output_tokens=3),
    ]
    (body,) = server.chat_bodies()
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_stream_without_usage_counts_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tokens module, when present, does the counting.
    fake_tokens = types.ModuleType("serve_app.models.tokens")
    fake_tokens.count_tokens = lambda text: 10 * len(text.split())  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "serve_app.models.tokens", fake_tokens)
    server = FakeServer()

    async def streaming(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=sse(chunk("one two"), chunk(" three", finish="length"), "[DONE]")
        )

    server.chat = streaming

    async def scenario() -> list[Delta]:
        backend = make(server)
        await backend.start()
        deltas = await collect(backend.stream(request()))
        await backend.close()
        return deltas

    *_, last = run(scenario())
    assert last == Delta("", finish_reason="length", input_tokens=30 + 50, output_tokens=30)


def test_stream_cut_mid_way_fails_after_the_pieces_sent() -> None:
    server = FakeServer()

    async def cut(req: httpx.Request) -> httpx.Response:
        pieces = [sse(chunk("Hel")), sse(chunk("lo"))]
        return httpx.Response(200, stream=StreamBody(pieces, httpx.ReadError("reset by peer")))

    server.chat = cut

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        received: list[Delta] = []

        async def consume() -> None:
            async for delta in backend.stream(request()):
                received.append(delta)

        with pytest.raises(GenerationFailed, match="broke off: ReadError"):
            await consume()
        assert received == [Delta("Hel"), Delta("lo")]
        assert backend.load().running == 0
        await backend.close()

    run(scenario())


def test_stream_ending_before_done_without_finish_fails() -> None:
    server = FakeServer()

    async def ends(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(chunk("Hel"), chunk("lo")))

    server.chat = ends

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        with pytest.raises(GenerationFailed, match=r"before \[DONE\]"):
            await collect(backend.stream(request()))
        await backend.close()

    run(scenario())


def test_stream_that_finished_but_omits_done_is_accepted() -> None:
    server = FakeServer()

    async def no_done(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(chunk("Hi", finish="stop"), usage_chunk(4, 1)))

    server.chat = no_done

    async def scenario() -> list[Delta]:
        backend = make(server)
        await backend.start()
        deltas = await collect(backend.stream(request()))
        await backend.close()
        return deltas

    assert run(scenario())[-1] == Delta("", finish_reason="stop", input_tokens=4, output_tokens=1)


@pytest.mark.parametrize(
    "bad",
    [
        "{not json",
        {"object": "error", "message": "engine dead", "type": "InternalServerError"},
        {"error": "Request failed during generation: CUDA error", "error_type": "generation"},
    ],
)
def test_error_or_garbage_mid_stream_fails(bad: dict[str, Any] | str) -> None:
    server = FakeServer()

    async def bad_stream(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(chunk("Hel"), bad, "[DONE]"))

    server.chat = bad_stream

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        with pytest.raises(GenerationFailed, match=r"malformed|mid-stream"):
            await collect(backend.stream(request()))
        await backend.close()

    run(scenario())


def test_stream_closed_early_releases_the_request() -> None:
    server = FakeServer()

    async def long_stream(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(*(chunk("x") for _ in range(10)), "[DONE]"))

    server.chat = long_stream

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        stream = backend.stream(request())
        assert await anext(stream) == Delta("x")
        assert backend.load().extra["local_inflight"] == 1.0
        await stream.aclose()  # type: ignore[attr-defined]
        assert backend.load().extra["local_inflight"] == 0.0
        await backend.close()

    run(scenario())


# ----------------------------------------------------------------- load


def test_load_reflects_the_polled_vllm_metrics() -> None:
    server = FakeServer()
    server.metrics = vllm_metrics(running=12, waiting=4, kv=0.875)
    clock = FakeClock()

    async def scenario() -> None:
        backend = make(server, clock)
        await backend.start()  # reads /metrics once
        report = backend.load()
        assert (report.running, report.queued, report.kv_cache_usage) == (12, 4, 0.875)
        assert report.warm is True

        server.metrics = vllm_metrics(running=3, waiting=0, kv=0.25)
        assert await backend.poll_metrics_once() is True
        report = backend.load()
        assert (report.running, report.queued, report.kv_cache_usage) == (3, 0, 0.25)
        await backend.close()

    run(scenario())


def test_background_poller_keeps_load_current() -> None:
    server = FakeServer()
    server.metrics = vllm_metrics(running=1, waiting=0, kv=0.1)

    async def scenario() -> None:
        backend = make(server, metrics_poll_s=0.001)
        await backend.start()
        server.metrics = vllm_metrics(running=9, waiting=2, kv=0.9)
        for _ in range(2000):
            if backend.load().running == 9:
                break
            await asyncio.sleep(0.001)
        report = backend.load()
        assert (report.running, report.queued, report.kv_cache_usage) == (9, 2, 0.9)
        await backend.close()
        polls = len(server.paths("/metrics"))
        await asyncio.sleep(0.005)
        assert len(server.paths("/metrics")) == polls  # close() stopped the poller

    run(scenario())


def test_metrics_404_falls_back_to_local_inflight_counting() -> None:
    server = FakeServer()
    server.metrics = None
    release = asyncio.Event()
    arrived = 0

    async def held(req: httpx.Request) -> httpx.Response:
        nonlocal arrived
        arrived += 1
        await release.wait()
        return await FakeServer._chat_ok(req)

    server.chat = held

    async def scenario() -> None:
        backend = make(server, metrics_poll_s=0.001)
        await backend.start()
        tasks = [asyncio.create_task(backend.generate(request())) for _ in range(3)]
        while arrived < 3:
            await asyncio.sleep(0)
        report = backend.load()
        assert (report.running, report.queued, report.kv_cache_usage) == (3, 0, None)
        assert report.warm is True
        release.set()
        await asyncio.gather(*tasks)
        assert backend.load().running == 0
        await asyncio.sleep(0.005)
        assert len(server.paths("/metrics")) == 1  # no polling after the 404
        await backend.close()

    run(scenario())


@pytest.mark.parametrize("page", ["<html>dashboard</html>", "process_start_time_seconds 1.7e9\n"])
def test_unusable_metrics_page_falls_back_too(page: str) -> None:
    server = FakeServer()
    server.metrics = page

    async def scenario() -> None:
        backend = make(server, metrics_poll_s=0.001)
        await backend.start()
        assert await backend.poll_metrics_once() is False
        assert backend.load().kv_cache_usage is None
        await backend.close()

    run(scenario())
    assert len(server.paths("/metrics")) == 1


def test_stale_metrics_give_way_to_local_counts() -> None:
    server = FakeServer()
    server.metrics = vllm_metrics(running=5, waiting=1, kv=0.5)
    clock = FakeClock()

    async def scenario() -> None:
        backend = make(server, clock, metrics_poll_s=0.1)
        await backend.start()
        assert backend.load().running == 5
        server.down = True
        assert await backend.poll_metrics_once() is True  # transient: keep polling
        clock.now += 0.5
        assert backend.load().running == 5
        clock.now += 1.0  # past 10 polls without a reading
        report = backend.load()
        assert (report.running, report.queued, report.kv_cache_usage) == (0, 0, None)
        server.down = False
        assert await backend.poll_metrics_once() is True
        assert backend.load().running == 5
        await backend.close()

    run(scenario())


def test_load_never_shows_fewer_than_local_inflight() -> None:
    server = FakeServer()
    release = asyncio.Event()
    arrived = 0

    async def held(req: httpx.Request) -> httpx.Response:
        nonlocal arrived
        arrived += 1
        await release.wait()
        return await FakeServer._chat_ok(req)

    server.chat = held

    async def scenario() -> None:
        backend = make(server)
        await backend.start()  # metrics read 0 running, 0 waiting
        tasks = [asyncio.create_task(backend.generate(request())) for _ in range(2)]
        while arrived < 2:
            await asyncio.sleep(0)
        assert (backend.load().running, backend.load().queued) == (2, 0)
        server.metrics = vllm_metrics(running=0, waiting=1, kv=1.0)
        await backend.poll_metrics_once()
        assert (backend.load().running, backend.load().queued) == (0, 2)
        release.set()
        await asyncio.gather(*tasks)
        await backend.close()

    run(scenario())


# ----------------------------------------------------------------- API key


@pytest.mark.parametrize(
    ("status", "body", "message", "param"),
    [
        (
            400,
            {"error": {"message": "max_tokens is too large", "param": "max_tokens"}},
            "too large",
            "max_tokens",
        ),
        (422, {"error": "Input validation error", "error_type": "validation"}, "validation", None),
        (
            404,
            {"object": "error", "message": "The model `x` does not exist."},
            "does not exist",
            None,
        ),
    ],
)
def test_a_request_the_server_refuses_is_rejected_not_failed(
    status: int, body: Any, message: str, param: str | None
) -> None:
    """The server's 4xx about the request itself: the client's to fix (answered 400),
    with the server's own message and the field it names, never the server's URL."""
    server = FakeServer()

    async def refusing(req: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    server.chat = refusing

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        with pytest.raises(RequestRejected) as rejected:
            await backend.generate(request())
        assert message in rejected.value.detail
        assert rejected.value.param == param
        assert "http" not in rejected.value.detail
        with pytest.raises(RequestRejected):
            async for _ in backend.stream(request()):
                pass
        await backend.close()

    run(scenario())


def test_api_key_is_sent_as_bearer_and_never_in_messages() -> None:
    server = FakeServer()

    async def echoes_key(req: httpx.Request) -> httpx.Response:
        # A server that echoes the key back in its error.
        key = req.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(400, json={"error": {"message": f"key {key} lacks access"}})

    server.chat = echoes_key

    async def scenario() -> list[BaseException]:
        backend = make(server, api_key=API_KEY)
        await backend.start()
        errors: list[BaseException] = []
        with pytest.raises(RequestRejected) as failed:
            await backend.generate(request())
        errors.append(failed.value)
        server.down = True
        with pytest.raises(BackendUnavailable) as unavailable:
            await backend.generate(request())
        errors.append(unavailable.value)
        await backend.close()
        return errors

    errors = run(scenario())
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {API_KEY}"}
    assert "lacks access" in str(errors[0])
    for error in errors:
        assert API_KEY not in str(error)
        assert API_KEY not in repr(error)
        assert error.__cause__ is None or API_KEY not in str(error.__cause__)


def test_rejected_api_key_fails_start_at_once_without_the_key() -> None:
    server = FakeServer()
    server.models_status = 401

    async def scenario() -> None:
        backend = make(server, api_key=API_KEY, start_timeout_s=30.0)
        with pytest.raises(BackendUnavailable, match="rejected the API key") as excinfo:
            await backend.start()
        assert API_KEY not in str(excinfo.value)

    run(scenario())
    assert len(server.paths("/v1/models")) == 1


def test_no_api_key_sends_no_authorization_header() -> None:
    server = FakeServer()

    async def scenario() -> None:
        backend = make(server)
        await backend.start()
        await backend.generate(request())
        await backend.close()

    run(scenario())
    assert all("authorization" not in r.headers for r in server.requests)


def test_password_in_base_url_is_not_shown() -> None:
    server = FakeServer()
    server.down = True

    async def scenario() -> None:
        backend = OpenAIUpstream(
            "http://user:hunter2secret@vllm.internal:8000",
            transport=httpx.MockTransport(server),
            start_timeout_s=0.0,
        )
        with pytest.raises(BackendUnavailable) as excinfo:
            await backend.start()
        assert "hunter2secret" not in str(excinfo.value)
        assert "vllm.internal:8000" in str(excinfo.value)

    run(scenario())
