"""The rtcts exception tree: every error rtcts raises on purpose, in one module.

Domain errors are raised in the core; only the HTTP edge (`ingress/errors.py`) maps
them to OpenAI-shaped answers, with the status written here beside each request error.
Nothing here knows about HTTP. Other modules re-export the classes they raise, so a
reader finds them where they are used and here where they are defined.

    RtctsError
    ├── SettingsError               an environment variable or argument is invalid
    ├── PolicyError                 a policy file or dict is invalid (carries every issue)
    ├── RequestError                a request is not served as asked; the message is safe
    │   │                           to show to the client
    │   ├── InvalidRequest          malformed body or parameter                  (400)
    │   ├── PricingError            cannot be priced as asked                    (400)
    │   │   ├── UnknownModelError   neither a model id nor a route alias         (404)
    │   │   ├── ModelNotInPlanError the tenant's plan does not sell that model   (403)
    │   │   ├── ContextWindowError  the request fits no candidate's context      (400)
    │   │   └── UnsupportedFeature  no candidate serves a feature it asks for    (400)
    │   ├── Unauthorized            missing or unknown API key                   (401)
    │   ├── Forbidden               a valid key that may not use this route      (403)
    │   ├── NotFound                no such tenant, or billing is off            (404)
    │   ├── PayloadTooLarge         the body is over the ingress's limit         (413)
    │   ├── PriceCapExceeded        the price is over the client's max_price_usd (402)
    │   ├── BudgetExceeded          the monthly budget would be exceeded         (402)
    │   ├── RateLimited             a request or token limit per minute          (429)
    │   ├── MarginThrottled         not servable within policy now               (429)
    │   └── NoCapacity              no replica can take the request              (503)
    ├── ClientDisconnected          the client left before its body arrived (no answer)
    ├── AdmissionError
    │   └── AdmissionUnavailable    Redis unreachable and the plan fails closed  (503)
    ├── BackendError                the model could not serve; nothing billed    (502)
    │   ├── BackendUnavailable      not ready, closed, or its upstream is down   (503)
    │   ├── GenerationFailed        failed part-way                              (502)
    │   └── RequestRejected         the engine refused the request as invalid    (400)
    ├── MeteringError
    │   ├── MeterStreamError        Redis answered a meter flush unexpectedly
    │   └── SyncError               a Stripe call failed; `retryable` says whether to retry
    │       ├── RetryableSyncError
    │       └── PermanentSyncError
    ├── LocalServiceError           a process `rtcts run` starts failed (Redis, emulator)
    │   └── EdgeError               Serve's HAProxy config is not the shape rtcts rewrites
    └── BacktestError               `rtcts backtest` cannot run as asked (one line)
        └── TraceError              a trace file is missing or malformed

Errors that are not RtctsError (a bug, a library's error) are answered with a generic
500 at the edge and logged there; the client never sees their text.
"""

from __future__ import annotations

from dataclasses import dataclass


class RtctsError(Exception):
    """Base of every error rtcts raises on purpose."""


class SettingsError(RtctsError):
    """An environment variable or argument has an invalid value."""


@dataclass(frozen=True)
class PolicyIssue:
    """One problem in a policy: where (a field path such as `plans[0].margin_floor`) and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PolicyError(RtctsError):
    """A policy is invalid. `issues` lists every problem found, each with its field path."""

    def __init__(self, source: str, issues: list[PolicyIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__("\n".join(f"{source}: {issue}" for issue in issues))


# ------------------------------------------------------------------ request errors


class RequestError(RtctsError):
    """A request is not served as asked. `str(error)` is safe to show to the client."""


class InvalidRequest(RequestError):
    """A malformed body or parameter. `param` names the field (`messages[0].role`);
    `code` is `unsupported_parameter` for a valid OpenAI field rtcts does not serve."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class PricingError(RequestError):
    """A request cannot be priced as asked; the message is safe to show to the client."""


class UnknownModelError(PricingError):
    """The requested name is neither a model id nor a route alias of the policy."""


class ModelNotInPlanError(PricingError):
    """The model (or every model of the alias) is not sold by the tenant's plan."""


class ContextWindowError(PricingError):
    """Prompt plus output tokens exceed the context window of every candidate model."""


class UnsupportedFeature(PricingError):
    """No candidate model serves an endpoint or feature the request asks for.
    `feature` is a `policy.capabilities.Capability` value, `model` the requested name."""

    def __init__(self, message: str, *, feature: str, model: str) -> None:
        super().__init__(message)
        self.feature = feature
        self.model = model


class Unauthorized(RequestError):
    """The API key is missing or unknown (never echoed back)."""


class Forbidden(RequestError):
    """A valid key that may not use this route."""


class NotFound(RequestError):
    """A named thing does not exist; `code` says which kind (`tenant_not_found`, ...)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class PayloadTooLarge(RequestError):
    """The request body is larger than the ingress accepts."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"Request body too large: the limit is {limit_bytes} bytes.")
        self.limit_bytes = limit_bytes


class PriceCapExceeded(RequestError):
    """The price of the request exceeds the client's `max_price_usd`."""

    def __init__(self, price_micro: int | None = None, cap_micro: int | None = None) -> None:
        super().__init__("The price of this request exceeds max_price_usd.")
        self.price_micro = price_micro
        self.cap_micro = cap_micro


class BudgetExceeded(RequestError):
    """The tenant's monthly budget would be exceeded by this request."""


class RateLimited(RequestError):
    """A per-minute limit: `code` is `rate_limited` (requests) or `tokens_limited`;
    `retry_after_s` is None when waiting cannot help (the request alone is over it)."""

    def __init__(self, code: str, retry_after_s: float | None) -> None:
        super().__init__(code)
        self.code = code
        self.retry_after_s = retry_after_s


class MarginThrottled(RequestError):
    """No candidate can be served within policy now; `reason` is the decision's reason."""

    def __init__(self, retry_after_s: float, reason: str) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s
        self.reason = reason


class NoCapacity(RequestError):
    """No replica can take the request."""

    def __init__(self, retry_after_s: float | None = None) -> None:
        super().__init__("no capacity")
        self.retry_after_s = retry_after_s


class ClientDisconnected(RtctsError):
    """The client disconnected before its request body arrived: nothing to answer."""


# ------------------------------------------------------------------ dependencies


class AdmissionError(RtctsError):
    """Base of admission errors."""


class AdmissionUnavailable(AdmissionError):
    """Redis is unreachable (or the circuit breaker is open); fail-closed plans answer 503."""


class BackendError(RtctsError):
    """The backend could not serve the request; nothing is billed for it."""


class BackendUnavailable(BackendError):
    """The backend is not ready (still loading, closed, or its upstream is down)."""


class GenerationFailed(BackendError):
    """Generation failed part-way (an injected fault, an engine or upstream error)."""


class RequestRejected(BackendError):
    """The engine refused the request as invalid (an upstream's 4xx): the client's to fix,
    so it is answered 400 and counts in no failure rate. `detail` is the engine's own
    message (secrets scrubbed), `param` the field it named, if any. (Attributes, not
    `str()`: through a Ray handle the error's text is Ray's traceback.)"""

    def __init__(self, detail: str, *, param: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.param = param


class MeteringError(RtctsError):
    """Base of the meter path's errors."""


class MeterStreamError(MeteringError):
    """Redis answered a flush with something other than one entry id per batch."""


class SyncError(MeteringError):
    """A Stripe call failed; `retryable` says whether the same call may succeed later."""

    retryable: bool = False


class RetryableSyncError(SyncError):
    retryable = True


class PermanentSyncError(SyncError):
    retryable = False


class LocalServiceError(RtctsError):
    """A local process that `rtcts run` starts (embedded Redis, Stripe emulator) failed."""


class EdgeError(LocalServiceError):
    """Serve's HAProxy config does not have the shape `local/haproxy_edge.py` expects."""


class BacktestError(RtctsError):
    """The backtest cannot run as asked (no trace, bad option): one line."""


class TraceError(BacktestError):
    """A trace file is missing or malformed (the message names the file and line)."""


__all__ = [
    "AdmissionError",
    "AdmissionUnavailable",
    "BackendError",
    "BackendUnavailable",
    "BacktestError",
    "BudgetExceeded",
    "ClientDisconnected",
    "ContextWindowError",
    "EdgeError",
    "Forbidden",
    "GenerationFailed",
    "InvalidRequest",
    "LocalServiceError",
    "MarginThrottled",
    "MeterStreamError",
    "MeteringError",
    "ModelNotInPlanError",
    "NoCapacity",
    "NotFound",
    "PayloadTooLarge",
    "PermanentSyncError",
    "PolicyError",
    "PolicyIssue",
    "PriceCapExceeded",
    "PricingError",
    "RateLimited",
    "RequestError",
    "RequestRejected",
    "RetryableSyncError",
    "RtctsError",
    "SettingsError",
    "SyncError",
    "TraceError",
    "Unauthorized",
    "UnknownModelError",
    "UnsupportedFeature",
]
