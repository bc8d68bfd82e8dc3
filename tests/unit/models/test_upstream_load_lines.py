"""The upstream poller parses only the load lines of a `/metrics` page (`load_lines`),
and reads the same load as from the whole page."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serve_app.models.prometheus import (
    LOAD_METRIC_NAMES,
    MetricsParseError,
    parse_metrics,
    vllm_load,
)
from serve_app.models.upstream import OpenAIUpstream
from serve_app.models.upstream_load import load_lines
from tests.fakes import FakeClock
from tests.unit.models.test_prometheus import TGI_METRICS, VLLM_V0_METRICS, VLLM_V1_TWO_ENGINES

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SGLANG = "sglang:num_running_reqs 4\nsglang:num_queue_reqs 2\nsglang:token_usage 0.5\n"
LLAMA_CPP = (
    "llamacpp:requests_processing 1\nllamacpp:requests_deferred 3\n"
    "llamacpp:kv_cache_usage_ratio 0.25\n"
)


def histograms(n: int) -> str:
    """What makes a real vLLM page long: histograms of many buckets."""
    lines = []
    for h in range(n):
        lines.append(f"# TYPE vllm:histogram_{h}_seconds histogram")
        for le in ("0.01", "0.1", "1.0", "10.0", "+Inf"):
            lines.append(f'vllm:histogram_{h}_seconds_bucket{{le="{le}",model_name="{MODEL}"}} 3.0')
        lines.append(f'vllm:histogram_{h}_seconds_count{{model_name="{MODEL}"}} 3.0')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "page",
    [VLLM_V0_METRICS + histograms(20), VLLM_V1_TWO_ENGINES, TGI_METRICS, SGLANG, LLAMA_CPP],
)
def test_the_load_lines_read_as_the_whole_page(page: str) -> None:
    assert vllm_load(parse_metrics(load_lines(page))) == vllm_load(parse_metrics(page))


def test_only_load_sample_lines_are_kept_in_page_order() -> None:
    kept = load_lines(VLLM_V0_METRICS + histograms(20)).splitlines()
    assert kept == [
        f'vllm:num_requests_running{{model_name="{MODEL}"}} 12.0',
        f'vllm:num_requests_swapped{{model_name="{MODEL}"}} 1.0',
        f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 4.0',
        f'vllm:gpu_cache_usage_perc{{model_name="{MODEL}"}} 0.8734375',
    ]
    assert all(any(name in line for name in LOAD_METRIC_NAMES) for line in kept)


def test_a_name_in_another_metrics_label_is_read_by_that_metrics_own_name() -> None:
    page = (
        'vllm:num_requests_running{model_name="m"} 2\n'
        'engine_info{metric="vllm:num_requests_waiting"} 99\n'
        'vllm:num_requests_waiting{model_name="m"} 1\n'
    )
    assert vllm_load(parse_metrics(load_lines(page))) == (2, 1, None)


def test_a_malformed_line_elsewhere_is_not_read_a_malformed_load_line_is() -> None:
    good = VLLM_V1_TWO_ENGINES + 'some_histogram_bucket{le="1} 2\n'
    assert vllm_load(parse_metrics(load_lines(good))) == (12, 3, 0.75)
    with pytest.raises(MetricsParseError):
        parse_metrics(load_lines("vllm:num_requests_running{model_name=m} 3\n"))


def test_the_backend_reads_its_load_from_a_long_page_with_a_bad_line_elsewhere() -> None:
    page = VLLM_V1_TWO_ENGINES + histograms(50) + "process_open_fds one\n"

    async def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL}]})
        if request.url.path == "/metrics":
            return httpx.Response(200, text=page)
        return httpx.Response(404)

    async def scenario() -> None:
        backend = OpenAIUpstream(
            "http://vllm.internal:8000",
            transport=httpx.MockTransport(server),
            clock=FakeClock(),
            metrics_poll_s=3600,
            start_timeout_s=0,
        )
        await backend.start()
        assert await backend.poll_metrics_once() is True
        report = backend.load()
        assert (report.running, report.queued, report.kv_cache_usage) == (12, 3, 0.75)
        await backend.close()

    asyncio.run(scenario())
