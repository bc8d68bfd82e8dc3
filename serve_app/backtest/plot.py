"""Charts as plain values, and their geometry: what the SVG (`svg.py`) and the PNG
(`png.py`) renderers draw, so that both show the same thing.

A `LineChart` holds series of (x, y) points (y None: a gap), horizontal reference
lines (the margin floor) and shaded x-bands (the spike). `Frame` maps data to pixels;
y values beyond `y_clip` are drawn at the edge (a margin of −300% would flatten the
rest of the chart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    color: str
    points: tuple[tuple[float, float | None], ...]


@dataclass(frozen=True, slots=True)
class HLine:
    y: float
    label: str
    color: str = "#444444"


@dataclass(frozen=True, slots=True)
class Band:
    x0: float
    x1: float
    label: str
    color: str = "#f6e7c1"


@dataclass(frozen=True, slots=True)
class LineChart:
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    hlines: tuple[HLine, ...] = ()
    bands: tuple[Band, ...] = ()
    percent: bool = False
    """Format y ticks as percentages (y is a fraction)."""
    y_clip: tuple[float, float] | None = None
    log_y: bool = False
    """A logarithmic y axis (decades); values of 0 or less are gaps."""


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi]."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 10))
    return ticks


def format_tick(value: float, percent: bool) -> str:
    if percent:
        return f"{value * 100:.0f}%"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:g}"


@dataclass(frozen=True, slots=True)
class Frame:
    """Pixel geometry of a chart of `width` × `height`: the plot area and the scales."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    x_ticks: tuple[float, ...]
    y_ticks: tuple[float, ...]
    log_y: bool = False

    @property
    def x_range(self) -> tuple[float, float]:
        return self.x_ticks[0], self.x_ticks[-1]

    @property
    def y_range(self) -> tuple[float, float]:
        """The y axis's ends, in log10 on a logarithmic axis."""
        return self._scale(self.y_ticks[0]), self._scale(self.y_ticks[-1])

    def _scale(self, y: float) -> float:
        return math.log10(y) if self.log_y else y

    def px(self, x: float) -> float:
        lo, hi = self.x_range
        return self.left + (x - lo) / (hi - lo) * (self.right - self.left)

    def py(self, y: float) -> float:
        lo, hi = self.y_range
        v = self._scale(y) if y > 0 or not self.log_y else lo
        v = min(max(v, lo), hi)
        return self.bottom - (v - lo) / (hi - lo) * (self.bottom - self.top)


def frame(
    chart: LineChart, width: int, height: int, *, left: int = 64, top: int = 34, bottom: int = 40
) -> Frame:
    """The chart's geometry in a `width` × `height` image with those margins."""
    xs = [x for s in chart.series for x, _ in s.points] + [b.x0 for b in chart.bands]
    xs += [b.x1 for b in chart.bands]
    ys = [y for s in chart.series for _, y in s.points if y is not None]
    ys += [h.y for h in chart.hlines]
    if chart.y_clip is not None:
        ys = [min(max(y, chart.y_clip[0]), chart.y_clip[1]) for y in ys]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if chart.log_y:
        positive = [y for y in ys if y > 0] or [1.0]
        low = math.floor(math.log10(min(positive)))
        high = max(low + 1, math.ceil(math.log10(max(positive))))
        y_ticks = [10.0**k for k in range(low, high + 1)]
    else:
        y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        if chart.percent:
            y_lo = min(y_lo, 0.0)
        y_ticks = nice_ticks(y_lo, y_hi, 6)
    return Frame(
        width=width,
        height=height,
        left=left,
        right=width - 16,
        top=top,
        bottom=height - bottom,
        x_ticks=tuple(nice_ticks(x_lo, x_hi, 8)),
        y_ticks=tuple(y_ticks),
        log_y=chart.log_y,
    )


def points_path(
    f: Frame, points: tuple[tuple[float, float | None], ...]
) -> list[list[tuple[float, float]]]:
    """The series as pixel polylines, split at gaps (None)."""
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for x, y in points:
        if y is None or (f.log_y and y <= 0):
            if current:
                runs.append(current)
            current = []
            continue
        current.append((f.px(x), f.py(y)))
    if current:
        runs.append(current)
    return runs
