"""How long a reservation must live: at least the longest generation a policy allows.

A reservation holds a request's worst-case price against the monthly budget from its
admission to its settle. It also expires on its own (`RedisAdmission`'s
`reservation_ttl_s`), so an ingress that dies mid-request does not hold a tenant's
budget forever. Expiring while the request still runs would release budget that is
still being spent, and the next admission could spend it twice. So the lifetime is
derived from the policy: for each model, a cold start, a prompt that fills the context
window at the prefill rate, and `max_output_tokens` at the slowest per-sequence decode
rate (a full batch shares the replica's decode rate), times `QUEUE_SLACK` for time spent
queued and replicas slower than their profile; never below `MIN_RESERVATION_TTL_S`.

Pure: a function of the policy, no Redis, no clock.
"""

from __future__ import annotations

from serve_app.policy.schema import ModelSpec, Policy

MIN_RESERVATION_TTL_S = 600.0
"""The floor: what reservations lived before they were derived from the policy."""
QUEUE_SLACK = 2.0
"""The longest generation is multiplied by this: queueing before it starts, retries
inside a backend, replicas slower than their measured profile."""


def longest_generation_s(model: ModelSpec) -> float:
    """Seconds the longest request this model accepts can take once it starts: a cold
    start, a full context of prompt, then every output token at the slowest rate."""
    t = model.throughput
    per_sequence_tokens_per_s = min(
        t.decode_tokens_per_s_at_batch_1,
        t.decode_tokens_per_s_at_max_batch / t.max_concurrent_sequences,
    )
    return (
        model.cold_start_s
        + model.context_window_tokens / t.prefill_tokens_per_s
        + model.max_output_tokens / per_sequence_tokens_per_s
    )


def reservation_ttl_s(policy: Policy) -> float:
    """The reservation lifetime for `policy` (pass it as `RedisAdmission(...,
    reservation_ttl_s=...)`)."""
    longest = max(longest_generation_s(m) for m in policy.models)
    return max(MIN_RESERVATION_TTL_S, QUEUE_SLACK * longest)
