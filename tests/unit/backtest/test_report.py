"""What a backtest prints and writes: text, JSON, the HTML report, the PNG, progress."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from xml.etree import ElementTree

import pytest

from serve_app.backtest.charts import margin_chart
from serve_app.backtest.html import render_html
from serve_app.backtest.png import line_chart_png
from serve_app.backtest.progress import ProgressBar
from serve_app.backtest.report import render_text, to_dict
from serve_app.backtest.runner import BacktestOptions, BacktestResult, run_backtest


@pytest.fixture
def result(trace_csv: Path) -> BacktestResult:
    options = BacktestOptions(
        trace=trace_csv, hours=0.2, spike=True, spike_start_h=0.05, spike_hours=0.1, seed=1
    )
    return run_backtest(options, Path.cwd())


def test_text_has_the_tables_and_the_summary(result: BacktestResult) -> None:
    text = render_text(result, every=5)
    for name in ("static", "allocated", "incremental"):
        assert f"== {name}: every 5 min" in text
    for label in ("realized margin", "in the spike", "unbilled exposure, peak", "throttled"):
        assert label in text
    assert "== static" not in render_text(result, every=0)


def test_json_is_plain_json_with_integer_money(result: BacktestResult) -> None:
    data = json.loads(json.dumps(to_dict(result), allow_nan=False))
    summary = data["policies"]["static"]["summary"]
    assert isinstance(summary["revenue_micro"], int)
    assert summary["throttled"] == 0
    minutes = data["policies"]["incremental"]["minutes"]
    assert len(minutes) >= 12
    assert isinstance(minutes[0]["gpu_cost_micro"], int)
    assert data["workload"]["spike"]["requests"] > 0


def test_the_html_report_is_self_contained_with_its_charts(result: BacktestResult) -> None:
    page = render_html(result)
    assert page.startswith("<!doctype html>")
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    assert "<script" not in page
    svgs = page.split("<svg")[1:]
    assert len(svgs) == 1 + 3 + 3 + 1  # margin, decisions x3, cost per token x3, unbilled
    for part in svgs:  # each chart is well-formed XML
        ElementTree.fromstring("<svg" + part.split("</svg>")[0] + "</svg>")
    assert "floor 35%" in page


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_png_is_a_valid_image_of_the_margin_chart(result: BacktestResult) -> None:
    data = line_chart_png(margin_chart(result), width=400, height=200)
    assert _png_size(data) == (400, 200)
    # IDAT inflates to one filter byte plus 3 bytes a pixel per row.
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8 : start - 4])[0]
    raw = zlib.decompress(data[start : start + length])
    assert len(raw) == 200 * (1 + 400 * 3)
    assert len(set(raw)) > 3  # not blank: lines and text were drawn


def test_the_progress_bar_redraws_in_place_and_ends_its_line() -> None:
    out = io.StringIO()
    now = [0.0]
    bar = ProgressBar(out, clock=lambda: now[0], interval_s=1.0)
    bar("static", 10, 100)
    bar("static", 20, 100)  # too soon: not drawn
    now[0] = 2.0
    bar("allocated", 100, 100)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 2
    assert text.endswith("\n")
    assert "100.0% 100/100 requests" in text
    assert "allocated" in text
