"""The pure pricing core: cost-to-serve, price, margin and the routing decision.

Nothing here imports Ray, Redis, HTTP or the clock; inputs are plain typed values.
"""

from serve_app.pricing.book import ModelProfile, PlanTerms, PriceBook, Rates
from serve_app.pricing.decision import decide, quote
from serve_app.pricing.types import (
    Action,
    CandidateQuote,
    ClusterSnapshot,
    Decision,
    Infeasibility,
    ModelLoad,
    PriceRequest,
    Reason,
    ReplicaLoad,
)
from serve_app.pricing.window import CostBasis, WindowMargin

__all__ = [
    "Action",
    "CandidateQuote",
    "ClusterSnapshot",
    "CostBasis",
    "Decision",
    "Infeasibility",
    "ModelLoad",
    "ModelProfile",
    "PlanTerms",
    "PriceBook",
    "PriceRequest",
    "Rates",
    "Reason",
    "ReplicaLoad",
    "WindowMargin",
    "decide",
    "quote",
]
