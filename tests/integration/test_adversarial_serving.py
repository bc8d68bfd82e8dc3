"""Issue #11's hostile tenants against the real app (real Ray Serve, real Redis).

Item 1: the client's `X-Request-ID` is not the admission key. Item 4: a client that
hangs up is no failure of the model. The same items are also tested on the ingress with
fake models in tests/adversarial/.
"""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import auth, chat_body, wait_until

pytestmark = pytest.mark.integration


def test_one_x_request_id_sent_ten_times_is_ten_requests(app_url: str) -> None:
    """Before the fix: all ten admitted under a 3-a-minute limit."""
    codes = []
    ids = set()
    with httpx.Client(timeout=60) as client:
        for _ in range(10):
            response = client.post(
                f"{app_url}/v1/chat/completions",
                json=chat_body("small", max_tokens=4),
                headers={**auth("hostile"), "X-Request-ID": "chosen-by-the-client"},
            )
            codes.append(response.status_code)
            if response.status_code == 200:
                assert response.headers["x-request-id"] == "chosen-by-the-client"  # echoed
                ids.add(response.headers["x-rtcts-request-id"])
    assert codes.count(200) == 3, codes
    assert codes.count(429) == 7, codes
    assert len(ids) == 3
    assert "chosen-by-the-client" not in ids


def test_clients_that_hang_up_do_not_raise_the_failure_rate(app_url: str) -> None:
    """Before the fix: every abandoned stream counted as a failure of the model, and
    the failure rate multiplies every tenant's cost by 1/(1 - f)."""
    for _ in range(8):
        with (
            httpx.Client(timeout=60) as client,
            client.stream(
                "POST",
                f"{app_url}/v1/chat/completions",
                json=chat_body("small", max_tokens=400, stream=True),
                headers=auth("flex"),
            ) as response,
        ):
            assert response.status_code == 200
            for _line in response.iter_lines():
                break  # the first event, then hang up

    def settled() -> bool:
        # One report period later, each replica has reported its cancelled streams.
        cluster = httpx.get(f"{app_url}/v1/cluster", headers=auth("flex"), timeout=5).json()
        small = cluster["models"]["small"]
        return small["predicted"]["failure_rate"] == 0.0 and not any(
            r["running"] for r in small["replicas"]
        )

    wait_until(settled, timeout_s=30)
    cluster = httpx.get(f"{app_url}/v1/cluster", headers=auth("flex"), timeout=5).json()
    assert cluster["models"]["small"]["predicted"]["failure_rate"] == 0.0
