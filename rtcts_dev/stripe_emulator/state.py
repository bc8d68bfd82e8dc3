"""The emulator's state and Stripe's business rules for meters, events and sessions.

Thread-safe: every method takes one re-entrant lock, so the HTTP thread and a test
thread can read and write at once. With `path` set, every change is written to that
JSON file (atomically: temporary file, then rename) before the method returns, so an
emulator restarted on the same file keeps its customers, meters, events, identifiers
and idempotency records. Nothing here knows HTTP: errors are `StripeApiError`s that carry
the status and the Stripe-shaped body.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PAST_LIMIT_S = 35 * 86_400
"""Stripe accepts event timestamps at most 35 days in the past..."""
FUTURE_LIMIT_S = 5 * 60
"""...and at most 5 minutes in the future."""
DEDUP_WINDOW_S = 24 * 3_600
"""Identifiers are unique over this rolling window (Stripe: "at least 24 hours")."""
IDEMPOTENCY_TTL_S = 24 * 3_600
"""Idempotency keys are remembered this long (Stripe: 24 hours)."""
CANCEL_WINDOW_S = 24 * 3_600
"""Meter events can be canceled this long after Stripe received them."""
SESSION_TTL_S = 15 * 60
"""A v2 meter event session token is valid 15 minutes."""
STREAM_MAX_EVENTS = 100
"""At most this many events per v2 meter event stream call."""
WHOLE_NUMBER = re.compile(r"\d+")


class StripeApiError(Exception):
    """A refusal, as Stripe words it: HTTP status plus `{"error": {...}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault injection: share of API requests that fail, and how long a slow one hangs."""

    fail_rate: float = 0.0
    """0..1: each API request fails with this probability (429, 500 or, if timeout_s > 0,
    processed but answered only after timeout_s, so the client times out)."""
    timeout_s: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if self.timeout_s < 0:
            raise ValueError("timeout_s must be >= 0")


def iso(ts: float) -> str:
    """Unix seconds -> RFC 3339 with milliseconds, as Stripe's v2 API writes times."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> int:
    """RFC 3339 -> unix seconds (floor); ValueError if it is not a date-time."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("timestamp needs a time zone")
    return int(moment.timestamp() // 1)


def _param(where: str, *parts: str) -> str:
    """Stripe's name of a nested parameter: `_param("events[3]", "payload", "value")` ->
    `events[3][payload][value]`; with no prefix `payload[value]`."""
    if where:
        return where + "".join(f"[{p}]" for p in parts)
    return parts[0] + "".join(f"[{p}]" for p in parts[1:])


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _empty() -> dict[str, Any]:
    return {
        "customers": {},
        "meters": {},
        "events": [],
        "identifiers": {},
        "idempotency": {},
        "sessions": {},
    }


class EmulatorState:
    """Customers, meters, accepted meter events, sessions, idempotency keys, request log."""

    def __init__(
        self,
        *,
        path: Path | None = None,
        clock: Callable[[], float] = time.time,
        faults: Faults | None = None,
        log_limit: int = 10_000,
    ) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self._path = path
        self._faults = faults or Faults()
        self._rng = random.Random(self._faults.seed)
        self._data = _empty()
        self._log: deque[dict[str, Any]] = deque(maxlen=log_limit)
        self._request_count = 0
        if path is not None and path.exists():
            loaded = json.loads(path.read_text(encoding="utf-8"))
            self._data.update(loaded)
            # A request that was running when the process died saved nothing.
            self._data["idempotency"] = {
                k: v for k, v in self._data["idempotency"].items() if v.get("state") == "done"
            }

    # -- time, persistence, faults, log ------------------------------------------------

    def now(self) -> int:
        return int(self._clock())

    def _save(self) -> None:
        if self._path is None:
            return
        tmp = self._path.with_name(self._path.name + ".tmp")
        tmp.write_text(json.dumps(self._data, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, self._path)

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
            if faults.seed is not None:
                self._rng = random.Random(faults.seed)

    def draw_fault(self) -> str | None:
        """None, or the fault this request suffers: rate_limit, server_error or timeout."""
        with self._lock:
            faults = self._faults
            if faults.fail_rate <= 0 or self._rng.random() >= faults.fail_rate:
                return None
            kinds = ["rate_limit", "server_error"]
            if faults.timeout_s > 0:
                kinds.append("timeout")
            return self._rng.choice(kinds)

    def record_request(self, entry: Mapping[str, Any]) -> None:
        with self._lock:
            self._request_count += 1
            self._log.append(dict(entry))

    def requests(self) -> list[dict[str, Any]]:
        """The API requests served (newest last, bounded), faults and replays included."""
        with self._lock:
            return [dict(e) for e in self._log]

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._request_count

    def reset(self) -> None:
        """Forget every object and the request log (faults stay)."""
        with self._lock:
            self._data = _empty()
            self._log.clear()
            self._request_count = 0
            self._save()

    # -- idempotency ----------------------------------------------------------------

    def idempotency_claim(self, key: str, fingerprint: str) -> tuple[str, dict[str, Any] | None]:
        """("new", None) and the key is held; ("replay", record); "mismatch"; "in_use"."""
        with self._lock:
            now = self.now()
            records: dict[str, Any] = self._data["idempotency"]
            for old in [k for k, v in records.items() if v["created"] < now - IDEMPOTENCY_TTL_S]:
                del records[old]
            record = records.get(key)
            if record is None:
                records[key] = {"fingerprint": fingerprint, "state": "pending", "created": now}
                return "new", None
            if record["fingerprint"] != fingerprint:
                return "mismatch", record
            if record["state"] != "done":
                return "in_use", record
            return "replay", record

    def idempotency_finish(self, key: str, status: int, body: Any) -> None:
        """Save the response of a request that executed (Stripe saves those, not refusals)."""
        with self._lock:
            record = self._data["idempotency"].get(key)
            if record is not None:
                record.update(state="done", status=status, body=body)
                self._save()

    def idempotency_release(self, key: str) -> None:
        """Forget a key whose request was refused before executing (nothing saved)."""
        with self._lock:
            record = self._data["idempotency"].get(key)
            if record is not None and record["state"] != "done":
                del self._data["idempotency"][key]

    # -- customers ----------------------------------------------------------------

    def create_customer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            cid = params.get("id") or _new_id("cus")
            if cid in self._data["customers"]:
                raise StripeApiError(
                    400, "Customer already exists.", code="resource_already_exists", param="id"
                )
            metadata = params.get("metadata") or {}
            customer = {
                "id": cid,
                "object": "customer",
                "created": self.now(),
                "email": params.get("email"),
                "livemode": False,
                "metadata": metadata if isinstance(metadata, dict) else {},
                "name": params.get("name"),
                "phone": params.get("phone"),
            }
            self._data["customers"][cid] = customer
            self._save()
            return dict(customer)

    def get_customer(self, cid: str) -> dict[str, Any]:
        with self._lock:
            customer = self._data["customers"].get(cid)
            if customer is None:
                raise StripeApiError(
                    404, f"No such customer: '{cid}'", code="resource_missing", param="id"
                )
            return dict(customer)

    def list_customers(self, query: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            items = list(reversed(self._data["customers"].values()))
            if "email" in query:
                items = [c for c in items if c.get("email") == query["email"]]
            return _page(items, query, "/v1/customers")

    # -- meters -------------------------------------------------------------------

    def _active_meter(self, event_name: str) -> dict[str, Any] | None:
        for meter in self._data["meters"].values():
            if meter["event_name"] == event_name and meter["status"] == "active":
                return dict(meter)
        return None

    def create_meter(self, params: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            event_name = params["event_name"]
            if self._active_meter(event_name) is not None:
                raise StripeApiError(
                    400,
                    f"An active meter with event_name '{event_name}' already exists.",
                    code="resource_already_exists",
                    param="event_name",
                )
            now = self.now()
            meter = {
                "id": _new_id("mtr"),
                "object": "billing.meter",
                "created": now,
                "customer_mapping": params.get("customer_mapping")
                or {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                "default_aggregation": dict(params["default_aggregation"]),
                "display_name": params["display_name"],
                "event_name": event_name,
                "event_time_window": params.get("event_time_window"),
                "livemode": False,
                "status": "active",
                "status_transitions": {"deactivated_at": None},
                "updated": now,
                "value_settings": params.get("value_settings") or {"event_payload_key": "value"},
            }
            self._data["meters"][meter["id"]] = meter
            self._save()
            return dict(meter)

    def get_meter(self, meter_id: str) -> dict[str, Any]:
        with self._lock:
            meter = self._data["meters"].get(meter_id)
            if meter is None:
                raise StripeApiError(
                    404, f"No such billing meter: '{meter_id}'", code="resource_missing", param="id"
                )
            return dict(meter)

    def list_meters(self, query: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            items = list(reversed(self._data["meters"].values()))
            if "status" in query:
                items = [m for m in items if m["status"] == query["status"]]
            return _page(items, query, "/v1/billing/meters")

    def set_meter_status(self, meter_id: str, status: str) -> dict[str, Any]:
        with self._lock:
            meter = self._data["meters"].get(meter_id)
            if meter is None:
                raise StripeApiError(
                    404, f"No such billing meter: '{meter_id}'", code="resource_missing", param="id"
                )
            if (
                status == "active"
                and meter["status"] != "active"
                and self._active_meter(meter["event_name"]) is not None
            ):
                raise StripeApiError(
                    400,
                    f"An active meter with event_name '{meter['event_name']}' already exists.",
                    code="resource_already_exists",
                )
            now = self.now()
            meter["status"] = status
            meter["updated"] = now
            meter["status_transitions"] = {"deactivated_at": now if status == "inactive" else None}
            self._save()
            return dict(meter)

    # -- meter events -------------------------------------------------------------

    def _check_event(
        self, event_name: str, payload: Mapping[str, Any], timestamp: int | None, where: str
    ) -> dict[str, Any]:
        """The event Stripe would record, or the error it answers. `where` prefixes params."""
        now = self.now()
        ts = now if timestamp is None else timestamp
        if ts < now - PAST_LIMIT_S:
            raise StripeApiError(
                400,
                "Timestamp must be no more than 35 days in the past.",
                code="timestamp_too_far_in_past",
                param=_param(where, "timestamp"),
            )
        if ts > now + FUTURE_LIMIT_S:
            raise StripeApiError(
                400,
                "Timestamp must be no more than 5 minutes in the future.",
                code="timestamp_in_future",
                param=_param(where, "timestamp"),
            )
        meter = self._active_meter(event_name)
        if meter is None:
            archived = any(m["event_name"] == event_name for m in self._data["meters"].values())
            raise StripeApiError(
                400,
                f"The meter for event_name {event_name} is inactive."
                if archived
                else f"No meter was found matching event_name {event_name}.",
                code="archived_meter" if archived else "no_meter",
                param=_param(where, "event_name"),
            )
        customer_key = meter["customer_mapping"]["event_payload_key"]
        value_key = meter["value_settings"]["event_payload_key"]
        customer = payload.get(customer_key)
        if not customer:
            raise StripeApiError(
                400,
                f"The payload must contain the customer mapping key '{customer_key}'.",
                code="meter_event_no_customer_defined",
                param=_param(where, "payload", customer_key),
            )
        formula = meter["default_aggregation"]["formula"]
        raw = payload.get(value_key)
        if raw is None and formula != "count":
            raise StripeApiError(
                400,
                f"The payload must contain the value key '{value_key}'.",
                code="meter_event_value_not_found",
                param=_param(where, "payload", value_key),
            )
        if raw is not None and not (isinstance(raw, str) and WHOLE_NUMBER.fullmatch(raw)):
            raise StripeApiError(
                400,
                f"Value must be a whole number, got '{raw}'.",
                code="meter_event_invalid_value",
                param=_param(where, "payload", value_key),
            )
        if customer not in self._data["customers"]:
            raise StripeApiError(
                400,
                f"No customer was found with id {customer}.",
                code="meter_event_customer_not_found",
                param=_param(where, "payload", customer_key),
            )
        return {
            "event_name": event_name,
            "meter": meter["id"],
            "customer": customer,
            "value": int(raw) if raw is not None else 1,
            "timestamp": ts,
            "payload": {str(k): str(v) for k, v in payload.items()},
        }

    def _is_duplicate(self, identifier: str) -> bool:
        seen = self._data["identifiers"].get(identifier)
        return seen is not None and seen >= self.now() - DEDUP_WINDOW_S

    def _accept(self, event: dict[str, Any], identifier: str, api: str) -> dict[str, Any]:
        now = self.now()
        record = {**event, "identifier": identifier, "created": now, "canceled": False, "api": api}
        self._data["events"].append(record)
        self._data["identifiers"][identifier] = now
        return record

    def create_meter_event(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v1/billing/meter_events (synchronous, see the package docstring)."""
        with self._lock:
            event = self._check_event(
                params["event_name"], params["payload"], params.get("timestamp"), ""
            )
            identifier = params.get("identifier") or _new_id("mev_ident")
            if self._is_duplicate(identifier):
                # What Stripe answers (observed): 400 invalid_request_error, no `code`.
                raise StripeApiError(400, f"An event already exists with identifier {identifier}.")
            record = self._accept(event, identifier, "v1")
            self._save()
            return {
                "object": "billing.meter_event",
                "created": record["created"],
                "event_name": record["event_name"],
                "identifier": identifier,
                "livemode": False,
                "payload": record["payload"],
                "timestamp": record["timestamp"],
            }

    def stream_events(self, events: list[Mapping[str, Any]]) -> int:
        """POST /v2/billing/meter_event_stream: all or nothing; returns how many were new.

        Identifiers already recorded (or repeated in the batch) are dropped silently, as
        Stripe's asynchronous processing drops them: a retried batch is harmless.
        """
        if len(events) > STREAM_MAX_EVENTS:
            raise StripeApiError(
                400,
                f"A meter event stream call takes at most {STREAM_MAX_EVENTS} events, "
                f"got {len(events)}.",
                param="events",
            )
        with self._lock:
            checked: list[tuple[dict[str, Any], str]] = []
            for i, item in enumerate(events):
                where = f"events[{i}]"
                timestamp: int | None = None
                if "timestamp" in item:
                    try:
                        timestamp = parse_iso(str(item["timestamp"]))
                    except ValueError:
                        raise StripeApiError(
                            400,
                            f"Invalid timestamp: {item['timestamp']}",
                            param=_param(where, "timestamp"),
                        ) from None
                event = self._check_event(item["event_name"], item["payload"], timestamp, where)
                checked.append((event, str(item.get("identifier") or _new_id("mev_ident"))))
            accepted = 0
            for event, identifier in checked:
                if not self._is_duplicate(identifier):
                    self._accept(event, identifier, "v2")
                    accepted += 1
            if accepted:
                self._save()
            return accepted

    def cancel_event(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v1/billing/meter_event_adjustments with type=cancel."""
        with self._lock:
            identifier = (params.get("cancel") or {}).get("identifier")
            if not identifier:
                raise StripeApiError(
                    400,
                    "Missing required param: cancel[identifier].",
                    code="parameter_missing",
                    param="cancel[identifier]",
                )
            now = self.now()
            for event in reversed(self._data["events"]):
                if (
                    event["identifier"] == identifier
                    and event["event_name"] == params["event_name"]
                ):
                    if event["canceled"]:
                        raise StripeApiError(400, f"Meter event {identifier} is already canceled.")
                    if event["created"] < now - CANCEL_WINDOW_S:
                        raise StripeApiError(
                            400, "Meter events can only be canceled within 24 hours of receipt."
                        )
                    event["canceled"] = True
                    self._save()
                    return {
                        "object": "billing.meter_event_adjustment",
                        "cancel": {"identifier": identifier},
                        "event_name": params["event_name"],
                        "livemode": False,
                        "status": "complete",
                        "type": "cancel",
                    }
            raise StripeApiError(
                400,
                f"No meter event with identifier {identifier} for event_name "
                f"{params['event_name']}.",
                code="resource_missing",
                param="cancel[identifier]",
            )

    def event_summaries(self, meter_id: str, query: Mapping[str, Any]) -> dict[str, Any]:
        """GET /v1/billing/meters/{id}/event_summaries: aggregated like the meter says."""
        with self._lock:
            meter = self.get_meter(meter_id)
            customer = query["customer"]
            if customer not in self._data["customers"]:
                raise StripeApiError(
                    400,
                    f"No such customer: '{customer}'",
                    code="resource_missing",
                    param="customer",
                )
            start, end = int(query["start_time"]), int(query["end_time"])
            grouping = query.get("value_grouping_window")
            step = {"hour": 3_600, "day": 86_400}.get(grouping or "", 60)
            for name, value in (("start_time", start), ("end_time", end)):
                if value % step:
                    unit = grouping or "minute"
                    raise StripeApiError(
                        400, f"{name} must be aligned to {unit} boundaries.", param=name
                    )
            if start >= end:
                raise StripeApiError(400, "start_time must be before end_time.", param="start_time")
            events = [
                e
                for e in self._data["events"]
                if e["meter"] == meter_id and e["customer"] == customer and not e["canceled"]
            ]
            bounds = (
                [(start, end)]
                if grouping is None
                else [(b, min(b + step, end)) for b in range(start, end, step)]
            )
            formula = meter["default_aggregation"]["formula"]
            summaries = [
                {
                    "id": f"mtrusg_{meter_id[4:]}_{customer}_{lo}_{hi}",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": _aggregate(
                        formula, [e for e in events if lo <= e["timestamp"] < hi]
                    ),
                    "end_time": hi,
                    "livemode": False,
                    "meter": meter_id,
                    "start_time": lo,
                }
                for lo, hi in bounds
            ]
            return _page(summaries, query, f"/v1/billing/meters/{meter_id}/event_summaries")

    # -- v2 sessions --------------------------------------------------------------

    def create_session(self) -> dict[str, Any]:
        with self._lock:
            now = self.now()
            sessions: dict[str, Any] = self._data["sessions"]
            for token in [t for t, s in sessions.items() if s["expires_at"] < now - 3_600]:
                del sessions[token]
            sid, token = _new_id("mes"), "mes_tok_" + secrets.token_urlsafe(24)
            expires_at = now + SESSION_TTL_S
            sessions[token] = {"id": sid, "created": now, "expires_at": expires_at}
            self._save()
            return {
                "object": "v2.billing.meter_event_session",
                "id": sid,
                "authentication_token": token,
                "created": iso(now),
                "expires_at": iso(expires_at),
                "livemode": False,
            }

    def check_session(self, token: str) -> None:
        with self._lock:
            session = self._data["sessions"].get(token)
            if session is None:
                raise StripeApiError(
                    401, "The meter event session token is not valid.", code="invalid_token"
                )
            if self.now() >= session["expires_at"]:
                raise StripeApiError(
                    401,
                    "The meter event session has expired: create a new one.",
                    type="temporary_session_expired",
                    code="billing_meter_event_session_expired",
                )

    # -- inspection ---------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Every accepted event (canceled ones flagged), oldest first."""
        with self._lock:
            return [dict(e) for e in self._data["events"]]

    def totals(self) -> dict[tuple[str, str], int]:
        """(customer, event_name) -> sum of the values of accepted, uncanceled events."""
        with self._lock:
            out: dict[tuple[str, str], int] = {}
            for e in self._data["events"]:
                if not e["canceled"]:
                    key = (e["customer"], e["event_name"])
                    out[key] = out.get(key, 0) + int(e["value"])
            return out

    def faults_dict(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._faults)


def _aggregate(formula: str, events: Iterable[Mapping[str, Any]]) -> int:
    rows = sorted(events, key=lambda e: (e["timestamp"], e["created"]))
    if formula == "count":
        return len(rows)
    if formula == "last":
        return int(rows[-1]["value"]) if rows else 0
    return sum(int(e["value"]) for e in rows)


def _page(items: list[dict[str, Any]], query: Mapping[str, Any], url: str) -> dict[str, Any]:
    """One page of a Stripe list (`limit` 1..100, default 10; cursor by object id)."""
    limit = int(query.get("limit", 10))
    if not 1 <= limit <= 100:
        raise StripeApiError(400, "Invalid limit: must be between 1 and 100.", param="limit")
    ids = [item["id"] for item in items]
    for cursor in ("starting_after", "ending_before"):
        if cursor in query and query[cursor] not in ids:
            raise StripeApiError(
                400, f"No such object: '{query[cursor]}'", code="resource_missing", param=cursor
            )
    if "starting_after" in query:
        rest = items[ids.index(query["starting_after"]) + 1 :]
        page, has_more = rest[:limit], len(rest) > limit
    elif "ending_before" in query:
        before = items[: ids.index(query["ending_before"])]
        page, has_more = before[-limit:], len(before) > limit
    else:
        page, has_more = items[:limit], len(items) > limit
    return {"object": "list", "url": url, "has_more": has_more, "data": [dict(i) for i in page]}
