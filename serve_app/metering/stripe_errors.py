"""How a failed Stripe call ends for the outbox, and what may be said about it.

Pure functions, no I/O. `classify` keeps the rules behind the sink's guarantees
(`stripe_sink.py`'s docstring) for an error Stripe or the network returned:
- DELIVERED: Stripe's refusal of an identifier it already recorded (`is_duplicate`).
- RETRY: nothing is known to be recorded, or it may be but a retry is harmless: 429,
  5xx, 409, network errors and timeouts, an expired or refused key or session
  (configuration: the entry is fine and waits in the outbox rather than being dropped).
- PERMANENT: Stripe's own 4xx refusal; `detail` carries Stripe's code (e.g.
  `meter_event_invalid_value`).
- `detail` never holds the API key, nor any string shaped like a Stripe key (`redact`).

`backoff_s` paces the outbox's retries (the SDK never retries by itself).
"""

from __future__ import annotations

import random
import re

import stripe

from serve_app.metering.types import SendResult, SendStatus

__all__ = [
    "DUPLICATE_CODES",
    "DUPLICATE_MESSAGE",
    "REDACTED",
    "RETRYABLE_STATUSES",
    "backoff_s",
    "classify",
    "is_duplicate",
    "redact",
]

DUPLICATE_CODES = frozenset({"duplicate_meter_event", "resource_already_exists"})
"""Codes meaning "this identifier is already recorded" (v2 documents the first)."""
DUPLICATE_MESSAGE = re.compile(r"already exists with identifier|duplicate identifier", re.I)
"""What Stripe's v1 duplicate refusal says; it carries no code (emulator docstring)."""
_KEY_SHAPE = re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[0-9A-Za-z_]+")
REDACTED = "[redacted]"
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


def redact(text: str, secret: str | None = None) -> str:
    """`text` with the key (and anything shaped like a Stripe key) replaced."""
    if secret:
        text = text.replace(secret, REDACTED)
    return _KEY_SHAPE.sub(REDACTED, text)


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
