"""deploy/grafana/rtcts.json: valid, every query names a metric rtcts exports (as Ray
exports it, `ray_` first), and every metric rtcts exports is on a panel."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from serve_app.telemetry import RayMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "rtcts.json"
METRIC = re.compile(r"\bray_(rtcts_[a-z0-9_]+)")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


class _Named:
    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.name = name


def exported() -> dict[str, str]:
    """Every metric RayMetrics records: name -> kind."""
    kinds: dict[str, str] = {}

    def maker(kind: str) -> Any:
        def make(name: str, *args: Any, **kwargs: Any) -> _Named:
            kinds[name] = kind
            return _Named(name)

        return make

    RayMetrics(
        SimpleNamespace(
            Counter=maker("counter"), Gauge=maker("gauge"), Histogram=maker("histogram")
        )
    )
    return kinds


def queried() -> list[tuple[str, str]]:
    """(panel title, expression) of every query."""
    document = json.loads(DASHBOARD.read_text("utf-8"))
    return [
        (panel["title"], target["expr"])
        for panel in document["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_dashboard_is_grafana_json_with_a_prometheus_data_source() -> None:
    document = json.loads(DASHBOARD.read_text("utf-8"))
    assert document["uid"]
    assert document["schemaVersion"] >= 30
    (variable,) = document["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in document["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]


def test_every_query_names_a_metric_rtcts_exports() -> None:
    kinds = exported()
    for title, expr in queried():
        names = METRIC.findall(expr)
        assert names, (title, expr)
        for name in names:
            base = name
            for suffix in HISTOGRAM_SERIES:
                if name.endswith(suffix) and name.removesuffix(suffix) in kinds:
                    base = name.removesuffix(suffix)
                    assert kinds[base] == "histogram", (title, name)
            assert base in kinds, (title, name)
            if kinds[base] == "counter":
                assert f"rate(ray_{name}[" in expr, f"a counter is graphed as a rate: {expr}"


def test_every_metric_rtcts_exports_is_on_a_panel() -> None:
    shown = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for _, expr in queried()
        for name in METRIC.findall(expr)
    }
    assert set(exported()) <= shown
