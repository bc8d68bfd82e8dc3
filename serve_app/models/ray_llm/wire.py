"""rtcts's generation values and Ray Serve LLM's OpenAI objects, both ways.

Pure functions and one small reader, no Ray: what the rtcts deployment hands
`LLMServer.chat` / `.completions` / `.embeddings` (`chat_request_fields`,
`embedding_fields`: every OpenAI field the request carries, as the upstream backend
sends them), what the simulated engine reads out of the request Ray passes it
(`generation_request`) and writes back (`stream_chunk`, `whole_fields`,
`embedding_response_fields`, `error_fields`), and how the deployment reads
`LLMServer`'s answer (`ChatStreamReader`, `embeddings_of`). The JSON shapes are
OpenAI's, as vLLM speaks them; the SSE and chunk parsing is the upstream backend's
(`openai_wire.py`). Chat and text completions differ only in the object written
(`chat.completion[.chunk]` or `text_completion`) and the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from serve_app.models.backend import (
    BackendError,
    BackendUnavailable,
    ChatMessage,
    Delta,
    EmbeddingRequest,
    Embeddings,
    FinishReason,
    GenerationFailed,
    GenerationRequest,
    Json,
    RequestRejected,
)
from serve_app.models.openai_wire import (
    embedding_body,
    parse_chunk,
    request_body,
    sse_data,
    token_usage,
    tool_calls_text,
)
from serve_app.models.ray_llm.engine_wire import (
    REJECTED_CODES,
    UNAVAILABLE_CODES,
    embedding_response_fields,
    error_fields,
    stream_chunk,
    usage_fields,
    whole_fields,
)

__all__ = [
    "DONE",
    "ChatStreamReader",
    "chat_request_fields",
    "embedding_fields",
    "embedding_request",
    "embedding_response_fields",
    "embeddings_of",
    "error_fields",
    "generation_request",
    "stream_chunk",
    "usage_fields",
    "whole_fields",
]

DONE = "data: [DONE]\n\n"


# -- rtcts -> LLMServer ------------------------------------------------------------------


def chat_request_fields(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The fields of the streamed chat (or text completion) request for `request`, for
    `model` as served.

    Always streamed, with the usage in a last chunk: so the first token's time is seen
    (a whole answer carries no timing) and the tokens billed are the engine's count.
    The rtcts request id goes through as the engine's request id."""
    fields = request_body(request, model, stream=True)
    fields["request_id"] = request.request_id
    return fields


def embedding_fields(request: EmbeddingRequest, model: str) -> dict[str, Any]:
    """The fields of the embedding request for `request` (floats, rtcts's request id)."""
    return {**embedding_body(request, model), "request_id": request.request_id}


# -- LLMServer -> engine (the simulated engine's side) -------------------------------------


def generation_request(request: Any, *, default_max_tokens: int) -> GenerationRequest:
    """The `GenerationRequest` of a chat or text completion request object (vLLM's or
    the stand-in's): every field rtcts's engines read. Content given as parts keeps its
    text parts (and the parts, where there are images)."""
    max_tokens = getattr(request, "max_completion_tokens", None) or getattr(
        request, "max_tokens", None
    )
    stop = getattr(request, "stop", None)
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    common: dict[str, Any] = {
        "request_id": str(request.request_id),
        "max_tokens": int(max_tokens or default_max_tokens),
        "temperature": getattr(request, "temperature", None),
        "top_p": getattr(request, "top_p", None),
        "stop": stops,
        "seed": getattr(request, "seed", None),
        "n": int(getattr(request, "n", None) or 1),
        "presence_penalty": getattr(request, "presence_penalty", None),
        "frequency_penalty": getattr(request, "frequency_penalty", None),
        "logit_bias": getattr(request, "logit_bias", None) or None,
        "user": getattr(request, "user", None),
    }
    prompt = getattr(request, "prompt", None)
    if prompt is not None:  # a text completion
        legacy = getattr(request, "logprobs", None)
        prompts = (prompt,) if isinstance(prompt, str) else tuple(str(p) for p in prompt)
        return GenerationRequest(
            messages=(),
            prompt=prompts,
            logprobs=legacy is not None,
            top_logprobs=legacy,
            **common,
        )
    tools = tuple(getattr(request, "tools", None) or ())
    return GenerationRequest(
        messages=tuple(_message(m) for m in request.messages),
        tools=tuple(t if isinstance(t, dict) else dict(t) for t in tools),
        tool_choice=getattr(request, "tool_choice", None) if tools else None,
        parallel_tool_calls=getattr(request, "parallel_tool_calls", None) if tools else None,
        logprobs=bool(getattr(request, "logprobs", None)),
        top_logprobs=getattr(request, "top_logprobs", None),
        response_format=getattr(request, "response_format", None),
        **common,
    )


def _message(message: Any) -> ChatMessage:
    item = message if isinstance(message, dict) else dict(message)
    content = item.get("content")
    parts: tuple[Json, ...] = ()
    if isinstance(content, list):
        if any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            parts = tuple(p for p in content if isinstance(p, dict))
        content = "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ChatMessage(
        role=str(item.get("role", "user")),
        content=str(content or ""),
        name=item.get("name"),
        tool_calls=tuple(item.get("tool_calls") or ()),
        tool_call_id=item.get("tool_call_id"),
        parts=parts,
    )


def embedding_request(request: Any) -> EmbeddingRequest:
    """The `EmbeddingRequest` of an embedding request object."""
    value = request.input
    if isinstance(value, str):
        inputs: tuple[str | tuple[int, ...], ...] = (value,)
    elif value and isinstance(value[0], int):
        inputs = (tuple(value),)
    else:
        inputs = tuple(v if isinstance(v, str) else tuple(v) for v in value)
    return EmbeddingRequest(
        request_id=str(request.request_id),
        inputs=inputs,
        dimensions=getattr(request, "dimensions", None),
        user=getattr(request, "user", None),
    )


# -- LLMServer -> rtcts --------------------------------------------------------------------


class ChatStreamReader:
    """Reads what `LLMServer.chat` (or `.completions`) yields for a streamed request,
    batch by batch.

    Each batch is a list (the `Batcher`'s) of SSE strings or error objects. `read`
    returns the batch's pieces as `Delta`s, one per choice's piece (text, tool-call
    pieces, logprobs); finish reasons are held to the end. An error, in a chunk or as
    an `ErrorResponse`, raises `BackendUnavailable` (429, 503), `RequestRejected` (400,
    404, 413, 422: the request itself) or `GenerationFailed`. `finish()` is the closing
    Deltas: each choice's end, the last one with the engine's token usage (counted here
    when it sent none). `feed` and `final` are the first choice's view of the same.
    """

    def __init__(self, request: GenerationRequest) -> None:
        self._request = request
        self._texts: list[str] = []
        self._finishes: dict[int, object] = {}
        self._usage: object = None
        self._done = False

    def read(self, batch: object) -> list[Delta]:
        """The batch's pieces; a choice's consecutive text pieces are joined into one
        Delta (logprobs with them), as the batch gathered them."""
        items: Iterable[object] = batch if isinstance(batch, list) else [batch]
        deltas: list[Delta] = []
        for item in items:
            for delta in self._read(item):
                previous = deltas[-1] if deltas else None
                if (
                    previous is not None
                    and previous.index == delta.index
                    and not (previous.tool_calls or delta.tool_calls)
                    and (previous.logprobs is None) == (delta.logprobs is None)
                ):
                    deltas[-1] = _joined(previous, delta)
                else:
                    deltas.append(delta)
        return deltas

    def feed(self, batch: object) -> str:
        """The batch's text (every choice's, joined)."""
        return "".join(delta.text for delta in self.read(batch))

    def _read(self, item: object) -> list[Delta]:
        if not isinstance(item, str):
            raise _error_of(item)
        data = sse_data(item.strip())
        if data is None or data == "[DONE]":
            self._done = self._done or data == "[DONE]"
            return []
        try:
            reply = parse_chunk(data)
        except ValueError as exc:
            raise GenerationFailed(f"malformed chunk from the engine: {exc}") from None
        if reply.error is not None:
            raise _chunk_error(data, reply.error)
        if reply.usage is not None:
            self._usage = reply.usage
        deltas = []
        for piece in reply.choices:
            if piece.finish_reason is not None:
                self._finishes[piece.index] = piece.finish_reason
            if piece.text or piece.tool_calls or piece.logprobs:
                self._texts.append(piece.text + tool_calls_text(piece.tool_calls))
                deltas.append(
                    Delta(
                        text=piece.text,
                        index=piece.index,
                        tool_calls=piece.tool_calls,
                        logprobs=piece.logprobs,
                    )
                )
        return deltas

    def finish(self) -> list[Delta]:
        """The closing Deltas; GenerationFailed when the stream did not finish."""
        ends = sorted(self._finishes.items()) or [(0, None)]
        reasons = [(index, _reason(finish)) for index, finish in ends]
        input_tokens, output_tokens = token_usage(
            self._usage, self._request.messages, "".join(self._texts), self._request.prompt or ()
        )
        closing = [Delta(text="", index=i, finish_reason=r) for i, r in reasons[:-1]]
        index, reason = reasons[-1]
        closing.append(
            Delta(
                text="",
                index=index,
                finish_reason=reason,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
        )
        return closing

    def final(self) -> Delta:
        """The last Delta (its choice's end and the usage)."""
        return self.finish()[-1]


def _joined(first: Delta, second: Delta) -> Delta:
    """Two text pieces of one choice as one (their logprobs lists concatenated)."""
    logprobs = None
    if first.logprobs is not None and second.logprobs is not None:
        keys = dict.fromkeys([*first.logprobs, *second.logprobs])
        logprobs = {
            key: [*(first.logprobs.get(key) or []), *(second.logprobs.get(key) or [])]
            for key in keys
        }
    return Delta(text=first.text + second.text, index=first.index, logprobs=logprobs)


def _reason(finish: object) -> FinishReason:
    """A finished choice's reason; anything else (none, "abort", "error", ...) is a
    failure of the engine."""
    if finish == "stop":
        return "stop"
    if finish == "length":
        return "length"
    if finish in ("tool_calls", "function_call"):
        return "tool_calls"
    raise GenerationFailed(f"the engine ended the stream with finish_reason {finish!r}")


def embeddings_of(answer: object, request: EmbeddingRequest, total_s: float) -> Embeddings:
    """The `Embeddings` of what `LLMServer.embeddings` yielded (its response object);
    an `ErrorResponse` raises as `ChatStreamReader` does."""
    fields = answer if isinstance(answer, dict) else getattr(answer, "__dict__", {})
    if hasattr(answer, "model_dump"):
        fields = answer.model_dump()
    data = fields.get("data") if isinstance(fields, dict) else None
    if not isinstance(data, list):
        raise _error_of(answer)
    try:
        ordered = sorted(data, key=lambda item: int(item["index"]))
        vectors = tuple(tuple(float(v) for v in item["embedding"]) for item in ordered)
    except (KeyError, TypeError, ValueError) as exc:
        raise GenerationFailed(f"malformed embeddings from the engine: {exc!r}") from None
    texts = tuple(x for x in request.inputs if isinstance(x, str))
    usage = fields.get("usage")
    input_tokens, _ = token_usage(usage, (), "", texts)
    if not isinstance(usage, dict) or "prompt_tokens" not in usage:
        input_tokens += sum(len(x) for x in request.inputs if isinstance(x, tuple))
    return Embeddings(vectors, input_tokens, total_s)


def _chunk_error(data: str, message: str) -> BackendError:
    error = json.loads(data).get("error")
    code = error.get("code") if isinstance(error, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return _by_code(code, message, param)


def _error_of(item: object) -> BackendError:
    """The rtcts error of an `ErrorResponse` (or anything else the stream should not hold)."""
    error = getattr(item, "error", None)
    message = getattr(error, "message", None)
    code = getattr(error, "code", None)
    if not isinstance(message, str):
        return GenerationFailed(f"unexpected item from the engine: {type(item).__name__}")
    return _by_code(code, message, getattr(error, "param", None))


def _by_code(code: object, message: str, param: object) -> BackendError:
    if code in UNAVAILABLE_CODES:
        return BackendUnavailable(f"the engine is unavailable: {message}")
    if code in REJECTED_CODES:
        return RequestRejected(message, param=param if isinstance(param, str) else None)
    return GenerationFailed(f"the engine failed: {message}")
