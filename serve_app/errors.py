"""The rtcts exception tree.

Domain errors are raised in the core; only the HTTP edge maps them to
OpenAI-shaped errors. Nothing here knows about HTTP.

    RtctsError
    ├── PolicyError                 a policy file or dict is invalid (carries every issue)
    └── PricingError                a request cannot be priced as asked
        ├── UnknownModelError       neither a model id nor a route alias        (HTTP 404)
        ├── ModelNotInPlanError     the tenant's plan does not sell that model  (HTTP 403)
        └── ContextWindowError      the request fits no candidate's context     (HTTP 400)
"""

from __future__ import annotations

from dataclasses import dataclass


class RtctsError(Exception):
    """Base of every error rtcts raises on purpose."""


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


class PricingError(RtctsError):
    """A request cannot be priced as asked; the message is safe to show to the client."""


class UnknownModelError(PricingError):
    """The requested name is neither a model id nor a route alias of the policy."""


class ModelNotInPlanError(PricingError):
    """The model (or every model of the alias) is not sold by the tenant's plan."""


class ContextWindowError(PricingError):
    """Prompt plus output tokens exceed the context window of every candidate model."""
