"""Item 2: a price cap bounds the worst case, not the prediction.

Before the fix, `max_price_usd` was checked against the predicted price and the bill
clamped to it, but generation ran to the model's `max_output_tokens`: basic plan, no
`max_tokens`, cap = predicted price gave 4,076 output tokens for 16 µ$. And the token
limit reserved the predicted tokens, not the worst case.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from serve_app.errors import RateLimited
from serve_app.ingress.documents import decision_json
from serve_app.ingress.protocol import ChatCompletionRequest
from serve_app.models.backend import Completion, GenerationRequest
from serve_app.models.tokens import count_chat_tokens
from tests.adversarial.harness import MODEL, adversary, body, micro
from tests.fakes import FakeHandle

pytestmark = pytest.mark.integration


class GeneratesToTheCap(FakeHandle):
    """A model that never stops early: it generates every token it is allowed."""

    async def generate(self, request: GenerationRequest) -> Completion:
        self._note(request)
        prompt = count_chat_tokens(request.messages)
        return Completion("x " * request.max_tokens, "length", prompt, request.max_tokens, 0.1, 1)


def test_output_stops_where_the_cap_is_spent(redis_url: str) -> None:
    async def run() -> None:
        adv = await adversary(redis_url, GeneratesToTheCap(), plan="basic")
        quote = decision_json(
            adv.parts.service.quote(adv.tenant, ChatCompletionRequest.model_validate(body()))
        )
        assert quote["decision"] == "allow", quote
        cap = Decimal(quote["price_usd"])
        response = await adv.chat(body(max_price_usd=str(cap)))
        (request,) = adv.handle.requests
        predicted = quote["candidates"][0]["predicted_output_tokens"]
        model_max = adv.parts.service.book.models[MODEL].max_output_tokens
        # The cap paid for the predicted output: generation stops there, not at 4,096.
        assert predicted <= request.max_tokens <= predicted + 1 < model_max
        (meter,) = adv.meters
        rates = adv.parts.service.book.plans["basic"].rates[MODEL]
        # What the tokens served are worth at list rates never exceeds what was billed.
        worth_pico = (
            meter.input_tokens * rates.input_micro_per_1m
            + meter.output_tokens * rates.output_micro_per_1m
        )
        assert worth_pico <= meter.billed_micro * 1_000_000 + 500_000
        assert meter.billed_micro <= micro(str(cap))
        assert response.headers["x-rtcts-sla-met"] in {"true", "false"}

    asyncio.run(run())


def test_the_token_limit_reserves_the_worst_case(redis_url: str) -> None:
    async def run() -> None:
        # 2,000 tokens a minute: the predicted ~100 fit, a 4,096-token worst case does not.
        adv = await adversary(redis_url, FakeHandle(), limits={"tokens_per_minute": 2000})
        with pytest.raises(RateLimited) as refused:
            await adv.chat(body())
        assert refused.value.code == "tokens_limited"
        assert adv.handle.requests == []
        # With max_tokens within the limit it is served, and settles to the verified count.
        await adv.chat(body(max_tokens=500))
        await adv.settled()
        assert (await adv.usage()).tokens_in_window == 20 + 50

    asyncio.run(run())
