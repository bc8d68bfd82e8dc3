"""The Stripe sink, with the real stripe SDK against the emulator: exactly once, no leaks."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar, cast

import pytest
import stripe

from rtcts_dev.stripe_emulator import EMULATOR_API_KEY, EmulatorServer, Faults
from serve_app.metering.stripe_errors import backoff_s, classify, redact
from serve_app.metering.stripe_setup import StripeSetupError, is_stripe_host
from serve_app.metering.stripe_sink import StripeSink, check_entry
from serve_app.metering.types import (
    METER_EVENT_BILLED,
    METER_EVENT_TOKENS,
    METER_EVENTS,
    OutboxEntry,
    PermanentSyncError,
    SendResult,
    SendStatus,
    SyncError,
)
from tests.fakes import FakeClock

# stripe's HTTPXClient posts its form bodies as str, which httpx deprecates (harmless).
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

T = TypeVar("T")
KEY = EMULATOR_API_KEY
CUSTOMERS = (("cus_a", "tenant-a"), ("cus_b", "tenant-b"))
DAY = 86_400


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
def emu(clock: FakeClock) -> Iterator[EmulatorServer]:
    with EmulatorServer(clock=clock) as server:
        yield server


@contextlib.asynccontextmanager
async def open_sink(emu: EmulatorServer, **kwargs: Any) -> AsyncIterator[StripeSink]:
    sink = StripeSink(api_key=kwargs.pop("api_key", KEY), api_base=emu.url, **kwargs)
    try:
        yield sink
    finally:
        await sink.aclose()


def entry(
    n: int,
    *,
    customer: str = "cus_a",
    event_name: str = METER_EVENT_TOKENS,
    value: Any = 10,
    timestamp: Any = None,
    identifier: str | None = None,
) -> OutboxEntry:
    ts = int(time.time()) // 60 * 60 - 3600 if timestamp is None else timestamp
    return OutboxEntry(
        identifier=identifier or f"rtcts_test_{n}_{customer}_{event_name}",
        event_name=event_name,
        stripe_customer_id=customer,
        value=value,
        timestamp=ts,
        tenant_id=customer.replace("cus_", "tenant-"),
        window_start=ts,
    )


def meter_event_posts(emu: EmulatorServer) -> int:
    return sum(1 for r in emu.state.requests() if r["operation"] == "POST /v1/billing/meter_events")


def expected_totals(entries: list[OutboxEntry]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for e in entries:
        out[(e.stripe_customer_id, e.event_name)] = (
            out.get((e.stripe_customer_id, e.event_name), 0) + e.value
        )
    return out


# -- pure parts -------------------------------------------------------------------------


NOW = 1_800_000_000


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({}, None),
        ({"identifier": "x" * 100}, None),
        ({"identifier": "x" * 101}, "identifier_too_long"),
        ({"identifier": ""}, "identifier_empty"),
        ({"event_name": "e" * 101}, "invalid_event_name"),
        ({"stripe_customer_id": ""}, "meter_event_no_customer_defined"),
        ({"value": 1.5}, "meter_event_invalid_value"),
        ({"value": True}, "meter_event_invalid_value"),
        ({"value": -1}, "meter_event_invalid_value"),
        ({"value": 0}, None),
        ({"timestamp": NOW - 35 * DAY}, None),
        ({"timestamp": NOW - 35 * DAY - 1}, "timestamp_too_far_in_past"),
        ({"timestamp": NOW + 300}, None),
        ({"timestamp": NOW + 301}, "timestamp_in_future"),
        ({"timestamp": "soon"}, "invalid_timestamp"),
    ],
)
def test_check_entry_names_each_local_refusal(changes: dict[str, Any], code: str | None) -> None:
    base = {
        "identifier": "id",
        "event_name": METER_EVENT_TOKENS,
        "stripe_customer_id": "cus_a",
        "value": 5,
        "timestamp": NOW - 60,
        "tenant_id": "t",
        "window_start": NOW - 60,
    }
    problem = check_entry(OutboxEntry(**{**base, **changes}), NOW)
    assert (problem.split(":")[0] if problem else None) == code


def test_backoff_is_exponential_with_full_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(60.0, 0.5 * 2**attempt)
        samples = [backoff_s(attempt, rng) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # full jitter spans the range
    assert backoff_s(10_000, rng, cap_s=5.0) <= 5.0
    assert backoff_s(3, random.Random(1)) == backoff_s(3, random.Random(1))
    with pytest.raises(ValueError, match="attempt"):
        backoff_s(-1, rng)


SECRET = "sk_test_51SECRETSECRETSECRET"


def invalid(message: str, code: str | None = None) -> stripe.InvalidRequestError:
    return stripe.InvalidRequestError(message, None, code=code, http_status=400)  # type: ignore[no-untyped-call]


def _connection_error() -> stripe.APIConnectionError:
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as inner:
            message = "Unexpected error communicating with Stripe"
            raise stripe.APIConnectionError(message) from inner  # type: ignore[no-untyped-call]
    except stripe.APIConnectionError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "status", "detail"),
    [
        (invalid("An event already exists with identifier i."), SendStatus.DELIVERED, "duplicate"),
        (invalid("dup", "duplicate_meter_event"),
         SendStatus.DELIVERED, "duplicate"),
        (invalid("No customer was found with id cus_x.", "meter_event_customer_not_found"),
         SendStatus.PERMANENT, "meter_event_customer_not_found"),
        (stripe.IdempotencyError("Keys for idempotent requests ...", http_status=400),
         SendStatus.PERMANENT, "idempotency_error"),
        (stripe.IdempotencyError("in progress", http_status=409), SendStatus.RETRY,
         "idempotency_key_in_use"),
        (stripe.RateLimitError("Too many requests", http_status=429), SendStatus.RETRY, "429"),
        (stripe.APIError("boom", http_status=500), SendStatus.RETRY, "500"),
        (stripe.APIError("busy", http_status=409), SendStatus.RETRY, "409"),
        (stripe.APIError("teapot", http_status=418), SendStatus.PERMANENT, "418"),
        (_connection_error(), SendStatus.RETRY, "network: TimeoutError"),
        (stripe.AuthenticationError(f"Invalid API Key provided: {SECRET}", http_status=401),
         SendStatus.RETRY, "[redacted]"),
        (stripe.TemporarySessionExpiredError("expired", http_status=401), SendStatus.RETRY,
         "expired"),
    ],
)  # fmt: skip
def test_classify_maps_stripe_errors(error: Exception, status: SendStatus, detail: str) -> None:
    result = classify(error, "ident", SECRET)
    assert result == SendResult("ident", status, result.detail)
    assert detail in result.detail
    assert SECRET not in result.detail


def test_construction_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="api_key"):
        StripeSink()
    with pytest.raises(ValueError, match="mode"):
        StripeSink(api_key=KEY, mode=cast("Any", "v3"))
    assert "create_customers=True" in repr(StripeSink(api_key=KEY, api_base="http://127.0.0.1:1"))
    assert "create_customers=False" in repr(StripeSink(api_key=KEY))
    assert StripeSink.connect(KEY, "http://127.0.0.1:1", mode="v2").mode == "v2"


def test_redact_and_host_detection() -> None:
    assert redact(f"key {SECRET} and sk_live_abc123 here") == "key [redacted] and [redacted] here"
    assert redact("custom-key-123 leaked", "custom-key-123") == "[redacted] leaked"
    assert is_stripe_host(None)
    assert is_stripe_host("https://api.stripe.com")
    assert is_stripe_host("https://meter-events.stripe.com/")
    assert not is_stripe_host("http://127.0.0.1:12111")
    assert not is_stripe_host("https://notstripe.com")


# -- against the emulator -----------------------------------------------------------------


def test_send_delivers_and_stripe_totals_and_summaries_match(emu: EmulatorServer) -> None:
    entries = [
        entry(n, customer=c, event_name=e, value=100 * n + 7)
        for n in range(3)
        for c, _ in CUSTOMERS
        for e in METER_EVENTS
    ]

    async def go() -> tuple[list[SendResult], dict[tuple[str, str], float]]:
        async with open_sink(emu) as sink:
            report = await sink.ensure_setup(CUSTOMERS, METER_EVENTS)
            assert report.created_meters == METER_EVENTS
            assert report.created_customers == ("cus_a", "cus_b")
            again = await sink.ensure_setup(CUSTOMERS, METER_EVENTS)  # idempotent
            assert again.created_meters == again.created_customers == ()
            results = await sink.send(entries)
            start = entries[0].timestamp
            summaries = {
                (c, e): (
                    await sink.client.v1.billing.meters.event_summaries.list_async(
                        report.meters[e],
                        params={"customer": c, "start_time": start, "end_time": start + 60},
                    )
                )
                .data[0]
                .aggregated_value
                for c, _ in CUSTOMERS
                for e in METER_EVENTS
            }
            return results, summaries

    results, summaries = run(go())
    assert [r.identifier for r in results] == [e.identifier for e in entries]
    assert {r.status for r in results} == {SendStatus.DELIVERED}
    assert emu.state.totals() == expected_totals(entries)
    assert summaries == expected_totals(entries)
    posts = [r for r in emu.state.requests() if r["operation"] == "POST /v1/billing/meter_events"]
    assert sorted(r["idempotency_key"] for r in posts) == sorted(e.identifier for e in entries)


def test_duplicate_identifier_is_delivered_and_counted_once(emu: EmulatorServer) -> None:
    first = entry(1)

    async def go() -> list[list[SendResult]]:
        async with open_sink(emu) as sink:
            await sink.ensure_setup(CUSTOMERS[:1], [METER_EVENT_TOKENS])
            # Another process already sent it under another idempotency key...
            await sink.client.v1.billing.meter_events.create_async(
                params={
                    "event_name": first.event_name,
                    "identifier": first.identifier,
                    "timestamp": first.timestamp,
                    "payload": {"stripe_customer_id": "cus_a", "value": str(first.value)},
                }
            )
            # ...so Stripe refuses the identifier, and a same-key retry replays.
            return [await sink.send([first]), await sink.send([first, first])]

    rounds = run(go())
    assert [r.status for batch in rounds for r in batch] == [SendStatus.DELIVERED] * 3
    assert "duplicate" in rounds[0][0].detail
    assert emu.state.totals() == {("cus_a", METER_EVENT_TOKENS): first.value}
    assert len(emu.state.events()) == 1


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (entry(1, identifier="x" * 101), "identifier_too_long"),
        (entry(2, value=2.5), "meter_event_invalid_value"),
        (entry(3, value=-4), "meter_event_invalid_value"),
        (entry(4, timestamp=int(time.time()) - 36 * DAY), "timestamp_too_far_in_past"),
        (entry(5, timestamp=int(time.time()) + 3600), "timestamp_in_future"),
        (entry(6, customer=""), "meter_event_no_customer_defined"),
        (entry(7, customer="cus_unknown"), "meter_event_customer_not_found"),
    ],
    ids=["identifier-101", "not-whole", "negative", "too-old", "future", "no-customer",
         "unknown-customer"],
)  # fmt: skip
def test_entries_stripe_would_refuse_are_never_sent(
    emu: EmulatorServer, bad: OutboxEntry, code: str
) -> None:
    async def go() -> tuple[list[SendResult], list[SendResult]]:
        async with open_sink(emu) as sink:
            await sink.ensure_setup(CUSTOMERS, METER_EVENTS)
            return await sink.send([bad]), await sink.send_stream([bad])

    v1, v2 = run(go())
    for result in (*v1, *v2):
        assert result.status is SendStatus.PERMANENT
        assert result.detail.startswith(code)
        assert result.detail.endswith("(not sent)")
    assert meter_event_posts(emu) == 0
    assert not any(r["operation"].endswith("meter_event_stream") for r in emu.state.requests())
    assert emu.state.totals() == {}


def test_a_refusal_only_stripe_can_make_is_permanent_with_its_code(emu: EmulatorServer) -> None:
    async def go() -> list[SendResult]:
        async with open_sink(emu) as sink:
            await sink.ensure_setup(CUSTOMERS, [METER_EVENT_TOKENS])
            return await sink.send([entry(1, event_name=METER_EVENT_BILLED)])  # no meter

    [result] = run(go())
    assert result.status is SendStatus.PERMANENT
    assert result.detail.startswith("no_meter")


def deliver_all(
    sink: StripeSink, entries: list[OutboxEntry]
) -> Coroutine[Any, Any, tuple[int, int]]:
    """The outbox loop in miniature: resend what is RETRY until nothing is (no sleeping)."""

    async def loop() -> tuple[int, int]:
        pending, rounds, retries = list(entries), 0, 0
        while pending:
            rounds += 1
            assert rounds < 60, "never finished"
            results = await sink.send(pending)  # v1 or v2, as the sink's mode says
            assert {r.status for r in results} <= {SendStatus.DELIVERED, SendStatus.RETRY}
            again = {r.identifier for r in results if r.status is SendStatus.RETRY}
            retries += len(again)
            pending = [e for e in pending if e.identifier in again]
        return rounds, retries

    return loop()


def test_faults_are_retried_until_done_and_totals_are_exact(emu: EmulatorServer) -> None:
    entries = [
        entry(n, customer=c, event_name=e, value=n + 1)
        for n in range(12)
        for c, _ in CUSTOMERS
        for e in METER_EVENTS
    ]

    async def go() -> tuple[int, int]:
        async with open_sink(emu, timeout_s=0.2) as sink:
            await sink.ensure_setup(CUSTOMERS, METER_EVENTS)
            emu.state.set_faults(Faults(fail_rate=0.3, timeout_s=0.5, seed=11))
            return await deliver_all(sink, entries)

    rounds, retries = run(go())
    assert rounds > 1
    assert retries > 0
    faults = {r["fault"] for r in emu.state.requests()}
    assert {"rate_limit", "server_error", "timeout"} <= faults
    assert emu.state.totals() == expected_totals(entries)
    assert sorted(e["identifier"] for e in emu.state.events()) == sorted(
        e.identifier for e in entries
    )


def test_stream_mode_counts_once_batches_by_100_and_renews_its_session(
    emu: EmulatorServer, clock: FakeClock
) -> None:
    entries = [entry(n, customer=c, value=n) for n in range(125) for c, _ in CUSTOMERS]
    sink_clock = FakeClock(time.time())

    async def go() -> list[list[SendResult]]:
        async with open_sink(emu, clock=sink_clock) as sink:
            await sink.ensure_setup(CUSTOMERS, METER_EVENTS)
            first = await sink.send_stream(entries)
            again = await sink.send_stream(entries[:10])  # a retried batch: no double count
            clock.now += 16 * 60  # Stripe's token expired; the sink's clock does not know
            renewed = await sink.send_stream([entry(999)])
            sink_clock.now += 30 * 60  # the token is near its end: renewed before sending
            later = await sink.send_stream([entry(1000)])
            return [first, again, renewed, later]

    batches = run(go())
    assert all(r.status is SendStatus.DELIVERED for batch in batches for r in batch)
    assert [r.identifier for r in batches[0]] == [e.identifier for e in entries]
    assert emu.state.totals() == {
        ("cus_a", METER_EVENT_TOKENS): sum(range(125)) + 20,
        ("cus_b", METER_EVENT_TOKENS): sum(range(125)),
    }
    ops = [r["operation"] for r in emu.state.requests()]
    assert ops.count("POST /v2/billing/meter_event_session") == 3
    streams = [r for r in emu.state.requests() if r["operation"].endswith("meter_event_stream")]
    assert [r["status"] for r in streams] == [200, 200, 200, 200, 401, 200, 200]


def test_a_refused_stream_batch_is_split_so_only_the_bad_event_fails(
    emu: EmulatorServer,
) -> None:
    good = [entry(n) for n in range(5)]
    bad = entry(99, event_name=METER_EVENT_BILLED)  # no meter for it: Stripe refuses

    async def go() -> list[SendResult]:
        async with open_sink(emu, mode="v2") as sink:
            await sink.ensure_setup(CUSTOMERS, [METER_EVENT_TOKENS])
            return await sink.send([*good[:2], bad, *good[2:]])

    results = run(go())
    assert [r.status for r in results] == [SendStatus.DELIVERED] * 2 + [SendStatus.PERMANENT] + [
        SendStatus.DELIVERED
    ] * 3
    assert results[2].identifier == bad.identifier
    assert results[2].detail.startswith("no_meter")
    assert emu.state.totals() == expected_totals(good)


def test_stream_mode_with_faults_is_exact(emu: EmulatorServer) -> None:
    entries = [entry(n, customer=c, value=3 * n + 1) for n in range(250) for c, _ in CUSTOMERS]

    async def go() -> tuple[int, int]:
        async with open_sink(emu, timeout_s=0.2, mode="v2") as sink:
            await sink.ensure_setup(CUSTOMERS, METER_EVENTS)
            emu.state.set_faults(Faults(fail_rate=0.3, timeout_s=0.5, seed=1))
            return await deliver_all(sink, entries)

    rounds, _ = run(go())
    assert rounds > 1
    assert emu.state.totals() == expected_totals(entries)
    assert meter_event_posts(emu) == 0  # all of it went over the stream


def test_setup_with_a_real_key_reports_missing_customers_and_wrong_meters(
    emu: EmulatorServer,
) -> None:
    async def go() -> tuple[StripeSetupError, StripeSetupError]:
        async with open_sink(emu, create_customers=False) as sink:
            with pytest.raises(StripeSetupError) as missing:
                await sink.ensure_setup(CUSTOMERS, METER_EVENTS)
            await sink.client.v1.billing.meters.create_async(
                params={
                    "display_name": "counted",
                    "event_name": "rtcts_counted",
                    "default_aggregation": {"formula": "count"},
                }
            )
            with pytest.raises(StripeSetupError) as wrong:
                await sink.ensure_setup([], ["rtcts_counted"])
            return missing.value, wrong.value

    missing, wrong = run(go())
    assert missing.report.missing_customers == ("cus_a", "cus_b")
    assert "cus_a, cus_b" in str(missing)
    assert isinstance(missing, PermanentSyncError)
    assert set(missing.report.meters) == set(METER_EVENTS)  # meters were still made
    assert "'count', rtcts needs 'sum'" in str(wrong)


def test_the_api_key_never_appears_in_results_errors_or_repr(emu: EmulatorServer) -> None:
    live = "sk_live_51TOPSECRETKEYVALUEabcd"

    async def go() -> tuple[list[SendResult], str, str]:
        async with open_sink(emu, api_key=live) as sink:
            refused = await sink.send([entry(1)])
            streamed = await sink.send_stream([entry(2)])
            with pytest.raises(SyncError) as failed:
                await sink.ensure_setup(CUSTOMERS, METER_EVENTS)
            return refused + streamed, f"{failed.value!s} {failed.value!r}", repr(sink)

    results, error, shown = run(go())
    assert {r.status for r in results} == {SendStatus.RETRY}  # a key problem waits, never drops
    assert error
    for text in [*(r.detail for r in results), error, shown]:
        assert live not in text
        assert "TOPSECRET" not in text
