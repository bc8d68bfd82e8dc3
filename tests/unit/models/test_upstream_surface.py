"""The upstream backend forwards the whole OpenAI surface and reads it back: tools,
tool calls, `n` choices, logprobs, response formats, penalties, `logit_bias`, images,
text completions and embeddings (an in-process fake server, no network)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from serve_app.models.backend import (
    ChatMessage,
    Completion,
    Delta,
    EmbeddingRequest,
    GenerationRequest,
)
from serve_app.models.upstream import OpenAIUpstream
from tests.fakes import FakeClock

T = TypeVar("T")
MODEL = "served-model"
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
CALL = {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
LOGPROBS = {"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": []}]}


class Server:
    """Answers each path with what a test set; records every body it was sent."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        self.answers: dict[str, Callable[[dict[str, Any]], httpx.Response]] = {}

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL}]})
        if path == "/metrics":
            return httpx.Response(404)
        body = json.loads(request.content)
        self.bodies.setdefault(path, []).append(body)
        return self.answers[path](body)


def _run(server: Server, work: Callable[[OpenAIUpstream], Coroutine[Any, Any, T]]) -> T:
    async def scenario() -> T:
        backend = OpenAIUpstream(
            "http://upstream:8000",
            transport=httpx.MockTransport(server),
            clock=FakeClock(),
            metrics_poll_s=3600.0,
            start_timeout_s=0.0,
        )
        await backend.start()
        try:
            return await work(backend)
        finally:
            await backend.close()

    return asyncio.run(scenario())


def _sse(*events: dict[str, Any]) -> httpx.Response:
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


def test_every_field_goes_to_the_server_as_openais() -> None:
    server = Server()
    server.answers["/v1/chat/completions"] = lambda body: httpx.Response(
        200,
        json={
            "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1},
        },
    )
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    request = GenerationRequest(
        request_id="r",
        messages=(
            ChatMessage("user", "what?", parts=({"type": "text", "text": "what?"}, image)),
            ChatMessage("assistant", "", tool_calls=(CALL,)),
            ChatMessage("tool", "{}", tool_call_id="call_9"),
        ),
        max_tokens=5,
        n=2,
        tools=(TOOL,),
        tool_choice="required",
        parallel_tool_calls=False,
        logprobs=True,
        top_logprobs=3,
        response_format={"type": "json_object"},
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"42": -100},
        user="u1",
        seed=7,
        stop=("END",),
    )
    _run(server, lambda backend: backend.generate(request))
    (body,) = server.bodies["/v1/chat/completions"]
    assert body["model"] == MODEL
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "what?"}, image]},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": "{}", "tool_call_id": "call_9"},
    ]
    expected = {
        "n": 2,
        "tools": [TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "logprobs": True,
        "top_logprobs": 3,
        "response_format": {"type": "json_object"},
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"42": -100},
        "user": "u1",
        "seed": 7,
        "stop": ["END"],
        "max_tokens": 5,
    }
    assert {k: body[k] for k in expected} == expected


def test_a_whole_answer_keeps_every_choice_tool_call_and_logprobs() -> None:
    server = Server()
    server.answers["/v1/chat/completions"] = lambda body: httpx.Response(
        200,
        json={
            "choices": [
                {
                    "index": 1,
                    "message": {"content": "Hi", "role": "assistant"},
                    "logprobs": LOGPROBS,
                    "finish_reason": "stop",
                },
                {
                    "index": 0,
                    "message": {"content": None, "tool_calls": [CALL]},
                    "finish_reason": "tool_calls",
                },
            ],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12},
        },
    )
    done: Completion = _run(
        server,
        lambda b: b.generate(GenerationRequest("r", (ChatMessage("user", "x"),), 9, n=2)),
    )
    first, second = done.all_choices()
    assert (first.index, first.finish_reason, first.tool_calls, first.text) == (
        0,
        "tool_calls",
        (CALL,),
        "",
    )
    assert (second.index, second.text, second.logprobs) == (1, "Hi", LOGPROBS)
    assert (done.input_tokens, done.output_tokens) == (30, 12)


def test_a_stream_of_two_choices_ends_each_choice_once_with_the_usage_last() -> None:
    server = Server()

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    server.answers["/v1/chat/completions"] = lambda body: _sse(
        chunk(0, {"role": "assistant", "content": ""}),
        chunk(0, {"tool_calls": [{"index": 0, "id": "call_9", "function": {"name": "f"}}]}),
        chunk(1, {"content": "Hel"}),
        chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}, "tool_calls"),
        chunk(1, {"content": "lo"}, "length"),
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}},
    )

    async def read(backend: OpenAIUpstream) -> list[Delta]:
        request = GenerationRequest("r", (ChatMessage("user", "x"),), 9, n=2, tools=(TOOL,))
        return [d async for d in backend.stream(request)]

    deltas = _run(server, read)
    assert "".join(d.text for d in deltas if d.index == 1) == "Hello"
    assert [d.tool_calls[0]["function"] for d in deltas if d.tool_calls] == [
        {"name": "f"},
        {"arguments": "{}"},
    ]
    ends = [(d.index, d.finish_reason) for d in deltas if d.finish_reason]
    assert ends == [(0, "tool_calls"), (1, "length")]
    assert (deltas[-1].input_tokens, deltas[-1].output_tokens) == (4, 6)
    assert all(d.output_tokens is None for d in deltas[:-1])
    assert server.bodies["/v1/chat/completions"][0]["stream_options"] == {"include_usage": True}


def test_text_completions_go_to_the_completions_endpoint() -> None:
    server = Server()
    server.answers["/v1/completions"] = lambda body: httpx.Response(
        200,
        json={
            "object": "text_completion",
            "choices": [
                {"index": 0, "text": " upon", "logprobs": None, "finish_reason": "length"},
                {"index": 1, "text": " a time", "logprobs": None, "finish_reason": "stop"},
            ],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3},
        },
    )
    request = GenerationRequest("r", (), 3, prompt=("Once", "There"), logprobs=True, top_logprobs=2)
    done = _run(server, lambda b: b.generate(request))
    (body,) = server.bodies["/v1/completions"]
    assert (body["prompt"], body["logprobs"], body["max_tokens"]) == (["Once", "There"], 2, 3)
    assert "messages" not in body
    assert [c.text for c in done.all_choices()] == [" upon", " a time"]


def test_a_text_completion_streams_from_the_completions_endpoint() -> None:
    server = Server()
    server.answers["/v1/completions"] = lambda body: _sse(
        {"choices": [{"index": 0, "text": "Once", "finish_reason": None}]},
        {"choices": [{"index": 0, "text": " upon", "finish_reason": "length"}]},
    )

    async def read(backend: OpenAIUpstream) -> list[Delta]:
        return [d async for d in backend.stream(GenerationRequest("r", (), 2, prompt=("Tell",)))]

    deltas = _run(server, read)
    assert "".join(d.text for d in deltas) == "Once upon"
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].output_tokens is not None  # counted: the server sent no usage


@pytest.mark.parametrize("encoded", [False, True])
def test_embeddings_read_floats_or_base64_in_input_order(encoded: bool) -> None:
    vectors = [[0.5, -1.0], [2.0, 0.25]]

    def answer(body: dict[str, Any]) -> httpx.Response:
        data = []
        for index in (1, 0):  # out of order: read back by index
            vector: Any = vectors[index]
            if encoded:
                vector = base64.b64encode(struct.pack("<2f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        return httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 9}})

    server = Server()
    server.answers["/v1/embeddings"] = answer
    request = EmbeddingRequest("e", ("a", (1, 2)), dimensions=2, user="u")
    done = _run(server, lambda b: b.embed(request))
    assert [list(v) for v in done.vectors] == vectors
    assert done.input_tokens == 9
    (body,) = server.bodies["/v1/embeddings"]
    assert body == {
        "input": ["a", [1, 2]],
        "encoding_format": "float",
        "model": MODEL,
        "dimensions": 2,
        "user": "u",
    }
