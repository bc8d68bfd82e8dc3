"""OpenAI Chat Completions models: request validation and helpers, responses, SSE."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.ingress.protocol import (
    SSE_DONE,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ModelCard,
    ModelList,
    QuoteRequest,
    ResponseMessage,
    Usage,
    sse,
)
from serve_app.models.backend import ChatMessage

# The JSON body the official `openai` Python package sends for
#   client.chat.completions.create(
#       model="gpt-4o-mini",
#       messages=[{"role": "developer", "content": "You are a helpful assistant."},
#                 {"role": "user", "content": "Hello!"}],
#       stream=True, stream_options={"include_usage": True}, max_tokens=64)
# (the client leaves out every parameter not given).
OPENAI_CLIENT_BODY = """
{
  "messages": [
    {"role": "developer", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"}
  ],
  "model": "gpt-4o-mini",
  "max_tokens": 64,
  "stream": true,
  "stream_options": {"include_usage": true}
}
"""


def request(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "llama-8b", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return ChatCompletionRequest.model_validate(body)


def test_the_openai_clients_typical_body_validates() -> None:
    body = ChatCompletionRequest.model_validate_json(OPENAI_CLIENT_BODY)
    assert body.model == "gpt-4o-mini"
    assert body.stream is True
    assert body.include_usage() is True
    assert body.output_cap() == 64
    assert body.to_messages() == (
        ChatMessage("developer", "You are a helpful assistant."),
        ChatMessage("user", "Hello!"),
    )
    assert body.price_cap_micro() is None
    assert body.stop_sequences() == ()


def test_a_body_with_every_supported_field_validates() -> None:
    body = request(
        messages=[
            {"role": "system", "content": "be brief", "name": "ops"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "hello"},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
            {"role": "user", "content": "and?"},
        ],
        max_completion_tokens=100,
        temperature=0,
        top_p=1,
        n=1,
        stream=True,
        stream_options={"include_usage": False},
        stop="\n\n",
        seed=7,
        user="user-1",
        presence_penalty=-2,
        frequency_penalty=2.0,
        max_price_usd=0.25,
        logprobs=False,
        parallel_tool_calls=False,
        metadata={"k": "v"},
    )
    assert body.messages[0].name == "ops"
    assert body.include_usage() is False
    assert body.stop_sequences() == ("\n\n",)
    assert body.price_cap_micro() == 250_000


def test_quote_request_takes_the_same_body() -> None:
    body = QuoteRequest.model_validate_json(OPENAI_CLIENT_BODY)
    assert isinstance(body, ChatCompletionRequest)
    assert body.output_cap() == 64
    with pytest.raises(ValidationError, match="only text and image_url content is supported"):
        QuoteRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}
        )


def test_unknown_fields_are_ignored_and_rejected_ones_never_serialized() -> None:
    body = request(future_field=1, functions=[], logprobs=False)
    dumped = body.model_dump()
    assert "future_field" not in dumped
    assert "functions" not in dumped


# ------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("fields", "cap"),
    [
        ({}, None),
        ({"max_tokens": 10}, 10),
        ({"max_completion_tokens": 20}, 20),
        ({"max_tokens": 10, "max_completion_tokens": 20}, 20),
        ({"max_tokens": 30, "max_completion_tokens": 20}, 20),
        ({"max_tokens": 10, "max_completion_tokens": None}, 10),
    ],
)
def test_max_completion_tokens_wins_over_max_tokens(
    fields: dict[str, Any], cap: int | None
) -> None:
    assert request(**fields).output_cap() == cap


@pytest.mark.parametrize(
    ("value", "micro"),
    [
        (None, None),
        (0, 0),
        ("0", 0),
        (0.3, 300_000),  # a JSON float: read as its shortest decimal, not 0.29999...
        (0.1, 100_000),
        ("0.000001", 1),
        ("0.0000019", 1),  # rounds down
        ("0.0000009", 0),
        (1e-7, 0),
        ("1.2345678", 1_234_567),
        (2, 2_000_000),
        ("1000000", 1_000_000_000_000),
        # 34 significant digits: past the default decimal precision, still exact.
        ("999999.9999999999999999999999999999", 999_999_999_999),
        ("0.0000009999999999999999999999999999", 0),
        (Decimal("12.5"), 12_500_000),
    ],
)
def test_price_cap_micro_is_exact_and_rounds_down(value: Any, micro: int | None) -> None:
    assert request(max_price_usd=value).price_cap_micro() == micro


def test_to_messages_flattens_text_parts() -> None:
    body = request(
        messages=[
            {
                "role": "system",
                "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "kind."}],
            },
            {"role": "assistant", "content": None},
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {}}]},
        ]
    )
    assert body.to_messages() == (
        ChatMessage("system", "Be kind."),
        ChatMessage("assistant", ""),
        ChatMessage("user", "Hi"),
    )


def test_stop_sequences() -> None:
    assert request(stop=["a", "b"]).stop_sequences() == ("a", "b")
    assert request(stop=[]).stop_sequences() == ()


def test_include_usage_needs_stream_and_the_option() -> None:
    assert request(stream=True).include_usage() is False
    assert request(stream=True, stream_options={"include_usage": True}).include_usage() is True


# ---------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "user", "content": ""}]}, "non-empty content"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "Input should be 'system'"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "image_url must be an object with a url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
            "only text and image_url content is supported",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "text must be a string"),
        ({"messages": [{"role": "user", "content": 5}]}, "list of text and image_url parts"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "needs the tool_call_id"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]},
            r"tool_calls\[0\]\.function must be an object",
        ),
        ({"n": 0}, "greater than or equal to 1"),
        ({"tools": [{"type": "function"}]}, "function must be an object"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "letters, digits"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "any"},
            "tool_choice must be one of",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "names 'g', which is not one of the tools",
        ),
        ({"functions": [{"name": "f"}]}, "send tools"),
        ({"logprobs": "yes"}, "valid boolean"),
        ({"logprobs": True, "top_logprobs": 21}, "less than or equal to 20"),
        ({"response_format": {"type": "json_schema"}}, "json_schema must be an object"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 1}}},
            "schema has the wrong type",
        ),
        ({"logit_bias": {"1": 101}}, "from -100 to 100"),
        ({"temperature": 3}, "less than or equal to 2"),
        ({"temperature": -0.1}, "greater than or equal to 0"),
        ({"top_p": 0}, "greater than 0"),
        ({"top_p": 1.5}, "less than or equal to 1"),
        ({"stream_options": {"include_usage": True}}, "only allowed when stream is true"),
        ({"max_price_usd": -1}, "greater than or equal to 0"),
        ({"max_price_usd": "1e999999"}, "less than or equal to"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ({"max_tokens": 0}, "greater than or equal to 1"),
        ({"max_tokens": "64"}, "valid integer"),
        ({"max_tokens": True}, "valid integer"),
        ({"seed": 1.5}, "valid integer"),
        ({"presence_penalty": 2.5}, "less than or equal to 2"),
        ({"frequency_penalty": -2.5}, "greater than or equal to -2"),
        ({"model": ""}, "at least 1 character"),
    ],
)
def test_invalid_requests_raise_a_readable_validation_error(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        request(**fields)


# ----------------------------------------------------------------------- responses


def test_chat_completion_response_has_openai_shape() -> None:
    response = ChatCompletionResponse(
        id="chatcmpl-1",
        created=1_700_000_000,
        model="llama-8b",
        choices=[Choice(message=ResponseMessage(content="Hello!"), finish_reason="stop")],
        usage=Usage.of(9, 3),
        rtcts={"price_usd": "0.000012", "action": "allow"},
    )
    assert json.loads(response.model_dump_json(exclude_none=True)) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "llama-8b",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        "rtcts": {"price_usd": "0.000012", "action": "allow"},
    }


def test_rtcts_extension_is_optional() -> None:
    response = ChatCompletionResponse(
        id="c",
        created=0,
        model="m",
        choices=[Choice(message=ResponseMessage(content=""), finish_reason="length")],
        usage=Usage.of(1, 0),
    )
    assert "rtcts" not in json.loads(response.model_dump_json(exclude_none=True))


def test_model_list_has_openai_shape() -> None:
    models = ModelList(
        data=[ModelCard(id="llama-8b", created=1, pricing={"input_per_mtok_usd": "0.1"})]
    )
    assert json.loads(models.model_dump_json()) == {
        "object": "list",
        "data": [
            {
                "id": "llama-8b",
                "object": "model",
                "created": 1,
                "owned_by": "rtcts",
                "pricing": {"input_per_mtok_usd": "0.1"},
            }
        ],
    }


def test_response_models_reject_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        Usage.model_validate(
            {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "x": 1}
        )


# ----------------------------------------------------------------------------- SSE


def test_sse_renders_a_chunk_without_none_fields() -> None:
    chunk = ChatCompletionChunk(
        id="chatcmpl-1",
        created=5,
        model="llama-8b",
        choices=[ChunkChoice(delta=ChunkDelta(content="Hel"))],
    )
    event = sse(chunk)
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert event.count(b"\n") == 2
    assert json.loads(event[len(b"data: ") :]) == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "llama-8b",
        "choices": [{"index": 0, "delta": {"content": "Hel"}}],
    }


def test_sse_renders_the_first_and_the_usage_chunks() -> None:
    first = ChatCompletionChunk(
        id="c",
        created=1,
        model="m",
        choices=[ChunkChoice(delta=ChunkDelta(role="assistant", content=""))],
    )
    assert json.loads(sse(first)[6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = ChatCompletionChunk(
        id="c", created=1, model="m", choices=[], usage=Usage.of(4, 2), rtcts={"price_micro": 17}
    )
    payload = json.loads(sse(last)[6:])
    assert payload["choices"] == []
    assert payload["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert payload["rtcts"] == {"price_micro": 17}


def test_sse_done_marker() -> None:
    assert sse("[DONE]") == b"data: [DONE]\n\n"
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_sse_splits_a_multiline_text_into_data_lines() -> None:
    assert sse("a\nb\r\nc") == b"data: a\ndata: b\ndata: c\n\n"
