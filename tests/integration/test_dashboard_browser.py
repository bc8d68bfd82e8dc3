"""The live margin dashboard in a real browser: headless Chromium (Debian's package)
opens /dashboard on `rtcts run` under `rtcts demo` load, types the admin key into the
page's form (never into a URL), and two screenshots a few refreshes apart are checked:
every plot is drawn (SVG marks in the page, coloured pixels in its screenshot) and the
figures move between the two.

`RTCTS_DASHBOARD_SCREENSHOT=docs/dashboard.png` also saves the full page there (how the
README's screenshot is made)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chromium import Chromium, Page, chromium_binary, png_pixels
from tests.integration.rtcts_process import ADMIN_KEY, BIN, ROOT, rtcts_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        chromium_binary() is None,
        reason="Debian's chromium is not installed (apt-get install -y chromium)",
    ),
]
WIDTH, HEIGHT = 1400, 2400
REFRESH_S = 3.0
CHARTS = """[...document.querySelectorAll('svg.chart')].map((svg) => {
  const r = svg.getBoundingClientRect();
  return {card: svg.closest('.card').id, label: svg.getAttribute('aria-label'),
          marks: svg.querySelectorAll('.mark').length, x: r.x, y: r.y, w: r.width, h: r.height};
})"""


def coloured(png: bytes) -> int:
    """Pixels of a plot's screenshot that are a series' colour (axes, grid and labels
    are grey)."""
    _, _, rows = png_pixels(png)
    count = 0
    for row in rows:
        for i in range(0, len(row), 3):
            r, g, b = row[i], row[i + 1], row[i + 2]
            if max(r, g, b) - min(r, g, b) > 60:
                count += 1
    return count


def shots(page: Page) -> dict[str, tuple[dict[str, Any], bytes]]:
    """Each plot by its label: where it is and its screenshot."""
    charts: list[dict[str, Any]] = page.evaluate(CHARTS)
    assert all(c["y"] + c["h"] <= HEIGHT for c in charts), "a plot is below the viewport"
    return {c["label"]: (c, page.screenshot(clip=(c["x"], c["y"], c["w"], c["h"]))) for c in charts}


def test_the_dashboard_draws_live_plots_under_demo_load(tmp_path: Path) -> None:
    with rtcts_run(tmp_path / "app", {}, "--time-scale", "0.1") as app:
        demo_log = tmp_path / "demo.log"
        with demo_log.open("wb") as out:
            demo = subprocess.Popen(
                [
                    str(BIN / "rtcts"),
                    "demo",
                    "--url",
                    app.url,
                    "--duration-s",
                    "240",
                    "--speed",
                    "2",
                    "--max-concurrency",
                    "24",
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            with (
                Chromium.start(tmp_path / "profile", WIDTH, HEIGHT) as browser,
                browser.page(WIDTH, HEIGHT) as page,
            ):
                page.navigate(f"{app.url}/dashboard")
                page.wait_for("!document.getElementById('login').hidden")
                assert page.evaluate("document.querySelectorAll('svg.chart').length") == 0
                page.type_into("#key", ADMIN_KEY)
                page.evaluate("document.querySelector('#login button[type=submit]').click()")
                page.wait_for("!document.getElementById('board').hidden", 30)
                assert ADMIN_KEY not in page.evaluate("location.href")
                assert page.evaluate("sessionStorage.getItem('rtcts.adminKey')") == ADMIN_KEY
                # The demo's traffic (the pro plan) shows as decision bars.
                page.wait_for("document.querySelector('#plan-pro rect.mark') !== null", 120)
                page.wait_for("document.querySelectorAll('#models path.mark').length >= 3", 30)
                text_before = page.evaluate("document.getElementById('board').innerText")
                first = shots(page)
                time.sleep(3 * REFRESH_S)
                second = shots(page)
                text_after = page.evaluate("document.getElementById('board').innerText")
                full = page.screenshot()
        finally:
            demo.terminate()
            demo.wait(timeout=30)

    (tmp_path / "dashboard.png").write_bytes(full)
    target = os.environ.get("RTCTS_DASHBOARD_SCREENSHOT")
    if target:
        Path(target).write_bytes(full)
    width, height, _ = png_pixels(full)
    assert (width, height) == (WIDTH, HEIGHT)

    labels = set(first)
    assert labels == set(second)
    # Per model: the realized margin and the live queue/batch/replicas; per plan: the
    # decisions and the money; and the billing lag.
    policy = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    assert len(labels) == 2 * len(policy["models"]) + 2 * len(policy["plans"]) + 1, labels
    for label in labels:
        place, png = second[label]
        assert png_pixels(png)[0] >= 300, label
    pro_bars = second["pro decisions per 10 s"]
    assert pro_bars[0]["marks"] > 0
    assert coloured(pro_bars[1]) > 100  # bars drawn, not an empty frame
    for label in labels:
        if label.endswith("queue, batch and replicas"):
            place, png = second[label]
            assert place["marks"] > 0, label
            assert coloured(png) > 50, label  # lines drawn
    changed = [label for label in labels if first[label][1] != second[label][1]]
    assert "pro decisions per 10 s" in changed or "pro revenue and credits" in changed
    assert len(changed) >= len(labels) // 2, changed
    assert text_before != text_after  # the figures moved
