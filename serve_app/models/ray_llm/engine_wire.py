"""What the simulated engine writes back to `LLMServer`: OpenAI's chunks and whole
answers for chat and text completions, embedding responses and error bodies (plain
dicts and SSE strings, as vLLM writes them). `wire.py` re-exports them beside the
readers of the same shapes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from serve_app.models.backend import ChoiceOutput, Embeddings, FinishReason, Json

__all__ = [
    "REJECTED_CODES",
    "UNAVAILABLE_CODES",
    "embedding_response_fields",
    "error_fields",
    "stream_chunk",
    "usage_fields",
    "whole_fields",
]

UNAVAILABLE_CODES = frozenset({429, 503})
"""Error codes that mean the engine cannot take the request now (not a failure of it)."""
REJECTED_CODES = frozenset({400, 404, 413, 422})
"""Error codes by which the engine refuses the request itself (the client's to fix)."""


def usage_fields(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def stream_chunk(
    chunk_id: str,
    model: str,
    *,
    text: str | None = None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
    created: int | None = None,
    index: int = 0,
    tool_calls: tuple[Json, ...] = (),
    logprobs: Json | None = None,
    completion: bool = False,
) -> str:
    """One SSE `data:` event of a streamed chat (or, `completion`, text) completion;
    with `usage` and no piece or finish reason it is the usage chunk (no choices), as
    vLLM sends it last."""
    chunk: dict[str, Any] = {
        "id": chunk_id,
        "object": "text_completion" if completion else "chat.completion.chunk",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [],
    }
    if text is not None or finish_reason is not None or tool_calls:
        choice: dict[str, Any]
        if completion:
            choice = {"index": index, "text": text or "", "logprobs": logprobs}
        else:
            delta: dict[str, Any] = {"role": "assistant", "content": text or ""}
            if tool_calls:
                delta = {"role": "assistant", "tool_calls": [dict(c) for c in tool_calls]}
            choice = {"index": index, "delta": delta}
            if logprobs is not None:
                choice["logprobs"] = dict(logprobs)
        chunk["choices"] = [{**choice, "finish_reason": finish_reason}]
    if usage is not None:
        chunk["usage"] = usage
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"


def whole_fields(
    chunk_id: str,
    model: str,
    text: str,
    finish_reason: FinishReason,
    usage: dict[str, int],
    *,
    choices: tuple[ChoiceOutput, ...] = (),
    completion: bool = False,
) -> dict[str, Any]:
    """The fields of a whole (not streamed) chat (or, `completion`, text) completion:
    `choices` when given, else one choice of `text`."""
    every = choices or (ChoiceOutput(0, text, finish_reason),)
    if completion:
        written = [
            {
                "index": c.index,
                "text": c.text,
                "logprobs": None if c.logprobs is None else dict(c.logprobs),
                "finish_reason": c.finish_reason,
            }
            for c in every
        ]
    else:
        written = [_chat_choice(c) for c in every]
    return {
        "id": chunk_id,
        "object": "text_completion" if completion else "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": written,
        "usage": usage,
    }


def _chat_choice(choice: ChoiceOutput) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.text}
    if choice.tool_calls:
        message = {
            "role": "assistant",
            "content": choice.text or None,
            "tool_calls": [dict(c) for c in choice.tool_calls],
        }
    written: dict[str, Any] = {
        "index": choice.index,
        "message": message,
        "finish_reason": choice.finish_reason,
    }
    if choice.logprobs is not None:
        written["logprobs"] = dict(choice.logprobs)
    return written


def embedding_response_fields(
    request_id: str, model: str, embeddings: Embeddings
) -> dict[str, Any]:
    """The fields of an embedding response (floats)."""
    return {
        "id": request_id,
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": [
            {"object": "embedding", "index": index, "embedding": list(vector)}
            for index, vector in enumerate(embeddings.vectors)
        ],
        "usage": {
            "prompt_tokens": embeddings.input_tokens,
            "total_tokens": embeddings.input_tokens,
        },
    }


def error_fields(message: str, code: int, param: str | None = None) -> dict[str, Any]:
    """An OpenAI error body (`ErrorResponse`'s fields)."""
    if code in UNAVAILABLE_CODES:
        kind = "ServiceUnavailableError"
    elif code in REJECTED_CODES:
        kind = "BadRequestError"
    else:
        kind = "InternalServerError"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
