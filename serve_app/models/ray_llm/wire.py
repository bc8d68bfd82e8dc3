"""rtcts's generation values and Ray Serve LLM's OpenAI chat objects, both ways.

Pure functions and one small reader, no Ray: what the rtcts deployment hands
`LLMServer.chat` (`chat_request_fields`), what the simulated engine reads out of the
chat request Ray passes it (`generation_request`) and writes back (`stream_chunk`,
`whole_fields`, `error_fields`), and how the deployment reads `LLMServer`'s answer
(`ChatStreamReader`). The JSON shapes are OpenAI's, as vLLM speaks them; the SSE and
chunk parsing is the upstream backend's (`openai_wire.py`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from serve_app.models.backend import (
    BackendUnavailable,
    ChatMessage,
    Delta,
    FinishReason,
    GenerationFailed,
    GenerationRequest,
)
from serve_app.models.openai_wire import (
    FAILED_FINISH_REASONS,
    parse_chunk,
    request_body,
    sse_data,
    token_usage,
)

__all__ = [
    "DONE",
    "ChatStreamReader",
    "chat_request_fields",
    "error_fields",
    "generation_request",
    "stream_chunk",
    "usage_fields",
    "whole_fields",
]

DONE = "data: [DONE]\n\n"
UNAVAILABLE_CODES = frozenset({429, 503})
"""Error codes that mean the engine cannot take the request now (not a failure of it)."""


# -- rtcts -> LLMServer ------------------------------------------------------------------


def chat_request_fields(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The fields of the streamed chat request for `request`, for `model` as served.

    Always streamed, with the usage in a last chunk: so the first token's time is seen
    (a whole answer carries no timing) and the tokens billed are the engine's count.
    The rtcts request id goes through as the engine's request id."""
    fields = request_body(request, model, stream=True)
    fields["request_id"] = request.request_id
    return fields


# -- LLMServer -> engine (the simulated engine's side) -------------------------------------


def generation_request(request: Any, *, default_max_tokens: int) -> GenerationRequest:
    """The `GenerationRequest` of a chat request object (vLLM's or the stand-in's).

    Content given as parts keeps its text parts. Raises ValueError on what the
    simulated engine cannot serve (several choices)."""
    if getattr(request, "n", 1) not in (None, 1):
        raise ValueError("only one choice (n=1) is served")
    max_tokens = getattr(request, "max_completion_tokens", None) or getattr(
        request, "max_tokens", None
    )
    stop = getattr(request, "stop", None)
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return GenerationRequest(
        request_id=str(request.request_id),
        messages=tuple(_message(m) for m in request.messages),
        max_tokens=int(max_tokens or default_max_tokens),
        temperature=getattr(request, "temperature", None),
        top_p=getattr(request, "top_p", None),
        stop=stops,
        seed=getattr(request, "seed", None),
    )


def _message(message: Any) -> ChatMessage:
    item = message if isinstance(message, dict) else dict(message)
    content = item.get("content")
    if isinstance(content, list):
        content = "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ChatMessage(role=str(item.get("role", "user")), content=str(content or ""))


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
) -> str:
    """One SSE `data:` event of a streamed chat completion; with `usage` and no text or
    finish reason it is the usage chunk (no choices), as vLLM sends it last."""
    chunk: dict[str, Any] = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [],
    }
    if text is not None or finish_reason is not None:
        delta = {"role": "assistant", "content": text or ""}
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    if usage is not None:
        chunk["usage"] = usage
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"


def whole_fields(
    chunk_id: str, model: str, text: str, finish_reason: str, usage: dict[str, int]
) -> dict[str, Any]:
    """The fields of a whole (not streamed) chat completion."""
    return {
        "id": chunk_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }


def error_fields(message: str, code: int) -> dict[str, Any]:
    """An OpenAI error body (`ErrorResponse`'s fields)."""
    kind = "ServiceUnavailableError" if code in UNAVAILABLE_CODES else "InternalServerError"
    return {"error": {"message": message, "type": kind, "code": code}}


# -- LLMServer -> rtcts --------------------------------------------------------------------


class ChatStreamReader:
    """Reads what `LLMServer.chat` yields for a streamed request, batch by batch.

    Each batch is a list (the `Batcher`'s) of SSE strings or error objects. `feed`
    returns the batch's text; an error, in a chunk or as an `ErrorResponse`, raises
    `BackendUnavailable` (429, 503) or `GenerationFailed`. `final()` is the last Delta:
    the finish reason and the engine's token usage (counted here when it sent none).
    """

    def __init__(self, request: GenerationRequest) -> None:
        self._request = request
        self._texts: list[str] = []
        self._finish: object = None
        self._usage: object = None
        self._done = False

    def feed(self, batch: object) -> str:
        items: Iterable[object] = batch if isinstance(batch, list) else [batch]
        texts: list[str] = []
        for item in items:
            texts.append(self._read(item))
        text = "".join(texts)
        self._texts.append(text)
        return text

    def _read(self, item: object) -> str:
        if isinstance(item, str):
            data = sse_data(item.strip())
            if data is None or data == "[DONE]":
                self._done = self._done or data == "[DONE]"
                return ""
            try:
                reply = parse_chunk(data)
            except ValueError as exc:
                raise GenerationFailed(f"malformed chunk from the engine: {exc}") from None
            if reply.error is not None:
                raise _chunk_error(data, reply.error)
            if reply.finish_reason is not None:
                self._finish = reply.finish_reason
            if reply.usage is not None:
                self._usage = reply.usage
            return reply.text
        raise _error_of(item)

    def final(self) -> Delta:
        """The last Delta; GenerationFailed when the stream did not finish."""
        finish = self._finish
        if finish in FAILED_FINISH_REASONS or finish not in ("stop", "length"):
            raise GenerationFailed(f"the engine ended the stream with finish_reason {finish!r}")
        reason: FinishReason = "stop" if finish == "stop" else "length"
        input_tokens, output_tokens = token_usage(
            self._usage, self._request.messages, "".join(self._texts)
        )
        return Delta(
            text="", finish_reason=reason, input_tokens=input_tokens, output_tokens=output_tokens
        )


def _chunk_error(data: str, message: str) -> GenerationFailed | BackendUnavailable:
    error = json.loads(data).get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if code in UNAVAILABLE_CODES:
        return BackendUnavailable(f"the engine is unavailable: {message}")
    return GenerationFailed(f"the engine failed: {message}")


def _error_of(item: object) -> GenerationFailed | BackendUnavailable:
    """The rtcts error of an `ErrorResponse` (or anything else the stream should not hold)."""
    error = getattr(item, "error", None)
    message = getattr(error, "message", None)
    code = getattr(error, "code", None)
    if not isinstance(message, str):
        return GenerationFailed(f"unexpected item from the engine: {type(item).__name__}")
    if code in UNAVAILABLE_CODES:
        return BackendUnavailable(f"the engine is unavailable: {message}")
    return GenerationFailed(f"the engine failed: {message}")
