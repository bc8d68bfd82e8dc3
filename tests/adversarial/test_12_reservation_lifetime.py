"""Item 12 (part): a reservation outlives the longest generation a policy allows.

A request's worst-case price is reserved against the budget at admission and released
at its settle, or by expiry if the ingress died. Before the fix reservations expired
after 600 s, shorter than the longest generation of the shipped policy (a cold start,
a full prompt, then 8,192 output tokens at a full batch's per-sequence rate, queued
behind others): a long request still running lost its reservation, and the budget it
held was admitted again.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from serve_app.admission import (
    AdmissionLimits,
    Admitted,
    RedisAdmission,
    RefusalCode,
    Refused,
    Ticket,
)
from serve_app.policy import ModelSpec, load_policy_file
from serve_app.settings import PACKAGED_POLICY_PATH

BUDGET = AdmissionLimits(
    requests_per_minute=1000, tokens_per_minute=10**9, monthly_budget_micro=10_000
)


def _longest_generation_s(model: ModelSpec) -> float:
    """Independently of the code under test: cold start, a prompt filling the context,
    then every output token at a full batch's per-sequence decode rate."""
    t = model.throughput
    per_sequence = min(
        t.decode_tokens_per_s_at_batch_1,
        t.decode_tokens_per_s_at_max_batch / t.max_concurrent_sequences,
    )
    return (
        model.cold_start_s
        + model.context_window_tokens / t.prefill_tokens_per_s
        + model.max_output_tokens / per_sequence
    )


def test_the_policy_derived_lifetime_covers_every_models_longest_generation() -> None:
    from serve_app.admission.lifetime import reservation_ttl_s

    policy = load_policy_file(PACKAGED_POLICY_PATH).policy
    ttl = reservation_ttl_s(policy)
    for model in policy.models:
        assert ttl >= 2 * _longest_generation_s(model), model.id  # queueing included


@pytest.mark.integration
def test_a_long_generation_keeps_its_reservation_until_it_settles(redis_url: str) -> None:
    policy = load_policy_file(PACKAGED_POLICY_PATH).policy
    longest = max(_longest_generation_s(m) for m in policy.models)

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=2)
        now = [1_800_000_000.0]
        store = RedisAdmission(client, clock=lambda: now[0])  # the lifetime as deployed
        tenant = f"t-{uuid.uuid4().hex[:10]}"
        long_request = Ticket(tenant, uuid.uuid4().hex, 9000, 9_000)
        assert isinstance(await store.admit(long_request, BUDGET), Admitted)
        now[0] += longest + 120  # still generating (it queued two minutes first)
        again = await store.admit(Ticket(tenant, uuid.uuid4().hex, 10, 9_000), BUDGET)
        assert isinstance(again, Refused), "the running request's reservation was released"
        assert again.code is RefusalCode.BUDGET_EXCEEDED
        assert await store.settle(tenant, long_request.request_id, 9000, 8_500)
        usage = await store.usage(tenant)
        assert (usage.settled_micro, usage.reserved_micro) == (8_500, 0)
        await client.aclose()

    asyncio.run(run())
