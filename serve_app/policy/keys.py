"""API key digests. Policies store only these; plain keys are never stored or logged."""

from __future__ import annotations

import hashlib


def hash_api_key(api_key: str) -> str:
    """SHA-256 hex digest of an API key (keys are long and random, so no salt is needed)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()
