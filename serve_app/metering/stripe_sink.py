"""Stripe sink: closed windows (`OutboxEntry`) to Stripe meter events, exactly once.

Uses the real `stripe` SDK (`StripeClient`, async calls over `stripe.HTTPXClient`),
against Stripe (test or live key) or the bundled emulator (`api_base`). The SDK never
retries (`max_network_retries=0`): retrying is the outbox's job, paced by `backoff_s`.

Guarantees (what a `SendResult` means; the outbox acts on it):
- DELIVERED: Stripe recorded an event with this identifier: accepted now, or already
  recorded before (an idempotent replay, or Stripe's duplicate-identifier refusal, see
  `is_duplicate`). Every send of an entry carries the same identifier and the
  same `Idempotency-Key` (= the identifier), so no number of retries, from any process,
  records it twice while Stripe remembers it (24 hours; older is the ledger's job).
- RETRY: nothing is known to be recorded, or it may be but a retry is harmless:
  429, 5xx, 409, network errors and timeouts, an expired or refused key or session
  (configuration: the entry is fine and waits in the outbox rather than being dropped).
- PERMANENT: Stripe would never accept it: its own 4xx refusal (`detail` carries
  Stripe's code, e.g. `meter_event_invalid_value`), or a rule checked here before any
  meter-event request (identifier ≤ 100 characters, event name ≤ 100, a whole number
  ≥ 0, a timestamp 35 days back to 5 minutes ahead, a customer Stripe has: checked once
  per process, since Stripe takes events of unknown customers and drops them later
  without a word): such an entry is never sent, and `detail` ends with "(not sent)".
- `detail` never holds the API key (nor any string shaped like a Stripe key), and
  neither do the errors this module raises or its `repr`.

Per customer × meter, events go one at a time (Stripe answers 409 to concurrent events
on one customer and meter); different pairs go in parallel up to `concurrency`.

v2 stream mode (`send_stream`, or `send` with `mode="v2"`): up to 100 events per call
on a 15-minute session token, cached until `session_margin_s` before it expires and
renewed once if Stripe says it expired. A batch refused as a whole is sent again event
by event on v1, so only the bad events end PERMANENT. Stripe validates stream events
asynchronously: DELIVERED there means accepted for processing; reconciliation
(`reconcile`) catches what Stripe drops later.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit

import stripe

from serve_app.metering.types import (
    OutboxEntry,
    PermanentSyncError,
    RetryableSyncError,
    SendResult,
    SendStatus,
)

if TYPE_CHECKING:
    from stripe.params import CustomerCreateParams

log = logging.getLogger(__name__)

MAX_IDENTIFIER_CHARS = 100
MAX_EVENT_NAME_CHARS = 100
PAST_LIMIT_S = 35 * 86_400
FUTURE_LIMIT_S = 5 * 60
STREAM_MAX_EVENTS = 100
CUSTOMER_PAYLOAD_KEY = "stripe_customer_id"
VALUE_PAYLOAD_KEY = "value"
STRIPE_HOST_SUFFIX = "stripe.com"

DUPLICATE_CODES = frozenset({"duplicate_meter_event", "resource_already_exists"})
"""Codes meaning "this identifier is already recorded" (v2 documents the first)."""
DUPLICATE_MESSAGE = re.compile(r"already exists with identifier|duplicate identifier", re.I)
"""What Stripe's v1 duplicate refusal says; it carries no code (emulator docstring)."""
_KEY_SHAPE = re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[0-9A-Za-z_]+")
REDACTED = "[redacted]"
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
LOCAL_TEST_KEY = "sk_test_rtcts_emulator"
"""The key sent to a Stripe-compatible local server when no STRIPE_API_KEY is set (the
bundled emulator accepts any test key)."""


def redact(text: str, secret: str | None = None) -> str:
    """`text` with the key (and anything shaped like a Stripe key) replaced."""
    if secret:
        text = text.replace(secret, REDACTED)
    return _KEY_SHAPE.sub(REDACTED, text)


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


def is_duplicate(exc: BaseException) -> bool:
    """Stripe's answer for an identifier it already recorded (counts as delivered)."""
    if not isinstance(exc, stripe.StripeError) or isinstance(exc, stripe.IdempotencyError):
        return False
    if exc.http_status not in (400, 409):
        return False
    message = exc.user_message or ""
    return exc.code in DUPLICATE_CODES or bool(DUPLICATE_MESSAGE.search(message))


def _network_cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return type(cause).__name__ if cause is not None else type(exc).__name__


def classify(exc: BaseException, identifier: str, secret: str | None = None) -> SendResult:
    """How a failed meter-event call ended, per the module docstring (pure)."""
    status = getattr(exc, "http_status", None)
    code = getattr(exc, "code", None)
    message = redact(str(getattr(exc, "user_message", "") or ""), secret)
    shown = f"{code or type(exc).__name__}: {message}".rstrip(": ")
    if status is not None:
        shown += f" (HTTP {status})"

    def result(kind: SendStatus, detail: str) -> SendResult:
        return SendResult(identifier, kind, redact(detail, secret))

    if is_duplicate(exc):
        return result(SendStatus.DELIVERED, "duplicate identifier: Stripe already has it")
    if isinstance(exc, stripe.IdempotencyError):
        if status == 409:
            return result(SendStatus.RETRY, f"idempotency_key_in_use: {message}")
        return result(SendStatus.PERMANENT, f"idempotency_error: {message}")
    if isinstance(exc, stripe.APIConnectionError):
        return result(SendStatus.RETRY, f"network: {_network_cause(exc)}")
    if isinstance(
        exc,
        stripe.RateLimitError
        | stripe.AuthenticationError
        | stripe.PermissionError
        | stripe.TemporarySessionExpiredError,
    ):
        return result(SendStatus.RETRY, shown)
    if isinstance(exc, stripe.StripeError):
        if status is None or status >= 500 or status in RETRYABLE_STATUSES:
            return result(SendStatus.RETRY, shown)
        return result(SendStatus.PERMANENT, shown)
    if isinstance(exc, TimeoutError | OSError):
        return result(SendStatus.RETRY, f"network: {type(exc).__name__}")
    return result(SendStatus.RETRY, f"unexpected: {type(exc).__name__}")


def backoff_s(
    attempt: int, rng: random.Random, *, base_s: float = 0.5, cap_s: float = 60.0
) -> float:
    """Seconds to wait before retry number `attempt` (0 = first): exponential, full jitter.

    Uniform in `[0, min(cap_s, base_s · 2^attempt)]` (pure, given `rng`).
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    return rng.uniform(0.0, min(cap_s, base_s * 2.0 ** min(attempt, 64)))


def rfc3339(ts: int) -> str:
    """Unix seconds -> the RFC 3339 form v2 meter events take."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def is_stripe_host(api_base: str | None) -> bool:
    """True for Stripe itself (no base, or a *.stripe.com address)."""
    if api_base is None:
        return True
    host = urlsplit(api_base).hostname or ""
    return host == STRIPE_HOST_SUFFIX or host.endswith("." + STRIPE_HOST_SUFFIX)


@dataclass(frozen=True, slots=True)
class SetupReport:
    """What `ensure_setup` found and did."""

    meters: Mapping[str, str]
    """event_name -> Stripe meter id."""
    created_meters: tuple[str, ...] = ()
    created_customers: tuple[str, ...] = ()
    missing_customers: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


class StripeSetupError(PermanentSyncError):
    """Meters or customers are not as rtcts needs them; `report` says which."""

    def __init__(self, report: SetupReport) -> None:
        super().__init__("Stripe set-up incomplete: " + "; ".join(report.problems))
        self.report = report


@dataclass
class _Session:
    token: str = field(repr=False)
    expires_at: int


SendMode = Literal["v1", "v2"]


def make_client(
    api_key: str, api_base: str | None = None, *, timeout_s: float = 10.0
) -> tuple[stripe.StripeClient, stripe.HTTPXClient]:
    """A StripeClient for Stripe or a Stripe-compatible `api_base` (both hosts), that
    never retries by itself, over an async-capable httpx client (returned to close it)."""
    http_client = stripe.HTTPXClient(timeout=timeout_s)
    bases: dict[str, str] = {}
    if api_base is not None:
        base = api_base.rstrip("/")
        bases = {"api": base, "meter_events": base}
    client = stripe.StripeClient(
        api_key,
        base_addresses=cast("Any", bases),
        max_network_retries=0,
        http_client=http_client,
    )
    return client, http_client


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
        if await self._customer_exists(cid):
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
            return await self._ensure_setup(customers, event_names)
        except stripe.StripeError as exc:
            result = classify(exc, "", self._secret)
            error = RetryableSyncError if result.status is SendStatus.RETRY else PermanentSyncError
            raise error(f"Stripe set-up failed: {result.detail}") from None

    async def _ensure_setup(
        self, customers: Iterable[tuple[str, str]], event_names: Iterable[str]
    ) -> SetupReport:
        existing = await active_meters(self._client)
        meters: dict[str, str] = {}
        created_meters: list[str] = []
        problems: list[str] = []
        for name in dict.fromkeys(event_names):
            meter = existing.get(name)
            if meter is None:
                meter = await self._client.v1.billing.meters.create_async(
                    params={
                        "display_name": name,
                        "event_name": name,
                        "default_aggregation": {"formula": "sum"},
                        "customer_mapping": {
                            "event_payload_key": CUSTOMER_PAYLOAD_KEY,
                            "type": "by_id",
                        },
                        "value_settings": {"event_payload_key": VALUE_PAYLOAD_KEY},
                    },
                    options={"idempotency_key": f"rtcts-meter-{name}"},
                )
                created_meters.append(name)
            else:
                problems.extend(_meter_problems(meter))
            meters[name] = meter.id
        created: list[str] = []
        missing: list[str] = []
        for cid, display in dict(customers).items():
            if await self._customer_exists(cid):
                self._customers.add(cid)
                continue
            if self._create_customers:
                params = cast("CustomerCreateParams", {"id": cid, "name": display})
                await self._client.v1.customers.create_async(
                    params=params, options={"idempotency_key": f"rtcts-customer-{cid}"}
                )
                created.append(cid)
                self._customers.add(cid)
            else:
                missing.append(cid)
        if missing:
            problems.append(
                f"{len(missing)} Stripe customer(s) not found: {', '.join(missing)} "
                "(create them in Stripe, or fix stripe_customer_id in the policy)"
            )
        report = SetupReport(
            meters=meters,
            created_meters=tuple(created_meters),
            created_customers=tuple(created),
            missing_customers=tuple(missing),
            problems=tuple(problems),
        )
        if problems:
            raise StripeSetupError(report)
        return report

    async def _customer_exists(self, cid: str) -> bool:
        try:
            customer = await self._client.v1.customers.retrieve_async(cid)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return False
            raise
        return not bool(getattr(customer, "deleted", False))


async def active_meters(client: stripe.StripeClient) -> dict[str, stripe.billing.Meter]:
    """event_name -> the active meter for it (every page of the list)."""
    out: dict[str, stripe.billing.Meter] = {}
    after: str | None = None
    while True:
        params: dict[str, Any] = {"status": "active", "limit": 100}
        if after is not None:
            params["starting_after"] = after
        page = await client.v1.billing.meters.list_async(params=cast("Any", params))
        for meter in page.data:
            out.setdefault(meter.event_name, meter)
        if not page.has_more or not page.data:
            return out
        after = page.data[-1].id


def _meter_problems(meter: stripe.billing.Meter) -> list[str]:
    found = {
        "default_aggregation.formula": meter.default_aggregation.formula,
        "customer_mapping.event_payload_key": meter.customer_mapping.event_payload_key,
        "value_settings.event_payload_key": meter.value_settings.event_payload_key,
    }
    wanted = {
        "default_aggregation.formula": "sum",
        "customer_mapping.event_payload_key": CUSTOMER_PAYLOAD_KEY,
        "value_settings.event_payload_key": VALUE_PAYLOAD_KEY,
    }
    return [
        f"meter {meter.id} ({meter.event_name}) has {k}={found[k]!r}, rtcts needs {wanted[k]!r}"
        for k in wanted
        if found[k] != wanted[k]
    ]
