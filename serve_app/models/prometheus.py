"""Read an inference server's load from its Prometheus `/metrics` page.

`parse_metrics` reads the Prometheus text exposition format (and the OpenMetrics text
that extends it) into one number per metric name, summed over label sets: a server
that labels its gauges by model or engine still reports one queue length.
`vllm_load` picks the batch, the queue and the KV cache usage out of those numbers,
knowing the names vLLM, TGI, SGLang and llama.cpp's server use.

Both are pure functions of text; the upstream backend (`upstream.py`) polls the page.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "MetricsParseError",
    "Sample",
    "UnrecognizedMetrics",
    "parse_metrics",
    "parse_samples",
    "vllm_load",
]

_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:inf|infinity|nan|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)", re.IGNORECASE)
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


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
    naming the line on anything else.
    """
    samples: list[Sample] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            samples.append(_parse_line(line))
        except MetricsParseError as exc:
            shown = line if len(line) <= 120 else line[:117] + "..."
            raise MetricsParseError(f"line {number}: {exc}: {shown!r}") from None
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


def _parse_line(line: str) -> Sample:
    pos = 0
    name = ""
    match = _NAME.match(line)
    if match:
        name = match.group()
        pos = match.end()
    labels: list[tuple[str, str]] = []
    brace = _skip_spaces(line, pos)
    if brace < len(line) and line[brace] == "{":
        quoted_name, labels, pos = _parse_labels(line, brace + 1)
        if quoted_name is not None:
            if name:
                raise MetricsParseError("metric named twice")
            name = quoted_name
    if not name:
        raise MetricsParseError("no metric name")
    rest = line[pos:]
    if rest and not rest[0].isspace():
        raise MetricsParseError("bad character after metric name")
    exemplar = rest.find(" # ")
    if exemplar >= 0:
        rest = rest[:exemplar]
    fields = rest.split()
    if not 1 <= len(fields) <= 2:
        raise MetricsParseError("expected a value and at most a timestamp")
    if not _NUMBER.fullmatch(fields[0]):
        raise MetricsParseError(f"bad value {fields[0]!r}")
    return Sample(name=name, labels=tuple(labels), value=float(fields[0]))


def _parse_labels(line: str, pos: int) -> tuple[str | None, list[tuple[str, str]], int]:
    """Labels from just after `{` to just after `}`; a bare quoted string is the name."""
    labels: list[tuple[str, str]] = []
    quoted_name: str | None = None
    while True:
        pos = _skip_spaces(line, pos)
        if pos >= len(line):
            raise MetricsParseError("unclosed '{'")
        if line[pos] == "}":
            return quoted_name, labels, pos + 1
        if line[pos] == '"':
            key, pos = _parse_quoted(line, pos + 1)
            pos = _skip_spaces(line, pos)
            if pos < len(line) and line[pos] != "=":
                if quoted_name is not None or labels:
                    raise MetricsParseError("quoted metric name must come first")
                quoted_name = key
                pos = _after_item(line, pos)
                continue
        else:
            match = _LABEL_NAME.match(line, pos)
            if not match:
                raise MetricsParseError("bad label name")
            key, pos = match.group(), match.end()
            pos = _skip_spaces(line, pos)
        if pos >= len(line) or line[pos] != "=":
            raise MetricsParseError(f"expected '=' after label {key!r}")
        pos = _skip_spaces(line, pos + 1)
        if pos >= len(line) or line[pos] != '"':
            raise MetricsParseError(f"label {key!r} value is not quoted")
        value, pos = _parse_quoted(line, pos + 1)
        labels.append((key, value))
        pos = _after_item(line, pos)


def _after_item(line: str, pos: int) -> int:
    """Past the `,` after a label (or up to the closing `}`)."""
    pos = _skip_spaces(line, pos)
    if pos < len(line) and line[pos] == ",":
        return pos + 1
    if pos < len(line) and line[pos] == "}":
        return pos
    raise MetricsParseError("expected ',' or '}' after a label")


def _parse_quoted(line: str, pos: int) -> tuple[str, int]:
    """A quoted string's text from just after its opening quote; returns past the close."""
    out: list[str] = []
    while pos < len(line):
        char = line[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\" and pos + 1 < len(line):
            escaped = line[pos + 1]
            out.append(_ESCAPES.get(escaped, "\\" + escaped))
            pos += 2
            continue
        out.append(char)
        pos += 1
    raise MetricsParseError("unclosed quote")


def _skip_spaces(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    return pos
