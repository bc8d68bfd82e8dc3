"""The product's trace loader: the Azure format, other column names, numeric times."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.backtest.trace import TraceError, TraceRequest, load_trace, parse_timestamp
from tests.unit.backtest.conftest import synthetic_trace


def test_the_azure_format_loads(trace_csv: Path) -> None:
    trace = load_trace(trace_csv)
    expected = synthetic_trace()
    assert [(r.prompt_tokens, r.output_tokens) for r in trace] == [
        (r.prompt_tokens, r.output_tokens) for r in expected
    ]
    assert [r.offset_s for r in trace] == pytest.approx([r.offset_s for r in expected])


@pytest.mark.parametrize(
    "header",
    [
        "arrival_time,input_tokens,output_tokens",
        "timestamp,prompt_tokens,completion_tokens",
        "TIME_S,context_tokens,GENERATED_TOKENS",  # case does not matter
    ],
)
def test_other_column_names_and_numeric_times(tmp_path: Path, header: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f"{header}\n12.5,100,7\n10,50,3\n", encoding="utf-8")
    assert load_trace(path) == [TraceRequest(0.0, 50, 3), TraceRequest(2.5, 100, 7)]


def test_iso_timestamps_with_a_t() -> None:
    assert parse_timestamp("2023-11-16T18:15:46.5") == parse_timestamp("2023-11-16 18:15:46.5")


def test_a_missing_column_names_what_else_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens\n1,2\n", encoding="utf-8")
    with pytest.raises(TraceError, match=r"missing column\(s\) GeneratedTokens \(also accepted: "):
        load_trace(path)


def test_a_binary_file_is_a_trace_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TraceError, match="not a text"):
        load_trace(path)
