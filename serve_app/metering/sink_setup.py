"""Stripe set-up as a state the aggregator carries, never a gate in front of it.

The aggregator checks Stripe's meters and customers (`StripeSink.ensure_setup`) before
it sends anything. A failed check must not stop billing: folding, closing and trimming
go on whatever Stripe says, and only sending waits. `SinkSetup` holds what may be sent:

- set-up done: everything;
- only customers missing (`StripeSetupError` whose report lists nothing but missing
  customers: on real Stripe, where rtcts cannot create them): everything but those
  customers' windows, which wait in the outbox (sent to Stripe, they would be taken and
  dropped later without a word);
- anything else (a meter with other settings, Stripe unreachable, a refused key): nothing
  (a meter that sums differently would bill wrongly; an unchecked one may not exist).

The check is retried with exponential backoff (up to `TRANSIENT_RETRY_MAX_S` apart while
Stripe is unreachable, up to `retry_max_s` for a problem a person must fix; a retry goes
on from the customers already found), and `health()` says
what is wrong and since when (the aggregator writes it to Redis, so the billing health
of `/v1/admin/billing` shows it too). Texts never carry the API key: the sink's errors
are redacted, and a problem text is the report's or the exception type's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from serve_app.metering.stripe_setup import SetupReport, StripeSetupError
from serve_app.metering.types import RetryableSyncError, SyncError

logger = logging.getLogger("rtcts.aggregator")

RETRY_BASE_S = 1.0
"""The first retry of a failed set-up comes this long after it; each later one twice as
long, up to the aggregator's `setup_retry_max_s`."""
TRANSIENT_RETRY_MAX_S = 5.0
"""Retries after Stripe was unreachable or rate limiting (`RetryableSyncError`) come at
most this far apart: each try needs several calls in a row to go through, so long waits
would leave billing stopped long after Stripe is back. A problem that needs a person
(a wrong meter, a missing customer) is retried up to `setup_retry_max_s` apart."""


@runtime_checkable
class SetsUp(Protocol):
    """A sink with start-up checks (`StripeSink`); a sink without them needs none."""

    async def ensure_setup(
        self, customers: Iterable[tuple[str, str]], event_names: Iterable[str]
    ) -> SetupReport: ...


@dataclass(frozen=True, slots=True)
class SetupStatus:
    """What may be sent now, and why not the rest."""

    ok: bool
    problem: str = ""
    waiting_customers: frozenset[str] = frozenset()
    """Customers whose windows wait in the outbox (Stripe lacks them)."""
    hold_all: bool = False
    """Nothing is sent (the meters are not known to be right)."""
    since: float | None = None
    """Wall time of the first failure of this run of failures."""
    attempts: int = 0

    def holds(self, customer: str) -> bool:
        return self.hold_all or customer in self.waiting_customers

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problem": self.problem,
            "sending": "none" if self.hold_all else "all" if self.ok else "some",
            "waiting_customers": sorted(self.waiting_customers),
            "since": None if self.since is None else int(self.since),
            "attempts": self.attempts,
        }


PENDING = SetupStatus(ok=False, problem="Stripe set-up not checked yet", hold_all=True)
NO_STRIPE = SetupStatus(
    ok=False, problem="no Stripe configured: windows wait in the outbox", hold_all=True
)


class SinkSetup:
    """Tries the sink's set-up when due (`ensure`), and says what may be sent (`status`)."""

    def __init__(
        self,
        sink: object | None,
        customers: Sequence[tuple[str, str]],
        event_names: Sequence[str],
        *,
        retry_max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink if isinstance(sink, SetsUp) else None
        self._customers = tuple(customers)
        self._event_names = tuple(event_names)
        self._retry_max_s = retry_max_s
        self._clock = clock
        self._wall = wall
        self._next_try = 0.0
        if sink is None:
            self.status = NO_STRIPE
        elif self._sink is None:
            self.status = SetupStatus(ok=True)  # nothing to check
        else:
            self.status = PENDING

    @property
    def done(self) -> bool:
        return self.status.ok

    async def ensure(self) -> bool:
        """Try the set-up if it is not done and its retry is due; never raises. Returns
        True when this call changed the status."""
        if self._sink is None or self.status.ok or self._clock() < self._next_try:
            return False
        before = self.status
        try:
            await self._sink.ensure_setup(self._customers, self._event_names)
        except Exception as exc:  # whatever it is, folding goes on; sending waits
            self.status = self._failed(exc)
            cap = self._retry_max_s
            if isinstance(exc, RetryableSyncError):
                cap = min(cap, TRANSIENT_RETRY_MAX_S)
            delay = min(cap, RETRY_BASE_S * 2.0 ** (self.status.attempts - 1))
            self._next_try = self._clock() + delay
            if self.status.problem != before.problem:
                logger.error(
                    "Stripe set-up failed (windows wait in the outbox; retried, next in "
                    "%.0f s): %s",
                    delay,
                    self.status.problem,
                )
        else:
            self.status = SetupStatus(ok=True)
            if before is not PENDING:
                logger.warning("Stripe set-up done after %d failed tries", before.attempts)
        return self.status != before

    def _failed(self, exc: Exception) -> SetupStatus:
        before = self.status
        since = before.since if before.since is not None else self._wall()
        attempts = before.attempts + 1
        if isinstance(exc, StripeSetupError):
            report = exc.report
            customers_only = bool(report.missing_customers) and len(report.problems) == 1
            return SetupStatus(
                ok=False,
                problem=str(exc),
                waiting_customers=frozenset(report.missing_customers),
                hold_all=not customers_only,
                since=since,
                attempts=attempts,
            )
        text = str(exc) if isinstance(exc, SyncError) else f"unexpected {type(exc).__name__}"
        return SetupStatus(ok=False, problem=text, hold_all=True, since=since, attempts=attempts)
