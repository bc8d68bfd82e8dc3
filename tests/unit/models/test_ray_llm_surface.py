"""The OpenAI features through Ray Serve LLM's real `LLMServer` with the simulated engine
(no Ray cluster): tool calls, `n` choices, logprobs, text completions, embeddings, and a
request the engine refuses. What `RayLLMServer.generate`/`stream`/`embed` do, on
`LLMServer.sync_init`, at time scale 0."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from serve_app.models.backend import (
    ChatMessage,
    Completion,
    Delta,
    EmbeddingRequest,
    GenerationRequest,
    RequestRejected,
)
from serve_app.models.ray_llm.chat import chat_deltas, collect, embed_through
from serve_app.models.ray_llm.engine import simulated_engine
from serve_app.models.ray_llm.protocol import serve_llm
from serve_app.models.ray_llm.spec import llm_config
from serve_app.models.tokens import count_chat_tokens, count_tokens
from serve_app.policy.schema import ModelSpec
from tests.fakes import model_dict

pytestmark = pytest.mark.filterwarnings(
    "ignore:coroutine 'LLMServer.__del__' was never awaited:RuntimeWarning"
)

T = TypeVar("T")
USER = (ChatMessage("user", "What is the weather in Paris?"),)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 1}},
            "required": ["city"],
        },
    },
}


def _on_server(work: Callable[[Any], Awaitable[T]]) -> T:
    spec = ModelSpec.model_validate(
        model_dict(
            "rsl",
            backend="ray_serve_llm",
            ray_serve_llm={"stream_batching_interval_ms": 0},
            cold_start_s=0,
        )
    )

    async def run() -> T:
        engine = simulated_engine(spec, time_scale=0.0, natural_output=False)
        server = serve_llm().LLMServer.sync_init(llm_config(spec), engine_cls=engine)
        await server.start()
        try:
            return await work(server)
        finally:
            await server.engine.shutdown()

    return asyncio.run(run())


def _generate(request: GenerationRequest) -> Completion:
    async def work(server: Any) -> Completion:
        entry = server.chat if request.prompt is None else server.completions
        return await collect(chat_deltas(entry, request, "rsl"))

    return _on_server(work)


def _stream(request: GenerationRequest) -> list[Delta]:
    async def work(server: Any) -> list[Delta]:
        return [d async for d in chat_deltas(server.chat, request, "rsl")]

    return _on_server(work)


def test_a_tool_call_round_trip() -> None:
    first = _generate(GenerationRequest("r1", USER, 64, tools=(WEATHER,)))
    (choice,) = first.all_choices()
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.tool_calls
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "a"}
    assert first.input_tokens == count_chat_tokens(USER, (WEATHER,))
    history = (
        *USER,
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", '{"temperature_c": 21}', tool_call_id=call["id"]),
    )
    second = _generate(GenerationRequest("r2", history, 8, tools=(WEATHER,)))
    assert second.finish_reason == "length"
    assert second.text
    assert second.input_tokens == count_chat_tokens(history, (WEATHER,))


def test_a_streamed_tool_call_comes_in_pieces_and_ends_once() -> None:
    deltas = _stream(GenerationRequest("r", USER, 64, tools=(WEATHER,), tool_choice="required"))
    pieces = [piece for d in deltas for piece in d.tool_calls]
    assert pieces[0]["function"]["name"] == "get_weather"
    arguments = "".join(p["function"].get("arguments") or "" for p in pieces)
    assert json.loads(arguments) == {"city": "a"}
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["tool_calls"]


def test_two_choices_and_their_usage() -> None:
    done = _generate(GenerationRequest("r", USER, 5, n=2))
    texts = [c.text for c in done.all_choices()]
    assert len(texts) == 2
    assert texts[0] != texts[1]
    assert done.output_tokens == 10 == sum(count_tokens(t) for t in texts)


def test_logprobs_come_in_openais_chat_shape() -> None:
    done = _generate(GenerationRequest("r", USER, 4, logprobs=True, top_logprobs=2))
    (choice,) = done.all_choices()
    assert choice.logprobs is not None
    content = choice.logprobs["content"]
    assert "".join(entry["token"] for entry in content) == choice.text
    assert all(len(entry["top_logprobs"]) == 2 for entry in content)


def test_text_completions_go_through_llm_server_completions() -> None:
    request = GenerationRequest(
        "r", (), 3, prompt=("Once upon", "In a land"), n=2, logprobs=True, top_logprobs=1
    )
    done = _generate(request)
    choices = done.all_choices()
    assert [c.index for c in choices] == [0, 1, 2, 3]
    assert done.input_tokens == count_tokens("Once upon") + count_tokens("In a land")
    assert done.output_tokens == 12
    assert all(c.logprobs and "".join(c.logprobs["tokens"]) == c.text for c in choices)


def test_embeddings_go_through_llm_server_embeddings() -> None:
    texts = EmbeddingRequest("e", ("GPUs are fast.", "Batches fill."), dimensions=16)
    done = _on_server(lambda server: embed_through(server.embeddings, texts, "rsl"))
    assert [len(v) for v in done.vectors] == [16, 16]
    assert done.input_tokens == count_tokens("GPUs are fast.") + count_tokens("Batches fill.")
    ids = EmbeddingRequest("f", ((1, 2, 3), (4,)))
    done = _on_server(lambda server: embed_through(server.embeddings, ids, "rsl"))
    assert (len(done.vectors), done.input_tokens) == (2, 4)


def test_a_request_the_simulation_refuses_is_rejected_not_failed() -> None:
    with pytest.raises(RequestRejected, match="batch") as rejected:
        _generate(GenerationRequest("r", USER, 4, n=64))  # the test model's batch is 10
    assert rejected.value.param == "n"
