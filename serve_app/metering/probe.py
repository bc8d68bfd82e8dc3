"""Whether billing runs: every shard's aggregator actor answers and runs its loop.

For the ingress's readiness (`GET /readyz`). The actors are found by name (they are
detached and named per instance and shard, `aggregator.AGGREGATOR_NAME`); each answers
`health()` with `running` true once its loop runs (Stripe set up, the stream read). A
missing actor, a slow answer or an error is "not running". Answers are cached for
`cache_s`, so a readiness probe polled often costs the actors little.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from serve_app.metering.aggregator import AGGREGATOR_NAME, AGGREGATOR_NAMESPACE


def _lookup(name: str) -> Any:
    import ray

    return ray.get_actor(name, namespace=AGGREGATOR_NAMESPACE)


class AggregatorProbe:
    def __init__(
        self,
        instance: str,
        shards: int,
        *,
        timeout_s: float = 2.0,
        cache_s: float = 1.0,
        lookup: Callable[[str], Any] = _lookup,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._names = [AGGREGATOR_NAME.format(instance=instance, shard=s) for s in range(shards)]
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._lookup = lookup
        self._clock = clock
        self._handles: list[Any] | None = None
        self._answer: tuple[float, bool] | None = None

    async def running(self) -> bool:
        now = self._clock()
        if self._answer is not None and now - self._answer[0] < self._cache_s:
            return self._answer[1]
        running = await self._ask()
        self._answer = (self._clock(), running)
        return running

    async def _ask(self) -> bool:
        try:
            if self._handles is None:
                # A name lookup is a blocking call to Ray's control store: off the loop.
                self._handles = [await asyncio.to_thread(self._lookup, n) for n in self._names]
            answers = await asyncio.wait_for(
                asyncio.gather(*(h.health.remote() for h in self._handles)), self._timeout_s
            )
        except Exception:  # missing (not created yet), dead, or slow: not running
            self._handles = None
            return False
        return all(bool(a.get("running")) for a in answers)
