"""The OpenAI wire format, as the upstream backend speaks it: chat completions, text
completions (`/v1/completions`) and embeddings.

Pure functions, no I/O: the JSON body posted for a request (every field the request
carries goes as OpenAI's field of the same name: tools, tool choice, `n`, logprobs,
response format, penalties, `logit_bias`, images and tool calls in the messages), the
reading of an answer (whole, or one server-sent event of a stream; every choice, with
its tool calls and logprobs), the message of an error body, and the token usage (the
server's, else counted here). The HTTP client, the errors and the scrubbing of secrets
stay with the backend (`upstream.py`).

An answer that does not follow the format raises `ValueError` whose message says how;
the backend turns it into `GenerationFailed` naming the server.
"""

from __future__ import annotations

import base64
import importlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from serve_app.models.backend import ChatMessage, EmbeddingRequest, GenerationRequest, Json

__all__ = [
    "CHAT_PATH",
    "COMPLETIONS_PATH",
    "EMBEDDINGS_PATH",
    "FAILED_FINISH_REASONS",
    "Reply",
    "ReplyChoice",
    "embedding_body",
    "error_detail",
    "error_param",
    "error_text",
    "json_object",
    "parse_chunk",
    "parse_completion",
    "parse_embeddings",
    "request_body",
    "request_path",
    "sse_data",
    "token_usage",
    "tool_calls_text",
]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
MAX_ERROR_CHARS = 500
FAILED_FINISH_REASONS = frozenset({"abort", "error"})


@dataclass(frozen=True, slots=True)
class ReplyChoice:
    """One choice of an answer, or one choice's piece of a streamed chunk."""

    index: int
    text: str
    finish_reason: object = None
    tool_calls: tuple[Json, ...] = ()
    """Whole: `message.tool_calls`; streamed: `delta.tool_calls` pieces."""
    logprobs: Json | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """What a whole answer, or one streamed chunk, carries."""

    text: str
    """Content text ("" when the chunk has none)."""
    finish_reason: object = None
    """As the server sent it: None, "stop", "length", "abort", ..."""
    usage: object = None
    """The server's `usage` object, when it sent one."""
    error: str | None = None
    """The message of an error the server sent in the stream (then nothing else is read)."""
    choices: tuple[ReplyChoice, ...] = ()
    """Every choice (`text`/`finish_reason` above are the first's)."""


def request_path(request: GenerationRequest) -> str:
    """Where the request goes: text completions for prompts, else chat completions."""
    return COMPLETIONS_PATH if request.prompt is not None else CHAT_PATH


def request_body(
    request: GenerationRequest, default_model: str | None, *, stream: bool
) -> dict[str, Any]:
    """The JSON body for `request`; `model` is its `upstream_model`, else `default_model`.

    Every field the request carries is sent as OpenAI's (unset ones are left out)."""
    body: dict[str, Any] = {}
    if request.prompt is not None:
        body["prompt"] = request.prompt[0] if len(request.prompt) == 1 else list(request.prompt)
        if request.logprobs:
            body["logprobs"] = request.top_logprobs or 0
    else:
        body["messages"] = [_message(m) for m in request.messages]
        if request.logprobs:
            body["logprobs"] = True
            if request.top_logprobs is not None:
                body["top_logprobs"] = request.top_logprobs
        if request.tools:
            body["tools"] = [dict(t) for t in request.tools]
            if request.tool_choice is not None:
                body["tool_choice"] = request.tool_choice
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.response_format is not None:
            body["response_format"] = dict(request.response_format)
    body["max_tokens"] = request.max_tokens
    model = request.upstream_model or default_model
    if model is not None:
        body["model"] = model
    optional = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "logit_bias": None if request.logit_bias is None else dict(request.logit_bias),
        "user": request.user,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if request.n != 1:
        body["n"] = request.n
    if request.stop:
        body["stop"] = list(request.stop)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _message(message: ChatMessage) -> dict[str, Any]:
    item: dict[str, Any] = {"role": message.role}
    if message.parts:
        item["content"] = [dict(p) for p in message.parts]
    elif message.content or not message.tool_calls:
        item["content"] = message.content
    else:
        item["content"] = None  # an assistant's message that only called tools
    if message.name is not None:
        item["name"] = message.name
    if message.tool_calls:
        item["tool_calls"] = [dict(c) for c in message.tool_calls]
    if message.tool_call_id is not None:
        item["tool_call_id"] = message.tool_call_id
    return item


def embedding_body(request: EmbeddingRequest, default_model: str | None) -> dict[str, Any]:
    """The JSON body of `/v1/embeddings`: always floats (rtcts encodes for its client)."""
    inputs = [x if isinstance(x, str) else list(x) for x in request.inputs]
    body: dict[str, Any] = {"input": inputs, "encoding_format": "float"}
    model = request.upstream_model or default_model
    if model is not None:
        body["model"] = model
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    if request.user is not None:
        body["user"] = request.user
    return body


def json_object(content: bytes) -> dict[str, Any]:
    """`content` as a JSON object; ValueError when it is not one."""
    try:
        payload = json.loads(content)
    except ValueError:
        raise ValueError(f"body is not JSON: {content[:80]!r}") from None
    if not isinstance(payload, dict):
        raise ValueError("body is not a JSON object")
    return cast(dict[str, Any], payload)


def parse_completion(content: bytes) -> Reply:
    """A non-streamed chat or text completion: every choice, with its tool calls and
    logprobs; ValueError without a first choice's content (or tool calls)."""
    payload = json_object(content)
    raw = payload.get("choices")
    if not isinstance(raw, list) or not raw:
        raise ValueError("no choices[0]")
    choices = tuple(sorted((_whole_choice(c, i) for i, c in enumerate(raw)), key=_index))
    first = choices[0]
    return Reply(first.text, first.finish_reason, payload.get("usage"), choices=choices)


def _whole_choice(choice: object, position: int) -> ReplyChoice:
    if not isinstance(choice, dict):
        raise ValueError(f"choices[{position}] is not an object")
    index = _whole_number(choice.get("index", position))
    finish = choice.get("finish_reason")
    logprobs = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
    if "message" not in choice and isinstance(choice.get("text"), str):  # text completion
        return ReplyChoice(index, choice["text"], finish, (), logprobs)
    message = choice.get("message")
    if not isinstance(message, dict):
        raise ValueError(f"no choices[{position}].message.content")
    text = message.get("content") or ""
    if not isinstance(text, str):
        raise ValueError(f"choices[{position}].message.content is not a string")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        raise ValueError(f"choices[{position}].message.tool_calls is not a list of objects")
    return ReplyChoice(index, text, finish, tuple(calls), logprobs)


def _index(choice: ReplyChoice) -> int:
    return choice.index


def _whole_number(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("a choice's index is not a whole number")
    return value


def parse_embeddings(content: bytes) -> tuple[tuple[tuple[float, ...], ...], object]:
    """(the vectors in input order, the server's `usage`) of an embeddings answer; a
    base64 vector (little-endian float32) is decoded. ValueError when malformed."""
    payload = json_object(content)
    data = payload.get("data")
    if not isinstance(data, list) or not data:
        raise ValueError("no data")
    ordered: list[tuple[int, tuple[float, ...]]] = []
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"data[{position}] is not an object")
        vector = item.get("embedding")
        if isinstance(vector, str):
            raw = base64.b64decode(vector)
            values: tuple[float, ...] = struct.unpack(f"<{len(raw) // 4}f", raw)
        elif isinstance(vector, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in vector
        ):
            values = tuple(float(v) for v in vector)
        else:
            raise ValueError(f"data[{position}].embedding is not a vector")
        ordered.append((_whole_number(item.get("index", position)), values))
    ordered.sort(key=lambda pair: pair[0])
    return tuple(vector for _, vector in ordered), payload.get("usage")


def sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for other fields, comments and blanks."""
    if not line.startswith("data:"):
        return None
    data = line[5:]
    return data[1:] if data.startswith(" ") else data


def parse_chunk(data: str) -> Reply:
    """One streamed chunk (the `data:` payload): each choice's piece (content or text,
    tool-call pieces, logprobs, finish reason), and the usage.

    An error the server sends in the stream comes back as `error`; a chunk that is not
    a JSON object, or has malformed choices, raises ValueError. `text` and
    `finish_reason` are choice 0's (a chunk may carry only other choices)."""
    chunk = json_object(data.encode())
    usage = chunk["usage"] if chunk.get("usage") else None
    if chunk.get("error") is not None or chunk.get("object") == "error":
        return Reply(text="", usage=usage, error=error_text(chunk))
    raw = chunk.get("choices") or []
    if not isinstance(raw, list):
        raise ValueError("choices is not a list")
    pieces = tuple(_piece(c, i) for i, c in enumerate(raw) if isinstance(c, dict))
    first = next((p for p in pieces if p.index == 0), None)
    if first is None:
        return Reply(text="", usage=usage, choices=pieces)
    return Reply(first.text, first.finish_reason, usage, choices=pieces)


def _piece(choice: dict[str, Any], position: int) -> ReplyChoice:
    index = _whole_number(choice.get("index", position))
    finish = choice.get("finish_reason")
    logprobs = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
    if "delta" not in choice and "text" in choice:  # a text completion's chunk
        text = choice.get("text")
        if not isinstance(text, str):
            raise ValueError("text is not a string")
        return ReplyChoice(index, text, finish, (), logprobs)
    delta = choice.get("delta") or {}
    text = delta.get("content") if isinstance(delta, dict) else None
    if text is not None and not isinstance(text, str):
        raise ValueError("delta.content is not a string")
    calls = delta.get("tool_calls") if isinstance(delta, dict) else None
    if calls is not None and (
        not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls)
    ):
        raise ValueError("delta.tool_calls is not a list of objects")
    return ReplyChoice(index, text or "", finish, tuple(calls or ()), logprobs)


def error_text(payload: object) -> str:
    """The message of an OpenAI (`error.message`), vLLM or TGI (`error`) error body."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(payload.get("message"), str):
            return str(payload["message"])
        if isinstance(payload.get("detail"), str):
            return str(payload["detail"])
    return json.dumps(payload)[:MAX_ERROR_CHARS]


def error_detail(content: bytes) -> str:
    """The message of an HTTP error answer's body, on one line, at most 500 characters."""
    try:
        detail = error_text(json.loads(content))
    except ValueError:
        detail = content.decode("utf-8", "replace")
    return " ".join(detail.split())[:MAX_ERROR_CHARS]


def error_param(content: bytes) -> str | None:
    """The field an OpenAI error body names (`error.param`), if any."""
    try:
        payload = json.loads(content)
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) and param else None


def token_usage(
    usage: object,
    messages: tuple[ChatMessage, ...],
    output: str,
    prompts: tuple[str, ...] = (),
) -> tuple[int, int]:
    """(input, output) tokens: the server's `usage` counts, else counted here (the
    messages' or the `prompts`' text, and `output`)."""
    input_tokens, output_tokens = None, None
    if isinstance(usage, dict):
        input_tokens = _token_count(usage.get("prompt_tokens"))
        output_tokens = _token_count(usage.get("completion_tokens"))
    if input_tokens is None:
        texts = [m.content for m in messages] + list(prompts)
        input_tokens = sum(_count_tokens(text) for text in texts)
    if output_tokens is None:
        output_tokens = _count_tokens(output)
    return input_tokens, output_tokens


def tool_calls_text(calls: tuple[Json, ...]) -> str:
    """The text of tool calls (names and arguments), for counting output tokens."""
    text = ""
    for call in calls:
        function = call.get("function")
        if isinstance(function, dict):
            text += " ".join(str(function.get(key) or "") for key in ("name", "arguments"))
    return text


def _token_count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _count_tokens(text: str) -> int:
    """Tokens in `text` by `serve_app.models.tokens.count_tokens`, else whitespace words."""
    try:
        module = importlib.import_module("serve_app.models.tokens")
    except ImportError:
        return len(text.split())
    counter = getattr(module, "count_tokens", None)
    if not callable(counter):
        return len(text.split())
    return int(cast(Callable[[str], int], counter)(text))
