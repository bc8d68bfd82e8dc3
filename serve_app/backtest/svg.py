"""Inline SVG for the HTML report: a line chart (`LineChart`) and stacked bars. No
dependencies; text is escaped; every chart is a self-contained `<svg>` element."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from serve_app.backtest.plot import Frame, LineChart, format_tick, frame, nice_ticks, points_path

FAMILY = 'font-family="system-ui, sans-serif"'
FONT = f'{FAMILY} font-size="11"'
TITLE = f'{FAMILY} font-size="13" font-weight="600"'


def _axes(f: Frame, x_label: str, y_label: str, percent: bool) -> list[str]:
    out = []
    for y in f.y_ticks:
        py = f.py(y)
        out.append(
            f'<line x1="{f.left}" x2="{f.right}" y1="{py:.1f}" y2="{py:.1f}" stroke="#e5e5e5"/>'
        )
        out.append(
            f'<text x="{f.left - 6}" y="{py + 4:.1f}" {FONT} text-anchor="end">'
            f"{format_tick(y, percent)}</text>"
        )
    for x in f.x_ticks:
        px = f.px(x)
        out.append(
            f'<text x="{px:.1f}" y="{f.bottom + 16}" {FONT} text-anchor="middle">'
            f"{format_tick(x, False)}</text>"
        )
    out.append(
        f'<rect x="{f.left}" y="{f.top}" width="{f.right - f.left}" '
        f'height="{f.bottom - f.top}" fill="none" stroke="#999"/>'
    )
    out.append(
        f'<text x="{(f.left + f.right) / 2:.0f}" y="{f.height - 8}" {FONT} '
        f'text-anchor="middle">{escape(x_label)}</text>'
    )
    out.append(
        f'<text x="14" y="{(f.top + f.bottom) / 2:.0f}" {FONT} text-anchor="middle" '
        f'transform="rotate(-90 14 {(f.top + f.bottom) / 2:.0f})">{escape(y_label)}</text>'
    )
    return out


def _legend(f: Frame, items: Sequence[tuple[str, str, bool]]) -> list[str]:
    out = []
    x = float(f.right)
    for label, color, dashed in reversed(items):
        x -= 14 + 6.5 * len(label) + 12
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(
            f'<line x1="{x:.0f}" x2="{x + 14:.0f}" y1="32" y2="32" stroke="{color}" '
            f'stroke-width="2.5"{dash}/>'
        )
        out.append(f'<text x="{x + 18:.0f}" y="36" {FONT}>{escape(label)}</text>')
    return out


def line_chart(chart: LineChart, width: int = 760, height: int = 280) -> str:
    f = frame(chart, width, height, top=46)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(chart.title)}">'
    ]
    for band in chart.bands:
        x0, x1 = f.px(band.x0), f.px(band.x1)
        out.append(
            f'<rect x="{x0:.1f}" y="{f.top}" width="{x1 - x0:.1f}" height="{f.bottom - f.top}" '
            f'fill="{band.color}"/>'
        )
        out.append(
            f'<text x="{x0 + 4:.1f}" y="{f.top + 14}" {FONT} fill="#8a6d1f">'
            f"{escape(band.label)}</text>"
        )
    out += _axes(f, chart.x_label, chart.y_label, chart.percent)
    for h in chart.hlines:
        py = f.py(h.y)
        out.append(
            f'<line x1="{f.left}" x2="{f.right}" y1="{py:.1f}" y2="{py:.1f}" stroke="{h.color}" '
            f'stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
    for s in chart.series:
        for run in points_path(f, s.points):
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="1.8"/>'
            )
    out.append(f'<text x="{f.left}" y="18" {TITLE}>{escape(chart.title)}</text>')
    items = [(s.label, s.color, False) for s in chart.series]
    items += [(h.label, h.color, True) for h in chart.hlines]
    out += _legend(f, items)
    out.append("</svg>")
    return "\n".join(out)


def stacked_bars(
    title: str,
    x_label: str,
    y_label: str,
    xs: Sequence[float],
    bar_width: float,
    stacks: Sequence[tuple[str, str, Sequence[float]]],
    width: int = 760,
    height: int = 240,
) -> str:
    """Bars at `xs` (their left edges, `bar_width` wide), one stacked segment per
    (label, color, values) in `stacks`, bottom first."""
    totals = [sum(values[i] for _, _, values in stacks) for i in range(len(xs))]
    x_hi = (xs[-1] + bar_width) if xs else 1.0
    f = Frame(
        width=width,
        height=height,
        left=64,
        right=width - 16,
        top=46,
        bottom=height - 40,
        x_ticks=tuple(nice_ticks(xs[0] if xs else 0.0, x_hi, 8)),
        y_ticks=tuple(nice_ticks(0.0, max(totals, default=1.0) or 1.0, 5)),
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
    ]
    out += _axes(f, x_label, y_label, False)
    for i, x in enumerate(xs):
        x0 = f.px(x)
        w = max(0.5, f.px(x + bar_width) - x0 - 0.5)
        base = 0.0
        for _, color, values in stacks:
            v = values[i]
            if v <= 0:
                continue
            y_top, y_bottom = f.py(base + v), f.py(base)
            out.append(
                f'<rect x="{x0:.1f}" y="{y_top:.1f}" width="{w:.1f}" '
                f'height="{y_bottom - y_top:.1f}" fill="{color}"/>'
            )
            base += v
    out.append(f'<text x="{f.left}" y="18" {TITLE}>{escape(title)}</text>')
    out += _legend(f, [(label, color, False) for label, color, _ in stacks])
    out.append("</svg>")
    return "\n".join(out)
