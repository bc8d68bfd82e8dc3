"""The pieces of the `ray_serve_llm` backend that need no engine: the wire translation,
the choice of live-load source, the LLMConfig of a policy model, the load reporter."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
import pytest
from pydantic import ValidationError

from serve_app.cluster.reports import ReplicaReport
from serve_app.models.backend import (
    BackendUnavailable,
    ChatMessage,
    GenerationFailed,
    GenerationRequest,
    LoadReport,
)
from serve_app.models.ray_llm import spec as ray_llm_spec
from serve_app.models.ray_llm.engine_load import EngineLoad, InProcessMetrics, reconcile
from serve_app.models.ray_llm.protocol import openai_models
from serve_app.models.ray_llm.spec import (
    deployment_options,
    llm_config_fields,
    ray_llm_issues,
    with_resources,
)
from serve_app.models.ray_llm.wire import (
    ChatStreamReader,
    chat_request_fields,
    error_fields,
    generation_request,
    stream_chunk,
    usage_fields,
)
from serve_app.models.reporter import ReplicaReporter
from serve_app.policy.schema import ModelSpec
from tests.fakes import FakeClock, model_dict

REQUEST = GenerationRequest(
    request_id="rid-7",
    messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")),
    max_tokens=12,
    temperature=0.5,
    stop=("\n",),
    seed=3,
)


def _spec(section: dict[str, Any] | None = None, **fields: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        model_dict("rsl", backend="ray_serve_llm", ray_serve_llm=section or {}, **fields)
    )


# -- wire -------------------------------------------------------------------------------


def test_the_chat_request_is_streamed_with_usage_under_the_rtcts_request_id() -> None:
    fields = chat_request_fields(REQUEST, "served-name")

    assert fields["model"] == "served-name"
    assert fields["request_id"] == "rid-7"
    assert (fields["stream"], fields["stream_options"]) == (True, {"include_usage": True})
    assert fields["max_tokens"] == 12
    assert fields["stop"] == ["\n"]


def test_a_chat_request_object_becomes_the_same_generation_request() -> None:
    request = openai_models().ChatCompletionRequest.model_validate(
        chat_request_fields(REQUEST, "m")
    )

    assert generation_request(request, default_max_tokens=99) == REQUEST


def test_content_parts_keep_their_text_and_missing_max_tokens_takes_the_default() -> None:
    request = openai_models().ChatCompletionRequest(
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "x"}]}],
        stop="END",
    )

    generation = generation_request(request, default_max_tokens=99)
    assert generation.messages == (ChatMessage("user", "a"),)
    assert (generation.max_tokens, generation.stop) == (99, ("END",))


def test_the_reader_joins_a_batch_and_ends_with_the_engines_usage() -> None:
    reader = ChatStreamReader(REQUEST)

    assert reader.feed([stream_chunk("c", "m", text="Hel"), stream_chunk("c", "m", text="lo")])
    assert reader.feed([stream_chunk("c", "m", text="", finish_reason="stop")]) == ""
    assert reader.feed([stream_chunk("c", "m", usage=usage_fields(7, 2)), "data: [DONE]\n\n"]) == ""
    last = reader.final()
    assert (last.finish_reason, last.input_tokens, last.output_tokens) == ("stop", 7, 2)


def test_the_reader_counts_tokens_itself_when_the_engine_sent_no_usage() -> None:
    reader = ChatStreamReader(REQUEST)
    reader.feed([stream_chunk("c", "m", text="two words", finish_reason="length")])

    last = reader.final()
    assert last.finish_reason == "length"
    assert last.output_tokens is not None
    assert last.output_tokens > 0


@pytest.mark.parametrize(
    ("code", "error"),
    [(503, BackendUnavailable), (429, BackendUnavailable), (500, GenerationFailed)],
)
def test_an_error_chunk_or_object_raises_by_its_code(code: int, error: type[Exception]) -> None:
    body = error_fields("boom", code)
    with pytest.raises(error, match="boom"):
        ChatStreamReader(REQUEST).feed([f"data: {json.dumps(body)}\n\n"])
    with pytest.raises(error, match="boom"):
        ChatStreamReader(REQUEST).feed([openai_models().ErrorResponse.model_validate(body)])


@pytest.mark.parametrize("finish", [None, "abort", "error"])
def test_a_stream_that_did_not_finish_is_a_failure(finish: str | None) -> None:
    reader = ChatStreamReader(REQUEST)
    reader.feed([stream_chunk("c", "m", text="x", finish_reason=finish)])

    with pytest.raises(GenerationFailed):
        reader.final()


def test_a_malformed_chunk_is_a_failure() -> None:
    with pytest.raises(GenerationFailed, match="malformed"):
        ChatStreamReader(REQUEST).feed(["data: {not json\n\n"])


# -- live load ----------------------------------------------------------------------------


def test_the_engines_figures_never_show_fewer_requests_than_are_in_flight() -> None:
    assert reconcile(2, 3, 0.5, inflight=7, warm=True).queued == 5  # a queue: waits there
    assert reconcile(2, 0, None, inflight=4, warm=True).running == 4  # no queue: runs
    fresh = reconcile(5, 1, 0.25, inflight=2, warm=True)
    assert (fresh.running, fresh.queued, fresh.kv_cache_usage) == (5, 1, 0.25)


def _vllm_registry(
    running: float, waiting: float, kv: float
) -> prometheus_client.CollectorRegistry:
    registry = prometheus_client.CollectorRegistry()
    labels = ["model_name", "engine"]
    for name, value in (
        ("vllm:num_requests_running", running),
        ("vllm:num_requests_waiting", waiting),
        ("vllm:kv_cache_usage_perc", kv),
    ):
        gauge = prometheus_client.Gauge(name, name, labels, registry=registry)
        gauge.labels("m", "0").set(value)
    prometheus_client.Counter("vllm:other", "not read", registry=registry).inc()
    return registry


def test_vllms_gauges_in_this_process_are_the_engines_figures() -> None:
    metrics = InProcessMetrics(_vllm_registry(3, 2, 0.4))

    assert metrics.read() == (3, 2, pytest.approx(0.4))
    report = EngineLoad(metrics).report(object(), inflight=1, warm=True)
    assert (report.running, report.queued, report.kv_cache_usage) == (3, 2, pytest.approx(0.4))


def test_without_engine_figures_the_requests_in_flight_are_counted() -> None:
    metrics = InProcessMetrics(prometheus_client.CollectorRegistry())
    assert metrics.read() is None

    report = EngineLoad(metrics).report(object(), inflight=3, warm=True)
    assert (report.running, report.queued, report.kv_cache_usage) == (3, 0, None)
    assert not EngineLoad(metrics).report(None, inflight=0, warm=True).warm


def test_an_engine_that_reports_its_load_is_read_first() -> None:
    class Reporting:
        def load(self) -> LoadReport:
            return LoadReport(running=2, queued=1, warm=False, kv_cache_usage=0.1)

    report = EngineLoad(InProcessMetrics(_vllm_registry(9, 9, 0.9))).report(
        Reporting(), inflight=0, warm=True
    )
    assert (report.running, report.queued, report.kv_cache_usage, report.warm) == (
        2,
        1,
        0.1,
        False,
    )


# -- the policy model as Ray Serve LLM sees it ------------------------------------------------


def test_the_llm_config_takes_the_batch_context_and_scaling_of_the_spec() -> None:
    spec = _spec(
        {"model_source": "org/model", "stream_batching_interval_ms": 5},
        autoscaling={"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 4},
    )

    fields = llm_config_fields(spec)
    assert fields["model_loading_config"] == {"model_id": "rsl", "model_source": "org/model"}
    assert fields["engine_kwargs"] == {"max_num_seqs": 10, "max_model_len": 4096}
    scaling = fields["deployment_config"]["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (0, 3)
    assert fields["experimental_configs"] == {"stream_batching_interval_ms": 5}
    assert ray_llm_issues(0, spec) == []


def test_an_accelerator_ray_does_not_know_is_an_issue_of_the_section() -> None:
    (issue,) = ray_llm_issues(2, _spec({"accelerator_type": "Z9000"}))

    assert issue.path == "models[2].ray_serve_llm"
    assert "Z9000" in issue.message


def test_engine_vllm_without_vllm_installed_is_an_issue_naming_the_install() -> None:
    (issue,) = ray_llm_issues(0, _spec({"engine": "vllm", "accelerator_type": "L4"}))

    assert issue.path == "models[0].ray_serve_llm.engine"
    assert "pip install" in issue.message


def test_a_missing_llm_extra_is_an_issue_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Any:
        raise ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow")

    monkeypatch.setattr(ray_llm_spec, "serve_llm", missing)
    (issue,) = ray_llm_issues(1, _spec())

    assert issue.path == "models[1].backend"
    assert "pyarrow" in issue.message
    assert "rtcts[llm]" in issue.message


def test_the_simulated_engine_keeps_rtcts_options() -> None:
    options = {"name": "rsl", "ray_actor_options": {"num_cpus": 0}}

    assert deployment_options(_spec(), options) is options


def test_ray_resources_join_the_replicas_own_bundle() -> None:
    options = {"placement_group_bundles": [{"CPU": 1, "GPU": 1}, {"GPU": 1}], "name": "rsl"}

    pinned = with_resources(options, {"gpu_l4": 0.01})

    assert pinned["placement_group_bundles"] == [{"CPU": 1, "GPU": 1, "gpu_l4": 0.01}, {"GPU": 1}]
    assert options["placement_group_bundles"][0] == {"CPU": 1, "GPU": 1}  # not changed
    assert with_resources(options, {}) is options
    bare = with_resources({"ray_actor_options": {"num_cpus": 0}}, {"gpu_l4": 1})
    assert bare["ray_actor_options"] == {"num_cpus": 0, "resources": {"gpu_l4": 1}}


@pytest.mark.parametrize(
    ("section", "fields", "message"),
    [
        (None, {}, "ray_serve_llm is required"),
        ({"engine_kwargs": {"max_num_seqs": 64}}, {}, "max_num_seqs"),
        ({"engine_kwargs": {"max_model_len": 1024}}, {}, "max_model_len"),
        ({"engine": "tensorrt"}, {}, "engine"),
        ({"unknown": 1}, {}, "unknown"),
    ],
)
def test_the_schema_checks_the_section(
    section: dict[str, Any] | None, fields: dict[str, Any], message: str
) -> None:
    model = model_dict("rsl", backend="ray_serve_llm", **fields)
    if section is not None:
        model["ray_serve_llm"] = section
    with pytest.raises(ValidationError, match=message):
        ModelSpec.model_validate(model)


def test_the_section_belongs_to_the_backend_alone() -> None:
    with pytest.raises(ValidationError, match="only for, backend ray_serve_llm"):
        ModelSpec.model_validate(model_dict("m", ray_serve_llm={}))


# -- reporter -------------------------------------------------------------------------------


@dataclass
class _Remote:
    calls: list[Any] = field(default_factory=list)

    def remote(self, *args: Any) -> None:
        self.calls.append(args)


@dataclass
class _Registry:
    report: _Remote = field(default_factory=_Remote)
    forget: _Remote = field(default_factory=_Remote)


def test_the_reporter_counts_down_the_policys_cold_start_then_reports_the_engine() -> None:
    clock, registry = FakeClock(), _Registry()
    load = LoadReport(running=2, queued=1, warm=True, kv_cache_usage=0.3)
    reporter = ReplicaReporter(
        model_id="rsl",
        replica_id="r1",
        send=registry.report.remote,
        withdraw=registry.forget.remote,
        load=lambda: load,
        cold_start_s=30,
        time_scale=0.1,
        cold_start_scale=0.5,
        clock=clock,
        wall_clock=clock,
    )
    clock.now += 0.75  # 15 policy seconds at 0.1 x 0.5
    reporter.report()
    reporter.warm()

    starting, warm = (call[0] for call in registry.report.calls)
    assert isinstance(starting, ReplicaReport)
    assert (starting.warm, starting.start_remaining_s) == (False, pytest.approx(15.0))
    assert (warm.warm, warm.start_remaining_s) == (True, 0.0)
    assert (warm.running, warm.queued, warm.kv_cache_usage) == (2, 1, 0.3)


def test_the_reporter_counts_requests_and_failures_but_not_cancels() -> None:
    registry = _Registry()
    reporter = ReplicaReporter(
        model_id="m",
        replica_id="r1",
        send=registry.report.remote,
        withdraw=registry.forget.remote,
        load=lambda: LoadReport(running=0, queued=0, warm=True),
        cold_start_s=0,
    )
    with reporter.serving("a"):
        assert reporter.inflight == 1
    with pytest.raises(GenerationFailed), reporter.serving("b"):
        raise GenerationFailed("x")
    with pytest.raises(GeneratorExit), reporter.serving("c"):
        raise GeneratorExit
    reporter.report()

    (last,) = (call[0] for call in registry.report.calls)
    assert reporter.inflight == 0
    assert last.failure_rate == pytest.approx(0.5)
    reporter.stop()
    assert registry.forget.calls == [("r1",)]
