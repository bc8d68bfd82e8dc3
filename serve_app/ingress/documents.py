"""The JSON documents of the request path: quotes, candidates, chat and text
completions, embeddings and the verified `rtcts` object (plain dicts, no HTTP:
`render.py` sends them)."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from serve_app.ingress.call import Quoted, Served
from serve_app.ingress.settlement import margin
from serve_app.models.backend import ChoiceOutput, Completion, Embeddings
from serve_app.pricing import Decision
from serve_app.pricing.billing import Bill
from serve_app.pricing.types import CandidateQuote


def usd(micro: int) -> str:
    return f"{micro / 1_000_000:.6f}"


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
        "incremental_cost_usd": usd(q.incremental_cost_micro),
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
    directly: the same JSON for a third of the cost (a test holds them equal). A choice
    that only called tools has `content: null`, as OpenAI's."""
    if completion.choices:
        choices = [chat_choice_json(c) for c in completion.choices]
    else:  # one plain choice: the common case, built inline
        choices = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
            }
        ]
    prompt, output = completion.input_tokens, completion.output_tokens
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
        },
        "rtcts": verified,
    }


def chat_choice_json(choice: ChoiceOutput) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": choice.text if choice.text or not choice.tool_calls else None,
    }
    if choice.tool_calls:
        message["tool_calls"] = [dict(call) for call in choice.tool_calls]
    document: dict[str, Any] = {
        "index": choice.index,
        "message": message,
        "finish_reason": choice.finish_reason,
    }
    if choice.logprobs is not None:
        document["logprobs"] = dict(choice.logprobs)
    return document


def text_completion_json(
    request_id: str, model_id: str, completion: Completion, verified: dict[str, Any]
) -> dict[str, Any]:
    """A legacy text completion (`POST /v1/completions`), OpenAI's `text_completion`."""
    prompt, output = completion.input_tokens, completion.output_tokens
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "logprobs": None if c.logprobs is None else dict(c.logprobs),
                "finish_reason": c.finish_reason,
            }
            for c in completion.all_choices()
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
        },
        "rtcts": verified,
    }


def embeddings_json(
    model_id: str, embeddings: Embeddings, encoding: str | None, verified: dict[str, Any]
) -> dict[str, Any]:
    """OpenAI's embedding list: each vector as numbers, or (`encoding` "base64") as
    base64 of its little-endian float32 values."""
    encode = _base64 if encoding == "base64" else list
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encode(vector)}
            for index, vector in enumerate(embeddings.vectors)
        ],
        "model": model_id,
        "usage": {
            "prompt_tokens": embeddings.input_tokens,
            "total_tokens": embeddings.input_tokens,
        },
        "rtcts": verified,
    }


def _base64(vector: tuple[float, ...]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


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
