"""The serving path on real Ray Serve: OpenAI compatibility, live pricing, routing,
cold starts, replica failure. Order matters a little: tests that load or kill a model
come last, each on a model of its own."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import KEYS, auth, chat_body, wait_until

pytestmark = pytest.mark.integration


def _quote(url: str, plan: str, model: str, **extra: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/quote", json=chat_body(model, **extra), headers=auth(plan))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _candidate(quote: dict[str, Any], model: str) -> dict[str, Any]:
    (found,) = [c for c in quote["candidates"] if c["model"] == model]
    return found


def test_openai_client_chats_streams_and_lists_models(app_url: str) -> None:
    client = openai.OpenAI(base_url=f"{app_url}/v1", api_key=KEYS["flex"], max_retries=0)

    completion = client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "Hello!"}], max_tokens=6
    )
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 6
    assert completion.usage.prompt_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Stream, please."}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5

    ids = {m.id for m in client.models.list()}
    assert {"small", "mid", "auto"} <= ids
    assert "big" not in ids  # not in the flex plan


def test_response_headers_carry_the_price(app_url: str) -> None:
    response = httpx.post(
        f"{app_url}/v1/chat/completions", json=chat_body("small"), headers=auth("flex")
    )
    assert response.status_code == 200
    h = response.headers
    assert h["x-rtcts-model"] == "small"
    assert h["x-rtcts-decision"] == "allow"
    assert response.json()["id"] == "chatcmpl-" + h["x-rtcts-request-id"]
    assert len(response.headers.get_list("x-request-id")) == 1
    assert float(h["x-rtcts-price-usd"]) > float(h["x-rtcts-cost-usd"]) > 0
    assert 0.2 <= float(h["x-rtcts-margin"]) < 1
    assert response.json()["rtcts"]["billed_usd"] == h["x-rtcts-price-usd"]


def test_quote_and_served_decision_agree(app_url: str) -> None:
    # max_tokens below every output this tenant has had on mid: the prediction (and so
    # the price) does not depend on which ingress replica's history answers.
    body = chat_body("mid", max_tokens=4)
    quote = httpx.post(f"{app_url}/v1/quote", json=body, headers=auth("premium")).json()
    served = httpx.post(f"{app_url}/v1/chat/completions", json=body, headers=auth("premium"))
    assert served.status_code == 200
    assert served.headers["x-rtcts-decision"] == quote["decision"]
    assert served.headers["x-rtcts-model"] == quote["model"]
    assert served.json()["rtcts"]["quoted_price_usd"] == quote["price_usd"]


def test_client_errors_are_openai_shaped(app_url: str) -> None:
    cases = [
        ({"Authorization": "Bearer nope"}, chat_body("small"), 401, "invalid_api_key"),
        (auth("flex"), chat_body("no-such-model"), 404, "model_not_found"),
        (auth("flex"), chat_body("big"), 403, "model_not_in_plan"),
        (auth("flex"), {"model": "small", "messages": []}, 400, None),
        (auth("flex"), chat_body("small", functions=[{"name": "f"}]), 400, "unsupported_parameter"),
    ]
    for headers, body, status, code in cases:
        response = httpx.post(f"{app_url}/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == code
        assert error["message"]
    too_big = httpx.post(
        f"{app_url}/v1/chat/completions",
        content=b"x" * (5 * 1024 * 1024),
        headers={**auth("flex"), "content-type": "application/json"},
    )
    assert too_big.status_code == 413


def test_scale_to_zero_model_quotes_its_cold_start_then_warms(app_url: str) -> None:
    cold = _candidate(_quote(app_url, "premium", "big"), "big")
    assert cold["live"]["warm_replicas"] == 0
    assert cold["live"]["cold_start_remaining_s"] == pytest.approx(4.0, abs=0.5)
    assert cold["predicted_ttft_ms"] >= 3500

    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["r"] = httpx.post(
            f"{app_url}/v1/chat/completions",
            json=chat_body("big"),
            headers=auth("premium"),
            timeout=120,
        )

    thread = threading.Thread(target=call)
    thread.start()

    def starting() -> bool:
        cluster = httpx.get(f"{app_url}/v1/cluster", headers=auth("premium")).json()
        big = cluster["models"]["big"]
        return bool(big["starting_replicas"]) or any(not r["warm"] for r in big["replicas"])

    wait_until(starting, timeout_s=30, every_s=0.05)
    thread.join(timeout=120)
    assert result["r"].status_code == 200, result["r"].text
    assert result["r"].headers["x-rtcts-decision"] in {"accept_below_floor", "allow"}

    warm = wait_until(
        lambda: (
            c
            if (c := _candidate(_quote(app_url, "premium", "big"), "big"))["live"]["warm_replicas"]
            else None
        ),
        timeout_s=10,
    )
    assert warm["live"]["cold_start_remaining_s"] == 0
    assert warm["predicted_ttft_ms"] < cold["predicted_ttft_ms"] - 3000
    assert float(warm["cost_usd"]) < float(cold["cost_usd"])


def test_loading_a_model_raises_its_quote_flips_auto_and_throttles(app_url: str) -> None:
    before = _quote(app_url, "flex", "auto")
    assert before["model"] == "small"
    small_before = _candidate(before, "small")

    stop = threading.Event()
    threads = [
        threading.Thread(
            target=lambda: httpx.post(
                f"{app_url}/v1/chat/completions",
                json=chat_body("small", max_tokens=600),
                headers=auth("strict"),
                timeout=120,
            )
        )
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    try:
        seen: list[dict[str, Any]] = []

        def loaded() -> dict[str, Any] | None:
            quote = _quote(app_url, "flex", "auto")
            seen.append(quote)
            small = _candidate(quote, "small")
            raised = small["predicted_ttft_ms"] > small_before["predicted_ttft_ms"] + 500 and float(
                small["cost_usd"]
            ) > float(small_before["cost_usd"])
            return quote if raised and quote["model"] == "mid" else None

        try:
            after = wait_until(loaded, timeout_s=10, every_s=0.05)
        except AssertionError:
            pytest.fail(f"before: {small_before}\nlast: {seen[-1] if seen else None}")
        assert after["decision"] == "allow"
        assert _candidate(after, "mid")["feasible"]  # auto moved to another feasible model

        # Once every replica it may have is loaded, a plan without substitution throttles.
        wait_until(
            lambda: _quote(app_url, "strict", "small")["decision"] == "throttle", timeout_s=30
        )
        throttled = httpx.post(
            f"{app_url}/v1/chat/completions",
            json=chat_body("small"),
            headers=auth("strict"),
            timeout=60,
        )
        assert throttled.status_code == 429
        assert throttled.json()["error"]["code"] == "margin_throttled"
        assert int(throttled.headers["retry-after"]) >= 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def test_killed_replica_gives_a_clean_error_and_the_app_recovers(app_url: str) -> None:
    import ray

    from serve_app.cluster.serve_adapter import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from tests.integration.conftest import APP_NAME

    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["r"] = httpx.post(
            f"{app_url}/v1/chat/completions",
            json=chat_body("mid", max_tokens=800),
            headers=auth("flex"),
            timeout=120,
        )

    thread = threading.Thread(target=call)
    thread.start()
    wait_until(
        lambda: any(
            r["running"]
            for r in httpx.get(f"{app_url}/v1/cluster", headers=auth("flex")).json()["models"][
                "mid"
            ]["replicas"]
        ),
        timeout_s=10,
        every_s=0.02,
    )
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    details = ray.get(controller.get_serve_instance_details.remote())
    (replica,) = details["applications"][APP_NAME]["deployments"]["mid"]["replicas"]
    ray.kill(ray.get_actor(replica["actor_name"], namespace=SERVE_NAMESPACE), no_restart=True)
    thread.join(timeout=120)

    response = result["r"]
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "model_failed"

    recovered = wait_until(
        lambda: (
            r
            if (
                r := httpx.post(
                    f"{app_url}/v1/chat/completions",
                    json=chat_body("mid"),
                    headers=auth("flex"),
                    timeout=30,
                )
            ).status_code
            == 200
            else None
        ),
        timeout_s=90,
        every_s=1.0,
    )
    assert recovered.headers["x-rtcts-model"] == "mid"
