"""rtcts's calls (`generate`, `stream`, `embed`) on top of `LLMServer.chat`,
`.completions` and `.embeddings`.

`chat_deltas` sends `LLMServer.chat` (or `.completions`, for a text completion: any
callable of their shape) the streamed request of a `GenerationRequest` and reads the
batches it yields back into `Delta`s: one per piece of each choice (text, tool-call
pieces, logprobs), then each choice's end, the last with the engine's token usage.
Closing it early (the client left) closes `LLMServer`'s stream, which cancels the
request in the engine. `collect` makes a `Completion` of those deltas, timing the first
token on the injected clock. `embed_through` asks `LLMServer.embeddings`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from serve_app.models.backend import (
    Completion,
    Delta,
    EmbeddingRequest,
    Embeddings,
    GenerationFailed,
    GenerationRequest,
)
from serve_app.models.deltas import ChoiceCollector
from serve_app.models.ray_llm.protocol import openai_models
from serve_app.models.ray_llm.wire import (
    ChatStreamReader,
    chat_request_fields,
    embedding_fields,
    embeddings_of,
)

__all__ = ["Chat", "chat_deltas", "collect", "embed_through"]

Chat = Callable[[Any], Awaitable[AsyncGenerator[Any, None]]]
"""`LLMServer.chat`: a chat request in, an async generator of answer batches out."""


async def chat_deltas(
    chat: Chat, request: GenerationRequest, model: str
) -> AsyncGenerator[Delta, None]:
    """The answer to `request` through `chat` (`LLMServer.chat`, or `.completions` for
    a text completion), for `model` as the engine serves it."""
    fields = chat_request_fields(request, model)
    models = openai_models()
    kind = models.ChatCompletionRequest if request.prompt is None else models.CompletionRequest
    reader = ChatStreamReader(request)
    batches = await chat(kind.model_validate(fields))
    try:
        async for batch in batches:
            for delta in reader.read(batch):
                yield delta
    finally:
        await batches.aclose()  # early close: LLMServer's stream cancels the engine's
    for delta in reader.finish():
        yield delta


async def embed_through(
    embeddings: Chat,
    request: EmbeddingRequest,
    model: str,
    clock: Callable[[], float] = time.monotonic,
) -> Embeddings:
    """The vectors of `request` through `embeddings` (`LLMServer.embeddings`)."""
    began = clock()
    answers = await embeddings(
        openai_models().EmbeddingCompletionRequest.model_validate(embedding_fields(request, model))
    )
    try:
        answer = await anext(answers)
    except StopAsyncIteration:
        raise GenerationFailed("the engine sent no embeddings") from None
    finally:
        await answers.aclose()
    return embeddings_of(answer, request, clock() - began)


async def collect(
    deltas: AsyncIterator[Delta], clock: Callable[[], float] = time.monotonic
) -> Completion:
    """The whole answer of `deltas`, with its first-token and total times on `clock`."""
    began = clock()
    ttft_s: float | None = None
    choices: dict[int, ChoiceCollector] = {}
    last: Delta | None = None
    async with contextlib.aclosing(deltas) as stream:  # type: ignore[type-var]
        async for delta in stream:
            if ttft_s is None and (delta.text or delta.tool_calls):
                ttft_s = clock() - began
            choices.setdefault(delta.index, ChoiceCollector()).add(delta)
            last = delta
    total_s = clock() - began
    if (
        last is None
        or last.finish_reason is None
        or last.input_tokens is None
        or last.output_tokens is None
        or any(c.finish_reason is None for c in choices.values())
    ):
        raise GenerationFailed("the engine's answer ended without its usage")
    outputs = tuple(choices[i].output(i) for i in sorted(choices))
    plain = len(outputs) == 1 and not outputs[0].tool_calls and outputs[0].logprobs is None
    return Completion(
        text=outputs[0].text,
        finish_reason=outputs[0].finish_reason,
        input_tokens=last.input_tokens,
        output_tokens=last.output_tokens,
        ttft_s=total_s if ttft_s is None else ttft_s,
        total_s=total_s,
        choices=() if plain else outputs,
    )
