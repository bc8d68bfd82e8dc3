"""Each tenant's recent mean output tokens per model, to predict the next request's."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

EWMA_WEIGHT = 0.2
"""Weight of the newest observation."""


class OutputHistory:
    """An exponentially weighted mean per (tenant, model), kept in the ingress replica
    and refreshed from Redis at each admission (`adopt`), where every replica's settles
    update the same mean: quote and serve on different replicas predict alike."""

    def __init__(self, weight: float = EWMA_WEIGHT) -> None:
        self._weight = weight
        self._means: dict[str, dict[str, float]] = {}

    def observe(self, tenant_id: str, model_id: str, output_tokens: int) -> None:
        means = self._means.setdefault(tenant_id, {})
        old = means.get(model_id)
        means[model_id] = (
            float(output_tokens) if old is None else old + self._weight * (output_tokens - old)
        )

    def adopt(self, tenant_id: str, means: Mapping[str, float]) -> None:
        """Take the shared means (every ingress replica's settles, from Redis)."""
        self._means.setdefault(tenant_id, {}).update(means)

    def of(self, tenant_id: str) -> Mapping[str, float]:
        return MappingProxyType(self._means.get(tenant_id, {}))
