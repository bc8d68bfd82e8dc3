"""The emulator's HTTP surface: Stripe's routes, auth, idempotency and fault injection.

Each API request goes through the same steps, in Stripe's order:

1. fault draw (`rate_limit` -> 429, `server_error` -> 500: nothing executes, nothing
   is saved; `timeout`: the request executes normally and its answer is held back
   `timeout_s`, so the client gives up although the server did the work);
2. authentication (v1 and the session call: `Bearer sk_test_...` or `rk_test_...`;
   the v2 stream: `Bearer <session token>`);
3. idempotency (POST with `Idempotency-Key`): a saved response is replayed with
   `Idempotent-Replayed: true`; other parameters under the same key -> 400
   `idempotency_error`; the same key still executing -> 409 `idempotency_key_in_use`;
4. decoding and schema validation (see `schemas`), then the business rules (`state`);
5. only a 2xx response is saved under the idempotency key (a refusal can be retried).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rtcts_dev.stripe_emulator.schemas import ParamError, RequestValidator, decode_form
from rtcts_dev.stripe_emulator.state import EmulatorState, Faults, StripeApiError

TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")

Handler = Callable[[EmulatorState, dict[str, Any], Mapping[str, str]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One Stripe operation: its schema key, its handler, and how callers authenticate."""

    key: str
    handler: Handler
    session_auth: bool = False
    """True for the v2 stream (Bearer session token), False for API-key auth."""

    @property
    def method(self) -> str:
        return self.key.split(" ", 1)[0]

    @property
    def path(self) -> str:
        return self.key.split(" ", 1)[1]

    @property
    def v2(self) -> bool:
        return self.path.startswith("/v2/")


def mask_key(key: str) -> str:
    """How Stripe echoes a key in an error: prefix and last 4 characters only."""
    if len(key) <= 12:
        return "*" * len(key)
    head = key[: key.index("_", 3) + 1] if key.count("_") >= 2 else key[:3]
    return head + "*" * (len(key) - len(head) - 4) + key[-4:]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        import base64
        import binascii

        try:
            user = base64.b64decode(value.strip()).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return None


def _check_api_key(request: Request) -> None:
    key = _bearer(request)
    if key is None:
        raise StripeApiError(
            401,
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY').",
        )
    if not key.startswith(TEST_KEY_PREFIXES):
        raise StripeApiError(401, f"Invalid API Key provided: {mask_key(key)}")


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    base = {"Request-Id": f"req_{secrets.token_hex(7)}"}
    if status in (409, 429) or status >= 500:
        base["Stripe-Should-Retry"] = "true"
    elif status >= 400:
        base["Stripe-Should-Retry"] = "false"
    return JSONResponse(body, status_code=status, headers={**base, **(headers or {})})


def _fault_response(kind: str, v2: bool) -> JSONResponse:
    if kind == "rate_limit":
        error = StripeApiError(
            429,
            "Too many requests hit the API too quickly. We recommend an exponential backoff "
            "of your requests.",
            type="rate_limit" if v2 else "invalid_request_error",
            code="rate_limit",
        )
    else:
        error = StripeApiError(500, "An unknown error occurred (emulated fault).", type="api_error")
    return _json(error.status, error.body())


async def _params(request: Request, op: Operation) -> tuple[bytes, dict[str, Any]]:
    raw = await request.body()
    if op.method == "GET":
        return raw, decode_form(request.url.query)
    if op.v2:
        if not raw.strip():
            return raw, {}
        try:
            data = json.loads(raw)
        except ValueError:
            raise ParamError("Invalid JSON body.") from None
        if not isinstance(data, dict):
            raise ParamError("The request body must be a JSON object.")
        return raw, data
    try:
        return raw, decode_form(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ParamError("The request body is not valid UTF-8.") from None


async def _execute(
    request: Request, op: Operation, state: EmulatorState, validator: RequestValidator
) -> tuple[JSONResponse, dict[str, Any]]:
    """Steps 2-5 of the module docstring; returns the response and log fields."""
    log: dict[str, Any] = {}
    try:
        if op.session_auth:
            state.check_session(_bearer(request) or "")
        else:
            _check_api_key(request)
            log["api_key"] = mask_key(_bearer(request) or "")  # masked: which key, not it
        raw, params = await _params(request, op)
    except StripeApiError as exc:
        return _json(exc.status, exc.body()), log
    except ParamError as exc:
        return _json(
            400, StripeApiError(400, exc.message, param=exc.param, code=exc.code).body()
        ), log

    key = request.headers.get("idempotency-key") if op.method == "POST" else None
    if key:
        log["idempotency_key"] = key
        fingerprint = hashlib.sha256(f"{op.method} {request.url.path}\n".encode() + raw)
        verdict, record = state.idempotency_claim(key, fingerprint.hexdigest())
        if verdict == "replay" and record is not None:
            log["replayed"] = True
            return _json(record["status"], record["body"], {"Idempotent-Replayed": "true"}), log
        if verdict == "mismatch":
            error = StripeApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                type="idempotency_error",
            )
            return _json(400, error.body()), log
        if verdict == "in_use":
            error = StripeApiError(
                409,
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still "
                "going through).",
                type="idempotency_error",
                code="idempotency_key_in_use",
            )
            return _json(409, error.body()), log

    try:
        clean = validator.validate(op.key, params, form=not op.v2)
        body = op.handler(state, clean, request.path_params)
    except ParamError as exc:
        error = StripeApiError(400, exc.message, param=exc.param, code=exc.code)
        status, body = 400, error.body()
    except StripeApiError as exc:
        status, body = exc.status, exc.body()
    else:
        status = 200
    if key:
        if status == 200:
            state.idempotency_finish(key, status, body)
        else:
            state.idempotency_release(key)
    return _json(status, body), log


def _endpoint(
    op: Operation, state: EmulatorState, validator: RequestValidator
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        fault = state.draw_fault()
        entry: dict[str, Any] = {
            "method": op.method,
            "path": request.url.path,
            "operation": op.key,
            "fault": fault,
        }
        if fault in ("rate_limit", "server_error"):
            response = _fault_response(fault, op.v2)
        else:
            response, log = await _execute(request, op, state, validator)
            entry.update(log)
        entry["status"] = response.status_code
        state.record_request(entry)
        if fault == "timeout":
            await asyncio.sleep(state.faults.timeout_s)
        return response

    return endpoint


# -- handlers: validated params in, Stripe object out ------------------------------------


def _stream(state: EmulatorState, params: dict[str, Any], _: Mapping[str, str]) -> dict[str, Any]:
    state.stream_events(params["events"])
    return {}


def _cancel(state: EmulatorState, params: dict[str, Any], _: Mapping[str, str]) -> dict[str, Any]:
    return state.cancel_event(params)


OPERATIONS: tuple[Operation, ...] = (
    Operation("POST /v1/customers", lambda s, p, _: s.create_customer(p)),
    Operation("GET /v1/customers", lambda s, p, _: s.list_customers(p)),
    Operation("GET /v1/customers/{id}", lambda s, p, a: s.get_customer(a["id"])),
    Operation("POST /v1/billing/meters", lambda s, p, _: s.create_meter(p)),
    Operation("GET /v1/billing/meters", lambda s, p, _: s.list_meters(p)),
    Operation("GET /v1/billing/meters/{id}", lambda s, p, a: s.get_meter(a["id"])),
    Operation(
        "POST /v1/billing/meters/{id}/deactivate",
        lambda s, p, a: s.set_meter_status(a["id"], "inactive"),
    ),
    Operation(
        "POST /v1/billing/meters/{id}/reactivate",
        lambda s, p, a: s.set_meter_status(a["id"], "active"),
    ),
    Operation(
        "GET /v1/billing/meters/{id}/event_summaries",
        lambda s, p, a: s.event_summaries(a["id"], p),
    ),
    Operation("POST /v1/billing/meter_events", lambda s, p, _: s.create_meter_event(p)),
    Operation("POST /v1/billing/meter_event_adjustments", _cancel),
    Operation("POST /v2/billing/meter_event_session", lambda s, p, _: s.create_session()),
    Operation("POST /v2/billing/meter_event_stream", _stream, session_auth=True),
)


# -- inspection and control (no auth: a local test tool) ---------------------------------


def _admin_routes(state: EmulatorState, source: str) -> list[Route]:
    async def health(_: Request) -> Response:
        return JSONResponse({"ok": True, "schemas": source})

    async def totals(_: Request) -> Response:
        rows = [
            {"customer": c, "event_name": e, "value": v}
            for (c, e), v in sorted(state.totals().items())
        ]
        return JSONResponse({"totals": rows})

    async def events(_: Request) -> Response:
        return JSONResponse({"events": state.events()})

    async def requests(_: Request) -> Response:
        return JSONResponse({"count": state.request_count, "requests": state.requests()})

    async def faults(request: Request) -> Response:
        try:
            body = await request.json()
            current = state.faults
            state.set_faults(
                Faults(
                    fail_rate=float(body.get("fail_rate", current.fail_rate)),
                    timeout_s=float(body.get("timeout_s", current.timeout_s)),
                    seed=body.get("seed", current.seed),
                )
            )
        except (ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        return JSONResponse(state.faults_dict())

    async def reset(_: Request) -> Response:
        state.reset()
        return JSONResponse({})

    return [
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/totals", totals, methods=["GET"]),
        Route("/_emulator/events", events, methods=["GET"]),
        Route("/_emulator/requests", requests, methods=["GET"]),
        Route("/_emulator/faults", faults, methods=["GET", "POST"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
    ]


def create_app(state: EmulatorState, validator: RequestValidator, source: str) -> Starlette:
    """The Starlette app serving `OPERATIONS` over `state`; `source` names the schemas."""
    routes = [
        Route(op.path, _endpoint(op, state, validator), methods=[op.method]) for op in OPERATIONS
    ]

    async def unrecognized(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        error = StripeApiError(
            404 if status == 405 else status,
            f"Unrecognized request URL ({request.method}: {request.url.path}).",
        )
        return _json(error.status, error.body())

    return Starlette(
        routes=[*routes, *_admin_routes(state, source)],
        exception_handlers={404: unrecognized, 405: unrecognized},
    )
