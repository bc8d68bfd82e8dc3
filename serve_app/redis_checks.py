"""Checks of the Redis that rtcts keeps its state in, made once where a component connects.

`maxmemory-policy`: rtcts's budgets, reservations, settles, meter stream and billing
ledger are all state that must not vanish. Under an evicting policy (`allkeys-*`, or
`volatile-*`, which goes first for exactly the keys rtcts gives a TTL: month budgets,
the settled-id sets, the delivered-window records) Redis drops keys when it is full: a
budget would reset, a settle could count twice, a meter could be lost. So a component
that connects logs a clear warning when the policy is not `noeviction`. It warns and does
not refuse: a Redis sized so that `maxmemory` is never reached is safe under any policy,
and refusing would turn a configuration smell into an outage. Where CONFIG is not
allowed (managed Redis services often disable it), the check is skipped quietly.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("rtcts.redis")

SAFE_POLICY = "noeviction"


async def check_eviction_policy(client: Any, component: str) -> str | None:
    """Redis's `maxmemory-policy` (None when it cannot be read); logs a warning naming
    `component` when it is not `noeviction`. Never raises for a Redis error."""
    from redis.exceptions import RedisError

    try:
        answer = await client.config_get("maxmemory-policy")
    except (RedisError, OSError) as exc:
        logger.debug("cannot read maxmemory-policy (%s): check skipped", type(exc).__name__)
        return None
    policy = _policy(answer)
    if policy is not None and policy != SAFE_POLICY:
        logger.warning(
            "Redis maxmemory-policy is %s, not %s: when Redis is full it evicts keys, and "
            "%s state (budgets, settles, meters, the billing ledger) would be lost or "
            "counted twice. Set maxmemory-policy %s, or size maxmemory so it is never "
            "reached.",
            policy,
            SAFE_POLICY,
            component,
            SAFE_POLICY,
        )
    return policy


def _policy(answer: Any) -> str | None:
    if not isinstance(answer, dict):
        return None
    for key, value in answer.items():
        name = key.decode() if isinstance(key, bytes) else key
        if name == "maxmemory-policy":
            return value.decode() if isinstance(value, bytes) else str(value)
    return None
