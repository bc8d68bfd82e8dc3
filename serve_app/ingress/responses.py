"""rtcts's answers in OpenAI's wire format: chat completions and their chunks, text
completions, embeddings, model cards, and server-sent events.

The routes build the JSON of the priced answers as plain dicts for speed
(`documents.py`, `render.py`); these models are what that JSON is, and a test holds
them equal. The served API document's answers are `document_models.py`'s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

FinishReason = Literal["stop", "length", "tool_calls"]


class _Outgoing(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Usage(_Outgoing):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class _AsEngineWrote(BaseModel):
    """A tool call as the engine wrote it: OpenAI's fields, and any an engine adds."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)


class ToolCallFunction(_AsEngineWrote):
    name: str
    arguments: str
    """The arguments as JSON text (as the model wrote them: check before use)."""


class ToolCall(_AsEngineWrote):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ResponseMessage(_Outgoing):
    role: Literal["assistant"] = "assistant"
    content: str | None
    """The text; null when the model only called tools."""
    tool_calls: list[ToolCall] | None = None


class Choice(_Outgoing):
    index: int = 0
    message: ResponseMessage
    finish_reason: FinishReason | None
    logprobs: dict[str, Any] | None = None
    """With `logprobs: true`: OpenAI's `{"content": [{"token", "logprob", "bytes",
    "top_logprobs"}, ...]}`."""


class ChatCompletionResponse(_Outgoing):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    """Unix time, seconds."""
    model: str
    choices: list[Choice]
    usage: Usage
    rtcts: dict[str, Any] | None = None
    """rtcts extension: the price and the decision behind it."""


class ToolCallDeltaFunction(_AsEngineWrote):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_AsEngineWrote):
    """A piece of a tool call: the first has its id, type and name, the next ones
    append to its arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallDeltaFunction | None = None


class ChunkDelta(_Outgoing):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(_Outgoing):
    index: int = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(_Outgoing):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    """Empty in the last chunk that carries only the usage."""
    usage: Usage | None = None
    rtcts: dict[str, Any] | None = None


class ModelCard(_Outgoing):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rtcts"
    pricing: dict[str, Any] | None = None
    """rtcts extension: list prices of the model."""


class ModelList(_Outgoing):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ------------------------------------------------------------------------------- SSE

SSE_DONE = b"data: [DONE]\n\n"


def sse(data: BaseModel | str) -> bytes:
    """One server-sent event: `data: {json}\\n\\n` (None fields left out), or the text as is.

    `sse("[DONE]")` is the stream's end marker. A text with line breaks is sent as
    several `data:` lines, which SSE clients join back with newlines.
    """
    text = data.model_dump_json(exclude_none=True) if isinstance(data, BaseModel) else data
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return ("".join(f"data: {line}\n" for line in lines) + "\n").encode()
