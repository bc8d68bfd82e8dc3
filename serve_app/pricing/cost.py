"""Cost-to-serve and predicted latency of one request on one model (docs/pricing-model.md).

Pure: numbers in, numbers out. A replica costs `usd_per_s` every second, busy or idle;
the request pays for the replica time its tokens take:

    seconds = input_tokens / prefill_tokens_per_s + output_tokens / Θ(batch + 1)
    cost    = (usd_per_s · seconds + cold_start_share if cold) / (1 − failure_rate)
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.pricing.book import ModelProfile
from serve_app.pricing.types import ModelLoad

MAX_FAILURE_RATE = 0.99


@dataclass(frozen=True, slots=True)
class Estimate:
    """Where the request would run and what that predicts."""

    wait_s: float
    """Queue wait plus any remaining cold start, before prefill begins."""
    cold_start_remaining_s: float
    queue_ahead: int
    batch: int
    cold: bool
    ttft_s: float
    tpot_s: float
    total_s: float
    cost_usd: float


def estimate(
    model: ModelProfile, load: ModelLoad, input_tokens: int, output_tokens: int
) -> Estimate:
    """Predict the request on the replica that would finish it soonest.

    Each replica (warm, or starting with its remaining start time) is an option; with
    no replica at all, a new one is started (full cold start). The option with the
    least predicted total latency wins, so adding load anywhere never lowers it.
    """
    prefill_s = input_tokens / model.prefill_tokens_per_s
    max_batch = model.max_concurrent_sequences
    slot_s = _slot_release_s(model, load, prefill_s, output_tokens)

    best: tuple[float, float, float, int, int, bool] | None = None
    for replica in load.replicas:
        start_s = 0.0 if replica.warm else max(0.0, replica.start_remaining_s)
        ahead = replica.running + replica.queued
        if ahead < max_batch:
            wait_s, batch = start_s, ahead
        else:
            wait_s, batch = start_s + (ahead - max_batch + 1) * slot_s, max_batch - 1
        total = wait_s + prefill_s + output_tokens * model.tpot_s(batch + 1)
        if best is None or total < best[0]:
            best = (total, wait_s, start_s, replica.queued, batch, not replica.warm)
    if best is None:  # no replica: one must start from scratch
        total = model.cold_start_s + prefill_s + output_tokens * model.tpot_s(1)
        best = (total, model.cold_start_s, model.cold_start_s, 0, 0, True)

    total, wait_s, start_s, queue_ahead, batch, cold = best
    busy_s = prefill_s + output_tokens / model.decode_tokens_per_s(batch + 1)
    cost = model.usd_per_s * busy_s + (model.cold_start_share_usd if cold else 0.0)
    failure_rate = min(max(load.failure_rate, 0.0), MAX_FAILURE_RATE)
    return Estimate(
        wait_s=wait_s,
        cold_start_remaining_s=start_s,
        queue_ahead=queue_ahead,
        batch=batch,
        cold=cold,
        ttft_s=wait_s + prefill_s,
        tpot_s=model.tpot_s(batch + 1),
        total_s=total,
        cost_usd=cost / (1.0 - failure_rate),
    )


def _slot_release_s(
    model: ModelProfile, load: ModelLoad, prefill_s: float, output_tokens: int
) -> float:
    """Mean seconds between two batch slots freeing on a full replica.

    A full batch of B sequences frees B slots per mean service time. The measured
    mean is used when the live state has one; else this request's own duration at a
    full batch stands in for it.
    """
    service_s = load.mean_service_s
    if service_s is None or service_s <= 0:
        max_batch = model.max_concurrent_sequences
        service_s = prefill_s + output_tokens * model.tpot_s(max_batch)
    return service_s / model.max_concurrent_sequences
