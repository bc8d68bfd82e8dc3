"""OpenAI-shaped HTTP errors: the only place where rtcts errors meet HTTP.

Every error answer has OpenAI's shape,
`{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}`,
so OpenAI clients raise their usual exceptions (`NotFoundError`, `RateLimitError`, ...).
Messages never carry internal detail: errors the client cannot act on become a generic
500 and are logged here instead.

    exception / helper          status  type                   code
    UnknownModelError            404    invalid_request_error  model_not_found
    ModelNotInPlanError          403    invalid_request_error  model_not_in_plan
    ContextWindowError           400    invalid_request_error  context_length_exceeded
    UnsupportedFeature           400    invalid_request_error  unsupported_parameter (param)
    RequestRejected              400    invalid_request_error  rejected_by_model (param)
    PricingError (other)         400    invalid_request_error  None
    PolicyError, other errors    500    server_error           None      (generic message)
    BackendUnavailable           503    server_error           model_unavailable
    GenerationFailed, other      502    server_error           model_failed
      BackendError
    unauthorized()               401    invalid_request_error  invalid_api_key
    price_cap_exceeded()         402    invalid_request_error  price_cap_exceeded
    payload_too_large()          413    invalid_request_error  payload_too_large
    throttled()                  429    rate_limit_error       margin_throttled (Retry-After)
    refused("rate_limited")      429    rate_limit_error       rate_limited (Retry-After)
    refused("tokens_limited")    429    rate_limit_error       tokens_limited (Retry-After)
    refused("budget_exceeded")   402    invalid_request_error  budget_exceeded
    forbidden()                  403    invalid_request_error  forbidden
    no_capacity()                503    server_error           no_capacity
    admission_unavailable()      503    server_error           admission_unavailable
    request validation           400    invalid_request_error  None or unsupported_parameter

The public port's HAProxy answers in the same shape when no ingress replica does
(`serve_app/local/public_port.py`): 502 `bad_gateway`, 503 `service_unavailable`,
504 `gateway_timeout`, and 413 `payload_too_large` for a declared oversized body.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from enum import Enum
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from serve_app.errors import (
    AdmissionUnavailable,
    BackendError,
    BackendUnavailable,
    BudgetExceeded,
    ContextWindowError,
    Forbidden,
    InvalidRequest,
    MarginThrottled,
    ModelNotInPlanError,
    NoCapacity,
    NotFound,
    PayloadTooLarge,
    PolicyError,
    PriceCapExceeded,
    PricingError,
    RateLimited,
    RequestRejected,
    RtctsError,
    Unauthorized,
    UnknownModelError,
    UnsupportedFeature,
)
from serve_app.ingress.protocol_fields import UNSUPPORTED
from serve_app.policy.capabilities import FEATURE_PARAMS, Capability

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
RATE_LIMIT = "rate_limit_error"

GENERIC_MESSAGE = "The server had an error while processing your request."
MAX_RETRY_AFTER_S = 86_400
_MAX_LISTED_ISSUES = 5


class ApiError(Exception):
    """An error answer, ready to send: status, OpenAI error body and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """`{"error": {"message", "type", "param", "code"}}`."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def to_sse(self) -> bytes:
        """The error as a server-sent event, for a stream that has already begun."""
        return f"data: {json.dumps(self.body())}\n\n".encode()

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, code={self.code!r})"


# ----------------------------------------------------------------------------- helpers


def unauthorized() -> ApiError:
    """401: the API key is missing or unknown (never echoed back)."""
    return ApiError(
        401,
        "Invalid API key",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def retry_after_header(seconds: float) -> str:
    """Retry-After value: whole seconds, rounded up, at least 1 (and at most a day)."""
    if math.isnan(seconds) or seconds <= 1:
        return "1"
    if seconds >= MAX_RETRY_AFTER_S:
        return str(MAX_RETRY_AFTER_S)
    return str(math.ceil(seconds))


def throttled(retry_after_s: float, reason: str) -> ApiError:
    """429: the request cannot be served within policy now; retry after the given time."""
    wait = retry_after_header(retry_after_s)
    why = reason.value if isinstance(reason, Enum) else reason
    return ApiError(
        429,
        f"Request throttled under current cluster load ({why}); retry after {wait} s.",
        type=RATE_LIMIT,
        code="margin_throttled",
        headers={"Retry-After": wait},
    )


def refused(code: str, retry_after_s: float | None) -> ApiError:
    """429 for a request or token limit, 402 for the monthly budget (admission)."""
    if code == "budget_exceeded":
        return ApiError(
            402,
            "Your monthly budget would be exceeded by this request.",
            code=code,
        )
    headers = {} if retry_after_s is None else {"Retry-After": retry_after_header(retry_after_s)}
    what = "requests" if code == "rate_limited" else "tokens"
    if retry_after_s is None:
        message = f"This request alone exceeds your {what} per minute limit."
    else:
        message = (
            f"Rate limit of {what} per minute reached; retry after {headers['Retry-After']} s."
        )
    return ApiError(429, message, type=RATE_LIMIT, code=code, headers=headers)


def admission_unavailable() -> ApiError:
    """503: the admission store is down and the plan fails closed."""
    return ApiError(
        503,
        "Admission is temporarily unavailable; retry shortly.",
        type=SERVER_ERROR,
        code="admission_unavailable",
        headers={"Retry-After": "1"},
    )


def forbidden(message: str) -> ApiError:
    """403 for a valid key that may not use this endpoint."""
    return ApiError(403, message, code="forbidden")


def no_capacity(retry_after_s: float | None = None) -> ApiError:
    """503: no replica can take the request."""
    headers = {} if retry_after_s is None else {"Retry-After": retry_after_header(retry_after_s)}
    return ApiError(
        503,
        "No capacity is available to serve this request; retry later.",
        type=SERVER_ERROR,
        code="no_capacity",
        headers=headers,
    )


def _usd(micro: int) -> str:
    return format(Decimal(micro).scaleb(-6).normalize(), "f")


def price_cap_exceeded(price_micro: int | None = None, cap_micro: int | None = None) -> ApiError:
    """402: the request costs more than the client's `max_price_usd`."""
    message = "The price of this request exceeds max_price_usd."
    if price_micro is not None and cap_micro is not None:
        message = (
            f"The price of this request ({_usd(price_micro)} USD) exceeds "
            f"max_price_usd ({_usd(cap_micro)} USD)."
        )
    return ApiError(402, message, code="price_cap_exceeded", param="max_price_usd")


def payload_too_large(limit_bytes: int) -> ApiError:
    """413: the request body is larger than the ingress accepts."""
    return ApiError(
        413,
        f"Request body too large: the limit is {limit_bytes} bytes.",
        code="payload_too_large",
    )


def too_large(limit_bytes: int) -> ApiError:
    """413, closing the connection: the rest of the body is never read."""
    error = payload_too_large(limit_bytes)
    error.headers["Connection"] = "close"
    return error


def internal_error() -> ApiError:
    """500 with a generic message (the cause is logged, never sent)."""
    return ApiError(500, GENERIC_MESSAGE, type=SERVER_ERROR)


def _request_error(exc: Exception) -> ApiError | None:
    """The answer for the request errors of `serve_app.errors` (the table above)."""
    match exc:
        case Unauthorized():
            return unauthorized()
        case Forbidden():
            return forbidden(str(exc))
        case NotFound(code=code):
            return ApiError(404, str(exc), code=code)
        case InvalidRequest(param=param, code=code):
            return ApiError(400, str(exc), code=code, param=param)
        case PayloadTooLarge(limit_bytes=limit):
            return too_large(limit)
        case PriceCapExceeded(price_micro=price, cap_micro=cap):
            return price_cap_exceeded(price, cap)
        case BudgetExceeded():
            return refused("budget_exceeded", None)
        case RateLimited(code=code, retry_after_s=retry_after):
            return refused(code, retry_after)
        case MarginThrottled(retry_after_s=retry_after, reason=reason):
            return throttled(retry_after, reason)
        case NoCapacity(retry_after_s=retry_after):
            return no_capacity(retry_after)
        case AdmissionUnavailable():
            return admission_unavailable()
    return None


def error_for(exc: Exception) -> ApiError:
    """The HTTP answer for an exception; unexpected ones are logged and answered generically."""
    if isinstance(exc, ApiError):
        return exc
    answer = _request_error(exc)
    if answer is not None:
        return answer
    if isinstance(exc, UnknownModelError):
        return ApiError(
            404,
            str(exc) or "The model does not exist.",
            code="model_not_found",
            param="model",
        )
    if isinstance(exc, ModelNotInPlanError):
        return ApiError(
            403,
            str(exc) or "Your plan does not include this model.",
            code="model_not_in_plan",
            param="model",
        )
    if isinstance(exc, ContextWindowError):
        return ApiError(
            400,
            str(exc) or "The request exceeds the model's context window.",
            code="context_length_exceeded",
            param="messages",
        )
    if isinstance(exc, UnsupportedFeature):
        return ApiError(400, str(exc), code=UNSUPPORTED, param=_feature_param(exc.feature))
    if isinstance(exc, PricingError):
        return ApiError(400, str(exc) or "The request cannot be priced as asked.")
    if isinstance(exc, RequestRejected):
        # Attributes, not str(): through a Ray handle the text is Ray's traceback.
        return ApiError(
            400,
            f"The model rejected the request: {exc.detail}",
            code="rejected_by_model",
            param=exc.param,
        )
    if isinstance(exc, BackendUnavailable):
        logger.warning("model backend unavailable: %s", exc)
        return ApiError(
            503,
            "The model is temporarily unavailable; retry later.",
            type=SERVER_ERROR,
            code="model_unavailable",
        )
    if isinstance(exc, BackendError):
        logger.warning("model generation failed: %s", exc)
        return ApiError(
            502,
            "The model failed while generating; you were not billed.",
            type=SERVER_ERROR,
            code="model_failed",
        )
    if isinstance(exc, PolicyError):
        logger.error("policy error while serving a request: %s", exc)
        return internal_error()
    logger.error("unhandled error while serving a request", exc_info=exc)
    return internal_error()


def _feature_param(feature: str) -> str | None:
    try:
        return FEATURE_PARAMS[Capability(feature)]
    except ValueError:
        return None


# ------------------------------------------------------------------ validation errors


_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


def field_path(loc: Sequence[int | str]) -> str:
    """`("body", "messages", 0, "role")` → `messages[0].role`."""
    parts = list(loc)
    if parts and parts[0] in _SOURCES:
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _issue_message(error: Mapping[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


def validation_error(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """400 for request validation issues, naming the field path of each (at most 5)."""
    if not errors:
        return ApiError(400, "Invalid request.")
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return ApiError(400, "invalid JSON body")
    if loc in {("body",), ()}:  # the body itself, not one of its fields
        return ApiError(400, "The request body must be a JSON object.")
    issues = []
    for error in errors[:_MAX_LISTED_ISSUES]:
        path = field_path(tuple(error.get("loc", ())))
        message = _issue_message(error)
        issues.append(f"{path}: {message}" if path else message)
    text = "; ".join(issues)
    if len(errors) > _MAX_LISTED_ISSUES:
        text += f" (and {len(errors) - _MAX_LISTED_ISSUES} more)"
    param = field_path(loc) or None
    code = UNSUPPORTED if first.get("type") == UNSUPPORTED else None
    return ApiError(400, text, code=code, param=param)


# ------------------------------------------------------------------------- handlers


def _http_error(request: Request, exc: StarletteHTTPException) -> ApiError:
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"Invalid URL ({request.method} {request.url.path})"
        return ApiError(404, message, headers=headers)
    if exc.status_code == 405 and exc.detail == "Method Not Allowed":
        message = f"Method not allowed ({request.method} {request.url.path})"
        return ApiError(405, message, headers=headers)
    kind = SERVER_ERROR if exc.status_code >= 500 else INVALID_REQUEST
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else "Request failed."
    return ApiError(exc.status_code, message, type=kind, headers=headers)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    return error_for(exc).to_response()


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RequestValidationError):
        return validation_error(exc.errors()).to_response()
    return error_for(exc).to_response()


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StarletteHTTPException):
        return _http_error(request, exc).to_response()
    return error_for(exc).to_response()


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of `app` in OpenAI's shape.

    ApiError and the domain errors (RtctsError, BackendError) are mapped by
    `error_for`; request validation → 400 naming the field; malformed JSON → 400
    "invalid JSON body"; unknown route or method → 404/405; anything else → a generic
    500 (the server still logs the traceback; the body never carries it).

    Handlers only see errors raised under the router: a middleware that rejects a
    request should send `some_error.to_response()` itself.
    """
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RtctsError, _on_api_error)
    app.add_exception_handler(BackendError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_api_error)
