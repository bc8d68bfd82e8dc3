"""Issue #12 item 2: the output-token prediction is shared across ingress replicas.

Before, each ingress replica kept its own history of a tenant's output tokens, so a
quote on one replica and the request served on another predicted (and priced and
reserved) differently. Now settles update one mean in Redis, and each admission reads
it back: after a tenant's requests on replica A, replica B predicts the same.
"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.ingress.protocol import ChatCompletionRequest
from serve_app.models.backend import Completion
from tests.adversarial.harness import MODEL, adversary, another_replica, body
from tests.fakes import FakeHandle

pytestmark = pytest.mark.integration

LONG = Completion("x", "stop", 12, 900, ttft_s=0.1, total_s=1.0)


def _predicted(adv: object, request: ChatCompletionRequest) -> int:
    quoted = adv.parts.service.quote(adv.tenant, request)  # type: ignore[attr-defined]
    return int(quoted.decision.candidates[0].predicted_output_tokens)


def test_a_second_replica_predicts_from_the_first_ones_settles(redis_url: str) -> None:
    async def run() -> None:
        a = await adversary(redis_url, FakeHandle(completion=LONG))
        b = await another_replica(a, FakeHandle(completion=LONG))
        request = ChatCompletionRequest.model_validate(body(max_tokens=2000))
        default = _predicted(b, request)
        for _ in range(3):
            await a.chat(body(max_tokens=2000))
        await a.settled()
        assert _predicted(a, request) > default  # A learnt from its own settles
        # B has seen nothing of this tenant yet; its next admission brings the shared mean.
        await b.chat(body(max_tokens=2000))
        assert _predicted(b, request) == _predicted(a, request)
        assert b.parts.service.book.models[MODEL].default_output_tokens == default

    asyncio.run(run())
