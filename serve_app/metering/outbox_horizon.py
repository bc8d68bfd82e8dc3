"""Outbox entries near Stripe's identifier horizon: reconciled, never resent blind.

Stripe dedups a meter event's identifier for about 24 hours. An entry whose send landed
but whose answer was lost stays in the outbox and is retried with the same identifier:
harmless while Stripe remembers it, counted twice once it has forgotten. So an entry
whose first send attempt (`MeterLedger.record_attempts`) is older than
`RESEND_HORIZON_S` (20 h) is not sent again before it is compared with Stripe's event
summaries, per (customer, event name, minute of its timestamp):

    D = what Stripe holds there - what the ledger delivered there (every shard)
    E = the entries past the horizon there; U = the other entries there that were sent
        at least once and are still unconfirmed (any shard)

- D == 0: none of them reached Stripe: each entry of E is renamed (`windows.reissued`)
  and sent afresh, so no forgotten identifier is reused;
- D == sum(E) + sum(U): all of them did: E is marked delivered;
- anything else (Stripe holds part of them, or something this ledger never sent, or
  less than the ledger delivered): E is dead-lettered with a reason that gives the
  figures to check (`rtcts reconcile`), never resent;
- Stripe's summary unreadable: E waits (never resent) and the comparison is retried.

The rule acts only where the figures leave one reading, so it never double counts, and
what it cannot decide is dead-lettered where people look: never silently dropped. Event
summaries are eventually consistent on Stripe, a few minutes behind: 20 h is far past.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Protocol, runtime_checkable

from serve_app.metering.horizons import RESEND_HORIZON_S
from serve_app.metering.ledger import MeterLedger
from serve_app.metering.types import OutboxEntry
from serve_app.metering.windows import reissued

logger = logging.getLogger("rtcts.aggregator")

MINUTE_S = 60
"""Event summaries are asked for per minute (Stripe's alignment rule)."""

Pair = tuple[str, str]


@runtime_checkable
class ReadsTotals(Protocol):
    """A sink that can read Stripe's aggregated values back (`StripeSink`)."""

    async def stripe_totals(
        self, pairs: Sequence[Pair], *, start_time: int, end_time: int
    ) -> tuple[dict[Pair, Decimal], dict[Pair, str]]: ...


class Verdict(str, Enum):
    DELIVERED = "delivered"
    REISSUE = "reissue"
    DEAD = "dead"
    WAIT = "wait"


def judge(stripe_value: Decimal, delivered: int, past: int, unconfirmed: int) -> Verdict:
    """The rule of the module docstring (pure): `past` = sum(E), `unconfirmed` = sum(U)."""
    extra = stripe_value - delivered
    if extra == 0:
        return Verdict.REISSUE
    if extra == past + unconfirmed:
        return Verdict.DELIVERED
    return Verdict.DEAD


def past_horizon(first_attempt_s: int | None, now_s: float) -> bool:
    return first_attempt_s is not None and now_s - first_attempt_s >= RESEND_HORIZON_S


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reason: str = ""


class HorizonCheck:
    """Settles outbox entries past the horizon (see the module docstring). `peers`: the
    ledgers of the other shards, whose delivered and unconfirmed windows count too."""

    def __init__(
        self, ledger: MeterLedger, sink: object, peers: Sequence[MeterLedger] = ()
    ) -> None:
        self._ledger = ledger
        self._sink = sink if isinstance(sink, ReadsTotals) else None
        self._ledgers = [ledger, *peers]

    async def settle(
        self, expired: Sequence[OutboxEntry], first_attempts: dict[str, int], now_s: float
    ) -> dict[str, Outcome]:
        """Decide and apply, per group; identifier -> what happened to it."""
        groups: dict[tuple[str, str, int], list[OutboxEntry]] = {}
        for entry in expired:
            minute = entry.timestamp // MINUTE_S * MINUTE_S
            groups.setdefault((entry.stripe_customer_id, entry.event_name, minute), []).append(
                entry
            )
        unconfirmed = await self._unconfirmed({e.identifier for e in expired})
        outcomes: dict[str, Outcome] = {}
        for (customer, event, minute), entries in groups.items():
            outcome = await self._settle_group(
                customer, event, minute, entries, unconfirmed, first_attempts, now_s
            )
            for entry in entries:
                outcomes[entry.identifier] = outcome
        return outcomes

    async def _unconfirmed(self, excluded: set[str]) -> list[OutboxEntry]:
        """Outbox entries of every shard sent at least once, but for `excluded`."""
        found: list[OutboxEntry] = []
        for ledger in self._ledgers:
            attempted = await ledger.first_attempts()
            found += [
                e
                for e in await ledger.outbox()
                if e.identifier in attempted and e.identifier not in excluded
            ]
        return found

    async def _settle_group(
        self,
        customer: str,
        event: str,
        minute: int,
        entries: list[OutboxEntry],
        unconfirmed: list[OutboxEntry],
        first_attempts: dict[str, int],
        now_s: float,
    ) -> Outcome:
        where = f"{customer} {event} in [{minute}, {minute + MINUTE_S})"
        oldest = min(first_attempts.get(e.identifier, int(now_s)) for e in entries)
        hours = (now_s - oldest) / 3600
        if self._sink is None:
            return await self._dead(
                entries,
                f"unconfirmed {hours:.0f} h after its first send, past the resend horizon, "
                f"and this sink cannot read Stripe's event summaries for {where}: not resent; "
                "reconcile by hand (rtcts reconcile), then resend or drop",
            )
        pair = (customer, event)
        values, errors = await self._sink.stripe_totals(
            [pair], start_time=minute, end_time=minute + MINUTE_S
        )
        if pair in errors or pair not in values:
            logger.warning(
                "cannot reconcile %d window(s) past the resend horizon (%s): %s; they wait",
                len(entries),
                where,
                errors.get(pair, "no answer"),
            )
            return Outcome(Verdict.WAIT)
        held = values[pair]
        delivered = 0
        for ledger in self._ledgers:
            delivered += sum(
                e.value
                for e in await ledger.sent(minute, minute + MINUTE_S)
                if (e.stripe_customer_id, e.event_name) == pair
            )
        others = sum(
            e.value
            for e in unconfirmed
            if (e.stripe_customer_id, e.event_name) == pair
            and minute <= e.timestamp < minute + MINUTE_S
        )
        past = sum(e.value for e in entries)
        verdict = judge(held, delivered, past, others)
        if verdict is Verdict.DELIVERED:
            for entry in entries:
                await self._ledger.mark_delivered(entry)
            logger.info("Stripe's summaries confirm %d window(s) (%s)", len(entries), where)
            return Outcome(verdict)
        if verdict is Verdict.REISSUE:
            for entry in entries:
                renamed = await self._ledger.reissue(
                    entry, reissued(entry.identifier, entry.window_start)
                )
                logger.warning(
                    "window %s not in Stripe %.0f h after its first send: resent as %s",
                    entry.identifier,
                    hours,
                    renamed.identifier,
                )
            return Outcome(verdict)
        return await self._dead(
            entries,
            f"unconfirmed {hours:.0f} h after its first send, past the resend horizon "
            f"(Stripe forgets identifiers after about 24 h): Stripe holds {held} for "
            f"{where}, this ledger delivered {delivered} there and {past + others} more "
            "are unconfirmed; not resent: reconcile by hand (rtcts reconcile), then resend "
            "or drop",
        )

    async def _dead(self, entries: list[OutboxEntry], reason: str) -> Outcome:
        for entry in entries:
            logger.error("window %s dead-lettered: %s", entry.identifier, reason)
            await self._ledger.dead_letter(entry, reason)
        return Outcome(Verdict.DEAD, reason)
