"""Shared pieces of the backtest tests: a small policy and a synthetic trace, and the
`slow` marker: slow tests (the acceptance run on the whole Azure trace, about a
minute) run only when selected, `pytest -m slow tests/unit/backtest`."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.backtest.trace import TraceRequest
from serve_app.policy import LoadedPolicy, load_policy_file

ROOT = Path(__file__).resolve().parents[3]
SLOW = "slow"
AZURE_TRACE = ROOT.parent / "shared" / "data" / "azure_llm_trace_conv_2023.csv"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{SLOW}: runs for a minute or more; only with -m slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SLOW in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="slow: select it with -m slow")
    for item in items:
        if SLOW in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def backtest_policy() -> LoadedPolicy:
    return load_policy_file(ROOT / "policies" / "backtest.yaml")


def synthetic_trace(count: int = 600, gap_s: float = 0.2) -> list[TraceRequest]:
    """`count` requests `gap_s` apart with a varied, repeatable token mix."""
    return [
        TraceRequest(i * gap_s, 200 + (i * 137) % 1800, 20 + (i * 53) % 300) for i in range(count)
    ]


@pytest.fixture
def trace_csv(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for r in synthetic_trace():
        whole = int(r.offset_s)
        fraction = round((r.offset_s - whole) * 10_000_000)
        minute, second = divmod(whole, 60)
        lines.append(
            f"2023-11-16 18:{15 + minute:02d}:{second:02d}.{fraction:07d},"
            f"{r.prompt_tokens},{r.output_tokens}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
