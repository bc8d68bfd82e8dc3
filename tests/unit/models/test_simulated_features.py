"""What the simulated model writes for the OpenAI features: stop, tools, JSON formats,
logprobs, several choices, text completions and embeddings (time scale 0: no sleeps)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import jsonschema  # type: ignore[import-untyped]
import pytest

from serve_app.models.backend import (
    ChatMessage,
    Completion,
    Delta,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    RequestRejected,
)
from serve_app.models.json_instance import SchemaUnsupported, minimal_instance
from serve_app.models.simulated import EMBEDDING_DIMENSIONS, SimulatedLLM
from serve_app.models.tokens import count_chat_tokens, count_tokens
from tests.unit.models.test_simulated import make_profile

T = TypeVar("T")
USER = (ChatMessage("user", "What is the weather in Paris today?"),)
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days", "unit"],
        },
    },
}


def _run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _request(**fields: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id="r", messages=fields.pop("messages", USER), max_tokens=200, **fields
    )


async def _with_llm(request: GenerationRequest, stream: bool = False) -> Any:
    llm = SimulatedLLM(make_profile(), time_scale=0)
    await llm.start()
    try:
        if stream:
            return [d async for d in _deltas(llm, request)]
        return await llm.generate(request)
    finally:
        await llm.close()


async def _deltas(llm: SimulatedLLM, request: GenerationRequest) -> AsyncIterator[Delta]:
    async for delta in llm.stream(request):
        yield delta


def generate(**fields: Any) -> Completion:
    result: Completion = _run(_with_llm(_request(**fields)))
    return result


def stream(**fields: Any) -> list[Delta]:
    result: list[Delta] = _run(_with_llm(_request(**fields), stream=True))
    return result


def test_stop_ends_the_text_before_the_first_stop_sequence() -> None:
    plain = generate()
    words = plain.text.split()
    stop = " " + words[5]
    cut = generate(stop=("never there", stop))
    assert cut.text == plain.text[: plain.text.index(stop)]
    assert cut.finish_reason == "stop"
    assert cut.output_tokens == count_tokens(cut.text) < plain.output_tokens


def test_a_tool_call_has_arguments_valid_under_the_tools_schema() -> None:
    done = generate(tools=(WEATHER,))
    assert done.finish_reason == "tool_calls"
    (choice,) = done.all_choices()
    (call,) = choice.tool_calls
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert call["id"].startswith("call_")
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    assert choice.text == ""
    assert done.output_tokens == count_tokens("get_weather") + count_tokens(
        call["function"]["arguments"]
    )
    # The tool definitions are prompt: the engine reports them.
    assert done.input_tokens == count_chat_tokens(USER, (WEATHER,)) > count_chat_tokens(USER)


def test_tool_choice_none_and_a_tool_result_answer_in_text() -> None:
    assert generate(tools=(WEATHER,), tool_choice="none").finish_reason in ("stop", "length")
    call = generate(tools=(WEATHER,)).all_choices()[0].tool_calls[0]
    after = (
        *USER,
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", '{"temp": 21}', tool_call_id=call["id"]),
    )
    answered = generate(tools=(WEATHER,), messages=after)
    assert answered.finish_reason in ("stop", "length")
    assert answered.text
    forced = generate(tools=(WEATHER,), messages=after, tool_choice="required")
    assert forced.finish_reason == "tool_calls"


def test_a_streamed_tool_call_sends_the_name_whole_then_the_arguments() -> None:
    deltas = stream(tools=(WEATHER,))
    pieces = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert pieces[0]["function"] == {"name": "get_weather", "arguments": ""}
    arguments = "".join(p["function"]["arguments"] for p in pieces[1:])
    assert json.loads(arguments)["unit"] == "celsius"
    assert deltas[-1].finish_reason == "tool_calls"


def test_json_object_and_json_schema_answer_valid_json() -> None:
    answer = json.loads(generate(response_format={"type": "json_object"}).text)
    assert isinstance(answer["answer"], str)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "tags": {"type": "array", "minItems": 2}},
        "required": ["name", "tags"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    value = json.loads(generate(response_format=fmt).text)
    jsonschema.validate(value, schema)


def test_a_schema_it_cannot_follow_is_refused_not_answered_wrong() -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    }
    with pytest.raises(RequestRejected) as caught:
        generate(response_format=fmt)
    assert caught.value.param == "response_format"
    assert "pattern" in caught.value.detail


def test_logprobs_are_deterministic_and_in_openais_chat_shape() -> None:
    first = generate(logprobs=True, top_logprobs=3)
    again = generate(logprobs=True, top_logprobs=3)
    (choice,) = first.all_choices()
    assert choice.logprobs == again.all_choices()[0].logprobs
    assert choice.logprobs is not None
    content = choice.logprobs["content"]
    assert "".join(entry["token"] for entry in content) == choice.text
    assert len(content) == first.output_tokens
    for entry in content:
        assert -2 <= entry["logprob"] < 0
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["token"] == entry["token"]


def test_several_choices_differ_and_their_tokens_add_up() -> None:
    single = generate()
    three = generate(n=3)
    choices = three.all_choices()
    assert [c.index for c in choices] == [0, 1, 2]
    assert choices[0].text == single.text  # the first is what one choice would be
    assert len({c.text for c in choices}) == 3
    assert three.output_tokens == sum(count_tokens(c.text) for c in choices)
    assert three.input_tokens == single.input_tokens  # the prompt is read once


def test_several_choices_stream_interleaved_with_the_usage_last() -> None:
    deltas = stream(n=2)
    assert {d.index for d in deltas} == {0, 1}
    finishes = [d for d in deltas if d.finish_reason]
    assert sorted(d.index for d in finishes) == [0, 1]
    assert deltas[-1].output_tokens == sum(count_tokens(d.text) for d in deltas)
    assert all(d.output_tokens is None for d in deltas[:-1])


def test_more_choices_than_the_batch_are_refused() -> None:
    with pytest.raises(RequestRejected, match="batch"):
        generate(n=9)  # the test model's batch is 8


def test_text_completions_answer_each_prompt_with_its_own_choices() -> None:
    done = generate(messages=(), prompt=("Once upon", "In a land"), n=2, logprobs=True)
    choices = done.all_choices()
    assert [c.index for c in choices] == [0, 1, 2, 3]
    assert done.input_tokens == count_tokens("Once upon") + count_tokens("In a land")
    legacy = choices[0].logprobs
    assert legacy is not None
    assert "".join(legacy["tokens"]) == choices[0].text
    assert legacy["text_offset"][0] == 0
    assert legacy["top_logprobs"] is None  # no alternatives asked for


def test_two_requests_of_several_choices_never_wait_on_each_others_slots() -> None:
    async def both() -> list[Completion]:
        llm = SimulatedLLM(make_profile(max_batch=4), time_scale=0)
        await llm.start()
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(llm.generate(_request(n=3, seed=i)) for i in range(3))), 10
            )
        finally:
            await llm.close()

    assert len(_run(both())) == 3


def test_embeddings_are_deterministic_unit_vectors() -> None:
    async def embed(request: EmbeddingRequest) -> Embeddings:
        llm = SimulatedLLM(make_profile(), time_scale=0)
        await llm.start()
        try:
            return await llm.embed(request)
        finally:
            await llm.close()

    done = _run(embed(EmbeddingRequest("e", ("hello world", (1, 2, 3)))))
    assert len(done.vectors) == 2
    assert all(len(v) == EMBEDDING_DIMENSIONS for v in done.vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0) for v in done.vectors)
    assert done.input_tokens == count_tokens("hello world") + 3
    again = _run(embed(EmbeddingRequest("f", ("hello world",), dimensions=16)))
    assert len(again.vectors[0]) == 16


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/n"}},
            "required": ["a"],
            "$defs": {"n": {"type": "number", "exclusiveMinimum": 3, "maximum": 9}},
        },
        {"anyOf": [{"type": "string", "pattern": "x"}, {"type": "integer", "minimum": 5}]},
        {"allOf": [{"required": ["a"]}, {"properties": {"a": {"const": 1}}}]},
        {"type": ["null", "string"]},
        {"type": "array", "items": {"type": "boolean"}, "minItems": 2},
        {"type": "integer", "multipleOf": 7, "minimum": 10},
        {"type": "string", "minLength": 3, "format": "date"},
        {},
    ],
)
def test_minimal_instances_validate(schema: dict[str, Any]) -> None:
    jsonschema.validate(minimal_instance(schema, strict=True), schema)


def test_what_the_builder_cannot_promise_is_refused_only_when_strict() -> None:
    for schema in ({"not": {"type": "null"}}, {"type": "string", "pattern": "a"}, False):
        with pytest.raises(SchemaUnsupported):
            minimal_instance(schema, strict=True)
    assert minimal_instance({"type": "string", "pattern": "a"}, strict=False) == ""
    with pytest.raises(SchemaUnsupported, match="deeper"):
        minimal_instance({"$ref": "#"}, strict=False)
