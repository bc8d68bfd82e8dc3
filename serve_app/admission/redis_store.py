"""Admission in Redis: the two Lua scripts beside this file, one round trip each.

`admit` checks and records, atomically, the sliding-window request limit, the token
limit and the monthly budget (reserving the request's estimated tokens and worst-case
price); `settle` moves a reservation to the verified tokens and billed amount, exactly
once per request id. Reservations of requests that never settle (the ingress died)
expire after `reservation_ttl_s` and are released by the next `admit`: that lifetime must
exceed the longest generation the policy allows (`lifetime.reservation_ttl_s(policy)`),
or a request still running loses its reservation and its budget is admitted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_app.admission.keys import TenantKeys, month_of
from serve_app.admission.types import (
    AdmissionLimits,
    Admitted,
    RefusalCode,
    Refused,
    TenantUsage,
    Ticket,
)
from serve_app.redis_checks import check_eviction_policy

LUA_DIR = Path(__file__).with_name("lua")
ADMIT_LUA = (LUA_DIR / "admit.lua").read_text(encoding="utf-8")
SETTLE_LUA = (LUA_DIR / "settle.lua").read_text(encoding="utf-8")
RESERVATION_TTL_S = 3600.0
"""The default lifetime of a reservation when the caller passes none derived from its
policy (`lifetime.reservation_ttl_s`): an hour, generous on purpose. Too short, a
running request's budget is admitted again; too long, a dead ingress's reservations
hold budget that long (they are released by expiry only)."""
OUTPUT_EWMA_WEIGHT = 0.2
"""Weight of the newest observation in the tenant's shared output history."""
SETTLE_DEDUP_S = 3600
"""How long `settle` remembers a settled request id (its `settled` ZSET): a retry of the
same settle within this time is answered 0 and adds nothing. Retrying later could count
twice, so the gate never retries a settle that may have landed this long ago."""

__all__ = ["RESERVATION_TTL_S", "SETTLE_DEDUP_S", "RedisAdmission", "month_of"]


class RedisAdmission:
    """Admission state of every tenant in one Redis (or Redis Cluster)."""

    def __init__(
        self,
        client: Any,
        *,
        reservation_ttl_s: float = RESERVATION_TTL_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock` None (production) makes the scripts use Redis's clock, one clock for
        every ingress replica; tests pass a fake one."""
        self._client = client
        self._admit = client.register_script(ADMIT_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._clock = clock

    def _now(self) -> tuple[float, int]:
        """(seconds for the month key, milliseconds for the script: 0 = Redis's clock)."""
        if self._clock is None:
            return time.time(), 0
        now_s = self._clock()
        return now_s, int(now_s * 1000)

    async def admit(self, ticket: Ticket, limits: AdmissionLimits) -> Admitted | Refused:
        now_s, now_ms = self._now()
        k = TenantKeys(ticket.tenant_id)
        result = await self._admit(
            keys=[
                k.window(ticket.window),
                k.tokens,
                k.month(month_of(now_s)),
                k.reserved,
                k.reservations,
                k.reservation_data,
                k.output_history,
            ],
            args=[
                now_ms,
                ticket.request_id,
                limits.requests_per_minute,
                limits.tokens_per_minute,
                limits.monthly_budget_micro,
                max(0, ticket.tokens),
                max(0, ticket.amount_micro),
                1 if ticket.reserve else 0,
                self._ttl_ms,
            ],
        )
        if int(result[0]) == 1:
            flat = result[5] if len(result) > 5 else []
            history = {_text(flat[i]): float(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
            return Admitted(
                int(result[1]),
                int(result[2]),
                int(result[3]),
                int(result[4]),
                output_history=history,
            )
        code = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        wait_ms = int(result[2])
        return Refused(RefusalCode(code), None if wait_ms < 0 else max(wait_ms, 1) / 1000)

    async def settle(
        self,
        tenant_id: str,
        request_id: str,
        tokens: int,
        billed_micro: int,
        *,
        age_s: float = 0.0,
        model_id: str = "",
        output_tokens: int = 0,
    ) -> bool:
        """Settle to verified figures (0 and 0 for a failed request). False: already done.

        `age_s`: how long ago the request settled, for a settle sent late (queued while
        Redis was down): its spend counts in the month it happened, and its tokens in
        the sliding window only if that moment is still inside it. An age, not a time,
        so the caller's clock and this store's (or Redis's) need not agree."""
        now_s, now_ms = self._now()
        age_s = max(0.0, age_s)
        k = TenantKeys(tenant_id)
        done = await self._settle(
            keys=[
                k.tokens,
                k.month(month_of(now_s - age_s)),
                k.reserved,
                k.reservations,
                k.reservation_data,
                k.settled,
                k.output_history,
            ],
            args=[
                now_ms,
                request_id,
                max(0, tokens),
                max(0, billed_micro),
                int(age_s * 1000),
                SETTLE_DEDUP_S * 1000,
                model_id,
                max(0, output_tokens),
                OUTPUT_EWMA_WEIGHT,
            ],
        )
        return int(done) == 1

    async def eviction_policy(self) -> str | None:
        """Redis's `maxmemory-policy`, with a warning logged unless it is `noeviction`
        (None when CONFIG is not allowed); see `serve_app/redis_checks.py`."""
        return await check_eviction_policy(self._client, "admission")

    async def usage(self, tenant_id: str) -> TenantUsage:
        now_s, now_ms = self._now()
        if now_ms == 0:
            seconds, micros = await self._client.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
        k = TenantKeys(tenant_id)
        month = month_of(now_s)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zcount(k.requests, now_ms - 60_000, "+inf")
            pipe.hgetall(k.tokens)
            pipe.hgetall(k.month(month))
            pipe.get(k.reserved)
            requests, buckets, totals, reserved = await pipe.execute()
        second = now_ms // 1000
        tokens = sum(int(v) for s, v in buckets.items() if int(s) > second - 60)
        totals = {
            key.decode() if isinstance(key, bytes) else key: int(v) for key, v in totals.items()
        }
        return TenantUsage(
            requests_in_window=int(requests),
            tokens_in_window=tokens,
            month=month,
            settled_micro=totals.get("settled_micro", 0),
            reserved_micro=int(reserved or 0),
            billed_requests=totals.get("requests", 0),
            billed_tokens=totals.get("tokens", 0),
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
