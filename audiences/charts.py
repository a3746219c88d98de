"""Server-rendered SVG charts: readable without JavaScript, and accessible (title, desc, a table twin)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    values: list[int]


def daily_bars(
    *, title: str, days: list[date], series: list[Series], width: int = 720, height: int = 220
) -> SafeString:
    """Grouped bars per day, one colour per series, with a y axis and a legend."""
    left, bottom, top, right = 40, 28, 26, 8
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([1, *(v for s in series for v in s.values)])
    step = plot_w / max(len(days), 1)
    bar_w = max(step / (len(series) + 1), 1.0)
    bars = []
    for i, _day in enumerate(days):
        for j, s in enumerate(series):
            value = s.values[i]
            h = plot_h * value / peak
            x = left + i * step + j * bar_w + bar_w / 2
            bars.append(
                (
                    f"{x:.1f}",
                    f"{top + plot_h - h:.1f}",
                    f"{bar_w:.1f}",
                    f"{h:.1f}",
                    s.colour,
                    f"{s.label} {days[i]:%Y-%m-%d}: {value}",
                )
            )
    ticks = sorted({0, peak // 2, peak})
    axis = [(f"{top + plot_h - plot_h * t / peak:.1f}", t) for t in ticks]
    labels = [
        (f"{left + i * step + step / 2:.1f}", f"{d:%d %b}")
        for i, d in enumerate(days)
        if i % max(len(days) // 6, 1) == 0
    ]
    legend = [(f"{left + k * 150}", s.colour, s.label) for k, s in enumerate(series)]
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-labelledby="chart-title">'
        '<title id="chart-title">{}</title>{}{}{}{}</svg>',
        width,
        height,
        title,
        format_html_join(
            "",
            '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#d5d9e0"/><text x="{}" y="{}" text-anchor="end">{}</text>',
            ((left, width - right, y, y, left - 4, float(y) + 4, t) for y, t in axis),
        ),
        format_html_join("", '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>', bars),
        format_html_join(
            "", '<text x="{}" y="{}" text-anchor="middle">{}</text>', ((x, height - 10, t) for x, t in labels)
        ),
        format_html_join(
            "",
            '<rect x="{}" y="6" width="12" height="12" fill="{}"/><text x="{}" y="16">{}</text>',
            ((x, c, int(x) + 16, label) for x, c, label in legend),
        ),
    )
