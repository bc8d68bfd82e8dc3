"""The values of the request path as OpenAI JSON, server-sent events and rtcts headers.

The only module that turns the service's values (`call.py`) into HTTP answers; errors
are answered by `errors.error_for`. Which figure each header and `rtcts` field carries:

    x-rtcts-price-usd   quoted price (the decision's); after a finished non-streamed
                        request, the billed price (credit and cap applied)
    x-rtcts-cost-usd    allocated cost-to-serve of the chosen candidate (its share of
                        the replica's time at the predicted batch)
    x-rtcts-margin      (price − allocated cost) / price for the price above
    rtcts.billed_usd    what the meter bills (list price − SLA credit, within the cap)
    candidates[].cost_usd / incremental_cost_usd (quote): allocated, and what serving
                        adds (the figure the margin check weighs on the plan's
                        `cost_basis`, docs/pricing-model.md)
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from serve_app.errors import BackendError
from serve_app.ingress import errors
from serve_app.ingress.call import (
    ChatCall,
    ChatResult,
    EmbeddingResult,
    Quoted,
    StreamEnd,
    StreamEvent,
    StreamFailed,
    StreamOpened,
    StreamText,
)
from serve_app.ingress.documents import (
    completion_json,
    decision_json,
    embeddings_json,
    text_completion_json,
    usd,
    verified_json,
)
from serve_app.ingress.protocol import SSE_DONE, sse
from serve_app.ingress.protocol_endpoints import CompletionRequest, EmbeddingsRequest
from serve_app.ingress.settlement import margin
from serve_app.pricing import Decision
from serve_app.pricing.billing import Bill
from serve_app.pricing.types import CandidateQuote

# ---------------------------------------------------------------------- responses


def quote_response(quoted: Quoted) -> Response:
    return JSONResponse(decision_json(quoted))


def chat_response(result: ChatResult) -> Response:
    """A whole chat completion, or text completion (`/v1/completions`)."""
    call = result.call
    document = text_completion_json if isinstance(call.body, CompletionRequest) else completion_json
    body = document(
        call.request_id,
        call.model_id,
        result.completion,
        verified_json(call.decision, result.bill, result.served),
    )
    headers = call_headers(call)
    headers.update(bill_headers(call.chosen, result.bill))
    return JSONResponse(body, headers=headers)


def embeddings_response(result: EmbeddingResult) -> Response:
    call = result.call
    assert isinstance(call.body, EmbeddingsRequest)
    body = embeddings_json(
        call.model_id,
        result.embeddings,
        call.body.encoding_format,
        verified_json(call.decision, result.bill, result.served),
    )
    headers = call_headers(call)
    headers.update(bill_headers(call.chosen, result.bill))
    return JSONResponse(body, headers=headers)


def stream_response(call: ChatCall, events: AsyncGenerator[StreamEvent, None]) -> Response:
    return StreamingResponse(
        sse_events(call, events),
        media_type="text/event-stream",
        headers={**call_headers(call), "cache-control": "no-cache"},
    )


async def sse_events(
    call: ChatCall, events: AsyncGenerator[StreamEvent, None]
) -> AsyncIterator[bytes]:
    """The stream's events as OpenAI chunks (chat's, or a text completion's). Closing
    this iterator (the client left) closes `events` at once, so the service stops the
    generation and meters it."""
    created = int(time.time())
    text = isinstance(call.body, CompletionRequest)
    head = (
        f'{{"id":"{"cmpl" if text else "chatcmpl"}-{call.request_id}",'
        f'"object":"{"text_completion" if text else "chat.completion.chunk"}",'
        f'"created":{created},"model":{json.dumps(call.model_id)},'
    )

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        fields = {"choices": choices, **extra}
        return sse(head + json.dumps(fields, ensure_ascii=False, separators=(",", ":"))[1:])

    async with aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, StreamOpened):
                if not text:
                    yield chunk(
                        [
                            {"index": i, "delta": {"role": "assistant", "content": ""}}
                            for i in range(call.body.choices())
                        ]
                    )
            elif isinstance(event, StreamText):
                yield chunk([text_choice(event) if text else chat_choice(event)])
            elif isinstance(event, StreamEnd):
                end = {"index": event.index, "finish_reason": event.finish_reason}
                if text:
                    yield chunk([{**end, "text": "", "logprobs": None}])
                else:
                    yield chunk([{**end, "delta": {}}])
                extra: dict[str, Any] = {}
                if call.body.include_usage():
                    served = event.served
                    extra["usage"] = {
                        "prompt_tokens": served.input_tokens,
                        "completion_tokens": served.output_tokens,
                        "total_tokens": served.input_tokens + served.output_tokens,
                    }
                extra["rtcts"] = verified_json(call.decision, event.bill, event.served)
                yield chunk([], **extra)
                yield SSE_DONE
            elif isinstance(event, StreamFailed):
                yield error_sse(event.error)


def chat_choice(event: StreamText) -> dict[str, Any]:
    """A chat chunk's choice: the piece's text and tool-call pieces, its logprobs."""
    delta: dict[str, Any] = {}
    if event.text or not event.tool_calls:
        delta["content"] = event.text
    if event.tool_calls:
        delta["tool_calls"] = [dict(piece) for piece in event.tool_calls]
    choice: dict[str, Any] = {"index": event.index, "delta": delta}
    if event.logprobs is not None:
        choice["logprobs"] = dict(event.logprobs)
    if event.finish_reason is not None:
        choice["finish_reason"] = event.finish_reason
    return choice


def text_choice(event: StreamText) -> dict[str, Any]:
    """A text completion chunk's choice."""
    return {
        "index": event.index,
        "text": event.text,
        "logprobs": None if event.logprobs is None else dict(event.logprobs),
        "finish_reason": event.finish_reason,
    }


def error_sse(error: Exception) -> bytes:
    """A failure after the stream began, as an OpenAI error event."""
    if not isinstance(error, BackendError):
        error = BackendError("the stream failed")
    return errors.error_for(error).to_sse()


# ---------------------------------------------------------------------- headers


def call_headers(call: ChatCall) -> dict[str, str]:
    """The decision's headers and rtcts's own request id (the id of the meter and of
    `chatcmpl-...`; Serve echoes the client's `X-Request-ID` on its own)."""
    headers = quote_headers(call.decision)
    headers["x-rtcts-request-id"] = call.request_id
    return headers


def quote_headers(decision: Decision) -> dict[str, str]:
    chosen = decision.chosen
    assert chosen is not None
    return {
        "x-rtcts-model": chosen.model_id,
        "x-rtcts-decision": decision.action.value,
        "x-rtcts-reason": decision.reason.value,
        "x-rtcts-price-usd": usd(decision.price_micro),
        "x-rtcts-cost-usd": usd(chosen.cost_micro),
        "x-rtcts-margin": f"{margin(decision.price_micro, chosen.cost_micro):.4f}",
        "x-rtcts-policy-version": decision.policy_version,
    }


def bill_headers(chosen: CandidateQuote, the_bill: Bill) -> dict[str, str]:
    return {
        "x-rtcts-price-usd": usd(the_bill.billed_micro),
        "x-rtcts-margin": f"{margin(the_bill.billed_micro, chosen.cost_micro):.4f}",
        "x-rtcts-sla-met": "true" if the_bill.sla_met else "false",
    }
