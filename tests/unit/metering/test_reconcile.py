"""Reconciliation: the pure comparison, and the ledger against the emulator's summaries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import pytest
import stripe

from rtcts_dev.stripe_emulator import EMULATOR_API_KEY, EmulatorServer
from serve_app.metering.reconcile import (
    DriftLine,
    compare,
    parse_ledger,
    reconcile,
)
from serve_app.metering.stripe_sink import StripeSink
from serve_app.metering.types import (
    METER_EVENT_BILLED,
    METER_EVENT_TOKENS,
    METER_EVENTS,
    OutboxEntry,
    SendStatus,
)

# stripe's HTTPXClient posts its form bodies as str, which httpx deprecates (harmless).
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

T = TypeVar("T")
TOK, BILL = METER_EVENT_TOKENS, METER_EVENT_BILLED


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# -- pure --------------------------------------------------------------------------------


def test_compare_reports_each_pair_with_its_drift() -> None:
    report = compare(
        {("cus_a", TOK): 10, ("cus_a", BILL): 5, ("cus_b", TOK): 7},
        {("cus_a", TOK): Decimal(10), ("cus_a", BILL): Decimal(8), ("cus_c", TOK): Decimal(3)},
        {("cus_b", BILL): "no_meter: boom"},
        start_time=0,
        end_time=60,
    )
    assert not report.ok
    by_pair = {(x.stripe_customer_id, x.event_name): x for x in report.lines}
    assert by_pair[("cus_a", TOK)].ok
    assert by_pair[("cus_a", TOK)].drift == 0
    assert by_pair[("cus_a", BILL)].drift == 3  # Stripe counted more: double billing
    assert by_pair[("cus_b", TOK)].drift == -7  # Stripe has nothing: unbilled
    assert by_pair[("cus_c", TOK)].drift == 3  # sent behind the ledger's back
    errored = by_pair[("cus_b", BILL)]
    assert errored.stripe is None
    assert errored.drift is None
    assert not errored.ok
    assert [(x.stripe_customer_id, x.event_name) for x in report.drifted] == [
        ("cus_a", BILL),
        ("cus_b", BILL),
        ("cus_b", TOK),
        ("cus_c", TOK),
    ]
    assert report.to_dict()["lines"][0] == {
        "stripe_customer_id": "cus_a",
        "event_name": BILL,
        "unit": "micro_usd",
        "local": 5,
        "stripe": 8,
        "drift": 3,
        "ok": False,
        "error": "",
    }
    assert report.to_dict()["lines"][1]["unit"] == "tokens"
    assert report.to_dict()["lines"][2]["stripe"] is None  # the error line


def test_to_dict_gives_every_figure_as_a_whole_number() -> None:
    big = 10**18 + 1  # beyond a float's 53 bits: no rounding on the way
    report = compare(
        {("cus_a", TOK): big, ("cus_b", BILL): 2},
        {
            ("cus_a", TOK): Decimal(big),
            ("cus_b", BILL): Decimal("2.5"),
            ("cus_c", BILL): Decimal("7.0"),
        },
        start_time=0,
        end_time=60,
    )
    figures = [(x["local"], x["stripe"], x["drift"]) for x in report.to_dict()["lines"]]
    assert figures == [(big, big, 0), (2, None, None), (0, 7, 7)]
    assert all(type(v) is int for row in figures for v in row if v is not None)
    fractional = report.line("cus_b", BILL)
    assert fractional is not None
    assert not fractional.ok
    assert fractional.error == "Stripe's aggregated value 2.5 is not a whole number"
    with pytest.raises(ValueError, match="whole number"):
        DriftLine("cus_a", TOK, 1, Decimal("1.5"))


def test_compare_of_equal_totals_is_ok_and_exact() -> None:
    report = compare(
        {("cus_a", TOK): 10**15 + 1},
        {("cus_a", TOK): Decimal(10**15 + 1)},
        start_time=0,
        end_time=60,
    )
    assert report.ok
    assert report.drifted == ()
    assert DriftLine("cus_a", TOK, 1, Decimal("1.0")).ok  # Decimal equality, not text


def test_parse_ledger_reads_the_ledger_hash() -> None:
    assert parse_ledger({"cus_a|rtcts_tokens": "12", "cus_b|rtcts_tokens": 3}) == {
        ("cus_a", TOK): 12,
        ("cus_b", TOK): 3,
    }
    with pytest.raises(ValueError, match="customer"):
        parse_ledger({"no-separator": 1})


# -- against the emulator -----------------------------------------------------------------


@pytest.fixture
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


HOUR = int(time.time()) // 3600 * 3600
START, END = HOUR - 3 * 3600, HOUR + 3600


def entries() -> list[OutboxEntry]:
    out = []
    for n, offset in enumerate((-3 * 3600, -2 * 3600, -3600, 0)):
        for customer in ("cus_a", "cus_b"):
            for event_name, value in ((TOK, 100 + n), (BILL, 1_000_000 * (n + 1))):
                out.append(
                    OutboxEntry(
                        identifier=f"rtcts_{customer}_{event_name}_{n}",
                        event_name=event_name,
                        stripe_customer_id=customer,
                        value=value,
                        timestamp=HOUR + offset,
                        tenant_id=customer,
                        window_start=HOUR + offset,
                    )
                )
    return out


def ledger(sent: list[OutboxEntry]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for e in sent:
        out[(e.stripe_customer_id, e.event_name)] = (
            out.get((e.stripe_customer_id, e.event_name), 0) + e.value
        )
    return out


def test_zero_drift_after_sync_then_drift_for_an_event_sent_behind_its_back(
    emu: EmulatorServer,
) -> None:
    sent = entries()
    local = ledger(sent)

    async def go() -> list[Any]:
        sink = StripeSink(api_key=EMULATOR_API_KEY, api_base=emu.url)
        try:
            await sink.ensure_setup([("cus_a", "a"), ("cus_b", "b"), ("cus_c", "c")], METER_EVENTS)
            results = await sink.send(sent)
            assert {r.status for r in results} == {SendStatus.DELIVERED}
            clean = await reconcile(sink.client, local, start_time=START, end_time=END)
            paged = await reconcile(
                sink.client,
                local,
                start_time=START,
                end_time=END,
                value_grouping_window="hour",
                page_size=1,
            )
            for customer, value in (("cus_a", "42"), ("cus_c", "5")):
                await sink.client.v1.billing.meter_events.create_async(
                    params={
                        "event_name": TOK,
                        "timestamp": HOUR - 60,
                        "payload": {"stripe_customer_id": customer, "value": value},
                    }
                )
            drifted = await reconcile(
                sink.client, local, start_time=START, end_time=END, customers=["cus_c"]
            )
            narrow = await reconcile(
                sink.client, {("cus_a", TOK): 100}, start_time=START, end_time=START + 3600
            )
            return [clean, paged, drifted, narrow]
        finally:
            await sink.aclose()

    clean, paged, drifted, narrow = run(go())
    assert clean.ok
    assert len(clean.lines) == 4
    assert all(line.drift == 0 for line in clean.lines)
    assert paged.ok  # hourly summaries, one per page, summed
    pages = [r for r in emu.state.requests() if r["operation"].endswith("event_summaries")]
    assert len(pages) > 8
    assert {(x.stripe_customer_id, x.event_name, x.drift) for x in drifted.drifted} == {
        ("cus_a", TOK, Decimal(42)),
        ("cus_c", TOK, Decimal(5)),
    }
    untouched = drifted.line("cus_c", BILL)
    assert untouched is not None
    assert untouched.ok
    assert narrow.ok  # only the first hour's window is in range


def test_pairs_stripe_cannot_answer_are_errors_not_zero(emu: EmulatorServer) -> None:
    secret = "sk_live_51RECONCILESECRETxyz"

    async def go() -> list[Any]:
        sink = StripeSink(api_key=EMULATOR_API_KEY, api_base=emu.url)
        bad = stripe.StripeClient(
            secret,
            base_addresses={"api": emu.url},
            max_network_retries=0,
            http_client=stripe.HTTPXClient(),
        )
        try:
            await sink.ensure_setup([("cus_a", "a")], [TOK])
            no_meter = await reconcile(
                sink.client, {("cus_a", BILL): 5}, start_time=START, end_time=END
            )
            no_customer = await reconcile(
                sink.client, {("cus_zz", TOK): 5}, start_time=START, end_time=END
            )
            refused = await reconcile(
                bad, {("cus_a", TOK): 5}, start_time=START, end_time=END, secret=secret
            )
            return [no_meter, no_customer, refused]
        finally:
            await sink.aclose()

    no_meter, no_customer, refused = run(go())
    [line] = no_meter.lines
    assert not line.ok
    assert "no active Stripe meter" in line.error
    [line] = no_customer.lines
    assert line.error.startswith("resource_missing")
    [line] = refused.lines
    assert not line.ok
    assert "cannot list meters" in line.error
    assert secret not in line.error


def test_ranges_must_be_minute_aligned() -> None:
    async def go() -> None:
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": "http://127.0.0.1:9"})
        await reconcile(client, {}, start_time=61, end_time=120)

    with pytest.raises(ValueError, match="aligned"):
        run(go())
