"""Reading a Prometheus text page (parsed by prometheus_client) and the engine load in it."""

from __future__ import annotations

import math

import pytest

from serve_app.models.prometheus import (
    MetricsParseError,
    Sample,
    UnrecognizedMetrics,
    parse_metrics,
    parse_samples,
    vllm_load,
)

MODEL = "meta-llama/Llama-3.1-8B-Instruct"

# What a vLLM 0.6-era OpenAI server prints on /metrics (trimmed, values made up).
VLLM_V0_METRICS = f"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 14932.0
python_gc_objects_collected_total{{generation="1"}} 3047.0
python_gc_objects_collected_total{{generation="2"}} 128.0
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.72015380927e+09
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{{block_size="16",cache_dtype="auto",num_gpu_blocks="7281"}} 1.0
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="{MODEL}"}} 12.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{{model_name="{MODEL}"}} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="{MODEL}"}} 4.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{model_name="{MODEL}"}} 0.8734375
# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{{model_name="{MODEL}"}} 0.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{model_name="{MODEL}"}} 1.534e+06
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_sum{{model_name="{MODEL}"}} 41.78
vllm:time_to_first_token_seconds_bucket{{le="0.001",model_name="{MODEL}"}} 0.0
vllm:time_to_first_token_seconds_bucket{{le="0.25",model_name="{MODEL}"}} 512.0
vllm:time_to_first_token_seconds_bucket{{le="+Inf",model_name="{MODEL}"}} 530.0
vllm:time_to_first_token_seconds_count{{model_name="{MODEL}"}} 530.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{{finished_reason="stop",model_name="{MODEL}"}} 498.0
vllm:request_success_total{{finished_reason="length",model_name="{MODEL}"}} 20.0
"""

# vLLM V1 with two data-parallel engines: per-engine labels, the newer KV metric name.
VLLM_V1_TWO_ENGINES = f"""\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 7.0
vllm:num_requests_running{{engine="1",model_name="{MODEL}"}} 5.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}} 0.0
vllm:num_requests_waiting{{engine="1",model_name="{MODEL}"}} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{MODEL}"}} 0.25
vllm:kv_cache_usage_perc{{engine="1",model_name="{MODEL}"}} 0.5
"""

TGI_METRICS = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 6
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 16
# TYPE tgi_request_count counter
tgi_request_count 1200
"""


def test_realistic_vllm_page_sums_and_reads_load() -> None:
    metrics = parse_metrics(VLLM_V0_METRICS)

    assert metrics["vllm:num_requests_running"] == 12.0
    assert metrics["vllm:gpu_cache_usage_perc"] == pytest.approx(0.8734375)
    assert metrics["python_gc_objects_collected_total"] == 14932.0 + 3047.0 + 128.0
    assert metrics["vllm:request_success_total"] == 518.0
    assert metrics["process_start_time_seconds"] == pytest.approx(1.72015380927e9)
    assert metrics["vllm:prompt_tokens_total"] == 1_534_000.0
    assert metrics["vllm:time_to_first_token_seconds_count"] == 530.0
    assert "vllm:num_requests_running_bucket" not in metrics
    # Swapped (preempted) requests wait too.
    running, waiting, kv = vllm_load(metrics)
    assert (running, waiting) == (12, 5)
    assert kv == pytest.approx(0.8734375)


def test_vllm_v1_engines_sum_and_kv_usage_is_a_fraction() -> None:
    running, waiting, kv = vllm_load(parse_metrics(VLLM_V1_TWO_ENGINES))

    assert (running, waiting) == (12, 3)
    assert kv == 0.75


def test_kv_usage_is_clamped_to_one() -> None:
    page = 'vllm:num_requests_running 1\nvllm:kv_cache_usage_perc{engine="0"} 0.9\n'
    page += 'vllm:kv_cache_usage_perc{engine="1"} 0.8\n'

    assert vllm_load(parse_metrics(page)) == (1, 0, 1.0)


def test_newer_kv_name_wins_over_the_older_one() -> None:
    page = (
        "vllm:num_requests_waiting 2\nvllm:kv_cache_usage_perc 0.1\nvllm:gpu_cache_usage_perc 0.9\n"
    )

    assert vllm_load(parse_metrics(page)) == (0, 2, 0.1)


def test_tgi_has_batch_and_queue_but_no_kv_usage() -> None:
    assert vllm_load(parse_metrics(TGI_METRICS)) == (16, 6, None)


def test_a_counter_keeps_the_name_the_page_gives_it() -> None:
    metrics = parse_metrics(TGI_METRICS)

    assert metrics["tgi_request_count"] == 1200.0
    assert "tgi_request_count_total" not in metrics


def test_sglang_and_llama_cpp_names() -> None:
    sglang = "sglang:num_running_reqs 3\nsglang:num_queue_reqs 1\nsglang:token_usage 0.4\n"
    llama = "llamacpp:requests_processing 1\nllamacpp:requests_deferred 2\n"

    assert vllm_load(parse_metrics(sglang)) == (3, 1, 0.4)
    assert vllm_load(parse_metrics(llama)) == (1, 2, None)


def test_unknown_engine_is_reported() -> None:
    with pytest.raises(UnrecognizedMetrics):
        vllm_load(parse_metrics("process_start_time_seconds 1.7e9\n"))
    with pytest.raises(UnrecognizedMetrics):
        vllm_load({})


def test_non_finite_counts_read_as_zero_and_nan_kv_as_none() -> None:
    page = "vllm:num_requests_running NaN\nvllm:num_requests_waiting +Inf\n"
    page += "vllm:gpu_cache_usage_perc NaN\n"

    assert vllm_load(parse_metrics(page)) == (0, 0, None)


def test_special_values_exponents_and_timestamps() -> None:
    page = """\
a NaN
b +Inf
c -Inf
d 1.5e-3
e -2E+2 1712345678901
f .5
g 7
"""
    metrics = parse_metrics(page)

    assert math.isnan(metrics["a"])
    assert metrics["b"] == math.inf
    assert metrics["c"] == -math.inf
    assert metrics["d"] == pytest.approx(0.0015)
    assert metrics["e"] == -200.0
    assert metrics["f"] == 0.5
    assert metrics["g"] == 7.0


def test_nan_sample_makes_the_sum_nan() -> None:
    metrics = parse_metrics('x{a="1"} 1\nx{a="2"} NaN\n')

    assert math.isnan(metrics["x"])


def test_label_values_with_escapes_commas_and_braces() -> None:
    page = r'http_requests_total{path="/v1/\"chat\"}, x",note="back\\slash\nline",} 3' + "\n"

    (sample,) = parse_samples(page)

    assert sample == Sample(
        name="http_requests_total",
        labels=(("path", '/v1/"chat"}, x'), ("note", "back\\slash\nline")),
        value=3.0,
    )


def test_spaces_inside_braces_and_tabs_between_fields() -> None:
    (sample,) = parse_samples('m { a = "1" , b="2" }\t4\t1700000000\n')

    assert sample == Sample(name="m", labels=(("a", "1"), ("b", "2")), value=4.0)


def test_openmetrics_exemplar_and_eof_are_ignored() -> None:
    page = """\
# TYPE foo histogram
foo_bucket{le="0.5"} 12 # {trace_id="abc # def"} 0.3 1712345678.1
# EOF
"""
    assert parse_metrics(page) == {"foo_bucket": 12.0}


def test_quoted_utf8_metric_name() -> None:
    (sample,) = parse_samples('{"my.metric", code="200"} 1\n')

    assert sample == Sample(name="my.metric", labels=(("code", "200"),), value=1.0)


def test_comments_and_blank_lines_only() -> None:
    assert parse_metrics("# HELP x y\n\n# TYPE x gauge\n   \n") == {}
    assert parse_metrics("") == {}


@pytest.mark.parametrize(
    "line",
    [
        "<!doctype html><html><body>Not Found</body></html>",
        'x{a="1" 2',
        'x{a="1} 2',
        "x{a=1} 2",
        'x{1a="1"} 2',
        "x one",
        "x",
        "x{} ",
        "x1_000 1_000",
        '{a="1"} 2',
        "x} 1",
    ],
)
def test_malformed_lines_raise_with_their_line_number(line: str) -> None:
    with pytest.raises(MetricsParseError, match="line 2"):
        parse_metrics("# HELP ok\n" + line + "\nok 1\n")
