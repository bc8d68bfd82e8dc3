"""Stripe set-up: the client for Stripe or a Stripe-compatible server (`make_client`),
and the meters and customers rtcts bills through, checked and created.

A meter rtcts sends to sums the events' `value` and finds the customer by the
`stripe_customer_id` payload key; `ensure_meters_and_customers` creates a missing one
and reports one with other settings (it would bill differently). A customer Stripe
lacks is created with rtcts's id where the server allows custom ids (the emulator;
`is_stripe_host` tells Stripe itself apart), else reported missing: Stripe takes
events of unknown customers and drops them later without a word.
`StripeSink.ensure_setup` runs this at start-up and turns Stripe's errors into sync
errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import stripe

from serve_app.metering.types import PermanentSyncError

if TYPE_CHECKING:
    from stripe.params import CustomerCreateParams

__all__ = [
    "CUSTOMER_PAYLOAD_KEY",
    "VALUE_PAYLOAD_KEY",
    "SetupReport",
    "StripeSetupError",
    "active_meters",
    "customer_exists",
    "ensure_meters_and_customers",
    "is_stripe_host",
    "make_client",
]

CUSTOMER_PAYLOAD_KEY = "stripe_customer_id"
VALUE_PAYLOAD_KEY = "value"
STRIPE_HOST_SUFFIX = "stripe.com"


def make_client(
    api_key: str, api_base: str | None = None, *, timeout_s: float = 10.0
) -> tuple[stripe.StripeClient, stripe.HTTPXClient]:
    """A StripeClient for Stripe or a Stripe-compatible `api_base` (both hosts), that
    never retries by itself, over an async-capable httpx client (returned to close it)."""
    http_client = stripe.HTTPXClient(timeout=timeout_s)
    bases: dict[str, str] = {}
    if api_base is not None:
        base = api_base.rstrip("/")
        bases = {"api": base, "meter_events": base}
    client = stripe.StripeClient(
        api_key,
        base_addresses=cast("Any", bases),
        max_network_retries=0,
        http_client=http_client,
    )
    return client, http_client


def is_stripe_host(api_base: str | None) -> bool:
    """True for Stripe itself (no base, or a *.stripe.com address)."""
    if api_base is None:
        return True
    host = urlsplit(api_base).hostname or ""
    return host == STRIPE_HOST_SUFFIX or host.endswith("." + STRIPE_HOST_SUFFIX)


@dataclass(frozen=True, slots=True)
class SetupReport:
    """What `StripeSink.ensure_setup` found and did."""

    meters: Mapping[str, str]
    """event_name -> Stripe meter id."""
    created_meters: tuple[str, ...] = ()
    created_customers: tuple[str, ...] = ()
    missing_customers: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


class StripeSetupError(PermanentSyncError):
    """Meters or customers are not as rtcts needs them; `report` says which."""

    def __init__(self, report: SetupReport) -> None:
        super().__init__("Stripe set-up incomplete: " + "; ".join(report.problems))
        self.report = report


async def ensure_meters_and_customers(
    client: stripe.StripeClient,
    customers: Iterable[tuple[str, str]],
    event_names: Iterable[str],
    *,
    create_customers: bool,
    known_customers: set[str],
) -> SetupReport:
    """Make sure each meter and customer exists; raise `StripeSetupError` if not.

    `customers`: (stripe_customer_id, display name) pairs; each one Stripe has (found
    or created) is added to `known_customers`, and one already there is not asked again
    (a retry after a failed call goes on from where it stopped). Stripe's errors
    propagate.
    """
    existing = await active_meters(client)
    meters: dict[str, str] = {}
    created_meters: list[str] = []
    problems: list[str] = []
    for name in dict.fromkeys(event_names):
        meter = existing.get(name)
        if meter is None:
            meter = await client.v1.billing.meters.create_async(
                params={
                    "display_name": name,
                    "event_name": name,
                    "default_aggregation": {"formula": "sum"},
                    "customer_mapping": {
                        "event_payload_key": CUSTOMER_PAYLOAD_KEY,
                        "type": "by_id",
                    },
                    "value_settings": {"event_payload_key": VALUE_PAYLOAD_KEY},
                },
                options={"idempotency_key": f"rtcts-meter-{name}"},
            )
            created_meters.append(name)
        else:
            problems.extend(_meter_problems(meter))
        meters[name] = meter.id
    created: list[str] = []
    missing: list[str] = []
    for cid, display in dict(customers).items():
        if cid in known_customers:
            continue  # found or created by an earlier try: a retry makes progress
        if await customer_exists(client, cid):
            known_customers.add(cid)
            continue
        if create_customers:
            params = cast("CustomerCreateParams", {"id": cid, "name": display})
            await client.v1.customers.create_async(
                params=params, options={"idempotency_key": f"rtcts-customer-{cid}"}
            )
            created.append(cid)
            known_customers.add(cid)
        else:
            missing.append(cid)
    if missing:
        problems.append(
            f"{len(missing)} Stripe customer(s) not found: {', '.join(missing)} "
            "(create them in Stripe, or fix stripe_customer_id in the policy)"
        )
    report = SetupReport(
        meters=meters,
        created_meters=tuple(created_meters),
        created_customers=tuple(created),
        missing_customers=tuple(missing),
        problems=tuple(problems),
    )
    if problems:
        raise StripeSetupError(report)
    return report


async def customer_exists(client: stripe.StripeClient, cid: str) -> bool:
    """Whether Stripe has customer `cid` (not deleted); other errors propagate."""
    try:
        customer = await client.v1.customers.retrieve_async(cid)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return False
        raise
    return not bool(getattr(customer, "deleted", False))


async def active_meters(client: stripe.StripeClient) -> dict[str, stripe.billing.Meter]:
    """event_name -> the active meter for it (every page of the list)."""
    out: dict[str, stripe.billing.Meter] = {}
    after: str | None = None
    while True:
        params: dict[str, Any] = {"status": "active", "limit": 100}
        if after is not None:
            params["starting_after"] = after
        page = await client.v1.billing.meters.list_async(params=cast("Any", params))
        for meter in page.data:
            out.setdefault(meter.event_name, meter)
        if not page.has_more or not page.data:
            return out
        after = page.data[-1].id


def _meter_problems(meter: stripe.billing.Meter) -> list[str]:
    found = {
        "default_aggregation.formula": meter.default_aggregation.formula,
        "customer_mapping.event_payload_key": meter.customer_mapping.event_payload_key,
        "value_settings.event_payload_key": meter.value_settings.event_payload_key,
    }
    wanted = {
        "default_aggregation.formula": "sum",
        "customer_mapping.event_payload_key": CUSTOMER_PAYLOAD_KEY,
        "value_settings.event_payload_key": VALUE_PAYLOAD_KEY,
    }
    return [
        f"meter {meter.id} ({meter.event_name}) has {k}={found[k]!r}, rtcts needs {wanted[k]!r}"
        for k in wanted
        if found[k] != wanted[k]
    ]
