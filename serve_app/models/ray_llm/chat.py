"""rtcts's two calls (`generate`, `stream`) on top of `LLMServer.chat`.

`chat_deltas` sends `LLMServer.chat` (any callable of its shape) the streamed chat
request of a `GenerationRequest` and reads the batches it yields back into `Delta`s:
one per batch with text, then the last one with the finish reason and the engine's
token usage. Closing it early (the client left) closes `LLMServer`'s stream, which
cancels the request in the engine. `collect` makes a `Completion` of those deltas,
timing the first token on the injected clock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from serve_app.models.backend import Completion, Delta, GenerationFailed, GenerationRequest
from serve_app.models.ray_llm.protocol import openai_models
from serve_app.models.ray_llm.wire import ChatStreamReader, chat_request_fields

__all__ = ["Chat", "chat_deltas", "collect"]

Chat = Callable[[Any], Awaitable[AsyncGenerator[Any, None]]]
"""`LLMServer.chat`: a chat request in, an async generator of answer batches out."""


async def chat_deltas(
    chat: Chat, request: GenerationRequest, model: str
) -> AsyncGenerator[Delta, None]:
    """The answer to `request` through `chat`, for `model` as the engine serves it."""
    fields = chat_request_fields(request, model)
    chat_request = openai_models().ChatCompletionRequest.model_validate(fields)
    reader = ChatStreamReader(request)
    batches = await chat(chat_request)
    try:
        async for batch in batches:
            text = reader.feed(batch)
            if text:
                yield Delta(text=text)
    finally:
        await batches.aclose()  # early close: LLMServer's stream cancels the engine's
    yield reader.final()


async def collect(
    deltas: AsyncIterator[Delta], clock: Callable[[], float] = time.monotonic
) -> Completion:
    """The whole answer of `deltas`, with its first-token and total times on `clock`."""
    began = clock()
    ttft_s: float | None = None
    texts: list[str] = []
    last: Delta | None = None
    async with contextlib.aclosing(deltas) as stream:  # type: ignore[type-var]
        async for delta in stream:
            if ttft_s is None and delta.text:
                ttft_s = clock() - began
            texts.append(delta.text)
            last = delta
    total_s = clock() - began
    if (
        last is None
        or last.finish_reason is None
        or last.input_tokens is None
        or last.output_tokens is None
    ):
        raise GenerationFailed("the engine's answer ended without its usage")
    return Completion(
        text="".join(texts),
        finish_reason=last.finish_reason,
        input_tokens=last.input_tokens,
        output_tokens=last.output_tokens,
        ttft_s=total_s if ttft_s is None else ttft_s,
        total_s=total_s,
    )
