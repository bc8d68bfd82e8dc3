"""Hot reload under load (issue #15 item 4): a changed policy file takes effect without
dropping a request; every request after the reload sees the new version."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import POLICY, auth, chat_body, wait_until

pytestmark = pytest.mark.integration

APP = "rtcts-reload"
PREFIX = "/reload"


def test_a_policy_change_under_load_drops_nothing_and_applies_to_every_later_request(
    ray_serve: str, tmp_path: Path
) -> None:
    from ray import serve

    from serve_app.builder import build_app

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text("utf-8"), "utf-8")
    serve.run(
        build_app(
            {
                "policy_path": str(policy),
                "natural_output": False,
                "app_name": APP,
                "data_dir": str(tmp_path / "data"),
            }
        ),
        name=APP,
        route_prefix=PREFIX,
    )
    url = f"{ray_serve}{PREFIX}"
    try:
        first = wait_until(
            lambda: (
                r
                if (
                    r := httpx.post(
                        f"{url}/v1/chat/completions",
                        json=chat_body("small", max_tokens=4),
                        headers=auth("flex"),
                        timeout=30,
                    )
                ).status_code
                == 200
                else None
            ),
            timeout_s=90,
            every_s=0.5,
        )
        old_version = first.headers["x-rtcts-policy-version"]
        results: list[tuple[float, float, int, str]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    started = time.monotonic()
                    r = client.post(
                        f"{url}/v1/chat/completions",
                        json=chat_body("small", max_tokens=4),
                        headers=auth("flex"),
                    )
                    version = r.headers.get("x-rtcts-policy-version", "")
                    results.append((started, time.monotonic(), r.status_code, version))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        text = policy.read_text("utf-8")
        policy.write_text(text.replace('version: "it-1"', 'version: "it-2"', 1), "utf-8")
        time.sleep(6)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

        assert results
        failed = [r for r in results if r[2] != 200]
        assert not failed, failed[:5]
        new = [r for r in results if r[3] != old_version]
        assert new, "the reload never took effect"
        assert {r[3] for r in new} == {new[0][3]}
        assert new[0][3].startswith("it-2")
        applied_at = min(r[1] for r in new)  # the first answer on the new version ended
        later = [r for r in results if r[0] > applied_at]
        assert later
        assert all(r[3] == new[0][3] for r in later)
    finally:
        serve.delete(APP)
