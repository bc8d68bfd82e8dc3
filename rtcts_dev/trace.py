"""LLM request traces: the product's loader (`serve_app.backtest.trace`), re-exported for
the development tools and their tests; `rtcts backtest` and `rtcts demo` share it."""

from __future__ import annotations

from serve_app.backtest.trace import (
    COLUMN_NAMES,
    COLUMNS,
    TIMESTAMP_FORMAT,
    TraceError,
    TraceRequest,
    compress,
    load_trace,
    parse_timestamp,
    parse_trace,
)

__all__ = [
    "COLUMNS",
    "COLUMN_NAMES",
    "TIMESTAMP_FORMAT",
    "TraceError",
    "TraceRequest",
    "compress",
    "load_trace",
    "parse_timestamp",
    "parse_trace",
]
