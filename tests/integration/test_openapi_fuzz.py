"""Fuzz: schemathesis against the served OpenAPI document, every route, with and
without a key: no answer is a server error, and every answer is one the document
describes (status, content type, headers, body schema).

The real ingress ASGI app (`build_asgi`) on uvicorn, without Ray: real admission on
Redis, the meter stream and the billing view on Redis, reconciliation against the
Stripe emulator, fake model handles (tests/ingress_app.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from starlette.testclient import TestClient

from serve_app.ingress.compose import BillingArgs
from tests.ingress_app import (
    ADMIN_KEY,
    TENANT_KEY,
    ingress_app,
    ingress_parts,
    redis_db,
    serving,
)

pytestmark = pytest.mark.integration

FUZZ_DB = 7
"""The fuzzed app's Redis database: its meters stay out of the other tests' stream."""
EXAMPLES = 20
"""Generated cases per route and run (the explicit and coverage cases come on top)."""

SEEN: dict[str, dict[str, set[int]]] = {"no key": defaultdict(set), "keys": defaultdict(set)}
"""Statuses answered per run and route, for the last test."""


def _config(auth: dict[str, Any] | None) -> schemathesis.Config:
    data: dict[str, Any] = {
        "seed": 11,
        "generation": {"mode": "all", "max-examples": EXAMPLES},
        "phases": {"stateful": {"enabled": False}},
        "output": {"sanitization": {"enabled": False}},  # test keys only
        "checks": {
            # A valid request may still be refused for what it asks: the budget or price
            # cap (402), a model not in the plan (403) or unknown (404), a limit (429).
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "402", "403", "404", "429"]
            },
        },
    }
    if auth is not None:
        data["auth"] = {"openapi": auth}
    return schemathesis.Config.from_dict(data)


@pytest.fixture(scope="module")
def served(
    redis_url: str, stripe_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    billing = BillingArgs(
        data_dir=str(tmp_path_factory.mktemp("fuzz-data")), stripe_api_base=stripe_url
    )
    parts = ingress_parts(redis_url=redis_db(redis_url, FUZZ_DB), billing=billing)
    with serving(parts) as url:
        yield url


DOCUMENT: dict[str, Any] = TestClient(ingress_app(ingress_parts())).get("/openapi.json").json()
"""The document as the app serves it (built once, without Redis: it depends on no part of
the replica; a test below holds it equal to the fuzzed server's)."""

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)

no_key_schema = schemathesis.openapi.from_dict(DOCUMENT, config=_config(None))
keys_schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=_config({"tenantKey": {"bearer": TENANT_KEY}, "adminKey": {"bearer": ADMIN_KEY}}),
)


def test_the_fuzzed_document_is_the_served_one(served: str) -> None:
    assert httpx.get(f"{served}/openapi.json").json() == DOCUMENT


def _needs_key(case: Case[Any]) -> bool:
    return bool(case.operation.definition.raw.get("security"))


@no_key_schema.parametrize()
@FUZZ
def test_every_route_without_a_key(case: Case[Any], served: str) -> None:
    case.headers.pop("Authorization", None)  # no key at all (not even a generated one)
    response = case.call_and_validate(base_url=served)
    SEEN["no key"][case.operation.label].add(response.status_code)
    if _needs_key(case) and case.method.upper() == case.operation.method.upper():
        assert response.status_code == 401, response.text


@keys_schema.parametrize()
@FUZZ
def test_every_route_with_keys(case: Case[Any], served: str) -> None:
    response = case.call_and_validate(base_url=served)
    SEEN["keys"][case.operation.label].add(response.status_code)


def test_every_route_was_fuzzed_and_answered(served: str) -> None:
    if not SEEN["keys"]:
        pytest.skip("the fuzz tests did not run")
    operations = {f"{m.upper()} {p}" for p, item in DOCUMENT["paths"].items() for m in item}
    assert set(SEEN["keys"]) == set(SEEN["no key"]) == operations
    for route, statuses in SEEN["keys"].items():
        assert any(200 <= s < 300 for s in statuses), (route, statuses)


def test_billing_health_before_the_aggregators_created_their_groups(
    redis_url: str, tmp_path: Path
) -> None:
    parts = ingress_parts(
        redis_url=redis_db(redis_url, FUZZ_DB + 1),
        billing=BillingArgs(data_dir=str(tmp_path)),
        groups=False,
    )
    with TestClient(ingress_app(parts), raise_server_exceptions=False) as client:
        response = client.get("/v1/admin/billing", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
