"""The Stripe emulator answers like Stripe: the real SDK and raw form posts against it."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import stripe

from rtcts_dev.stripe_emulator import (
    EMULATOR_API_KEY,
    EmulatorProcess,
    EmulatorServer,
    Faults,
    load_schemas,
)
from rtcts_dev.stripe_emulator.app import mask_key
from rtcts_dev.stripe_emulator.schemas import (
    EMBEDDED_SCHEMAS,
    SHARED_FILE,
    decode_form,
    shared_schema_dir,
    transcribe,
)
from tests.fakes import FakeClock

# stripe's HTTPXClient posts its form bodies as str, which httpx deprecates (harmless).
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

KEY = EMULATOR_API_KEY
EVENT = "rtcts_tokens"


@functools.cache
def http() -> httpx.Client:
    """One client for the module: creating one costs ~0.1 s (TLS context)."""
    return httpx.Client(timeout=5)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
def emu(clock: FakeClock) -> Iterator[EmulatorServer]:
    with EmulatorServer(clock=clock) as server:
        yield server


def sdk(emu: EmulatorServer, key: str = KEY) -> stripe.StripeClient:
    return stripe.StripeClient(
        key, base_addresses={"api": emu.url, "meter_events": emu.url}, max_network_retries=0
    )


def post(
    emu: EmulatorServer,
    path: str,
    data: dict[str, Any],
    key: str | None = KEY,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A raw form post, bracket notation and all, as the SDK would encode it."""
    hdrs = {"Authorization": f"Bearer {key}"} if key else {}
    hdrs.update(headers or {})
    return http().post(emu.url + path, data=data, headers=hdrs)


def setup_billing(emu: EmulatorServer, customers: tuple[str, ...] = ("cus_a",)) -> str:
    client = sdk(emu)
    for cid in customers:
        client.v1.customers.create(params=cast("Any", {"id": cid, "name": cid}))
    meter = client.v1.billing.meters.create(
        params={
            "display_name": "Tokens",
            "event_name": EVENT,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )
    return meter.id


def event(
    now: float, identifier: str = "ev_1", value: str = "12", customer: str = "cus_a"
) -> dict[str, Any]:
    return {
        "event_name": EVENT,
        "identifier": identifier,
        "timestamp": str(int(now)),
        "payload[stripe_customer_id]": customer,
        "payload[value]": value,
    }


# -- schemas ------------------------------------------------------------------------------


def test_embedded_schemas_match_the_shared_stripe_excerpt() -> None:
    path = shared_schema_dir() / SHARED_FILE
    if not path.is_file():
        pytest.skip("../shared/data/stripe is not next to this checkout")
    shared = transcribe(json.loads(path.read_text(encoding="utf-8")))
    for operation, schema in EMBEDDED_SCHEMAS.items():
        if operation == "POST /v1/customers":  # embedded: a subset of the parameters
            for name, prop in schema["properties"].items():
                assert shared[operation]["properties"][name] == prop, name
            assert shared[operation]["additionalProperties"] is False
        else:
            assert shared[operation] == schema, operation


def test_without_shared_dir_the_embedded_schemas_are_used(tmp_path: Path) -> None:
    schemas, source = load_schemas(tmp_path)
    assert source == "embedded"
    assert "id" in schemas["POST /v1/customers"]["properties"]
    assert schemas["POST /v1/billing/meter_events"]["properties"]["identifier"]["maxLength"] == 100


def test_form_decoding_follows_stripe_bracket_notation() -> None:
    decoded = decode_form("payload[value]=12&payload[stripe_customer_id]=cus_1&expand[0]=a&x=")
    assert decoded == {
        "payload": {"value": "12", "stripe_customer_id": "cus_1"},
        "expand": {"0": "a"},
        "x": "",
    }


# -- the SDK against it -------------------------------------------------------------------


def test_sdk_round_trip_customers_meters_events_summaries(emu: EmulatorServer) -> None:
    meter_id = setup_billing(emu, ("cus_a", "cus_b"))
    client = sdk(emu)
    assert client.v1.customers.retrieve("cus_a").name == "cus_a"
    assert {c.id for c in client.v1.customers.list().data} == {"cus_a", "cus_b"}
    assert client.v1.billing.meters.retrieve(meter_id).event_name == EVENT
    assert [m.id for m in client.v1.billing.meters.list(params={"status": "active"}).data] == [
        meter_id
    ]
    now = int(time.time())
    for i, (customer, value) in enumerate([("cus_a", 5), ("cus_a", 7), ("cus_b", 11)]):
        created = client.v1.billing.meter_events.create(
            params={
                "event_name": EVENT,
                "identifier": f"id_{i}",
                "timestamp": now,
                "payload": {"stripe_customer_id": customer, "value": str(value)},
            }
        )
        assert created.identifier == f"id_{i}"
        assert created.payload["value"] == str(value)
    assert emu.state.totals() == {("cus_a", EVENT): 12, ("cus_b", EVENT): 11}
    start = now // 60 * 60
    summaries = client.v1.billing.meters.event_summaries.list(
        meter_id, params={"customer": "cus_a", "start_time": start, "end_time": start + 60}
    )
    assert [s.aggregated_value for s in summaries.data] == [12]
    totals = http().get(emu.url + "/_emulator/totals").json()["totals"]
    assert {(t["customer"], t["event_name"]): t["value"] for t in totals} == {
        ("cus_a", EVENT): 12,
        ("cus_b", EVENT): 11,
    }
    identifiers = [
        e["identifier"] for e in http().get(emu.url + "/_emulator/events").json()["events"]
    ]
    assert identifiers == ["id_0", "id_1", "id_2"]


def test_unknown_objects_are_404_resource_missing(emu: EmulatorServer) -> None:
    client = sdk(emu)
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.customers.retrieve("cus_nope")
    assert (err.value.http_status, err.value.code) == (404, "resource_missing")
    answer = http().get(emu.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_one_active_meter_per_event_name_and_archived_meters_refuse_events(
    emu: EmulatorServer, clock: FakeClock
) -> None:
    meter_id = setup_billing(emu)
    with pytest.raises(stripe.InvalidRequestError):
        setup_billing(emu, ())
    sdk(emu).v1.billing.meters.deactivate(meter_id)
    answer = post(emu, "/v1/billing/meter_events", event(clock.now))
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "archived_meter"


# -- refusals, Stripe-shaped ----------------------------------------------------------------

DAY = 86_400


@pytest.mark.parametrize(
    ("change", "code", "param"),
    [
        (lambda e, now: e.pop("payload[value]") and e.pop("payload[stripe_customer_id]"),
         "parameter_missing", "payload"),
        (lambda e, now: e.update(identifier="x" * 101), None, "identifier"),
        (lambda e, now: e.update({"payload[value]": "1.5"}), "meter_event_invalid_value",
         "payload[value]"),
        (lambda e, now: e.update({"payload[value]": "-3"}), "meter_event_invalid_value",
         "payload[value]"),
        (lambda e, now: e.update(timestamp=str(int(now) - 36 * DAY)), "timestamp_too_far_in_past",
         "timestamp"),
        (lambda e, now: e.update(timestamp=str(int(now) + 600)), "timestamp_in_future",
         "timestamp"),
        (lambda e, now: e.update(timestamp="soon"), "parameter_invalid_integer", "timestamp"),
        (lambda e, now: e.update({"payload[stripe_customer_id]": "cus_unknown"}),
         "meter_event_customer_not_found", "payload[stripe_customer_id]"),
        (lambda e, now: e.update(event_name="no_such_meter"), "no_meter", "event_name"),
        (lambda e, now: e.update(colour="blue"), "parameter_unknown", "colour"),
    ],
    ids=[
        "missing-payload", "identifier-101", "value-not-whole", "value-negative", "too-old",
        "future", "timestamp-not-int", "unknown-customer", "unknown-event-name", "unknown-param",
    ],
)  # fmt: skip
def test_invalid_meter_events_are_refused_like_stripe(
    emu: EmulatorServer, clock: FakeClock, change: Any, code: str | None, param: str
) -> None:
    setup_billing(emu)
    body = event(clock.now)
    change(body, clock.now)
    answer = post(emu, "/v1/billing/meter_events", body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error.get("code") == code
    assert error["param"] == param
    assert error["message"]
    assert answer.headers["Stripe-Should-Retry"] == "false"
    assert emu.state.totals() == {}


def test_duplicate_identifier_is_refused_and_counted_once(
    emu: EmulatorServer, clock: FakeClock
) -> None:
    setup_billing(emu)
    assert post(emu, "/v1/billing/meter_events", event(clock.now, "dup")).status_code == 200
    again = post(emu, "/v1/billing/meter_events", event(clock.now, "dup", value="99"))
    assert again.status_code == 400
    assert again.json() == {
        "error": {
            "type": "invalid_request_error",
            "message": "An event already exists with identifier dup.",
        }
    }
    assert emu.state.totals() == {("cus_a", EVENT): 12}
    clock.now += 24 * 3600 + 1  # Stripe guarantees 24 hours, not more
    assert post(emu, "/v1/billing/meter_events", event(clock.now, "dup")).status_code == 200


def test_idempotency_key_replays_and_refuses_other_parameters(
    emu: EmulatorServer, clock: FakeClock
) -> None:
    setup_billing(emu)
    first = post(
        emu, "/v1/billing/meter_events", event(clock.now), headers={"Idempotency-Key": "k"}
    )
    replay = post(
        emu, "/v1/billing/meter_events", event(clock.now), headers={"Idempotency-Key": "k"}
    )
    assert first.status_code == replay.status_code == 200
    assert replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    other = post(
        emu,
        "/v1/billing/meter_events",
        event(clock.now, value="13"),
        headers={"Idempotency-Key": "k"},
    )
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"
    assert emu.state.totals() == {("cus_a", EVENT): 12}
    # A refused request saves nothing under its key: the corrected request may reuse it.
    bad = event(clock.now, "ev_2", value="x")
    assert (
        post(emu, "/v1/billing/meter_events", bad, headers={"Idempotency-Key": "k2"}).status_code
        == 400
    )
    good = post(
        emu, "/v1/billing/meter_events", event(clock.now, "ev_2"), headers={"Idempotency-Key": "k2"}
    )
    assert good.status_code == 200
    assert emu.state.totals() == {("cus_a", EVENT): 24}


def test_auth_needs_a_test_key_and_never_echoes_it(emu: EmulatorServer, clock: FakeClock) -> None:
    setup_billing(emu)
    missing = post(emu, "/v1/billing/meter_events", event(clock.now), key=None)
    assert missing.status_code == 401
    live = "sk_live_51TOPSECRETvalue0000abcd"
    refused = post(emu, "/v1/billing/meter_events", event(clock.now), key=live)
    assert refused.status_code == 401
    assert live not in refused.text
    assert refused.json()["error"]["message"].endswith("abcd")
    assert (
        post(emu, "/v1/billing/meter_events", event(clock.now), key="rk_test_x").status_code == 200
    )
    basic = http().post(
        emu.url + "/v1/billing/meter_events", data=event(clock.now, "b"), auth=(KEY, "")
    )
    assert basic.status_code == 200


def test_cancel_adjustment_removes_an_event(emu: EmulatorServer, clock: FakeClock) -> None:
    setup_billing(emu)
    post(emu, "/v1/billing/meter_events", event(clock.now, "c1"))
    adjustment = sdk(emu).v1.billing.meter_event_adjustments.create(
        params={"event_name": EVENT, "type": "cancel", "cancel": {"identifier": "c1"}}
    )
    assert adjustment.type == "cancel"
    assert emu.state.totals() == {}
    again = post(
        emu,
        "/v1/billing/meter_event_adjustments",
        {"event_name": EVENT, "type": "cancel", "cancel[identifier]": "c1"},
    )
    assert again.status_code == 400


def test_event_summaries_group_paginate_and_check_alignment(
    emu: EmulatorServer, clock: FakeClock
) -> None:
    meter_id = setup_billing(emu)
    hour = int(clock.now) // 3600 * 3600
    for i, offset in enumerate([-7200, -7100, -3600, 0]):
        body = event(hour + offset, f"s{i}", value=str(i + 1))
        assert post(emu, "/v1/billing/meter_events", body).status_code == 200
    client = sdk(emu)
    page = client.v1.billing.meters.event_summaries.list(
        meter_id,
        params={
            "customer": "cus_a",
            "start_time": hour - 7200,
            "end_time": hour + 3600,
            "value_grouping_window": "hour",
            "limit": 2,
        },
    )
    assert page.has_more
    values = [s.aggregated_value for s in page.data]
    rest = client.v1.billing.meters.event_summaries.list(
        meter_id,
        params={
            "customer": "cus_a",
            "start_time": hour - 7200,
            "end_time": hour + 3600,
            "value_grouping_window": "hour",
            "limit": 2,
            "starting_after": page.data[-1].id,
        },
    )
    assert not rest.has_more
    assert values + [s.aggregated_value for s in rest.data] == [3, 3, 4]
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meters.event_summaries.list(
            meter_id, params={"customer": "cus_a", "start_time": hour + 1, "end_time": hour + 60}
        )
    assert err.value.param == "start_time"
    missing = http().get(
        f"{emu.url}/v1/billing/meters/{meter_id}/event_summaries",
        params={"customer": "cus_a", "start_time": hour},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "parameter_missing"
    assert missing.json()["error"]["param"] == "end_time"


# -- v2 meter event stream ----------------------------------------------------------------


def stream(emu: EmulatorServer, token: str, events: list[dict[str, Any]]) -> httpx.Response:
    return http().post(
        emu.url + "/v2/billing/meter_event_stream",
        json={"events": events},
        headers={"Authorization": f"Bearer {token}"},
    )


def v2_event(identifier: str, value: int = 1, ts: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_name": EVENT,
        "identifier": identifier,
        "payload": {"stripe_customer_id": "cus_a", "value": str(value)},
    }
    if ts is not None:
        out["timestamp"] = ts
    return out


def test_stream_session_token_batch_limit_dedup_and_expiry(
    emu: EmulatorServer, clock: FakeClock
) -> None:
    setup_billing(emu)
    session = sdk(emu).v2.billing.meter_event_session.create()
    token = session.authentication_token
    assert stream(emu, token, [v2_event("a", 2), v2_event("b", 3)]).status_code == 200
    # a retried batch is harmless: known identifiers are dropped, as Stripe does
    assert stream(emu, token, [v2_event("a", 2), v2_event("c", 5), v2_event("c", 5)]).json() == {}
    assert emu.state.totals() == {("cus_a", EVENT): 10}
    assert stream(emu, KEY, [v2_event("d")]).status_code == 401  # an API key is not a session
    too_many = stream(emu, token, [v2_event(f"m{i}") for i in range(101)])
    assert too_many.status_code == 400
    bad = stream(emu, token, [v2_event("e"), {**v2_event("f"), "event_name": "nope"}])
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "events[1][event_name]"
    old = stream(emu, token, [v2_event("g", ts="2001-01-01T00:00:00.000Z")])
    assert old.json()["error"]["code"] == "timestamp_too_far_in_past"
    assert emu.state.totals() == {("cus_a", EVENT): 10}  # all or nothing
    clock.now += 15 * 60
    expired = stream(emu, token, [v2_event("h")])
    assert expired.status_code == 401
    assert expired.json()["error"]["type"] == "temporary_session_expired"
    assert expired.json()["error"]["code"] == "billing_meter_event_session_expired"


# -- faults, persistence, processes -------------------------------------------------------


def test_faults_answer_429_or_500_without_executing(emu: EmulatorServer, clock: FakeClock) -> None:
    setup_billing(emu)
    answer = http().post(emu.url + "/_emulator/faults", json={"fail_rate": 1.0, "seed": 3})
    assert answer.json()["fail_rate"] == 1.0
    statuses = {
        post(emu, "/v1/billing/meter_events", event(clock.now, f"f{i}")).status_code
        for i in range(20)
    }
    assert statuses == {429, 500}
    assert emu.state.totals() == {}
    log = http().get(emu.url + "/_emulator/requests").json()
    assert {r["fault"] for r in log["requests"][-20:]} == {"rate_limit", "server_error"}


def test_the_request_log_names_the_key_used_masked(emu: EmulatorServer, clock: FakeClock) -> None:
    setup_billing(emu)
    post(emu, "/v1/billing/meter_events", event(clock.now, "k1"))

    (logged,) = [r for r in emu.state.requests() if r["operation"].endswith("meter_events")]
    assert logged["api_key"] == mask_key(KEY)
    assert logged["api_key"] != KEY


def test_timeout_fault_executes_then_holds_the_answer(
    emu: EmulatorServer, clock: FakeClock
) -> None:
    setup_billing(emu)
    emu.state.set_faults(Faults(fail_rate=1.0, timeout_s=0.6, seed=1))
    outcomes: set[str] = set()
    for i in range(12):
        try:
            answer = http().post(
                emu.url + "/v1/billing/meter_events",
                data=event(clock.now, f"t{i}"),
                headers={"Authorization": f"Bearer {KEY}", "Idempotency-Key": f"t{i}"},
                timeout=0.1,
            )
            outcomes.add(str(answer.status_code))
        except httpx.TimeoutException:
            outcomes.add("timeout")
    assert "timeout" in outcomes
    timed_out = [r for r in emu.state.requests() if r["fault"] == "timeout"]
    emu.state.set_faults(Faults())
    recorded = {e["identifier"] for e in emu.state.events()}
    assert {r["idempotency_key"] for r in timed_out} <= recorded  # the work was done
    # the retry of a timed-out request replays the saved answer: counted once
    retry = timed_out[0]["idempotency_key"]
    again = post(
        emu, "/v1/billing/meter_events", event(clock.now, retry), headers={"Idempotency-Key": retry}
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(emu.state.events()) == len(recorded)


def test_state_file_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    state = tmp_path / "stripe.json"
    with EmulatorServer(state_path=state, clock=clock) as first:
        setup_billing(first)
        assert post(first, "/v1/billing/meter_events", event(clock.now, "p1")).status_code == 200
    with EmulatorServer(state_path=state, clock=clock) as second:
        assert second.state.totals() == {("cus_a", EVENT): 12}
        again = post(second, "/v1/billing/meter_events", event(clock.now, "p1"))
        assert again.status_code == 400  # the identifier is still known


def test_runs_as_a_child_process(tmp_path: Path) -> None:
    with EmulatorProcess(state_path=tmp_path / "s.json") as process:
        assert process.pid is not None
        assert http().get(process.url + "/_emulator/health").json()["ok"] is True
        created = http().post(
            process.url + "/v1/customers",
            data={"id": "cus_p"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert created.json()["id"] == "cus_p"
    assert json.loads((tmp_path / "s.json").read_text())["customers"]["cus_p"]["id"] == "cus_p"
