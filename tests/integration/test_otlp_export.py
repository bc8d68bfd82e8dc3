"""Traces reach a real OTLP receiver when the standard OpenTelemetry variables say where:
`rtcts run` with `OTEL_EXPORTER_OTLP_ENDPOINT` (and `OTEL_SERVICE_NAME`) set, nothing
rtcts-specific, and a receiver process speaking OTLP/HTTP (tests/otlp_receiver.py).
One chat request gives one trace: rtcts.request with rtcts.quote, rtcts.admission,
rtcts.route and rtcts.settle under it, each with the decision's attributes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import wait_until
from tests.integration.rtcts_process import DEMO_KEY, ROOT, rtcts_run

pytestmark = pytest.mark.integration
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
DECISIONS = ("rtcts.quote", "rtcts.admission", "rtcts.route", "rtcts.settle")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The receiver process: its endpoint and the file its spans land in."""
    out = tmp_path / "spans.jsonl"
    out.touch()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.otlp_receiver", "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on "), line
        yield f"http://127.0.0.1:{int(line.split()[-1])}", out
    finally:
        process.terminate()
        process.wait(timeout=10)


def spans(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text("utf-8").splitlines() if line]


def test_a_chat_is_exported_as_one_trace_over_otlp(
    tmp_path: Path, receiver: tuple[str, Path]
) -> None:
    endpoint, out = receiver
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "rtcts-it",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within a fraction of a second
    }
    with rtcts_run(tmp_path, env, "--time-scale", "0.01") as app:
        answer = httpx.post(
            f"{app.url}/v1/chat/completions",
            json={
                "model": "auto",
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 8,
            },
            headers={
                "Authorization": f"Bearer {DEMO_KEY}",
                "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
            },
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        request_id = answer.headers["x-rtcts-request-id"]
        verified = answer.json()["rtcts"]

        def traced() -> dict[str, dict[str, Any]]:
            mine = [s for s in spans(out) if s["trace_id"] == TRACE_ID]
            names = {s["name"] for s in mine}
            assert {"rtcts.request", *DECISIONS} <= names, names
            return {s["name"]: s for s in mine}

        found = wait_until(traced, timeout_s=60, every_s=0.5)

    request = found["rtcts.request"]
    assert request["parent_span_id"] == PARENT_ID  # the caller's trace, joined
    assert request["resource"]["service.name"] == "rtcts-it"
    assert request["attributes"]["http.response.status_code"] == 200
    for name in DECISIONS:
        span = found[name]
        assert span["parent_span_id"] == request["span_id"], name
        assert span["attributes"]["rtcts.request_id"] == request_id, name
        assert span["end_ns"] >= span["start_ns"] > 0

    quote = found["rtcts.quote"]["attributes"]
    assert quote["rtcts.tenant"] == "demo-pro"
    assert quote["rtcts.plan"] == "pro"
    assert quote["rtcts.requested_model"] == "auto"
    assert quote["rtcts.model"] == verified["model"]
    assert quote["rtcts.decision"] == verified["decision"]
    assert quote["rtcts.reason"] == verified["reason"]
    assert quote["rtcts.price_micro"] == round(float(verified["quoted_price_usd"]) * 1e6)
    assert quote["rtcts.cost_micro"] == round(float(verified["cost_usd"]) * 1e6)
    assert "rtcts.margin" in quote
    assert quote["rtcts.policy_version"] == verified["policy_version"]

    admission = found["rtcts.admission"]["attributes"]
    assert admission["rtcts.tenant"] == "demo-pro"
    assert admission["rtcts.admission"] == "admitted"
    assert admission["rtcts.reserve"] is True

    route = found["rtcts.route"]["attributes"]
    assert route["rtcts.model"] == verified["model"]
    assert route["rtcts.outcome"] == "served"
    assert route["rtcts.output_tokens"] == answer.json()["usage"]["completion_tokens"]

    settle = found["rtcts.settle"]["attributes"]
    assert settle["rtcts.billed_micro"] == round(float(verified["billed_usd"]) * 1e6)
    assert settle["rtcts.margin"] == pytest.approx(verified["margin"])
    assert settle["rtcts.sla_met"] is verified["sla_met"]
    assert settle["rtcts.policy_version"] == verified["policy_version"]
