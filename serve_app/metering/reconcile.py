"""Reconciliation: the local ledger against Stripe's meter event summaries.

The local ledger (what rtcts closed and delivered, per Stripe customer × meter event) is
the source of truth: Stripe remembers identifiers for about 24 hours only and accepts
timestamps only 35 days back, so only a comparison of totals shows what went missing
or was counted twice.

Guarantees
- Read-only: nothing is written to Stripe.
- Every (customer, event name) of the ledger, and every pair of `customers` ×
  event names asked for, gets one line; a line is `ok` only when Stripe's aggregated
  value equals the local total exactly (Decimal arithmetic, no float).
- A pair Stripe could not answer (no meter, unknown customer, network) is a line with
  `error` set and `ok` False: never silently taken as zero.
- Stripe aggregates asynchronously (its summaries are eventually consistent): compare
  ranges that ended a few minutes ago. Ranges are `[start_time, end_time)` aligned to
  minutes (Stripe's rule); events are attributed by their timestamp (the window start).
- Error texts never hold the API key.
- `to_dict` (the admin endpoint and `rtcts reconcile --json`) gives every figure as a
  whole number in the line's `unit`; a Stripe value that is not whole becomes an error
  line, so no figure is rounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, cast

import stripe

from serve_app.metering.stripe_errors import redact
from serve_app.metering.stripe_setup import active_meters
from serve_app.metering.types import METER_EVENT_BILLED, METER_EVENT_TOKENS

Pair = tuple[str, str]
"""(stripe_customer_id, event_name)."""

UNITS = {METER_EVENT_BILLED: "micro_usd", METER_EVENT_TOKENS: "tokens"}
"""The unit of each meter event's values (the figures of a line)."""


@dataclass(frozen=True, slots=True)
class DriftLine:
    """One customer × meter: what we sent, what Stripe counted."""

    stripe_customer_id: str
    event_name: str
    local: int
    stripe: Decimal | None
    """Stripe's aggregated value, a whole number; None when it could not be read (see
    `error`)."""
    error: str = ""

    def __post_init__(self) -> None:
        if self.stripe is not None and not _whole(self.stripe):
            raise ValueError(f"Stripe's value {self.stripe} is not a whole number")

    @property
    def drift(self) -> Decimal | None:
        """Stripe minus local: > 0 Stripe counted more (double billing), < 0 less."""
        return None if self.stripe is None else self.stripe - self.local

    @property
    def ok(self) -> bool:
        return not self.error and self.stripe == self.local

    @property
    def unit(self) -> str:
        """What the figures count: `micro_usd`, `tokens`, or `units` for another meter."""
        return UNITS.get(self.event_name, "units")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `local`, `stripe` and `drift` are integers in `unit` (`stripe` and
        `drift` None when Stripe could not be read)."""
        drift = self.drift
        return {
            "stripe_customer_id": self.stripe_customer_id,
            "event_name": self.event_name,
            "unit": self.unit,
            "local": self.local,
            "stripe": None if self.stripe is None else int(self.stripe),
            "drift": None if drift is None else int(drift),
            "ok": self.ok,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class DriftReport:
    """The comparison over `[start_time, end_time)`, one line per customer × meter."""

    start_time: int
    end_time: int
    lines: tuple[DriftLine, ...]

    @property
    def ok(self) -> bool:
        return all(line.ok for line in self.lines)

    @property
    def drifted(self) -> tuple[DriftLine, ...]:
        return tuple(line for line in self.lines if not line.ok)

    def line(self, stripe_customer_id: str, event_name: str) -> DriftLine | None:
        for item in self.lines:
            if (item.stripe_customer_id, item.event_name) == (stripe_customer_id, event_name):
                return item
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_time": self.start_time,
            "end_time": self.end_time,
            "ok": self.ok,
            "lines": [line.to_dict() for line in self.lines],
        }


def compare(
    local: Mapping[Pair, int],
    remote: Mapping[Pair, Decimal],
    errors: Mapping[Pair, str] | None = None,
    *,
    start_time: int,
    end_time: int,
) -> DriftReport:
    """Pure: one line per pair in any of the three maps (missing values count as zero).

    A Stripe value that is not a whole number (rtcts sends whole numbers only) is an
    error line: it cannot equal the ledger, and no figure of a report is rounded.
    """
    fractional = {
        pair: f"Stripe's aggregated value {value} is not a whole number"
        for pair, value in remote.items()
        if not _whole(value)
    }
    errors = {**fractional, **(errors or {})}
    keys = sorted(set(local) | set(remote) | set(errors))
    lines = tuple(
        DriftLine(
            stripe_customer_id=customer,
            event_name=event_name,
            local=int(local.get((customer, event_name), 0)),
            stripe=None
            if (customer, event_name) in errors
            else remote.get((customer, event_name), Decimal(0)),
            error=errors.get((customer, event_name), ""),
        )
        for customer, event_name in keys
    )
    return DriftReport(start_time=start_time, end_time=end_time, lines=lines)


def _whole(value: Decimal) -> bool:
    return value.is_finite() and value == value.to_integral_value()


def parse_ledger(totals: Mapping[str, int | str], sep: str = "|") -> dict[Pair, int]:
    """Ledger hash `{"cus_1|rtcts_tokens": 12}` -> `{("cus_1", "rtcts_tokens"): 12}`."""
    out: dict[Pair, int] = {}
    for key, value in totals.items():
        customer, found, event_name = key.rpartition(sep)
        if not found or not customer or not event_name:
            raise ValueError(f"ledger key {key!r} is not 'customer{sep}event_name'")
        out[(customer, event_name)] = out.get((customer, event_name), 0) + int(value)
    return out


def check_range(start_time: int, end_time: int) -> None:
    if start_time % 60 or end_time % 60:
        raise ValueError("start_time and end_time must be aligned to minutes (Stripe's rule)")
    if start_time >= end_time:
        raise ValueError("start_time must be before end_time")


async def stripe_totals(
    client: stripe.StripeClient,
    pairs: Iterable[Pair],
    *,
    start_time: int,
    end_time: int,
    meter_ids: Mapping[str, str] | None = None,
    value_grouping_window: Literal["hour", "day"] | None = None,
    page_size: int = 100,
    concurrency: int = 8,
    secret: str | None = None,
) -> tuple[dict[Pair, Decimal], dict[Pair, str]]:
    """Stripe's aggregated value per pair over the range (every page summed), and errors.

    `meter_ids` (event_name -> meter id) defaults to Stripe's active meters.
    """
    check_range(start_time, end_time)
    wanted = sorted(set(pairs))
    values: dict[Pair, Decimal] = {}
    errors: dict[Pair, str] = {}
    if meter_ids is None:
        try:
            meter_ids = {name: m.id for name, m in (await active_meters(client)).items()}
        except stripe.StripeError as exc:
            text = _error_text(exc, secret)
            return {}, dict.fromkeys(wanted, f"cannot list meters: {text}")
    gate = asyncio.Semaphore(concurrency)

    async def fetch(pair: Pair) -> None:
        customer, event_name = pair
        meter_id = meter_ids.get(event_name)
        if meter_id is None:
            errors[pair] = f"no active Stripe meter for event_name {event_name}"
            return
        async with gate:
            try:
                values[pair] = await _summed(
                    client,
                    meter_id,
                    customer,
                    start_time,
                    end_time,
                    value_grouping_window,
                    page_size,
                )
            except stripe.StripeError as exc:
                errors[pair] = _error_text(exc, secret)

    await asyncio.gather(*(fetch(pair) for pair in wanted))
    return values, errors


async def _summed(
    client: stripe.StripeClient,
    meter_id: str,
    customer: str,
    start_time: int,
    end_time: int,
    grouping: Literal["hour", "day"] | None,
    page_size: int,
) -> Decimal:
    total = Decimal(0)
    after: str | None = None
    while True:
        params: dict[str, Any] = {
            "customer": customer,
            "start_time": start_time,
            "end_time": end_time,
            "limit": page_size,
        }
        if grouping is not None:
            params["value_grouping_window"] = grouping
        if after is not None:
            params["starting_after"] = after
        page = await client.v1.billing.meters.event_summaries.list_async(
            meter_id, params=cast("Any", params)
        )
        for summary in page.data:
            total += Decimal(str(summary.aggregated_value))
        if not page.has_more or not page.data:
            return total
        after = page.data[-1].id


def _error_text(exc: stripe.StripeError, secret: str | None) -> str:
    code = exc.code or type(exc).__name__
    return redact(f"{code}: {exc.user_message or ''} (HTTP {exc.http_status})", secret)


async def reconcile(
    client: stripe.StripeClient,
    local: Mapping[Pair, int],
    *,
    start_time: int,
    end_time: int,
    customers: Iterable[str] = (),
    event_names: Iterable[str] = (),
    meter_ids: Mapping[str, str] | None = None,
    value_grouping_window: Literal["hour", "day"] | None = None,
    page_size: int = 100,
    secret: str | None = None,
) -> DriftReport:
    """Compare `local` totals over `[start_time, end_time)` with Stripe's summaries.

    Pairs checked: those of `local`, plus `customers` × (`event_names`, or the event
    names of `local`), so a customer with no local usage is still checked for events
    Stripe has and we do not. `secret` (the API key) is scrubbed from error texts.
    """
    check_range(start_time, end_time)
    names = list(dict.fromkeys(event_names)) or sorted({e for _, e in local})
    pairs = set(local) | {(c, e) for c in customers for e in names}
    remote, errors = await stripe_totals(
        client,
        pairs,
        start_time=start_time,
        end_time=end_time,
        meter_ids=meter_ids,
        value_grouping_window=value_grouping_window,
        page_size=page_size,
        secret=secret,
    )
    return compare(local, remote, errors, start_time=start_time, end_time=end_time)
