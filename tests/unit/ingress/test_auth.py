"""`TenantDirectory`: `Authorization: Bearer <key>` to tenant, by key digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.ingress.auth import TenantDirectory
from serve_app.policy import Tenant, hash_api_key, load_policy_file

POLICY = load_policy_file(Path(__file__).resolve().parents[3] / "policies" / "default.yaml")
DEMO = TenantDirectory(POLICY.policy.tenants)


def _tenant(tenant_id: str, *keys: str) -> Tenant:
    return Tenant.model_validate(
        {
            "id": tenant_id,
            "plan": "basic",
            "stripe_customer_id": f"cus_{tenant_id}",
            "api_key_sha256": [hash_api_key(k) for k in keys],
        }
    )


DIRECTORY = TenantDirectory([_tenant("alpha", "key-alpha-1", "key-alpha-2"), _tenant("beta", "kb")])


def _id(tenant: Tenant | None) -> str | None:
    return None if tenant is None else tenant.id


@pytest.mark.parametrize(
    ("key", "tenant_id", "plan"),
    [("rtcts-demo-basic", "demo-basic", "basic"), ("rtcts-demo-pro", "demo-pro", "pro")],
)
def test_demo_keys_of_the_default_policy(key: str, tenant_id: str, plan: str) -> None:
    tenant = DEMO.authenticate(f"Bearer {key}")
    assert tenant is not None
    assert (tenant.id, tenant.plan) == (tenant_id, plan)


def test_known_key_gives_its_tenant() -> None:
    assert _id(DIRECTORY.authenticate("Bearer kb")) == "beta"


def test_every_key_of_a_tenant_works() -> None:
    assert _id(DIRECTORY.authenticate("Bearer key-alpha-1")) == "alpha"
    assert _id(DIRECTORY.authenticate("Bearer key-alpha-2")) == "alpha"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive(scheme: str) -> None:
    assert _id(DIRECTORY.authenticate(f"{scheme} kb")) == "beta"


@pytest.mark.parametrize("header", ["Bearer   kb", "Bearer kb  ", "Bearer \t kb \t"])
def test_spaces_around_the_key_are_ignored(header: str) -> None:
    assert _id(DIRECTORY.authenticate(header)) == "beta"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic a2I6",
        "Token kb",
        "kb",
        "Bearerkb",
        "Bearer unknown-key",
        "Bearer KB",  # keys are case-sensitive
        "Bearer kb extra",
    ],
)
def test_missing_malformed_or_unknown_credentials_give_no_tenant(header: str | None) -> None:
    assert DIRECTORY.authenticate(header) is None


def test_a_key_digest_is_not_accepted_as_a_key() -> None:
    assert DIRECTORY.authenticate(f"Bearer {hash_api_key('kb')}") is None


def test_a_directory_without_tenants_knows_no_key() -> None:
    assert TenantDirectory([]).authenticate("Bearer rtcts-demo-pro") is None
