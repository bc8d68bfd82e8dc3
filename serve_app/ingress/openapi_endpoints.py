"""The served API document's entries for `POST /v1/completions` and `POST /v1/embeddings`:
declaration-only routes, like the other priced routes' (`openapi.priced_routes`), that
are never served (the routes run as plain ASGI: `asgi.py`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body
from fastapi.routing import APIRoute, APIRouter

from serve_app.ingress import document_models as dm
from serve_app.ingress.openapi import (
    BAD_BODY,
    NO_KEY,
    NOT_IN_PLAN,
    TENANT_KEY,
    TOO_LARGE,
    UNKNOWN_MODEL,
    answer_headers,
    error_answers,
    stream_event_schema,
)
from serve_app.ingress.protocol_endpoints import CompletionRequest, EmbeddingsRequest

__all__ = ["endpoint_routes"]

CompletionBody = Annotated[
    CompletionRequest,
    Body(
        openapi_examples={
            "story": {
                "summary": "A short text completion",
                "value": {"model": "auto", "prompt": "Once upon a time", "max_tokens": 16},
            }
        }
    ),
]
EmbeddingsBody = Annotated[
    EmbeddingsRequest,
    Body(
        openapi_examples={
            "texts": {
                "summary": "Two texts, as floats",
                "value": {
                    "model": "bge-m3",
                    "input": ["GPUs are fast.", "Batches fill up."],
                    "encoding_format": "float",
                },
            }
        }
    ),
]


async def _completion_declared(body: CompletionBody) -> None:
    """Never served: the priced routes run as plain ASGI (`asgi.py`)."""
    raise AssertionError("a declaration-only route was served")


async def _embeddings_declared(body: EmbeddingsBody) -> None:
    """Never served: the priced routes run as plain ASGI (`asgi.py`)."""
    raise AssertionError("a declaration-only route was served")


def _errors(what: str) -> dict[int | str, dict[str, Any]]:
    return error_answers(
        s400=BAD_BODY,
        s401=NO_KEY,
        s402=(
            "The monthly budget would be exceeded (`budget_exceeded`), or the price is "
            "over `max_price_usd` (`price_cap_exceeded`)."
        ),
        s403=NOT_IN_PLAN,
        s404=UNKNOWN_MODEL,
        s413=TOO_LARGE,
        s429=(
            "The plan's requests or tokens per minute (`rate_limited`, `tokens_limited`), "
            "or no candidate can be served within the margin now (`margin_throttled`): "
            "retry after `Retry-After`."
        ),
        s502=f"The model failed while {what} (`model_failed`); not billed.",
        s503=(
            "No replica can take the request (`no_capacity`), the model is unavailable "
            "(`model_unavailable`) or admission is down (`admission_unavailable`); retry "
            "shortly."
        ),
    )


def endpoint_routes(completions_path: str, embeddings_path: str) -> list[APIRoute]:
    """Declaration-only routes that document `POST /v1/completions` and
    `POST /v1/embeddings`."""
    security: dict[str, Any] = {"security": [{TENANT_KEY: []}]}
    router = APIRouter()
    router.add_api_route(
        completions_path,
        _completion_declared,
        methods=["POST"],
        operation_id="createCompletion",
        summary="Text completion (legacy), priced from the live cluster state",
        description=(
            "OpenAI's (legacy) text completions, streamed or not, priced like a chat: the "
            "prompt tokens are the prompts', every choice's output is billed (`n` per "
            "prompt). `max_tokens` is 16 when unset, as OpenAI's. The decision and price "
            "are in the `x-rtcts-*` headers; the verified figures in the `rtcts` object."
        ),
        response_model=dm.TextCompletion,
        response_description="The completion (JSON), or its stream (`stream: true`).",
        responses={
            200: {
                "headers": answer_headers(),
                "content": {
                    "text/event-stream": {
                        "itemSchema": stream_event_schema("TextCompletionStreamChunk")
                    }
                },
            },
            **_errors("generating"),
        },
        tags=["OpenAI-compatible"],
        openapi_extra=security,
    )
    router.add_api_route(
        embeddings_path,
        _embeddings_declared,
        methods=["POST"],
        operation_id="createEmbedding",
        summary="Embeddings, priced per input token",
        description=(
            "OpenAI's embeddings of a text, several, or token ids, from a model that "
            "serves embeddings (its plan's `embedding_prices_by_model`). Billed per input "
            "token at the plan's embedding price; no output, no latency promise."
        ),
        response_model=dm.EmbeddingList,
        response_description="The vectors, in input order.",
        responses={200: {"headers": answer_headers()}, **_errors("embedding")},
        tags=["OpenAI-compatible"],
        openapi_extra=security,
    )
    return [route for route in router.routes if isinstance(route, APIRoute)]
