"""Per-plan and per-model counts in short wall-clock buckets, shared by the ingress
replicas, for the dashboard.

The request path adds to this replica's pending counts (plain dict updates, no I/O);
`flush()` (once a second, from the live-state loop: `figures.py`) adds them to the
store, and the dashboard reads the last minutes of buckets from it: every replica's
requests, whichever replica answers the dashboard.

    store    where                                          whose counts
    Redis    hash rtcts:dash:{<app>}:<bucket start, s>      every ingress replica's
             (one hash slot per app; expires after KEEP_S)
    memory   a dict in this replica                         this replica's (no Redis)

Fields, integers: `plan|<plan>|<action>` decisions by action (`pricing.Action`),
`plan|<plan>|billed` and `plan|<plan>|credit` micro-USD billed and credited,
`plan|<plan>|requests` requests billed, `model|<model>|revenue` micro-USD billed.

What a flush guarantees: counts that reached Redis are every replica's to read; a
flush that fails (Redis down) keeps its counts and retries them at the next one (the
oldest buckets past the window are dropped). A flush that timed out may have landed
and is retried: a dashboard figure can then count twice. These are display figures;
billing never reads them (it has its own exact path: the meter stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

BUCKET_S = 10
"""Bucket length, seconds (the margin window's own bucket: `margins.BUCKET_S`)."""
WINDOW_S = 300
"""How far back the dashboard reads (the margin window: `pricing.window.WINDOW_S`)."""
KEEP_S = 3 * WINDOW_S
"""How long a bucket stays in Redis."""

Buckets = dict[int, dict[str, int]]
"""Bucket start (unix seconds) -> field -> count."""


def bucket_of(now_s: float, bucket_s: int = BUCKET_S) -> int:
    return int(now_s // bucket_s) * bucket_s


def plan_field(plan: str, what: str) -> str:
    return f"plan|{plan}|{what}"


def model_field(model: str, what: str) -> str:
    return f"model|{model}|{what}"


class TallyStore(Protocol):
    shared: bool
    """Whether every ingress replica's counts are in it (else this replica's only)."""

    async def add(self, counts: Buckets) -> None: ...

    async def read(self, starts: list[int]) -> Buckets: ...


class MemoryTallyStore:
    """This replica's counts only (no Redis configured)."""

    shared = False

    def __init__(self) -> None:
        self._buckets: Buckets = {}

    async def add(self, counts: Buckets) -> None:
        for start, fields in counts.items():
            bucket = self._buckets.setdefault(start, {})
            for name, value in fields.items():
                bucket[name] = bucket.get(name, 0) + value
        oldest = max(self._buckets) - KEEP_S
        for start in [s for s in self._buckets if s < oldest]:
            del self._buckets[start]

    async def read(self, starts: list[int]) -> Buckets:
        return {s: dict(self._buckets[s]) for s in starts if s in self._buckets}


class RedisTallyStore:
    """Every replica's counts, in Redis (one pipeline per flush and per read)."""

    shared = True

    def __init__(self, client: Any, app_name: str) -> None:
        self._client = client
        self._prefix = f"rtcts:dash:{{{app_name}}}:"

    async def add(self, counts: Buckets) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for start, fields in counts.items():
                key = f"{self._prefix}{start}"
                for name, value in fields.items():
                    pipe.hincrby(key, name, value)
                pipe.expire(key, KEEP_S)
            await pipe.execute()

    async def read(self, starts: list[int]) -> Buckets:
        async with self._client.pipeline(transaction=False) as pipe:
            for start in starts:
                pipe.hgetall(f"{self._prefix}{start}")
            answers = await pipe.execute()
        return {
            start: {_text(k): int(v) for k, v in answer.items()}
            for start, answer in zip(starts, answers, strict=True)
            if answer
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Tally:
    """This replica's pending counts, flushed to a store; the window read back.

    On the request path a count is one dict update under a tuple key (no string is
    built); the store's fields are spelled out at the flush."""

    def __init__(
        self,
        store: TallyStore,
        *,
        clock: Callable[[], float] = time.time,
        bucket_s: int = BUCKET_S,
        window_s: int = WINDOW_S,
    ) -> None:
        self.store = store
        self._clock = clock
        self.bucket_s = bucket_s
        self.window_s = window_s
        self._decisions: dict[tuple[int, str, str], int] = {}
        """(bucket number, plan, action) -> decisions."""
        self._bills: dict[tuple[int, str, str], list[int]] = {}
        """(bucket number, plan, model) -> [requests, billed micro-USD, credited]."""
        self._unsent: Buckets = {}
        """Counts of a flush that failed, retried with the next one."""

    def decision(self, plan: str, action: str) -> None:
        key = (int(self._clock() // self.bucket_s), plan, action)
        self._decisions[key] = self._decisions.get(key, 0) + 1

    def billed(self, plan: str, model: str, billed_micro: int, credit_micro: int) -> None:
        key = (int(self._clock() // self.bucket_s), plan, model)
        sums = self._bills.get(key)
        if sums is None:
            self._bills[key] = [1, billed_micro, credit_micro]
        else:
            sums[0] += 1
            sums[1] += billed_micro
            sums[2] += credit_micro

    async def flush(self) -> None:
        """Add the pending counts to the store; on failure they wait for the next flush
        (raised), except the buckets that left the window meanwhile."""
        decisions, self._decisions = self._decisions, {}
        bills, self._bills = self._bills, {}
        counts, self._unsent = self._unsent, {}

        def add(number: int, field: str, value: int) -> None:
            fields = counts.setdefault(number * self.bucket_s, {})
            fields[field] = fields.get(field, 0) + value

        for (number, plan, action), count in decisions.items():
            add(number, plan_field(plan, action), count)
        for (number, plan, model), (requests, billed, credited) in bills.items():
            add(number, plan_field(plan, "requests"), requests)
            add(number, plan_field(plan, "billed"), billed)
            add(number, plan_field(plan, "credit"), credited)
            add(number, model_field(model, "revenue"), billed)
        if not counts:
            return
        try:
            await self.store.add(counts)
        except BaseException:
            oldest = bucket_of(self._clock(), self.bucket_s) - self.window_s
            self._unsent = {start: f for start, f in counts.items() if start >= oldest}
            raise

    def starts(self) -> list[int]:
        """The buckets of the window, oldest first; the last one is the current one."""
        current = bucket_of(self._clock(), self.bucket_s)
        count = self.window_s // self.bucket_s
        return [current - self.bucket_s * i for i in range(count - 1, -1, -1)]

    async def window(self) -> Buckets:
        """The window's buckets as the store has them (buckets with no counts left out)."""
        return await self.store.read(self.starts())
