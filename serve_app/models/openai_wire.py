"""The OpenAI chat-completions wire format, as the upstream backend speaks it.

Pure functions, no I/O: the JSON body posted to `/v1/chat/completions`, the reading of
an answer (whole, or one server-sent event of a stream), the message of an error body,
and the token usage (the server's, else counted here). The HTTP client, the errors and
the scrubbing of secrets stay with the backend (`upstream.py`).

An answer that does not follow the format raises `ValueError` whose message says how;
the backend turns it into `GenerationFailed` naming the server.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from serve_app.models.backend import ChatMessage, GenerationRequest

__all__ = [
    "CHAT_PATH",
    "FAILED_FINISH_REASONS",
    "Reply",
    "error_detail",
    "error_text",
    "json_object",
    "parse_chunk",
    "parse_completion",
    "request_body",
    "sse_data",
    "token_usage",
]

CHAT_PATH = "/v1/chat/completions"
MAX_ERROR_CHARS = 500
FAILED_FINISH_REASONS = frozenset({"abort", "error"})


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


def request_body(
    request: GenerationRequest, default_model: str | None, *, stream: bool
) -> dict[str, Any]:
    """The JSON body for `request`; `model` is its `upstream_model`, else `default_model`."""
    body: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "max_tokens": request.max_tokens,
    }
    model = request.upstream_model or default_model
    if model is not None:
        body["model"] = model
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
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
    """A non-streamed answer; ValueError without `choices[0].message.content`."""
    payload = json_object(content)
    try:
        choice = payload["choices"][0]
        text = choice["message"].get("content") or ""
        finish = choice.get("finish_reason")
        if not isinstance(text, str):
            raise TypeError("content is not a string")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ValueError(f"no choices[0].message.content ({exc})") from None
    return Reply(text=text, finish_reason=finish, usage=payload.get("usage"))


def sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for other fields, comments and blanks."""
    if not line.startswith("data:"):
        return None
    data = line[5:]
    return data[1:] if data.startswith(" ") else data


def parse_chunk(data: str) -> Reply:
    """One streamed chunk (the `data:` payload): its content text, finish reason, usage.

    An error the server sends in the stream comes back as `error`; a chunk that is not
    a JSON object, or has malformed choices, raises ValueError.
    """
    chunk = json_object(data.encode())
    usage = chunk["usage"] if chunk.get("usage") else None
    if chunk.get("error") is not None or chunk.get("object") == "error":
        return Reply(text="", usage=usage, error=error_text(chunk))
    choices = chunk.get("choices") or []
    if not isinstance(choices, list):
        raise ValueError("choices is not a list")
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        if text is not None and not isinstance(text, str):
            raise ValueError("delta.content is not a string")
        return Reply(text=text or "", finish_reason=choice.get("finish_reason"), usage=usage)
    return Reply(text="", usage=usage)


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


def token_usage(usage: object, messages: tuple[ChatMessage, ...], output: str) -> tuple[int, int]:
    """(input, output) tokens: the server's `usage` counts, else counted here."""
    input_tokens, output_tokens = None, None
    if isinstance(usage, dict):
        input_tokens = _token_count(usage.get("prompt_tokens"))
        output_tokens = _token_count(usage.get("completion_tokens"))
    if input_tokens is None:
        input_tokens = sum(_count_tokens(m.content) for m in messages)
    if output_tokens is None:
        output_tokens = _count_tokens(output)
    return input_tokens, output_tokens


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
