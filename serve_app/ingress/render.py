"""The values of the request path as OpenAI JSON, server-sent events and rtcts headers.

The only module that turns the service's values (`call.py`) into HTTP answers; errors
are answered by `errors.error_for`. Which figure each header and `rtcts` field carries:

    x-rtcts-price-usd   quoted price (the decision's); after a finished non-streamed
                        request, the billed price (credit and cap applied)
    x-rtcts-cost-usd    allocated cost-to-serve of the chosen candidate
    x-rtcts-margin      (price − cost) / price for the price above
    rtcts.billed_usd    what the meter bills (list price − SLA credit, within the cap)
"""

from __future__ import annotations

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
    Quoted,
    Served,
    StreamEnd,
    StreamEvent,
    StreamFailed,
    StreamOpened,
    StreamText,
)
from serve_app.ingress.protocol import (
    SSE_DONE,
    ChatCompletionChunk,
    ChunkChoice,
    ChunkDelta,
    Usage,
    sse,
)
from serve_app.ingress.settlement import margin
from serve_app.models.backend import Completion
from serve_app.pricing import Decision
from serve_app.pricing.billing import Bill
from serve_app.pricing.types import CandidateQuote


def usd(micro: int) -> str:
    return f"{micro / 1_000_000:.6f}"


# ---------------------------------------------------------------------- responses


def quote_response(quoted: Quoted) -> Response:
    return JSONResponse(decision_json(quoted))


def chat_response(result: ChatResult) -> Response:
    call = result.call
    body = completion_json(
        call.request_id,
        call.model_id,
        result.completion,
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
    """The stream's events as OpenAI chunks. Closing this iterator (the client left)
    closes `events` at once, so the service stops the generation and meters it."""
    created = int(time.time())

    def chunk(**fields: Any) -> bytes:
        return sse(
            ChatCompletionChunk(
                id=f"chatcmpl-{call.request_id}", created=created, model=call.model_id, **fields
            )
        )

    async with aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, StreamOpened):
                yield chunk(choices=[ChunkChoice(delta=ChunkDelta(role="assistant", content=""))])
            elif isinstance(event, StreamText):
                yield chunk(choices=[ChunkChoice(delta=ChunkDelta(content=event.text))])
            elif isinstance(event, StreamEnd):
                yield chunk(
                    choices=[ChunkChoice(delta=ChunkDelta(), finish_reason=event.finish_reason)]
                )
                rtcts = verified_json(call.decision, event.bill, event.served)
                if call.body.include_usage():
                    usage = Usage.of(event.served.input_tokens, event.served.output_tokens)
                    yield chunk(choices=[], usage=usage, rtcts=rtcts)
                else:
                    yield chunk(choices=[], rtcts=rtcts)
                yield SSE_DONE
            elif isinstance(event, StreamFailed):
                yield error_sse(event.error)


def error_sse(error: Exception) -> bytes:
    """A failure after the stream began, as an OpenAI error event."""
    if not isinstance(error, BackendError):
        error = BackendError("the stream failed")
    return errors.error_for(error).to_sse()


# ---------------------------------------------------------------------- headers


def call_headers(call: ChatCall) -> dict[str, str]:
    """The decision's headers, and the request id when no layer above sends it."""
    headers = quote_headers(call.decision)
    if call.id_made_here:
        headers["x-request-id"] = call.request_id
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


# ---------------------------------------------------------------------- JSON bodies


def candidate_json(q: CandidateQuote) -> dict[str, Any]:
    return {
        "model": q.model_id,
        "quality_tier": q.quality_tier,
        "feasible": q.feasible,
        "why_not": [r.value for r in q.reasons],
        "predicted_ttft_ms": round(q.ttft_s * 1000, 3),
        "predicted_tpot_ms": round(q.tpot_s * 1000, 3),
        "predicted_total_ms": round(q.total_s * 1000, 3),
        "input_tokens": q.input_tokens,
        "predicted_output_tokens": q.predicted_output_tokens,
        "cost_usd": usd(q.cost_micro),
        "price_usd": usd(q.price_micro),
        "worst_case_price_usd": usd(q.worst_case_price_micro),
        "margin": round(q.margin, 6),
        "live": {
            "queue_ahead": q.queue_ahead,
            "batch": q.batch,
            "warm_replicas": q.warm_replicas,
            "starting_replicas": q.starting_replicas,
            "cold_start_remaining_s": round(q.cold_start_remaining_s, 3),
        },
    }


def decision_json(quoted: Quoted) -> dict[str, Any]:
    decision = quoted.decision
    return {
        "object": "rtcts.quote",
        "decision": decision.action.value,
        "reason": decision.reason.value,
        "model": decision.model_id,
        "price_usd": usd(decision.price_micro),
        "surcharge_multiplier": round(decision.surcharge_multiplier, 6),
        "retry_after_s": decision.retry_after_s,
        "policy_version": decision.policy_version,
        "input_tokens": quoted.request.input_tokens,
        "candidates": [candidate_json(q) for q in decision.candidates],
    }


def completion_json(
    request_id: str, model_id: str, completion: Completion, verified: dict[str, Any]
) -> dict[str, Any]:
    """`ChatCompletionResponse(...).model_dump(mode="json", exclude_none=True)`, built
    directly: the same JSON for a third of the cost (a test holds them equal)."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": completion.text},
        "finish_reason": completion.finish_reason,
    }
    prompt, output = completion.input_tokens, completion.output_tokens
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
        },
        "rtcts": verified,
    }


def verified_json(decision: Decision, the_bill: Bill, served: Served) -> dict[str, Any]:
    chosen = decision.chosen
    assert chosen is not None
    return {
        "decision": decision.action.value,
        "reason": decision.reason.value,
        "model": chosen.model_id,
        "quoted_price_usd": usd(decision.price_micro),
        "list_price_usd": usd(the_bill.list_price_micro),
        "credit_usd": usd(the_bill.credit_micro),
        "billed_usd": usd(the_bill.billed_micro),
        "cost_usd": usd(chosen.cost_micro),
        "margin": round(margin(the_bill.billed_micro, chosen.cost_micro), 6),
        "sla_met": the_bill.sla_met,
        "ttft_ms": round(served.ttft_s * 1000, 3),
        "total_ms": round(served.total_s * 1000, 3),
        "policy_version": decision.policy_version,
    }
