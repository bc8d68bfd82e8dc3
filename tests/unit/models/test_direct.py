"""An `openai_upstream` server the ingress calls itself (`dispatch: ingress`,
models/direct.py): its policy rules, the model standing for one replica in the live
state, requests refused until the server is up, and the wiring in `compose()`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.cluster.reports import ReplicaReport
from serve_app.cluster.serve_adapter import DeploymentInfo
from serve_app.ingress.compose import IngressArgs, Platform, compose
from serve_app.models.backend import (
    BackendUnavailable,
    ChatMessage,
    Completion,
    Delta,
    GenerationRequest,
    LoadReport,
    RequestRejected,
)
from serve_app.models.direct import DirectHandle, DirectModel, DirectModels
from serve_app.policy import Dispatch, ModelSpec, load_policy_dict
from serve_app.serve_config import serve_config
from serve_app.settings import Settings
from serve_app.telemetry import NoMetrics
from tests.fakes import COMPLETION, DELTAS, FakeClock, FakeHandle, model_dict, policy_dict

UPSTREAM = {"backend": "openai_upstream", "upstream_url": "http://127.0.0.1:1/v1"}
REQUEST = GenerationRequest(request_id="r1", messages=(ChatMessage("user", "hi"),), max_tokens=8)


def _spec(**overrides: Any) -> ModelSpec:
    return ModelSpec.model_validate(model_dict("up", **{**UPSTREAM, **overrides}))


class FakeServer:
    """A backend that starts when told to, and counts its open streams."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.inflight = 0
        self.open_streams = 0
        self.closed = False

    async def start(self) -> None:
        await self.up.wait()

    async def generate(self, request: GenerationRequest) -> Completion:
        self.inflight += 1
        try:
            await asyncio.sleep(0)
            return COMPLETION
        finally:
            self.inflight -= 1

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.open_streams += 1
        try:
            for delta in DELTAS:
                yield delta
        finally:
            self.open_streams -= 1

    def load(self) -> LoadReport:
        return LoadReport(running=self.inflight, queued=0, warm=True)

    async def close(self) -> None:
        self.closed = True


# ------------------------------------------------------------------------------- policy


def test_an_upstream_is_called_from_the_ingress_unless_the_policy_says_otherwise() -> None:
    assert _spec().dispatched_from_ingress
    assert not _spec(dispatch="deployment").dispatched_from_ingress
    assert not ModelSpec.model_validate(model_dict("sim")).dispatched_from_ingress


def test_only_an_upstream_can_be_called_from_the_ingress() -> None:
    with pytest.raises(ValidationError, match="openai_upstream models only"):
        ModelSpec.model_validate(model_dict("sim", dispatch=Dispatch.INGRESS.value))


def test_an_upstream_called_from_the_ingress_does_not_autoscale() -> None:
    """It is one server: a policy that scales it (or to zero) must say `deployment`,
    else the pricing would count replicas, and their cost, that can never exist."""
    scaled = {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 8}
    with pytest.raises(ValidationError, match="one fixed server"):
        _spec(autoscaling=scaled)
    assert _spec(autoscaling=scaled, dispatch="deployment").autoscaling.max_replicas == 4


def test_serve_config_has_no_deployment_for_an_upstream_the_ingress_calls() -> None:
    loaded = load_policy_dict(policy_dict(models=[model_dict("sim"), model_dict("up", **UPSTREAM)]))
    app = serve_config(loaded, Settings.from_env({}))["applications"][0]
    assert [d["name"] for d in app["deployments"]] == ["sim"]


# ------------------------------------------------------------------------- the replica


def test_the_server_is_one_replica_starting_then_running_and_serving() -> None:
    async def scenario() -> None:
        clock, server = FakeClock(), FakeServer()
        model = DirectModel(_spec(), "up@i1", backend=server, clock=clock, wall_clock=clock)
        handle = DirectHandle(model)
        model.start()
        await asyncio.sleep(0)
        starting = model.deployment()
        assert starting.replicas[0].state == "STARTING"
        assert starting.target_replicas == 1
        report = model.report()
        assert report is not None
        assert not report.warm
        assert report.replica_id == "up@i1"
        with pytest.raises(BackendUnavailable):  # not up: failed fast, never billed
            await handle.options(method_name="generate").remote(REQUEST)

        server.up.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert model.deployment().replicas[0].state == "RUNNING"
        report = model.report()
        assert report is not None
        assert report.warm
        assert await handle.options(method_name="generate").remote(REQUEST) == COMPLETION
        stream = handle.options(method_name="stream", stream=True).remote(REQUEST)
        assert [d async for d in stream] == list(DELTAS)
        with pytest.raises(RequestRejected, match="embeddings"):
            await handle.options(method_name="embed").remote(REQUEST)

        await model.stop()
        assert server.closed
        assert model.report() is None

    asyncio.run(scenario())


def test_a_stream_left_early_closes_the_servers_stream() -> None:
    async def scenario() -> None:
        server = FakeServer()
        server.up.set()
        model = DirectModel(_spec(), "up@i1", backend=server)
        model.start()
        for _ in range(5):
            await asyncio.sleep(0)
        stream = DirectHandle(model, "stream", True).remote(REQUEST)
        assert (await anext(stream)) == DELTAS[0]
        assert server.open_streams == 1
        await stream.aclose()  # the client left
        assert server.open_streams == 0
        await model.stop()

    asyncio.run(scenario())


def test_compose_gives_the_service_a_handle_and_the_state_the_replica() -> None:
    """The upstream's handle joins the deployments' handles, and its report and listing
    join the registry's and the controller's: the pricing sees it like any model."""
    policy = policy_dict(models=[model_dict("sim"), model_dict("up", **UPSTREAM)])
    loaded = load_policy_dict(policy)

    async def fetch_reports() -> list[ReplicaReport]:
        return []

    async def fetch_deployments() -> dict[str, DeploymentInfo]:
        return {}

    platform = Platform(
        fetch_reports, fetch_deployments, NoMetrics(), lambda c: None, replica_id="i7"
    )
    args = IngressArgs(policy=loaded.policy.model_dump(mode="json"))

    async def scenario() -> None:
        parts = compose(args, {"sim": FakeHandle()}, platform)
        assert list(parts.direct.models) == ["up"]
        model = parts.direct.models["up"]
        model._report = ReplicaReport("up", "up@i7", 3, 0, True, 0.0, 0.0)
        await parts.state.refresh_load()
        await parts.state.refresh_replicas()
        view = parts.state.view()
        assert [r["replica_id"] for r in view["up"]["replicas"]] == ["up@i7"]
        assert view["up"]["running_replicas"] == 0  # not connected: listed as starting
        assert view["up"]["starting_replicas"] == 1

    asyncio.run(scenario())


def test_no_direct_models_change_nothing() -> None:
    direct = DirectModels({})
    listed: dict[str, DeploymentInfo] = {}
    reports: list[ReplicaReport] = []
    assert direct.deployments(listed) is listed
    assert direct.reports(reports) is reports


def test_with_every_model_called_from_the_ingress_the_registry_is_never_asked() -> None:
    asked: list[str] = []

    async def fetch_reports() -> list[ReplicaReport]:
        asked.append("registry")
        return []

    async def fetch_deployments() -> dict[str, DeploymentInfo]:
        return {}

    platform = Platform(fetch_reports, fetch_deployments, NoMetrics(), lambda c: None)

    async def refresh(models: list[dict[str, Any]]) -> None:
        policy = load_policy_dict(policy_dict(models=models)).policy
        parts = compose(IngressArgs(policy=policy.model_dump(mode="json")), {}, platform)
        await parts.state.refresh_load()

    asyncio.run(refresh([model_dict("up", **UPSTREAM)]))
    assert asked == []
    asyncio.run(refresh([model_dict("up", **UPSTREAM), model_dict("sim")]))
    assert asked == ["registry"]
