"""Server-side SVG charts: stacked bars per day, one colour per model, with a legend.

No JavaScript and no chart library: the page stays fast and works with scripts off. Each
chart comes with a data table (the accessible fallback), rendered next to it. The markup is
built in Python (chart_html): a chart has up to hundreds of bars, and the template engine
would spend most of the page's time on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

PALETTE = ["#4f46e5", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#8b5cf6", "#14b8a6", "#f97316"]
OTHER_COLOUR = "#9ca3af"
WIDTH, HEIGHT = 720, 220
LEFT, BOTTOM, TOP = 64, 28, 12


@dataclass(frozen=True)
class Segment:
    x: float
    y: float
    width: float
    height: float
    colour: str
    label: str


@dataclass(frozen=True)
class AxisLabel:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    segments: list[Segment]
    x_labels: list[AxisLabel]
    y_labels: list[AxisLabel]
    gridlines: list[float]
    legend: list[tuple[str, str]]
    empty: bool


def stacked_bars(
    *,
    title: str,
    days: list[date],
    series: dict[str, list[int]],
    order: list[str],
    fmt: object,
) -> Chart:
    """A stacked bar chart of `series` (model → value per day); `fmt` formats axis values."""
    formatter = fmt if callable(fmt) else str
    shown = order[: len(PALETTE)]
    colours = {model: PALETTE[i] for i, model in enumerate(shown)}
    rest = [m for m in order if m not in colours]
    stacks: list[list[tuple[str, int]]] = []
    for i in range(len(days)):
        stack = [(model, series[model][i]) for model in shown if series[model][i]]
        other = sum(series[m][i] for m in rest)
        if other:
            stack.append(("other models", other))
        stacks.append(stack)
    top = max((sum(v for _, v in stack) for stack in stacks), default=0)
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(1, len(days))
    bar_w = max(1.0, slot * 0.72)
    segments = []
    for i, stack in enumerate(stacks):
        y: float = TOP + plot_h
        for model, value in stack:
            h = plot_h * value / top if top else 0.0
            y -= h
            segments.append(
                Segment(
                    x=round(LEFT + i * slot + (slot - bar_w) / 2, 2),
                    y=round(y, 2),
                    width=round(bar_w, 2),
                    height=round(h, 2),
                    colour=colours.get(model, OTHER_COLOUR),
                    label=f"{days[i]:%-d %b}: {model} {formatter(value)}",
                )
            )
    step = max(1, len(days) // 8)
    x_labels = [
        AxisLabel(round(LEFT + i * slot + slot / 2, 2), HEIGHT - 8, f"{day:%-d %b}")
        for i, day in enumerate(days)
        if i % step == 0
    ]
    gridlines = [round(TOP + plot_h * (1 - f), 2) for f in (0, 0.5, 1)]
    y_labels = [
        AxisLabel(LEFT - 6, round(TOP + plot_h * (1 - f) + 4, 2), formatter(round(top * f)))
        for f in (0, 0.5, 1)
    ]
    legend = [(model, colours[model]) for model in shown]
    if rest:
        legend.append(("other models", OTHER_COLOUR))
    return Chart(title, WIDTH, HEIGHT, segments, x_labels, y_labels, gridlines, legend, top == 0)


def chart_html(
    chart: Chart, *, table_note: str = "the table below has the same figures"
) -> SafeString:
    """The chart as a captioned figure: SVG bars (each with its figure as a tooltip) and a
    legend, or a note when the period has nothing to show. Every text is escaped.

    Built in Python, not a template: a 90-day chart has hundreds of bars. `table_note` tells
    screen readers where the figures are as text."""
    if chart.empty:
        return format_html(
            '<figure class="chart"><figcaption>{}</figcaption>'
            '<p class="muted small">Nothing in this period yet.</p></figure>',
            chart.title,
        )
    grid = format_html_join(
        "",
        '<line x1="{}" x2="{}" y1="{}" y2="{}" class="grid"></line>',
        ((LEFT, chart.width, y, y) for y in chart.gridlines),
    )
    y_labels = format_html_join(
        "",
        '<text x="{}" y="{}" class="axis" text-anchor="end">{}</text>',
        ((label.x, label.y, label.text) for label in chart.y_labels),
    )
    bars = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
        ((s.x, s.y, s.width, s.height, s.colour, s.label) for s in chart.segments),
    )
    x_labels = format_html_join(
        "",
        '<text x="{}" y="{}" class="axis" text-anchor="middle">{}</text>',
        ((label.x, label.y, label.text) for label in chart.x_labels),
    )
    legend = format_html_join(
        "",
        '<li><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true">'
        '<rect width="10" height="10" rx="2" fill="{}"></rect></svg>{}</li>',
        ((colour, name) for name, colour in chart.legend),
    )
    return format_html(
        '<figure class="chart"><figcaption>{}</figcaption>'
        '<svg viewBox="0 0 {} {}" role="img" aria-label="{} ({})" '
        'preserveAspectRatio="none">{}{}{}{}</svg><ul class="legend">{}</ul></figure>',
        chart.title,
        chart.width,
        chart.height,
        chart.title,
        table_note,
        grid,
        y_labels,
        bars,
        x_labels,
        legend,
    )
