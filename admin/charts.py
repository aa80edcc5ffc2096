"""Server-side SVG charts of the console's dashboard: pure functions returning markup.

No JavaScript and nothing fetched from elsewhere: each function returns one
``<svg class="chart" role="img">`` with a ``<title>``, an ``aria-label`` and a ``viewBox``
(so it scales to the width of its card). Every label, tooltip and link is escaped here;
callers pass plain text. Each chart draws a note instead of axes when it has no data.

- :func:`bar_chart`: vertical bars over time slots (calls per hour or per day), with at most
  ``max_labels`` x labels and an integer y axis;
- :func:`horizontal_bar_chart`: one labelled row per item (outcomes, top intents);
- :func:`line_chart`: values in -1..1 (sentiment) with a zero line; gaps (``None``) are
  days without data, the line joins the points that have data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

NO_DATA = "No calls in this range"

INK = "#1d2733"
MUTED = "#6b7785"
LINE = "#dde3ea"
GRID = "#eef1f4"
BLUE = "#2b6cb0"
GREEN = "#1f9d55"
RED = "#d64545"
AMBER = "#c27c0e"
GREY = "#a0aec0"
POSITIVE_BAND = "#f1f8f3"
NEGATIVE_BAND = "#fdf3f3"

FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Bar:
    """One bar (or row): its axis label, value, tooltip, link and colour.

    ``group`` is a coarser label (the day of an hour, the year of a day) shown under the
    x label wherever it changes from the previous shown label."""

    label: str
    value: float
    title: str = ""
    href: str | None = None
    color: str | None = None
    group: str = ""


@dataclass(frozen=True)
class Point:
    """One x slot of a line chart; ``value`` None means no data there."""

    label: str
    value: float | None
    title: str = ""
    href: str | None = None
    group: str = ""


def _num(value: float) -> str:
    """A coordinate: at most one decimal, no trailing zeros."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _open(title: str, width: int, height: int, extra_class: str = "") -> str:
    label = escape(title)
    classes = f"chart {extra_class}".strip()
    return (f'<svg class="{classes}" role="img" aria-label="{label}" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">'
            f"<title>{label}</title>")


def _linked(markup: str, href: str | None) -> str:
    return f'<a href="{escape(href)}">{markup}</a>' if href else markup


def _empty(title: str, note: str, width: int, height: int) -> Markup:
    return Markup(
        _open(title, width, height, "empty")
        + f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="6" '
        f'fill="none" stroke="{LINE}" stroke-dasharray="4 4"/>'
        f'<text class="note" x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
        f'dominant-baseline="middle" fill="{MUTED}" {FONT}>{escape(note)}</text></svg>')


def nice_ceiling(top: float, ticks: int = 4) -> tuple[float, float]:
    """A round axis maximum at or above ``top`` and its tick step (1, 2 or 5 × 10^k; whole
    numbers, since the bar charts count calls)."""
    if top <= 0:
        return 1.0, 1.0
    raw = top / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(1.0, step)
    return math.ceil(top / step) * step, step


def label_every(slots: int, max_labels: int) -> int:
    """Label every n-th slot so that at most ``max_labels`` labels show."""
    return max(1, math.ceil(slots / max(1, max_labels)))


def _x_labels(labels: Sequence[tuple[str, str]], centres: Sequence[float], y: float,
              max_labels: int) -> list[str]:
    parts: list[str] = []
    step = label_every(len(labels), max_labels)
    last_group: str | None = None
    for i in range(0, len(labels), step):
        label, group = labels[i]
        parts.append(f'<text class="axis" x="{_num(centres[i])}" y="{_num(y)}" '
                     f'text-anchor="middle" fill="{MUTED}" {FONT}>{escape(label)}</text>')
        if group and group != last_group:
            parts.append(f'<text class="axis group" x="{_num(centres[i])}" y="{_num(y + 14)}" '
                         f'text-anchor="middle" fill="{MUTED}" {FONT}>{escape(group)}</text>')
        last_group = group
    return parts


def bar_chart(bars: Sequence[Bar], *, title: str, empty_note: str = NO_DATA,
              width: int = 1000, height: int = 240, max_labels: int = 10,
              color: str = BLUE) -> Markup:
    """Vertical bars, one slot per item in order; zero slots keep their place but draw no
    bar (so there is one ``rect.bar`` per slot with a value)."""
    if not bars or all(b.value <= 0 for b in bars):
        return _empty(title, empty_note, width, min(height, 120))
    left, right, top, bottom = 44, 40, 14, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    axis_max, step = nice_ceiling(max(b.value for b in bars))
    slot = plot_w / len(bars)
    gap = min(slot * 0.2, 6.0) if slot > 3 else 0.0
    base = top + plot_h
    parts = [_open(title, width, height)]
    tick = 0.0
    while tick <= axis_max + 1e-9:
        y = base - tick / axis_max * plot_h
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{_num(y)}" '
                     f'y2="{_num(y)}" stroke="{GRID if tick else LINE}"/>')
        parts.append(f'<text class="axis" x="{left - 6}" y="{_num(y + 4)}" text-anchor="end" '
                     f'fill="{MUTED}" {FONT}>{_count(tick)}</text>')
        tick += step
    show_values = slot >= 22
    centres = []
    for i, bar in enumerate(bars):
        x = left + i * slot
        centres.append(x + slot / 2)
        if bar.value <= 0:
            continue
        h = max(1.0, bar.value / axis_max * plot_h)
        tip = escape(bar.title or f"{bar.label}: {_count(bar.value)}")
        rect = (f'<rect class="bar" x="{_num(x + gap / 2)}" y="{_num(base - h)}" '
                f'width="{_num(max(slot - gap, 1.0))}" height="{_num(h)}" rx="2" '
                f'fill="{bar.color or color}"><title>{tip}</title></rect>')
        if show_values:
            rect += (f'<text class="value" x="{_num(x + slot / 2)}" y="{_num(base - h - 4)}" '
                     f'text-anchor="middle" fill="{INK}" {FONT}>{_count(bar.value)}</text>')
        parts.append(_linked(rect, bar.href))
    parts.extend(_x_labels([(b.label, b.group) for b in bars], centres, base + 16,
                           max_labels))
    parts.append("</svg>")
    return Markup("".join(parts))


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def horizontal_bar_chart(bars: Sequence[Bar], *, title: str, empty_note: str = NO_DATA,
                         width: int = 520, row: int = 28, label_width: int = 150,
                         color: str = BLUE) -> Markup:
    """One row per item: its label on the left, a bar as long as its value, the value."""
    if not bars or all(b.value <= 0 for b in bars):
        return _empty(title, empty_note, width, 120)
    top, bottom, value_w = 6, 6, 56
    height = top + row * len(bars) + bottom
    plot_w = width - label_width - value_w
    top_value = max(b.value for b in bars)
    parts = [_open(title, width, height)]
    for i, bar in enumerate(bars):
        y = top + i * row
        tip = escape(bar.title or f"{bar.label}: {_count(bar.value)}")
        w = max(1.0, bar.value / top_value * plot_w) if bar.value > 0 else 0.0
        clipped = _clip(bar.label, 22)
        row_markup = (
            f'<text class="label" x="{label_width - 8}" y="{_num(y + row / 2 + 4)}" '
            f'text-anchor="end" fill="{INK}" {FONT}>{escape(clipped)}'
            f"<title>{escape(bar.label)}</title></text>"
        )
        if w:
            row_markup += (
                f'<rect class="bar" x="{label_width}" y="{_num(y + 5)}" width="{_num(w)}" '
                f'height="{row - 10}" rx="2" fill="{bar.color or color}">'
                f"<title>{tip}</title></rect>")
        row_markup += (f'<text class="value" x="{_num(label_width + w + 6)}" '
                       f'y="{_num(y + row / 2 + 4)}" fill="{INK}" {FONT}>'
                       f"{_count(bar.value)}</text>")
        parts.append(_linked(row_markup, bar.href))
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(points: Sequence[Point], *, title: str, empty_note: str = NO_DATA,
               low: float = -1.0, high: float = 1.0, width: int = 1000, height: int = 220,
               max_labels: int = 10, ticks: Sequence[float] = (-1.0, -0.5, 0.0, 0.5, 1.0),
               color: str = BLUE) -> Markup:
    """A line through the points with values (one x slot per point, in order), a zero
    line, shaded halves above and below zero, and a dot per value (green above +0.05, red
    below -0.05, grey between: VADER's thresholds)."""
    if not any(p.value is not None for p in points):
        return _empty(title, empty_note, width, min(height, 120))
    left, right, top, bottom = 44, 40, 12, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    span = high - low

    def y_of(value: float) -> float:
        clamped = min(high, max(low, value))
        return top + (high - clamped) / span * plot_h

    slot = plot_w / len(points)
    parts = [_open(title, width, height)]
    zero = y_of(0.0) if low < 0 < high else None
    if zero is not None:
        parts.append(f'<rect class="band positive" x="{left}" y="{top}" width="{plot_w}" '
                     f'height="{_num(zero - top)}" fill="{POSITIVE_BAND}"/>')
        parts.append(f'<rect class="band negative" x="{left}" y="{_num(zero)}" '
                     f'width="{plot_w}" height="{_num(top + plot_h - zero)}" '
                     f'fill="{NEGATIVE_BAND}"/>')
    for tick in ticks:
        y = y_of(tick)
        if tick == 0:
            continue
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{_num(y)}" '
                     f'y2="{_num(y)}" stroke="{LINE}" stroke-width="0.5"/>')
    for tick in ticks:
        text = "0" if tick == 0 else f"{tick:+g}".replace("-", "−")
        parts.append(f'<text class="axis" x="{left - 6}" y="{_num(y_of(tick) + 4)}" '
                     f'text-anchor="end" fill="{MUTED}" {FONT}>{text}</text>')
    if zero is not None:
        parts.append(f'<line class="zero" x1="{left}" x2="{width - right}" '
                     f'y1="{_num(zero)}" y2="{_num(zero)}" stroke="{MUTED}" '
                     f'stroke-dasharray="4 3"/>')
    centres = [left + (i + 0.5) * slot for i in range(len(points))]
    known = [(centres[i], p) for i, p in enumerate(points) if p.value is not None]
    if len(known) > 1:
        path = " ".join(f"{_num(x)},{_num(y_of(p.value or 0.0))}" for x, p in known)
        parts.append(f'<polyline class="line" points="{path}" fill="none" stroke="{color}" '
                     f'stroke-width="2" stroke-linejoin="round"/>')
    radius = 4 if slot >= 8 else 3
    for x, p in known:
        value = p.value or 0.0
        fill = GREEN if value >= 0.05 else RED if value <= -0.05 else GREY
        tip = escape(p.title or f"{p.label}: {value:+.2f}")
        dot = (f'<circle class="point" cx="{_num(x)}" cy="{_num(y_of(value))}" r="{radius}" '
               f'fill="{fill}" stroke="#ffffff" stroke-width="1.5"><title>{tip}</title>'
               f"</circle>")
        parts.append(_linked(dot, p.href))
    parts.extend(_x_labels([(p.label, p.group) for p in points], centres, top + plot_h + 16,
                           max_labels))
    parts.append("</svg>")
    return Markup("".join(parts))
