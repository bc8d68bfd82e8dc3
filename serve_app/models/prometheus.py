"""Read an inference server's load from its Prometheus `/metrics` page.

`parse_metrics` reads the Prometheus text exposition format (and the OpenMetrics text
that extends it) into one number per metric name, summed over label sets: a server
that labels its gauges by model or engine still reports one queue length. The
parsing itself is `prometheus_client`'s (a dependency of Ray).
`vllm_load` picks the batch, the queue and the KV cache usage out of those numbers,
knowing the names vLLM, TGI, SGLang and llama.cpp's server use.

Both are pure functions of text; the upstream backend (`upstream.py`) polls the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "LOAD_METRIC_NAMES",
    "MetricsParseError",
    "Sample",
    "UnrecognizedMetrics",
    "parse_metrics",
    "parse_samples",
    "vllm_load",
]


class MetricsParseError(ValueError):
    """The text is not in the Prometheus text exposition format."""


class UnrecognizedMetrics(LookupError):
    """The metrics hold none of the load metrics of an engine this module knows."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample line: a metric name, its labels and its value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


def parse_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text page, in order.

    Comments (`# HELP`, `# TYPE`, `# EOF`, any `#` line) and blank lines are skipped;
    label values may hold escaped quotes, backslashes and newlines, commas and braces;
    values may be `NaN`, `+Inf`, `-Inf` or use exponents; a trailing timestamp and an
    OpenMetrics exemplar (`# {...} value`) are ignored. Raises `MetricsParseError`
    naming the line on anything `prometheus_client` rejects.

    Each line goes to `prometheus_client` alone, as an untyped sample: so every sample
    keeps the name it is written with (given a `# TYPE ... counter` line the library
    names a counter's samples `..._total` whether or not the page does), and an error
    can name its line. The `#` lines carry nothing a sum needs.
    """
    samples: list[Sample] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            families = list(text_string_to_metric_families(line))
        except ValueError as exc:  # the library's one error for text it cannot read
            shown = line if len(line) <= 120 else line[:117] + "..."
            raise MetricsParseError(f"line {number}: {exc or 'malformed'}: {shown!r}") from None
        samples.extend(
            Sample(name=s.name, labels=tuple(s.labels.items()), value=float(s.value))
            for family in families
            for s in family.samples
        )
    return samples


def parse_metrics(text: str) -> dict[str, float]:
    """Metric name → sum of its samples over all label sets (see `parse_samples`).

    A histogram's or summary's series keep their own names (`x_bucket`, `x_sum`,
    `x_count`); a `NaN` sample makes its metric's sum `NaN`.
    """
    totals: dict[str, float] = {}
    for sample in parse_samples(text):
        totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


# (running, waiting, kv cache usage) metric names per engine; waiting sums its names.
_ENGINES: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (
        ("vllm:num_requests_running",),
        ("vllm:num_requests_waiting", "vllm:num_requests_swapped"),
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ),
    (("tgi_batch_current_size",), ("tgi_queue_size",), ()),
    (("sglang:num_running_reqs",), ("sglang:num_queue_reqs",), ("sglang:token_usage",)),
    (
        ("llamacpp:requests_processing",),
        ("llamacpp:requests_deferred",),
        ("llamacpp:kv_cache_usage_ratio",),
    ),
)


LOAD_METRIC_NAMES = frozenset(name for engine in _ENGINES for names in engine for name in names)
"""Every metric name `vllm_load` reads (a poller may parse only the lines holding one)."""


def vllm_load(metrics: Mapping[str, float]) -> tuple[int, int, float | None]:
    """(running, waiting, kv cache usage 0..1 or None) from `parse_metrics` output.

    Knows vLLM (`vllm:num_requests_running`, `vllm:num_requests_waiting` plus
    `vllm:num_requests_swapped` where v0 reports preempted requests, and
    `vllm:kv_cache_usage_perc` or the older `vllm:gpu_cache_usage_perc`, both
    fractions despite the name), TGI (`tgi_batch_current_size`, `tgi_queue_size`; no
    KV usage), SGLang and llama.cpp's server. Non-finite or negative counts read as 0;
    KV usage is clamped to 0..1 (several engines' fractions add up past 1) and is None
    where the engine reports none or reports `NaN`. Raises `UnrecognizedMetrics` when
    neither a running nor a waiting metric of a known engine is present.
    """
    for running_names, waiting_names, kv_names in _ENGINES:
        if not any(name in metrics for name in (*running_names, *waiting_names)):
            continue
        running = sum(_count(metrics.get(name)) for name in running_names)
        waiting = sum(_count(metrics.get(name)) for name in waiting_names)
        kv: float | None = None
        for name in kv_names:
            value = metrics.get(name)
            if value is not None and not math.isnan(value):
                kv = min(1.0, max(0.0, value))
                break
        return running, waiting, kv
    raise UnrecognizedMetrics(
        "no known engine load metrics (vllm:num_requests_running, tgi_queue_size, ...)"
    )


def _count(value: float | None) -> int:
    if value is None or not math.isfinite(value) or value <= 0:
        return 0
    return round(value)
