"""Server-rendered SVG charts: readable without JavaScript, and accessible (title, desc, a table twin)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from django.utils.formats import number_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    values: Sequence[float]


@dataclass(frozen=True)
class Threshold:
    """A level drawn across the chart as a dashed line with its label (a limit the bars should stay under)."""

    label: str
    colour: str
    value: float


def percent(rate: float) -> str:
    """A rate (0.0 to 1.0) as a percentage in the current language, two decimals: 0.0012 → "0.12%"."""
    return f"{number_format(rate * 100, decimal_pos=2)}%"


def daily_bars(
    *,
    title: str,
    days: list[date],
    series: list[Series],
    thresholds: Sequence[Threshold] = (),
    value_label: Callable[[float], str] = str,
    chart_id: str = "chart",
    floor: float = 1,
    axis_width: int = 40,
    right_margin: int | None = None,
    width: int = 720,
    height: int = 220,
) -> SafeString:
    """Grouped bars per day, one colour per series, with a y axis, a legend and optional threshold lines.

    The y axis reaches the highest bar or threshold (at least ``floor``), so a
    threshold is always on the chart. ``value_label`` formats the axis and the
    bars' tooltips (counts as they are, rates as percentages; ``axis_width``
    makes room for longer labels, ``right_margin`` for threshold labels or to
    line up with a chart that has them); ``chart_id`` keeps ids unique when a
    page shows several charts.
    """
    # Threshold labels sit right of the plot, clear of the bars.
    right = right_margin if right_margin is not None else (96 if thresholds else 8)
    left, bottom, top = axis_width, 28, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([floor, *(v for s in series for v in s.values), *(t.value for t in thresholds)])
    if thresholds:
        peak *= 1.15  # the highest line below the top edge
    step = plot_w / max(len(days), 1)
    bar_w = max(step / (len(series) + 1), 1.0)

    def y_of(value: float) -> float:
        return top + plot_h - plot_h * value / peak

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
                    f"{s.label} {days[i]:%Y-%m-%d}: {value_label(value)}",
                )
            )
    # Whole numbers for counts (the overview's axis); halves of the peak for rates.
    middle = peak // 2 if isinstance(peak, int) else peak / 2
    ticks = sorted({0, middle, peak})
    axis = [(f"{y_of(t):.1f}", value_label(t)) for t in ticks]
    labels = [
        (f"{left + i * step + step / 2:.1f}", f"{d:%d %b}")
        for i, d in enumerate(days)
        if i % max(len(days) // 6, 1) == 0
    ]
    legend = [(f"{left + k * 150}", s.colour, s.label) for k, s in enumerate(series)]
    limits = [
        (left, width - right, y, y, t.colour, width - right + 4, f"{float(y) + 4:.1f}", t.label)
        for t in thresholds
        for y in [f"{y_of(t.value):.1f}"]
    ]
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-labelledby="{}-title">'
        '<title id="{}-title">{}</title>{}{}{}{}{}</svg>',
        width,
        height,
        chart_id,
        chart_id,
        title,
        format_html_join(
            "",
            '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#d5d9e0"/><text x="{}" y="{}" text-anchor="end">{}</text>',
            ((left, width - right, y, y, left - 4, float(y) + 4, t) for y, t in axis),
        ),
        format_html_join("", '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>', bars),
        format_html_join(
            "",
            '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="2" stroke-dasharray="6 4"/>'
            '<text x="{}" y="{}">{}</text>',
            limits,
        ),
        format_html_join(
            "", '<text x="{}" y="{}" text-anchor="middle">{}</text>', ((x, height - 10, t) for x, t in labels)
        ),
        format_html_join(
            "",
            '<rect x="{}" y="6" width="12" height="12" fill="{}"/><text x="{}" y="16">{}</text>',
            ((x, c, int(x) + 16, label) for x, c, label in legend),
        ),
    )
