"""Stripe sink: closed windows (`OutboxEntry`) to Stripe meter events, exactly once.

Uses the real `stripe` SDK (`StripeClient`, async calls over `stripe.HTTPXClient`),
against Stripe (test or live key) or the bundled emulator (`api_base`). The SDK never
retries (`max_network_retries=0`): retrying is the outbox's job, paced by
`stripe_errors.backoff_s`.

Guarantees (what a `SendResult` means; the outbox acts on it):
- DELIVERED: Stripe recorded an event with this identifier: accepted now, or already
  recorded before (an idempotent replay, or Stripe's duplicate-identifier refusal, see
  `stripe_errors.is_duplicate`). Every send of an entry carries the same identifier
  and the same `Idempotency-Key` (= the identifier), so no number of retries, from any
  process, records it twice while Stripe remembers it (24 hours; older is the ledger's
  job).
- RETRY: nothing is known to be recorded, or it may be but a retry is harmless:
  429, 5xx, 409, network errors and timeouts, an expired or refused key or session
  (configuration: the entry is fine and waits in the outbox rather than being dropped);
  `stripe_errors.classify` sorts Stripe's errors into RETRY and PERMANENT.
- PERMANENT: Stripe would never accept it: its own 4xx refusal (`detail` carries
  Stripe's code, e.g. `meter_event_invalid_value`), or a rule checked here before any
  meter-event request (identifier ≤ 100 characters, event name ≤ 100, a whole number
  ≥ 0, a timestamp 35 days back to 5 minutes ahead, a customer Stripe has: checked once
  per process, since Stripe takes events of unknown customers and drops them later
  without a word): such an entry is never sent, and `detail` ends with "(not sent)".
- `detail` never holds the API key (nor any string shaped like a Stripe key:
  `stripe_errors.redact`), and neither do the errors this module raises or its `repr`.

Per customer × meter, events go one at a time (Stripe answers 409 to concurrent events
on one customer and meter); different pairs go in parallel up to `concurrency`.

v2 stream mode (`send_stream`, or `send` with `mode="v2"`): up to 100 events per call
on a 15-minute session token, cached until `session_margin_s` before it expires and
renewed once if Stripe says it expired. A batch refused as a whole is sent again event
by event on v1, so only the bad events end PERMANENT. Stripe validates stream events
asynchronously: DELIVERED there means accepted for processing; reconciliation
(`reconcile`) catches what Stripe drops later.
The client (`make_client`) and the start-up checks of meters and customers
(`ensure_setup`): `stripe_setup.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, cast

import stripe

from serve_app.metering.reconcile import stripe_totals
from serve_app.metering.stripe_errors import classify
from serve_app.metering.stripe_setup import (
    CUSTOMER_PAYLOAD_KEY,
    VALUE_PAYLOAD_KEY,
    SetupReport,
    customer_exists,
    ensure_meters_and_customers,
    is_stripe_host,
    make_client,
)
from serve_app.metering.types import (
    OutboxEntry,
    PermanentSyncError,
    RetryableSyncError,
    SendResult,
    SendStatus,
)

log = logging.getLogger(__name__)

MAX_IDENTIFIER_CHARS = 100
MAX_EVENT_NAME_CHARS = 100
PAST_LIMIT_S = 35 * 86_400
FUTURE_LIMIT_S = 5 * 60
STREAM_MAX_EVENTS = 100
LOCAL_TEST_KEY = "sk_test_rtcts_emulator"
"""The key sent to a Stripe-compatible local server when no STRIPE_API_KEY is set (the
bundled emulator accepts any test key)."""


def check_entry(entry: OutboxEntry, now_s: int) -> str | None:
    """Why Stripe would refuse `entry` for a reason checkable here, or None if it would not.

    The codes are Stripe's own for the same refusals, so dead letters read the same
    whether the sink or Stripe refused.
    """
    if not entry.identifier:
        return "identifier_empty: the identifier is empty"
    if len(entry.identifier) > MAX_IDENTIFIER_CHARS:
        return f"identifier_too_long: {len(entry.identifier)} > {MAX_IDENTIFIER_CHARS} characters"
    if not entry.event_name or len(entry.event_name) > MAX_EVENT_NAME_CHARS:
        return f"invalid_event_name: 1..{MAX_EVENT_NAME_CHARS} characters required"
    if not entry.stripe_customer_id:
        return "meter_event_no_customer_defined: no Stripe customer id"
    if isinstance(entry.value, bool) or not isinstance(entry.value, int):
        return f"meter_event_invalid_value: {entry.value!r} is not a whole number"
    if entry.value < 0:
        return f"meter_event_invalid_value: {entry.value} is negative"
    if isinstance(entry.timestamp, bool) or not isinstance(entry.timestamp, int):
        return f"invalid_timestamp: {entry.timestamp!r} is not unix seconds"
    if entry.timestamp < now_s - PAST_LIMIT_S:
        return "timestamp_too_far_in_past: more than 35 days ago"
    if entry.timestamp > now_s + FUTURE_LIMIT_S:
        return "timestamp_in_future: more than 5 minutes ahead"
    return None


def rfc3339(ts: int) -> str:
    """Unix seconds -> the RFC 3339 form v2 meter events take."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class _Session:
    token: str = field(repr=False)
    expires_at: int


SendMode = Literal["v1", "v2"]


class StripeSink:
    """Sends outbox entries to Stripe; see the module docstring for what results mean."""

    def __init__(
        self,
        client: stripe.StripeClient | None = None,
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        mode: SendMode | str = "v1",
        timeout_s: float = 10.0,
        create_customers: bool | None = None,
        verify_customers: bool = True,
        concurrency: int = 8,
        session_margin_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Either pass `client`, or `api_key` (and `api_base` for the emulator or another
        Stripe-compatible server) and the sink builds its own; `aclose()` closes that one.

        `api_key` is also scrubbed from every detail. `mode`: what `send` uses, "v1" (one
        meter event per entry) or "v2" (meter event streams). `create_customers`:
        `ensure_setup` creates missing customers with the given ids (the emulator allows
        custom ids, Stripe does not; default: only when `api_base` is not Stripe's).
        `verify_customers`: before the first event of a customer, check Stripe has it.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if mode not in ("v1", "v2"):
            raise ValueError(f"mode must be 'v1' or 'v2', not {mode!r}")
        self._http_client: stripe.HTTPXClient | None = None
        if client is None:
            if not api_key:
                raise ValueError("StripeSink needs a client or an api_key")
            client, self._http_client = make_client(api_key, api_base, timeout_s=timeout_s)
        self._client = client
        self._secret = api_key
        self.mode: SendMode = "v2" if mode == "v2" else "v1"
        self._create_customers = (
            not is_stripe_host(api_base) if create_customers is None else create_customers
        )
        self._verify_customers = verify_customers
        self._clock = clock
        self._concurrency = concurrency
        self._session_margin_s = session_margin_s
        self._session: _Session | None = None
        self._session_lock = asyncio.Lock()
        self._customers: set[str] = set()

    @classmethod
    def connect(cls, api_key: str, api_base: str | None = None, **options: Any) -> StripeSink:
        """`StripeSink(api_key=..., api_base=..., **options)`: a sink with its own
        StripeClient (options as in the constructor)."""
        return cls(api_key=api_key, api_base=api_base, **options)

    def __repr__(self) -> str:
        return f"StripeSink(mode={self.mode!r}, create_customers={self._create_customers})"

    @property
    def client(self) -> stripe.StripeClient:
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client the sink built (from the event loop that used it)."""
        if self._http_client is not None:
            await self._http_client.close_async()  # type: ignore[no-untyped-call]

    def _now(self) -> int:
        return int(self._clock())

    # -- v1: one meter event per entry -------------------------------------------------

    async def send(self, entries: Sequence[OutboxEntry]) -> list[SendResult]:
        """Send the entries the sink's way (`mode`); one result per entry, in order."""
        if self.mode == "v2":
            return await self.send_stream(entries)
        return await self.send_events(entries)

    async def send_events(self, entries: Sequence[OutboxEntry]) -> list[SendResult]:
        """Send each entry as one v1 meter event; one result per entry, in order."""
        results: list[SendResult | None] = [None] * len(entries)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, entry in enumerate(entries):
            groups.setdefault((entry.stripe_customer_id, entry.event_name), []).append(i)
        gate = asyncio.Semaphore(self._concurrency)

        async def run(indices: list[int]) -> None:
            async with gate:
                for i in indices:
                    results[i] = await self._send_one(entries[i])

        await asyncio.gather(*(run(ix) for ix in groups.values()))
        return [r for r in results if r is not None]

    async def _precheck(self, entry: OutboxEntry) -> SendResult | None:
        """A result without sending (refused here, or the customer check failed), or None."""
        problem = check_entry(entry, self._now())
        if problem is None:
            try:
                known = await self._customer_known(entry.stripe_customer_id)
            except stripe.StripeError as exc:
                return classify(exc, entry.identifier, self._secret)
            if not known:
                problem = (
                    f"meter_event_customer_not_found: no Stripe customer {entry.stripe_customer_id}"
                )
        if problem is None:
            return None
        log.warning(
            "meter event refused before sending",
            extra={"identifier": entry.identifier, "tenant": entry.tenant_id, "detail": problem},
        )
        return SendResult(entry.identifier, SendStatus.PERMANENT, f"{problem} (not sent)")

    async def _customer_known(self, cid: str) -> bool:
        """Whether Stripe has customer `cid` (positive answers cached for the process)."""
        if not self._verify_customers or cid in self._customers:
            return True
        if await customer_exists(self._client, cid):
            self._customers.add(cid)
            return True
        return False

    async def _send_one(self, entry: OutboxEntry) -> SendResult:
        refused = await self._precheck(entry)
        if refused is not None:
            return refused
        try:
            await self._client.v1.billing.meter_events.create_async(
                params={
                    "event_name": entry.event_name,
                    "identifier": entry.identifier,
                    "timestamp": entry.timestamp,
                    "payload": {
                        CUSTOMER_PAYLOAD_KEY: entry.stripe_customer_id,
                        VALUE_PAYLOAD_KEY: str(entry.value),
                    },
                },
                options={"idempotency_key": entry.identifier},
            )
        except stripe.StripeError as exc:
            result = classify(exc, entry.identifier, self._secret)
            self._log_result(entry, result)
            return result
        return SendResult(entry.identifier, SendStatus.DELIVERED)

    def _log_result(self, entry: OutboxEntry, result: SendResult) -> None:
        level = logging.WARNING if result.status is SendStatus.PERMANENT else logging.INFO
        log.log(
            level,
            "meter event %s",
            result.status.value,
            extra={
                "identifier": entry.identifier,
                "tenant": entry.tenant_id,
                "detail": result.detail,
            },
        )

    # -- v2: meter event stream ---------------------------------------------------------

    async def send_stream(self, entries: Sequence[OutboxEntry]) -> list[SendResult]:
        """Send entries on the v2 meter event stream, ≤ 100 a call; one result per entry."""
        results: list[SendResult | None] = [None] * len(entries)
        refusals = await asyncio.gather(*(self._precheck(e) for e in entries))
        sendable: list[int] = []
        for i, refused in enumerate(refusals):
            if refused is None:
                sendable.append(i)
            else:
                results[i] = refused
        for start in range(0, len(sendable), STREAM_MAX_EVENTS):
            chunk = sendable[start : start + STREAM_MAX_EVENTS]
            batch = [entries[i] for i in chunk]
            outcome = await self._stream_chunk(batch)
            if outcome.status is SendStatus.PERMANENT and len(batch) > 1:
                # A refused batch: find the bad events one by one (same identifiers and
                # idempotency keys), so one bad event never dead-letters the others.
                for i, result in zip(chunk, await self.send_events(batch), strict=True):
                    results[i] = result
                continue
            for i in chunk:
                results[i] = replace(outcome, identifier=entries[i].identifier)
        return [r for r in results if r is not None]

    async def _stream_chunk(self, chunk: Sequence[OutboxEntry]) -> SendResult:
        """One stream call for `chunk`; the result applies to every entry of it."""
        events = [
            {
                "event_name": e.event_name,
                "identifier": e.identifier,
                "timestamp": rfc3339(e.timestamp),
                "payload": {
                    CUSTOMER_PAYLOAD_KEY: e.stripe_customer_id,
                    VALUE_PAYLOAD_KEY: str(e.value),
                },
            }
            for e in chunk
        ]
        digest = hashlib.sha256("\n".join(e.identifier for e in chunk).encode()).hexdigest()
        failure: BaseException | None = None
        for _ in range(2):
            try:
                token = await self._session_token()
                await self._client.v2.billing.meter_event_stream.create_async(
                    params={"events": cast("Any", events)},
                    options={"api_key": token, "idempotency_key": f"rtcts-stream-{digest[:48]}"},
                )
            except (stripe.TemporarySessionExpiredError, stripe.AuthenticationError) as exc:
                self._session = None  # renew the token once, then report
                failure = exc
                continue
            except stripe.StripeError as exc:
                failure = exc
                break
            return SendResult("", SendStatus.DELIVERED)
        assert failure is not None
        return classify(failure, "", self._secret)

    async def _session_token(self) -> str:
        async with self._session_lock:
            session = self._session
            if session is not None and self._now() < session.expires_at - self._session_margin_s:
                return session.token
            created = await self._client.v2.billing.meter_event_session.create_async()
            expires = datetime.fromisoformat(str(created.expires_at).replace("Z", "+00:00"))
            self._session = _Session(created.authentication_token, int(expires.timestamp()))
            return self._session.token

    # -- reading back -------------------------------------------------------------------

    async def stripe_totals(
        self, pairs: Iterable[tuple[str, str]], *, start_time: int, end_time: int
    ) -> tuple[dict[tuple[str, str], Decimal], dict[tuple[str, str], str]]:
        """Stripe's aggregated value per (customer, event name) over `[start_time,
        end_time)` (minute-aligned), from its event summaries, and the pairs it could not
        answer with why (`reconcile.stripe_totals`; texts never hold the key)."""
        return await stripe_totals(
            self._client, pairs, start_time=start_time, end_time=end_time, secret=self._secret
        )

    # -- start-up -----------------------------------------------------------------------

    async def ensure_setup(
        self, customers: Iterable[tuple[str, str]], event_names: Iterable[str]
    ) -> SetupReport:
        """Make sure each meter and customer exists; raise `StripeSetupError` if not.

        `customers`: (stripe_customer_id, display name) pairs. A missing meter is created
        (sum of `value`, customer from `stripe_customer_id`); an existing meter with other
        settings is a problem (it would bill differently). A missing customer is created
        with that id when `create_customers` (the emulator), else reported as missing.
        Network trouble raises `RetryableSyncError`; other refusals `PermanentSyncError`.
        """
        try:
            return await ensure_meters_and_customers(
                self._client,
                customers,
                event_names,
                create_customers=self._create_customers,
                known_customers=self._customers,
            )
        except stripe.StripeError as exc:
            result = classify(exc, "", self._secret)
            error = RetryableSyncError if result.status is SendStatus.RETRY else PermanentSyncError
            raise error(f"Stripe set-up failed: {result.detail}") from None
