"""Hot reload of the policy file (`ingress/reload.py`), on the real `compose()`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import pytest

from serve_app.cli import main
from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo
from serve_app.ingress.app import answer_chat
from serve_app.ingress.compose import IngressArgs, IngressParts, Platform, compose
from serve_app.ingress.protocol import ChatCompletionRequest
from serve_app.metering.meter import MemorySink
from serve_app.policy import load_policy_file
from serve_app.telemetry import NoMetrics
from tests.fakes import FakeHandle

DEFAULT = Path(__file__).resolve().parents[3] / "policies" / "default.yaml"
PRO = "Bearer rtcts-demo-pro"
MODEL = "qwen2.5-32b"
BODY = ChatCompletionRequest.model_validate(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
)


def _parts(path: Path, handle: FakeHandle) -> IngressParts:
    async def reports() -> list[ReplicaReport]:
        return [ReplicaReport(MODEL, "r1", 16, 0, True, 0.0, 1_000.0)]

    async def deployments() -> dict[str, DeploymentInfo]:
        return {}

    loaded = load_policy_file(path)
    args = IngressArgs(
        policy=loaded.policy.model_dump(mode="json"),
        policy_source=str(path),
        policy_path=str(path),
    )
    platform = Platform(reports, deployments, NoMetrics(), lambda c: None, clock=lambda: 1_000.0)
    models = [m.id for m in loaded.policy.models]
    parts = compose(args, dict.fromkeys(models, handle), platform)
    asyncio.run(parts.state.refresh_load())
    return parts


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text("utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), "utf-8")


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(DEFAULT.read_text("utf-8"), "utf-8")
    return path


def test_a_changed_price_applies_to_new_requests_and_in_flight_ones_keep_theirs(
    policy: Path,
) -> None:
    parts = _parts(policy, FakeHandle())
    reloader = parts.reloader
    assert reloader is not None
    service = parts.service
    old_version = service.policy.version

    async def run() -> None:
        tenant = service.authenticate(PRO)
        in_flight = await service.start(tenant, BODY)  # decided on the old version
        # pro's tier-2 output price doubles: 3.50 -> 7.00 USD per 1M tokens
        _rewrite(
            policy,
            "2: {input_usd_per_1m_tokens: 0.50, output_usd_per_1m_tokens: 3.50}",
            "2: {input_usd_per_1m_tokens: 0.50, output_usd_per_1m_tokens: 7.00}",
        )
        assert reloader.check()
        assert service.policy.version != old_version
        assert parts.views.policy.version == service.policy.version
        old = await service.complete(in_flight)
        assert old.call.decision.policy_version == old_version
        # Billed at the terms it was quoted: 20 in x 0.50 + 50 out x 3.50 = 185 micro-USD
        # (the new card would make it 20 x 0.50 + 50 x 7.00 = 360).
        assert old.bill.list_price_micro == 185
        response = await answer_chat(service, tenant, BODY, None)
        assert response.headers["x-rtcts-policy-version"] == service.policy.version
        rtcts = json.loads(bytes(response.body))["rtcts"]
        assert float(rtcts["billed_usd"]) > float(old.bill.billed_micro) / 1e6

    asyncio.run(run())
    meters = list(parts.sink.meters) if isinstance(parts.sink, MemorySink) else []
    assert [m.policy_version for m in meters] == [old_version, service.policy.version]


def test_an_invalid_file_is_refused_with_the_validators_message_and_the_old_policy_serves(
    policy: Path,
) -> None:
    parts = _parts(policy, FakeHandle())
    reloader = parts.reloader
    assert reloader is not None
    version = parts.service.policy.version
    _rewrite(policy, "margin_floor: 0.35", "margin_floor: 1.5")
    assert not reloader.check()
    assert parts.service.policy.version == version
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        assert main(["policy", "validate", str(policy)]) == 1
    assert reloader.refused is not None
    assert reloader.refused.strip() == stderr.getvalue().strip()
    # Fixed again: applied.
    _rewrite(policy, "margin_floor: 1.5", "margin_floor: 0.4")
    assert reloader.check()
    assert reloader.refused is None
    assert parts.service.policy.version != version


def test_a_change_to_model_deployments_is_refused_until_a_redeploy(policy: Path) -> None:
    parts = _parts(policy, FakeHandle())
    reloader = parts.reloader
    assert reloader is not None
    version = parts.service.policy.version
    _rewrite(policy, "max_output_tokens: 4096", "max_output_tokens: 2048")
    assert not reloader.check()
    assert parts.service.policy.version == version
    assert reloader.refused is not None
    assert "model 'qwen2.5-32b' changed" in reloader.refused
    assert "redeploy" in reloader.refused
