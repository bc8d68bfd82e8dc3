"""A local Stripe emulator: the meter-event subset of Stripe's API, as the real SDK speaks it.

Served (v1 bodies are form-encoded with bracket notation, `payload[value]=12`; v2 is JSON):

    POST/GET /v1/customers, GET /v1/customers/{id}
    POST/GET /v1/billing/meters, GET /v1/billing/meters/{id},
        POST /v1/billing/meters/{id}/deactivate | reactivate
    POST /v1/billing/meter_events
    POST /v1/billing/meter_event_adjustments          (type=cancel, cancel[identifier])
    GET  /v1/billing/meters/{id}/event_summaries      (customer, start_time, end_time)
    POST /v2/billing/meter_event_session              (token valid 15 minutes)
    POST /v2/billing/meter_event_stream               (Bearer session token, ≤ 100 events)

Run it with `EmulatorServer(port=0)` (a thread; `.url`, `.state`) or
`python -m rtcts_dev.stripe_emulator --port N [--state FILE]` (`EmulatorProcess`).

Guarantees
- Requests are checked against Stripe's own request schemas (`schemas`: the shared
  OpenAPI excerpt when `../shared/data/stripe` exists, an embedded copy otherwise) and
  Stripe's prose rules: identifier ≤ 100 characters and unique over 24 hours (account
  wide), `payload.value` a whole number, timestamp 35 days back to 5 minutes ahead,
  ≤ 100 events per stream call. Refusals are Stripe-shaped:
  `{"error": {"type": "invalid_request_error", "code": ..., "message": ..., "param": ...}}`.
- Auth: `Authorization: Bearer <key>` (or HTTP Basic) with a key starting `sk_test_` or
  `rk_test_`; other keys get 401 and are echoed masked, never whole.
- `Idempotency-Key`: the same key and body replay the saved answer; another body under
  that key -> 400 `idempotency_error`; a key still executing -> 409. Only answers of
  requests that executed (2xx) are saved, so a refused or faulted request can be retried.
- State is thread-safe; with `--state FILE` every change is on disk before the answer,
  so a restarted emulator keeps its events and still deduplicates their identifiers.
- Fault injection (`fail_rate`, `timeout_s`, `seed`, or `POST /_emulator/faults`): a
  drawn request gets 429 or 500 without executing, or (timeout) executes and answers
  only after `timeout_s`, the case where a client must retry something that happened.

Duplicate identifier (the assumption the sink relies on): v1 answers HTTP 400,
`{"error": {"type": "invalid_request_error", "message": "An event already exists with
identifier <id>."}}` with no `code` and no `param`. That is what Stripe returns in
practice (reported independently by two production integrations; Stripe's OpenAPI names
no v1 code for it), while for v2 synchronous meter events Stripe documents the code
`duplicate_meter_event` ("A meter event with a duplicate identifier has already been
submitted."). The sink counts the message or either code (`duplicate_meter_event`,
`resource_already_exists`) as delivered. On the v2 stream a duplicate is dropped silently
(Stripe processes stream events asynchronously), so a retried batch answers 200.

Deliberate differences from Stripe (stricter, so tests catch more):
- Meter events are validated synchronously. Stripe accepts some bad v1 events and
  reports them later (webhook `v1.billing.meter.error_report_triggered`); the emulator
  answers 400 at once, with the code Stripe uses in those reports: `no_meter`,
  `archived_meter`, `meter_event_customer_not_found` (unknown customer),
  `meter_event_no_customer_defined`, `meter_event_value_not_found`,
  `meter_event_invalid_value`, `timestamp_too_far_in_past`, `timestamp_in_future`.
- The v2 stream is validated synchronously too, and all or nothing: one bad event
  refuses the whole call (400, param `events[i]...`); Stripe would answer 200 and drop it.
- `POST /v1/customers` accepts a custom `id` (Stripe does not) so tests and the demo
  can use the customer ids of the policy.
- Event summaries are exact immediately (Stripe aggregates asynchronously).
- Schema refusals use Stripe's documented codes where one exists (`parameter_missing`,
  `parameter_unknown`, `parameter_invalid_integer`, `resource_missing`,
  `resource_already_exists`, `rate_limit`, `idempotency_key_in_use`); a too-long string,
  a bad enum value or a bad type has a message and `param` but no `code`.

Inspection and control (no auth; a local test tool): `GET /_emulator/health`,
`GET /_emulator/totals` (per customer and event name, sum of accepted values),
`GET /_emulator/events`, `GET /_emulator/requests` (log and count; each API-key request
with its key masked as Stripe masks it, `api_key`: which key was used, never the key),
`POST /_emulator/faults {"fail_rate": 0.3, "timeout_s": 2, "seed": 1}`,
`POST /_emulator/reset`.
"""

from rtcts_dev.stripe_emulator.app import create_app
from rtcts_dev.stripe_emulator.schemas import RequestValidator, load_schemas
from rtcts_dev.stripe_emulator.server import EmulatorError, EmulatorProcess, EmulatorServer
from rtcts_dev.stripe_emulator.state import (
    DEDUP_WINDOW_S,
    FUTURE_LIMIT_S,
    PAST_LIMIT_S,
    SESSION_TTL_S,
    STREAM_MAX_EVENTS,
    EmulatorState,
    Faults,
    StripeApiError,
)
from serve_app.metering.stripe_sink import LOCAL_TEST_KEY

EMULATOR_API_KEY = LOCAL_TEST_KEY
"""A key the emulator accepts (any `sk_test_...` or `rk_test_...` works)."""

__all__ = [
    "DEDUP_WINDOW_S",
    "EMULATOR_API_KEY",
    "FUTURE_LIMIT_S",
    "PAST_LIMIT_S",
    "SESSION_TTL_S",
    "STREAM_MAX_EVENTS",
    "EmulatorError",
    "EmulatorProcess",
    "EmulatorServer",
    "EmulatorState",
    "Faults",
    "RequestValidator",
    "StripeApiError",
    "create_app",
    "load_schemas",
]
