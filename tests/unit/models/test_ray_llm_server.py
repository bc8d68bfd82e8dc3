"""The simulated engine through Ray Serve LLM's real `LLMServer` (no Ray cluster).

`LLMServer.sync_init(config, engine_cls=...)` is Ray's own way to run the server outside
a replica; `chat_deltas`/`collect` are what `RayLLMServer.generate`/`stream` do on it.
The simulated engine runs at time scale 0 (it never sleeps, only yields), and the
stream batching interval is 0 unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from serve_app.models.backend import (
    BackendUnavailable,
    ChatMessage,
    Delta,
    GenerationFailed,
    GenerationRequest,
)
from serve_app.models.ray_llm.chat import chat_deltas, collect
from serve_app.models.ray_llm.engine import SimulatedEngine, simulated_engine
from serve_app.models.ray_llm.protocol import openai_models, serve_llm, stand_in_installed
from serve_app.models.ray_llm.spec import llm_config
from serve_app.models.tokens import count_chat_tokens
from serve_app.policy.schema import ModelSpec
from tests.fakes import FakeClock, model_dict

# Ray's LLMServer has an async __del__, which only a Serve replica awaits.
pytestmark = pytest.mark.filterwarnings(
    "ignore:coroutine 'LLMServer.__del__' was never awaited:RuntimeWarning"
)

MESSAGES = (ChatMessage("user", "Say something short about GPUs."),)


def _spec(**section: Any) -> ModelSpec:
    rsl = {"stream_batching_interval_ms": 0, **section}
    return ModelSpec.model_validate(
        model_dict("rsl", backend="ray_serve_llm", ray_serve_llm=rsl, cold_start_s=0)
    )


def _request(max_tokens: int = 6, request_id: str = "req-1") -> GenerationRequest:
    return GenerationRequest(request_id=request_id, messages=MESSAGES, max_tokens=max_tokens)


async def _server(spec: ModelSpec, **engine: Any) -> Any:
    options = {"time_scale": 0.0, "natural_output": False, **engine}
    server = serve_llm().LLMServer.sync_init(
        llm_config(spec), engine_cls=simulated_engine(spec, **options)
    )
    await server.start()
    return server


def _engine(server: Any) -> SimulatedEngine:
    engine = server.engine
    assert isinstance(engine, SimulatedEngine)
    return engine


def test_ray_serve_llm_imports_without_vllm_through_the_stand_in() -> None:
    models = openai_models()

    assert stand_in_installed()  # no vLLM in the test environment
    assert serve_llm().LLMServer.__module__ == "ray.serve.llm.deployment"
    request = models.ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}])
    assert request.request_id  # LLMServer stamps it: it must exist


def test_a_whole_answer_comes_through_llm_server_with_the_engines_usage() -> None:
    async def run() -> None:
        server = await _server(_spec())
        completion = await collect(chat_deltas(server.chat, _request(6), "rsl"))

        assert completion.finish_reason == "length"
        assert completion.output_tokens == 6
        assert completion.input_tokens == count_chat_tokens(MESSAGES)
        assert completion.text
        assert 0 <= completion.ttft_s <= completion.total_s
        await server.engine.shutdown()

    asyncio.run(run())


def test_a_stream_yields_text_then_one_last_delta_with_finish_and_usage() -> None:
    async def run() -> None:
        server = await _server(_spec())
        deltas = [d async for d in chat_deltas(server.chat, _request(5), "rsl")]

        *texts, last = deltas
        assert all(d.text and d.finish_reason is None for d in texts)
        assert len(texts) == 5  # batching interval 0: one chunk per token
        assert (last.text, last.finish_reason, last.output_tokens) == ("", "length", 5)
        await server.engine.shutdown()

    asyncio.run(run())


def test_stream_batching_gathers_tokens_into_fewer_deltas() -> None:
    async def run() -> None:
        server = await _server(_spec(stream_batching_interval_ms=50))
        deltas = [d async for d in chat_deltas(server.chat, _request(40), "rsl")]

        assert len(deltas) < 41  # at time scale 0 the tokens come faster than 50 ms
        assert deltas[-1].output_tokens == 40
        assert "".join(d.text for d in deltas).strip()
        await server.engine.shutdown()

    asyncio.run(run())


def test_the_engine_reports_its_batch_and_kv_cache_while_a_request_runs() -> None:
    async def run() -> None:
        spec = _spec()
        server = await _server(spec)
        engine = _engine(server)
        idle = engine.load()
        assert (idle.running, idle.queued, idle.kv_cache_usage, idle.warm) == (0, 0, 0.0, True)

        stream = chat_deltas(server.chat, _request(50), "rsl")
        first = await anext(stream)
        assert first.text
        busy = engine.load()
        assert busy.running == 1
        assert busy.kv_cache_usage is not None
        assert 0 < busy.kv_cache_usage < 1
        capacity = spec.throughput.max_concurrent_sequences * spec.context_window_tokens
        assert busy.extra["kv_tokens"] == pytest.approx(busy.kv_cache_usage * capacity)

        await stream.aclose()  # the client left: the slot and the cache are freed
        for _ in range(10):
            await asyncio.sleep(0)
        after = engine.load()
        assert (after.running, after.kv_cache_usage) == (0, 0.0)
        await engine.shutdown()

    asyncio.run(run())


def test_an_injected_failure_mid_stream_is_a_generation_failure() -> None:
    async def run() -> None:
        server = await _server(_spec(), failure_rate=1.0)
        with pytest.raises(GenerationFailed, match="injected failure"):
            await collect(chat_deltas(server.chat, _request(20), "rsl"))
        assert _engine(server).load().running == 0
        await server.engine.shutdown()

    asyncio.run(run())


def test_a_closed_engine_answers_unavailable_before_the_first_token() -> None:
    async def run() -> None:
        server = await _server(_spec())
        await server.engine.shutdown()
        with pytest.raises(BackendUnavailable):
            await collect(chat_deltas(server.chat, _request(), "rsl"))
        with pytest.raises(RuntimeError, match="not serving"):
            await server.check_health()  # LLMServer's check asks the engine

    asyncio.run(run())


def test_a_whole_chat_request_gets_one_response_object_from_the_engine() -> None:
    async def run() -> None:
        server = await _server(_spec())
        models = openai_models()
        request = models.ChatCompletionRequest(
            model="rsl", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        answers = [a async for a in await server.chat(request)]

        assert len(answers) == 1
        (answer,) = answers
        assert isinstance(answer, models.ChatCompletionResponse)
        assert answer.usage["completion_tokens"] == 3
        assert answer.choices[0]["finish_reason"] == "length"
        await server.engine.shutdown()

    asyncio.run(run())


def test_a_streamed_chat_request_ends_with_usage_and_done_as_vllm_sends_them() -> None:
    async def run() -> None:
        server = await _server(_spec())
        request = openai_models().ChatCompletionRequest(
            model="rsl",
            messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            max_completion_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for batch in await server.chat(request) for c in batch]

        assert chunks[-1] == "data: [DONE]\n\n"
        usage = json.loads(chunks[-2].removeprefix("data: "))
        assert usage["choices"] == []
        assert usage["usage"]["completion_tokens"] == 2
        assert usage["model"] == "rsl"
        await server.engine.shutdown()

    asyncio.run(run())


def test_collect_times_the_first_token_on_its_clock() -> None:
    clock = FakeClock()

    async def deltas() -> AsyncIterator[Delta]:
        clock.now += 0.5
        yield Delta("a")
        clock.now += 1.5
        yield Delta("", finish_reason="stop", input_tokens=3, output_tokens=1)

    async def run() -> None:
        completion = await collect(deltas(), clock)
        assert (completion.ttft_s, completion.total_s) == (0.5, 2.0)
        assert (completion.text, completion.finish_reason) == ("a", "stop")

    asyncio.run(run())


def test_collect_refuses_an_answer_without_its_last_delta() -> None:
    async def deltas() -> AsyncIterator[Delta]:
        yield Delta("a")

    with pytest.raises(GenerationFailed):
        asyncio.run(collect(deltas()))


def test_engine_start_is_the_cold_start() -> None:
    async def run() -> None:
        spec = ModelSpec.model_validate(
            model_dict(
                "rsl",
                backend="ray_serve_llm",
                ray_serve_llm={"stream_batching_interval_ms": 0},
                cold_start_s=100,
            )
        )
        engine_cls = simulated_engine(spec, time_scale=0.0001, cold_start_scale=0.5)
        server = serve_llm().LLMServer.sync_init(llm_config(spec), engine_cls=engine_cls)
        starting = asyncio.ensure_future(server.start())
        await asyncio.sleep(0)
        assert not _engine(server).load().warm
        await starting  # 100 s x 0.5 x 0.0001 = 5 ms
        assert _engine(server).load().warm
        with contextlib.suppress(Exception):
            await server.engine.shutdown()

    asyncio.run(run())
