"""API key -> tenant, by SHA-256 digest. Plain keys are never stored or logged."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from serve_app.policy import Tenant, hash_api_key


class TenantDirectory:
    """Finds the tenant of an API key. Lookup is by digest: a timing difference can at
    most reveal a digest prefix, never the key; the final comparison is constant-time."""

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        self._by_digest = {digest: t for t in tenants for digest in t.api_key_sha256}

    def authenticate(self, authorization: str | None) -> Tenant | None:
        """The tenant of an `Authorization: Bearer <key>` header, or None."""
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return None
        digest = hash_api_key(key)
        tenant = self._by_digest.get(digest)
        if tenant is None:
            return None
        # Constant-time confirmation of the digest that matched.
        match = next(d for d in tenant.api_key_sha256 if hmac.compare_digest(d, digest))
        return tenant if match else None
