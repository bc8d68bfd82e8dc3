"""Cost-to-serve and predicted latency of one request on one model (docs/pricing-model.md).

Pure: numbers in, numbers out. A replica costs `usd_per_s` every second, busy or idle.
Two figures per request:

*Allocated* cost: the replica time its tokens occupy, as a share of the batch.

    seconds   = input_tokens / prefill_tokens_per_s + output_tokens / Θ(batch + 1)
    allocated = (usd_per_s · seconds + cold_start_share if cold) / (1 − failure_rate)

*Incremental* cost: what serving it adds to the bill. A replica that runs anyway is
paid anyway; the request adds the time by which its batch finishes later (its prefill
stalls the batch, and one more sequence slows every token by α/r1), and any capacity it
forces into existence (no replica at all, or every replica full so that a scale-up
follows): the new replica's cold start plus the least time it stays up
(`SCALE_DOWN_DELAY_S`), shared over the requests it is expected to serve.

    marginal_s  = 0 on an idle replica, else prefill_s + output_tokens · α / r1
    incremental = (usd_per_s · marginal_s + forced_capacity_share) / (1 − failure_rate)
"""

from __future__ import annotations

from typing import NamedTuple

from serve_app.pricing.book import ModelProfile
from serve_app.pricing.types import ModelLoad

MAX_FAILURE_RATE = 0.99
_new_estimate = tuple.__new__


class Estimate(NamedTuple):
    """Where the request would run and what that predicts (a tuple: built per candidate
    per request, so it must be cheap)."""

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
    warm_replicas: int
    incremental_usd: float


def estimate(
    model: ModelProfile, load: ModelLoad, input_tokens: int, output_tokens: int
) -> Estimate:
    """Predict the request on the replica that would finish it soonest.

    Each replica (warm, or starting with its remaining start time) is an option; with
    no replica at all, a new one is started (full cold start). The option with the
    least predicted total latency wins, so adding load anywhere never lowers it.
    Written for speed (it runs per candidate per request): `tpot_s(n)` is inlined as
    `(1 + α(n − 1)) / r1`.
    """
    prefill_s = input_tokens / model.prefill_tokens_per_s
    max_batch = model.max_concurrent_sequences
    alpha = model.batch_slowdown
    r1 = model.decode_tokens_per_s_at_batch_1
    slot_s = -1.0  # computed on first need: only full replicas wait for a slot

    best_total = -1.0
    wait_s = start_s = 0.0
    queue_ahead = batch = warm = 0
    cold = True
    full = True  # every replica's batch is full: the request queues, a scale-up follows
    for replica in load.replicas:
        if replica.warm:
            warm += 1
            r_start = 0.0
        else:
            r_start = replica.start_remaining_s if replica.start_remaining_s > 0 else 0.0
        ahead = replica.running + replica.queued
        if ahead < max_batch:
            full = False
            r_wait, r_batch = r_start, ahead
        else:
            if slot_s < 0:
                slot_s = _slot_release_s(model, load, input_tokens, output_tokens)
            r_wait, r_batch = r_start + (ahead - max_batch + 1) * slot_s, max_batch - 1
        total = r_wait + prefill_s + output_tokens * (1.0 + alpha * r_batch) / r1
        if best_total < 0 or total < best_total:
            best_total, wait_s, start_s = total, r_wait, r_start
            queue_ahead, batch, cold = replica.queued, r_batch, not replica.warm
    if best_total < 0:  # no replica: one must start from scratch
        wait_s = start_s = model.cold_start_s
        best_total = wait_s + prefill_s + output_tokens / r1

    tpot_s = (1.0 + alpha * batch) / r1
    # Replica time: prefill, plus the request's share of decode time at batch + 1,
    # i.e. output_tokens / Θ(batch + 1) = output_tokens · tpot / (batch + 1).
    busy_s = prefill_s + output_tokens * tpot_s / (batch + 1)
    cost = model.usd_per_s * busy_s
    if cold:
        cost += model.cold_start_share_usd
    # Incremental: on an idle replica the time is paid anyway; a busy batch finishes
    # later by the prefill and by α/r1 per output token; forced capacity is added.
    incremental = model.usd_per_s * (prefill_s + output_tokens * alpha / r1) if batch else 0.0
    if full and len(load.replicas) < model.max_replicas:
        # Only a scale-up the autoscaler can still make is forced into existence; at
        # max_replicas the request just queues (its wait is in the latency, not the cost).
        incremental += model.forced_capacity_share_usd
    failure_rate = load.failure_rate
    if failure_rate > 0:
        keep = 1.0 - (failure_rate if failure_rate < MAX_FAILURE_RATE else MAX_FAILURE_RATE)
        cost /= keep
        incremental /= keep
    # tuple.__new__ skips the NamedTuple's Python-level __new__ (built per candidate).
    return _new_estimate(
        Estimate,
        (
            wait_s,
            start_s,
            queue_ahead,
            batch,
            cold,
            wait_s + prefill_s,
            tpot_s,
            best_total,
            cost,
            warm,
            incremental,
        ),
    )


def _slot_release_s(
    model: ModelProfile, load: ModelLoad, input_tokens: int, output_tokens: int
) -> float:
    """Mean seconds between two batch slots freeing on a full replica.

    A full batch of B sequences frees B slots per mean service time. The live state's
    mean is used when it has one (the requests this ingress has in flight, at their
    predicted durations, and the replicas' measured mean for the rest); else this
    request's own duration at a full batch stands in for it.
    """
    service_s = load.mean_service_s
    if service_s is None or service_s <= 0:
        service_s = full_batch_service_s(model, input_tokens, output_tokens)
    return service_s / model.max_concurrent_sequences


def full_batch_service_s(model: ModelProfile, input_tokens: int, output_tokens: int) -> float:
    """Seconds a request holds a batch slot on a full replica (prefill, then its tokens
    at the full batch's per-token time): what one request ahead in a queue costs."""
    return input_tokens / model.prefill_tokens_per_s + output_tokens * model.tpot_s(
        model.max_concurrent_sequences
    )
