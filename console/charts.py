"""Server-side SVG charts for the admin pages: no JavaScript, no CDN, readable without internet.

Every function returns SVG markup (a SafeString; labels are escaped). Data-carrying elements have a
class (`bar`, `point`, `segment`) and `data-value`/`data-label` attributes, plus a `<title>` so a
hover shows the number; the browser tests read the same attributes a person hovers over.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

PALETTE = ("#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#ea580c")
OTHER_COLOR = "#94a3b8"
FONT = "font-family:-apple-system,Segoe UI,Roboto,sans-serif;font-size:11px;fill:#475569"

Formatter = Callable[[float], str]


def color_of(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def fmt_number(value: float) -> str:
    """1234 -> 1.2k, 2_500_000 -> 2.5M; small numbers as they are."""
    magnitude = abs(value)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.1f}".rstrip("0").rstrip(".") + suffix
    if value == int(value):
        return str(int(value))
    return f"{value:.2f}"


def fmt_usd(value: float) -> str:
    if value == 0:
        return "$0"
    if abs(value) < 0.01:
        return f"${value:.4f}"
    return "$" + fmt_number(value) if abs(value) >= 1000 else f"${value:,.2f}"


def fmt_ms(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.0f} ms"


def fmt_percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def _nice_max(value: float) -> float:
    """The smallest 1/2/2.5/5 x 10^n at or above `value` (axis maximum)."""
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * exponent >= value * (1 - 1e-9):
            return step * exponent
    return 10 * exponent


def _svg(width: int, height: int, body: str, *, css_class: str, label: str, fixed: bool = False) -> SafeString:
    size = f'width="{width}" height="{height}"' if fixed else 'width="100%"'
    return mark_safe(
        f'<svg class="chart {escape(css_class)}" viewBox="0 0 {width} {height}" {size} '
        f'preserveAspectRatio="xMinYMin meet" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def _axis(*, left: int, top: int, width: int, height: int, maximum: float, fmt: Formatter, ticks: int = 4) -> str:
    parts = []
    for index in range(ticks + 1):
        value = maximum * index / ticks
        y = top + height - height * index / ticks
        parts.append(
            format_html(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#e2e8f0"/>'
                '<text x="{}" y="{}" text-anchor="end" style="{}">{}</text>',
                left,
                left + width,
                f"{y:.1f}",
                f"{y:.1f}",
                left - 4,
                f"{y + 3:.1f}",
                FONT,
                fmt(value),
            )
        )
    return "".join(parts)


@dataclass
class Series:
    """One named series of a chart: a value per category (None = no data)."""

    name: str
    values: list[float | None]
    color: str = ""


@dataclass
class BarChart:
    """Categories on the x axis (days, hours), stacked series, an optional line on a 0-100% right axis."""

    categories: list[str]
    series: list[Series]
    fmt: Formatter = fmt_number
    line: Series | None = None
    line_fmt: Formatter = fmt_percent
    links: list[str | None] = field(default_factory=list)
    label: str = "chart"
    width: int = 560
    height: int = 220


def bar_chart(chart: BarChart) -> SafeString:
    """Stacked bars per category (with links when given) and an optional rate line."""
    left, right, top, bottom = 56, 48 if chart.line else 12, 10, 34
    plot_w, plot_h = chart.width - left - right, chart.height - top - bottom
    n = max(len(chart.categories), 1)
    totals = [sum(s.values[i] or 0 for s in chart.series) for i in range(len(chart.categories))]
    maximum = _nice_max(max(totals, default=0))
    slot = plot_w / n
    bar_w = max(min(slot * 0.7, 48), 2)
    parts = [_axis(left=left, top=top, width=plot_w, height=plot_h, maximum=maximum, fmt=chart.fmt)]
    label_every = max(1, round(n / 12))
    for i, category in enumerate(chart.categories):
        x = left + slot * i + (slot - bar_w) / 2
        y_base = top + plot_h
        bars = []
        for s_index, series in enumerate(chart.series):
            value = series.values[i] or 0
            if value <= 0:
                continue
            h = plot_h * value / maximum
            y_base -= h
            bars.append(
                format_html(
                    '<rect class="bar" x="{}" y="{}" width="{}" height="{}" fill="{}" data-series="{}" '
                    'data-label="{}" data-value="{}"><title>{} · {}: {}</title></rect>',
                    f"{x:.1f}",
                    f"{y_base:.1f}",
                    f"{bar_w:.1f}",
                    f"{max(h, 0.5):.1f}",
                    series.color or color_of(s_index),
                    series.name,
                    category,
                    value,
                    category,
                    series.name,
                    chart.fmt(value),
                )
            )
        group = "".join(bars)
        link = chart.links[i] if i < len(chart.links) else None
        if link and group:
            group = format_html('<a href="{}">{}</a>', link, mark_safe(group))
        parts.append(group)
        if i % label_every == 0:
            parts.append(
                format_html(
                    '<text x="{}" y="{}" text-anchor="middle" style="{}">{}</text>',
                    f"{left + slot * i + slot / 2:.1f}",
                    top + plot_h + 14,
                    FONT,
                    category,
                )
            )
    if chart.line:
        points = []
        line_max = _nice_max(max((v or 0 for v in chart.line.values), default=0)) if chart.line.values else 1.0
        line_max = min(max(line_max, 0.01), 1.0) if chart.line_fmt is fmt_percent else line_max
        for i, value in enumerate(chart.line.values):
            if value is None:
                continue
            x = left + slot * i + slot / 2
            y = top + plot_h - plot_h * value / line_max
            points.append((x, y, value, chart.categories[i]))
        if points:
            path = " ".join(f"{'M' if j == 0 else 'L'}{x:.1f},{y:.1f}" for j, (x, y, _, _) in enumerate(points))
            color = chart.line.color or "#dc2626"
            parts.append(format_html('<path d="{}" fill="none" stroke="{}" stroke-width="2"/>', path, color))
            for x, y, value, category in points:
                parts.append(
                    format_html(
                        '<circle class="point" cx="{}" cy="{}" r="3" fill="{}" data-series="{}" data-label="{}" '
                        'data-value="{}"><title>{} · {}: {}</title></circle>',
                        f"{x:.1f}",
                        f"{y:.1f}",
                        color,
                        chart.line.name,
                        category,
                        value,
                        category,
                        chart.line.name,
                        chart.line_fmt(value),
                    )
                )
        for index in range(5):
            value = line_max * index / 4
            y = top + plot_h - plot_h * index / 4
            parts.append(
                format_html(
                    '<text x="{}" y="{}" style="{};fill:{}">{}</text>',
                    left + plot_w + 4,
                    f"{y + 3:.1f}",
                    FONT,
                    color if points else "#dc2626",
                    chart.line_fmt(value),
                )
            )
    if not any(totals):
        parts.append(
            format_html(
                '<text x="{}" y="{}" text-anchor="middle" style="{}">No data in this period</text>',
                left + plot_w / 2,
                top + plot_h / 2,
                FONT,
            )
        )
    return _svg(chart.width, chart.height, "".join(parts), css_class="bar-chart", label=chart.label)


@dataclass
class HBarRow:
    """One row of a horizontal bar chart: a label and (series name, value) pairs."""

    label: str
    values: list[tuple[str, float | None]]
    link: str | None = None


def hbar_chart(rows: Sequence[HBarRow], *, fmt: Formatter, label: str, width: int = 560) -> SafeString:
    """Grouped horizontal bars: one group per row (e.g. model), one bar per series (p50, p95)."""
    left, right = 180, 80
    per_row = max((len(r.values) for r in rows), default=1)
    bar_h, gap = 12, 10
    row_h = per_row * (bar_h + 2) + gap
    height = max(row_h * len(rows) + 20, 40)
    plot_w = width - left - right
    maximum = _nice_max(max((v or 0 for r in rows for _, v in r.values), default=0))
    parts = []
    for r_index, row in enumerate(rows):
        y0 = 10 + r_index * row_h
        text = format_html(
            '<text x="{}" y="{}" text-anchor="end" style="{}">{}</text>',
            left - 6,
            y0 + per_row * (bar_h + 2) / 2 + 3,
            FONT,
            row.label[:32],
        )
        parts.append(format_html('<a href="{}">{}</a>', row.link, text) if row.link else text)
        for s_index, (series, value) in enumerate(row.values):
            y = y0 + s_index * (bar_h + 2)
            if value is None:
                parts.append(format_html('<text x="{}" y="{}" style="{}">no data</text>', left + 4, y + 10, FONT))
                continue
            w = max(plot_w * value / maximum, 1)
            parts.append(
                format_html(
                    '<rect class="bar" x="{}" y="{}" width="{}" height="{}" fill="{}" data-series="{}" '
                    'data-label="{}" data-value="{}"><title>{} {}: {}</title></rect>'
                    '<text x="{}" y="{}" style="{}">{} {}</text>',
                    left,
                    y,
                    f"{w:.1f}",
                    bar_h,
                    color_of(s_index),
                    series,
                    row.label,
                    value,
                    row.label,
                    series,
                    fmt(value),
                    f"{left + w + 4:.1f}",
                    y + 10,
                    FONT,
                    series,
                    fmt(value),
                )
            )
    if not rows:
        parts.append(format_html('<text x="10" y="24" style="{}">No data in this period</text>', FONT))
    return _svg(width, height, "".join(parts), css_class="hbar-chart", label=label)


def sparkline(values: Sequence[float], *, label: str, width: int = 160, height: int = 32) -> SafeString:
    """A tiny bar sparkline (one bar per bucket) with the peak marked."""
    n = max(len(values), 1)
    maximum = max(values, default=0) or 1
    slot = width / n
    parts = [format_html('<line x1="0" x2="{}" y1="{}" y2="{}" stroke="#e2e8f0"/>', width, height - 0.5, height - 0.5)]
    for i, value in enumerate(values):
        h = (height - 2) * value / maximum
        parts.append(
            format_html(
                '<rect class="bar" x="{}" y="{}" width="{}" height="{}" fill="{}" data-value="{}"></rect>',
                f"{i * slot + slot * 0.1:.1f}",
                f"{height - h:.1f}",
                f"{max(slot * 0.8, 1):.1f}",
                f"{h:.1f}",
                "#dc2626" if value == maximum and value else "#f87171",
                value,
            )
        )
    return _svg(width, height, "".join(parts), css_class="sparkline", label=label, fixed=True)


@dataclass
class Span:
    """One bar of a waterfall or timeline: start and duration in ms from the origin."""

    label: str
    start_ms: float
    duration_ms: float
    kind: str  # step, llm, ttft, tool, failed, phase names
    link: str | None = None
    detail: str = ""
    depth: int = 0
    marker_ms: float | None = None  # e.g. first token, drawn as a tick inside the bar


KIND_COLORS = {
    "step": "#cbd5e1",
    "failed": "#fca5a5",
    "cancelled": "#fde68a",
    "queue": "#e2e8f0",
    "llm": "#60a5fa",
    "wait": "#93c5fd",
    "stream": "#2563eb",
    "tool": "#f59e0b",
    "finish": "#a7f3d0",
}


def waterfall(spans: Sequence[Span], *, label: str, width: int = 960) -> SafeString:
    """Rows of bars on one time axis (ms from the first start): a run's steps and tools, or one step's phases."""
    left, right, row_h, top = 260, 90, 22, 24
    total = max((s.start_ms + s.duration_ms for s in spans), default=0)
    maximum = _nice_max(total) if total > 0 else 1.0
    plot_w = width - left - right
    height = top + row_h * max(len(spans), 1) + 8
    parts = []
    for index in range(5):
        value = maximum * index / 4
        x = left + plot_w * index / 4
        parts.append(
            format_html(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#e2e8f0"/>'
                '<text x="{}" y="14" text-anchor="middle" style="{}">{}</text>',
                f"{x:.1f}",
                f"{x:.1f}",
                top - 4,
                height,
                f"{x:.1f}",
                FONT,
                fmt_ms(value),
            )
        )
    for row, span in enumerate(spans):
        y = top + row * row_h
        x = left + plot_w * span.start_ms / maximum
        w = max(plot_w * span.duration_ms / maximum, 1.5)
        text = format_html(
            '<text x="{}" y="{}" style="{}">{}</text>', 6 + span.depth * 14, y + 14, FONT, span.label[:40]
        )
        parts.append(format_html('<a href="{}">{}</a>', span.link, text) if span.link else text)
        title = f"{span.label}: starts at {fmt_ms(span.start_ms)}, takes {fmt_ms(span.duration_ms)}"
        if span.detail:
            title += f" · {span.detail}"
        parts.append(
            format_html(
                '<rect class="segment segment-{}" x="{}" y="{}" width="{}" height="14" rx="2" fill="{}" '
                'data-label="{}" data-start-ms="{}" data-value="{}"><title>{}</title></rect>'
                '<text x="{}" y="{}" style="{}">{}</text>',
                span.kind,
                f"{x:.1f}",
                y + 3,
                f"{w:.1f}",
                KIND_COLORS.get(span.kind, "#94a3b8"),
                span.label,
                round(span.start_ms, 3),
                round(span.duration_ms, 3),
                title,
                f"{x + w + 4:.1f}",
                y + 14,
                FONT,
                fmt_ms(span.duration_ms),
            )
        )
        if span.marker_ms is not None:
            mx = left + plot_w * span.marker_ms / maximum
            parts.append(
                format_html(
                    '<line class="marker" x1="{}" x2="{}" y1="{}" y2="{}" stroke="#1e293b" stroke-width="2">'
                    "<title>first token at {}</title></line>",
                    f"{mx:.1f}",
                    f"{mx:.1f}",
                    y + 1,
                    y + 19,
                    fmt_ms(span.marker_ms),
                )
            )
    if not spans:
        parts.append(format_html('<text x="10" y="{}" style="{}">No timings recorded</text>', top + 14, FONT))
    return _svg(width, height, "".join(parts), css_class="waterfall", label=label)


def legend(names: Sequence[str]) -> list[dict[str, Any]]:
    """Name/colour pairs in series order, for an HTML legend under a chart."""
    return [{"name": name, "color": color_of(i)} for i, name in enumerate(names)]
