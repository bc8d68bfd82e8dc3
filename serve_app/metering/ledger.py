"""The aggregator's state in Redis, per stream shard, and the atomic steps on it.

Keys (hash tag `{s<i>}` = the shard's stream tag, so every script touches one slot):

    rtcts:meters:{s<i>}          the meter stream (written by the ingress)
    rtcts:agg:{s<i>}:seen        batch ids already folded (ZSET, kept `FOLD_DEDUP_S`)
    rtcts:agg:{s<i>}:open        open window totals ("tenant|event|start|window_s|grace_s"
                                 -> value, `windows.open_field`; "tenant|event|start" is
                                 the older form, closed under the older identifier)
    rtcts:agg:{s<i>}:customers   tenant -> Stripe customer
    rtcts:agg:{s<i>}:tenants     per-tenant totals ("tenant|billed|credited|meters|failed")
    rtcts:agg:{s<i>}:outbox      closed windows not yet delivered (identifier -> entry)
    rtcts:agg:{s<i>}:attempts    first send attempt of each outbox entry (identifier ->
                                 Unix seconds): the clock of the resend horizon
    rtcts:agg:{s<i>}:sent:<day>  delivered windows whose start is in that UTC day
                                 (identifier -> entry): the local ledger, entry by entry;
                                 each day's hash expires `SENT_RETENTION_S` after the day
                                 ends (`rtcts:agg:{s<i>}:sent`, one hash for all days, is
                                 the older layout: moved into day hashes at start-up)
    rtcts:agg:{s<i>}:ledger      totals closed per "customer|event" (source of truth)
    rtcts:agg:{s<i>}:synced      totals delivered per "customer|event"
    rtcts:agg:{s<i>}:dead        windows Stripe refused for good (identifier -> entry|reason)
    rtcts:agg:{s<i>}:bad_meters  stream entries that are not batches (entry id -> summary)
    rtcts:agg:{s<i>}:status      what the running aggregator says of itself (name -> JSON),
                                 e.g. `stripe_setup`: shown by `health()`

Guarantees of each step, if the process dies right after it:
- `fold`: the batch is folded and acknowledged, or neither (one Lua script);
- `close_due`: each due window is in the outbox and the ledger, or still open;
- `record_attempts`: each entry's first attempt is on record before it is sent (a
  later attempt never moves it);
- `mark_delivered` / `dead_letter` / `reissue`: the entry moved (or renamed), with its
  attempt record, in one MULTI/EXEC;
- `trim`: only entries already folded and acknowledged go, never an unread or pending one;
- `ensure_group` (start-up): warns when Redis may evict keys (`redis_checks.py`), and
  moves records of the older single `sent` hash into day hashes, one MULTI/EXEC per
  chunk (each record is in the old hash or its day hash; a rerun moves the rest).

Retention: the totals (`ledger`, `synced`, `tenants`) grow with customers, not with time;
the delivered windows grow with time and are kept per day, for `SENT_RETENTION_S` (longer
than reconciliation's horizon, `RECONCILE_HORIZON_S`), so reconciliation reads only the
days of its range, and a day past retention leaves Redis on its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serve_app.metering.entry import F_SUMMARY, Group, batch_item
from serve_app.metering.horizons import DAY_S, FOLD_DEDUP_S, SENT_RETENTION_S
from serve_app.metering.stream import stream_key
from serve_app.metering.types import METER_EVENT_BILLED, METER_EVENT_TOKENS, OutboxEntry
from serve_app.metering.windows import Layout, parse_open_field, window_identifier
from serve_app.redis_checks import check_eviction_policy

LUA_DIR = Path(__file__).with_name("lua")
FOLD_LUA = (LUA_DIR / "fold.lua").read_text(encoding="utf-8")
CLOSE_LUA = (LUA_DIR / "close.lua").read_text(encoding="utf-8")
GROUP = "aggregator"
DEDUP_S = FOLD_DEDUP_S
"""How long the fold remembers a batch id: the spool's replay age limit derives from the
same constant (`horizons.py`), so a spooled batch is never replayed after it is forgotten."""


@dataclass(frozen=True, slots=True)
class ShardKeys:
    shard: int

    def name(self, what: str) -> str:
        return f"rtcts:agg:{{s{self.shard}}}:{what}"

    @property
    def stream(self) -> str:
        return stream_key(self.shard)

    @property
    def seen(self) -> str:
        return self.name("seen")

    @property
    def open(self) -> str:
        return self.name("open")

    @property
    def customers(self) -> str:
        return self.name("customers")

    @property
    def tenants(self) -> str:
        return self.name("tenants")

    @property
    def outbox(self) -> str:
        return self.name("outbox")

    @property
    def sent(self) -> str:
        """The older layout: one hash of every delivered window (see `sent_day`)."""
        return self.name("sent")

    def sent_day(self, day: int) -> str:
        """Delivered windows starting in UTC day `day` (days since the epoch)."""
        return self.name(f"sent:{day_name(day)}")

    @property
    def ledger(self) -> str:
        return self.name("ledger")

    @property
    def synced(self) -> str:
        return self.name("synced")

    @property
    def dead(self) -> str:
        return self.name("dead")


def day_name(day: int) -> str:
    return datetime.fromtimestamp(day * DAY_S, UTC).strftime("%Y-%m-%d")


def sent_expiry_s(window_start: int) -> int:
    """When the record of a window starting then leaves Redis (Unix seconds)."""
    return (window_start // DAY_S + 1) * DAY_S + SENT_RETENTION_S


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_entry(ident: str, raw: Any) -> OutboxEntry:
    customer, event, value, start, tenant = _text(raw).split("|", 4)
    return OutboxEntry(
        identifier=ident,
        event_name=event,
        stripe_customer_id=customer,
        value=int(value),
        timestamp=int(start),
        tenant_id=tenant,
        window_start=int(start),
    )


class MeterLedger:
    """One shard's aggregation state and its atomic steps."""

    def __init__(
        self,
        client: Any,
        shard: int,
        *,
        window_s: int,
        grace_s: int,
        shards: int = 1,
        instance: str = "rtcts",
    ) -> None:
        """`shards` and `instance` (the app's name) are part of every identifier closed
        here (`windows.Layout`), so windows of another layout never share one."""
        self._client = client
        self.keys = ShardKeys(shard)
        self.window_s = window_s
        self.grace_s = grace_s
        self.layout = Layout(instance=instance, shards=shards, shard=shard)
        self._fold = client.register_script(FOLD_LUA)
        self._close = client.register_script(CLOSE_LUA)

    async def ensure_group(self) -> None:
        """Start-up: the consumer group, the eviction check, the older `sent` layout."""
        from redis.exceptions import ResponseError

        try:
            await self._client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await check_eviction_policy(self._client, "billing")
        await self.migrate_sent()

    async def migrate_sent(self, chunk: int = 500) -> int:
        """Move the records of the older single `sent` hash into day hashes (dropping
        those past retention); returns how many were moved or dropped. Each chunk is
        one MULTI/EXEC: a record is in exactly one place whatever stops this."""
        k = self.keys
        if not await self._client.exists(k.sent):
            return 0
        seconds, _ = await self._client.time()
        now = int(seconds)
        done = 0
        cursor = 0
        while True:
            cursor, raw = await self._client.hscan(k.sent, cursor, count=chunk)
            if raw:
                async with self._client.pipeline(transaction=True) as pipe:
                    for ident, value in raw.items():
                        pipe.hdel(k.sent, ident)
                        try:
                            start = parse_entry(_text(ident), value).window_start
                        except ValueError:
                            continue  # not a record: nothing can read it; it goes
                        if sent_expiry_s(start) > now:
                            day = k.sent_day(start // DAY_S)
                            pipe.hset(day, ident, value)
                            pipe.expireat(day, sent_expiry_s(start))
                    await pipe.execute()
                done += len(raw)
            if int(cursor) == 0:
                return done

    async def read(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, FoldItem]]:
        """Up to `count` entries (batches): pending entries of this consumer first (after
        a crash), then new ones; entries left pending by another consumer for over a
        minute are claimed."""
        stream = self.keys.stream
        batch = await self._client.xreadgroup(GROUP, consumer, {stream: "0"}, count=count)
        entries = batch[0][1] if batch else []
        if not entries:
            claimed = await self._client.xautoclaim(
                stream, GROUP, consumer, min_idle_time=60_000, start_id="0-0", count=count
            )
            entries = claimed[1] if claimed else []
        if not entries:
            batch = await self._client.xreadgroup(
                GROUP, consumer, {stream: ">"}, count=count, block=block_ms
            )
            entries = batch[0][1] if batch else []
        result: list[tuple[str, FoldItem]] = []
        for entry_id, fields in entries:
            if not fields:  # a deleted entry: acknowledged, nothing to fold
                result.append((_text(entry_id), TOMBSTONE))
                continue
            item = batch_item(fields)
            if item is None:
                # A malformed entry must not block the shard: keep it for people to
                # see (`bad_meters`), then acknowledge it like a deleted one.
                kept = fields.get(F_SUMMARY.encode(), fields.get(F_SUMMARY)) or repr(fields)[:1000]
                await self._client.hset(self.keys.name("bad_meters"), _text(entry_id), kept)
                item = TOMBSTONE
            result.append((_text(entry_id), item))
        return result

    async def fold(self, entries: list[tuple[str, FoldItem]]) -> int:
        if not entries:
            return 0
        args: list[Any] = [
            GROUP,
            self.window_s,
            self.grace_s,
            DEDUP_S * 1000,
            len(entries),
            METER_EVENT_BILLED,
            METER_EVENT_TOKENS,
        ]
        for entry_id, (batch_id, groups) in entries:
            args += (entry_id, batch_id, len(groups))  # batch id "": acknowledged only
            for group in groups:
                args += group
        k = self.keys
        folded: int = await self._fold(
            keys=[k.stream, k.seen, k.open, k.customers, k.tenants], args=args
        )
        return folded

    async def close_due(self) -> int:
        """Close every open window past its own end + grace (Redis's clock): each goes to
        the outbox and the ledger under its identifier, or stays open (one script)."""
        fields = [_text(f) for f in await self._client.hkeys(self.keys.open)]
        args: list[Any] = []
        for field in fields:
            window = parse_open_field(field, self.window_s, self.grace_s)
            if window is None:
                continue  # not a window field: nothing folds or closes it
            args += [
                field,
                window_identifier(window, self.layout),
                window.due_s,
                window.tenant_id,
                window.event_name,
                window.start_s,
            ]
        if not args:
            return 0
        k = self.keys
        closed: int = await self._close(keys=[k.open, k.customers, k.outbox, k.ledger], args=args)
        return closed

    async def trim(self, retention_s: int) -> int:
        """Drop stream entries older than `retention_s` (Redis's clock) that are folded and
        acknowledged; returns how many went. An entry the group has not read yet, or
        read and not acknowledged (pending), is never dropped, however old: it bounds the
        trim. Dedup does not need the entries (the `seen` set keeps batch ids), so the
        retention is only how long the verified meters stay readable in Redis."""
        stream = self.keys.stream
        seconds, _ = await self._client.time()
        bound = (int(seconds) * 1000 - retention_s * 1000, 0)
        groups = await self._client.xinfo_groups(stream)
        for group in groups:
            if _text(group["name"]) != GROUP:
                continue
            last = _stream_id(group["last-delivered-id"])
            bound = min(bound, (last[0], last[1] + 1))
            if int(group["pending"]):
                pending = await self._client.xpending(stream, GROUP)
                bound = min(bound, _stream_id(pending["min"]))
            break
        else:
            return 0  # no group yet: nothing was read, nothing may go
        if bound[0] <= 0:
            return 0
        trimmed: int = await self._client.xtrim(
            stream, minid=f"{bound[0]}-{bound[1]}", approximate=False
        )
        return trimmed

    async def outbox(self) -> list[OutboxEntry]:
        raw = await self._client.hgetall(self.keys.outbox)
        return sorted(
            (parse_entry(_text(i), v) for i, v in raw.items()), key=lambda e: e.window_start
        )

    async def record_attempts(self, entries: Sequence[OutboxEntry], now_s: float) -> None:
        """Record `now_s` as the first send attempt of each entry that has none yet (call
        it before sending: a record never postdates a send)."""
        if not entries:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.hsetnx(self.keys.name("attempts"), entry.identifier, int(now_s))
            await pipe.execute()

    async def first_attempts(self) -> dict[str, int]:
        """identifier -> the first send attempt (Unix seconds) of outbox entries."""
        raw = await self._client.hgetall(self.keys.name("attempts"))
        return {_text(i): int(v) for i, v in raw.items()}

    async def reissue(self, entry: OutboxEntry, identifier: str) -> OutboxEntry:
        """Rename an outbox entry (same window, same value) to `identifier`, with no
        attempt on record: the way to resend a window Stripe has not recorded once its
        old identifier may be forgotten (`outbox_horizon.py`). One MULTI/EXEC."""
        k = self.keys
        renamed = replace(entry, identifier=identifier)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(k.outbox, entry.identifier)
            pipe.hdel(k.name("attempts"), entry.identifier)
            pipe.hset(k.outbox, identifier, _encode(renamed))
            await pipe.execute()
        return renamed

    async def mark_delivered(self, entry: OutboxEntry) -> None:
        k = self.keys
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(k.outbox, entry.identifier)
            pipe.hdel(k.name("attempts"), entry.identifier)
            day = k.sent_day(entry.window_start // DAY_S)
            pipe.hset(day, entry.identifier, _encode(entry))
            # Past retention (or already past it, for a window delivered very late) the
            # day's records leave Redis; `synced` keeps the total.
            pipe.expireat(day, sent_expiry_s(entry.window_start))
            pipe.hincrby(k.synced, f"{entry.stripe_customer_id}|{entry.event_name}", entry.value)
            await pipe.execute()

    async def dead_letter(self, entry: OutboxEntry, reason: str) -> None:
        k = self.keys
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(k.outbox, entry.identifier)
            pipe.hdel(k.name("attempts"), entry.identifier)
            pipe.hset(k.dead, entry.identifier, f"{_encode(entry)}|{reason}")
            await pipe.execute()

    async def totals(self, name: str) -> dict[str, int]:
        """A totals hash (`ledger` or `synced`) as "customer|event" -> value."""
        raw = await self._client.hgetall(self.keys.name(name))
        return {_text(f): int(v) for f, v in raw.items()}

    async def sent(self, start_s: int, end_s: int) -> list[OutboxEntry]:
        """The windows delivered to Stripe that start in `[start_s, end_s)` (the local
        ledger, entry by entry): only the day hashes of that range are read, and only
        days within retention hold anything."""
        if end_s <= start_s:
            return []
        first = max(start_s, end_s - SENT_RETENTION_S - DAY_S) // DAY_S
        last = (end_s - 1) // DAY_S
        async with self._client.pipeline(transaction=False) as pipe:
            for day in range(first, last + 1):
                pipe.hgetall(self.keys.sent_day(day))
            days = await pipe.execute()
        entries = (parse_entry(_text(i), v) for raw in days for i, v in raw.items())
        return [e for e in entries if start_s <= e.window_start < end_s]

    async def tenant_totals(self, tenant_id: str) -> dict[str, int]:
        fields = ("billed", "credited", "meters", "failed")
        values = await self._client.hmget(self.keys.tenants, [f"{tenant_id}|{f}" for f in fields])
        return {f: int(v or 0) for f, v in zip(fields, values, strict=True)}

    async def set_status(self, name: str, value: dict[str, Any]) -> None:
        """Publish a part of the aggregator's state for `health()` readers (the admin
        endpoint reads Redis, not the actor)."""
        await self._client.hset(self.keys.name("status"), name, json.dumps(value))

    async def status(self, name: str) -> dict[str, Any] | None:
        """What `set_status` last published under `name`, if anything."""
        value = await self._client.hget(self.keys.name("status"), name)
        return None if value is None else dict(json.loads(value))

    async def health(self) -> dict[str, Any]:
        k = self.keys
        outbox = await self.outbox()
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hlen(k.dead)
            pipe.hlen(k.open)
            pipe.hget(k.name("status"), "stripe_setup")
            pipe.xpending(k.stream, GROUP)
            # Before an aggregator created the group (or after Redis lost its data),
            # XPENDING answers NOGROUP: nothing is pending then, not an error.
            dead, open_windows, setup, pending = await pipe.execute(raise_on_error=False)
        for answer in (dead, open_windows, setup):
            if isinstance(answer, Exception):
                raise answer
        health: dict[str, Any] = {
            "shard": k.shard,
            "open_windows": int(open_windows),
            "outbox": len(outbox),
            "oldest_unsynced_window_start": outbox[0].window_start if outbox else None,
            "dead_letters": int(dead),
            "stream_pending": int(pending.get("pending", 0)) if isinstance(pending, dict) else 0,
        }
        if setup is not None:  # published by a running aggregator (`sink_setup.py`)
            health["stripe_setup"] = json.loads(setup)
        return health


def _stream_id(value: Any) -> tuple[int, int]:
    ms, seq = _text(value).split("-")
    return int(ms), int(seq)


def _encode(entry: OutboxEntry) -> str:
    return (
        f"{entry.stripe_customer_id}|{entry.event_name}|{entry.value}|"
        f"{entry.window_start}|{entry.tenant_id}"
    )


FoldItem = tuple[str, list[Group]]
"""What the fold needs of an entry: its batch id and summary groups."""

TOMBSTONE: FoldItem = ("", [])
"""A deleted or malformed entry: acknowledged, nothing folded."""
