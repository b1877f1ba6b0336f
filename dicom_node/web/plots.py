"""Small server-rendered SVG charts for the dashboard: no JavaScript, no build step.

Each chart is a list of named series over the same time buckets; values may be ``None`` (no
data in that bucket: a gap in a line, nothing in a bar). Text is escaped by Jinja2's Markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))  # below 1 too: 0.04 -> 0.05, not 1
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return value


def _fmt(value: float, unit: str) -> str:
    if unit == "s" and value >= 120:
        return f"{value / 60:.0f} min"
    return f"{value:g}{' ' + unit if unit else ''}"


@dataclass(frozen=True)
class _Axes:
    top: float  # the value at the top of the plot
    x_step: float  # one bucket's width
    labels: list[str]

    @property
    def plot_h(self) -> float:
        return HEIGHT - TOP - BOTTOM

    def y(self, value: float) -> float:
        return TOP + self.plot_h - value / self.top * self.plot_h


def chart(
    title: str,
    buckets: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    kind: str = "bar",
    unit: str = "",
) -> Markup:
    """One SVG chart: stacked-free bars (one series) or lines (several)."""
    n = max(1, len(buckets))
    top = _nice_max(max([v for vals in series.values() for v in vals if v is not None] or [0]))
    axes = _Axes(top, (WIDTH - LEFT - RIGHT) / n, [_label(b) for b in buckets])
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        *_grid(axes, unit),
    ]
    for k, (name, values) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        if kind == "bar":
            parts += _bars(axes, name, values, colour, k=k, count=len(series))
        else:
            parts += _line(axes, name, values, colour, k=k, unit=unit)
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{COLOURS[k % len(COLOURS)]}"></i>'
        f"{escape(name)}</span>"
        for k, name in enumerate(series)
    )
    return Markup(  # noqa: S704 - every text in it went through html.escape
        f'<figure class="plot"><figcaption>{escape(title)}'
        f'<span class="legend">{legend}</span></figcaption>{"".join(parts)}</figure>'
    )


def _grid(axes: _Axes, unit: str) -> list[str]:
    """Three value lines (0, half, top) and at most about six bucket labels."""
    parts = []
    for frac in (0, 0.5, 1):
        gy = axes.y(axes.top * frac)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{gy + 4:.1f}" class="axis" text-anchor="end">'
            f"{escape(_fmt(axes.top * frac, unit))}</text>"
        )
    every = max(1, len(axes.labels) // 6)
    for i, label in enumerate(axes.labels):
        if i % every == 0:
            parts.append(
                f'<text x="{LEFT + (i + 0.5) * axes.x_step:.1f}" y="{HEIGHT - 8}" class="axis" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    return parts


def _bars(
    axes: _Axes, name: str, values: Sequence[float | None], colour: str, *, k: int, count: int
) -> list[str]:
    width = max(1.0, axes.x_step * 0.8 / count)
    parts = []
    for i, v in enumerate(values):
        if v:
            x = LEFT + i * axes.x_step + axes.x_step * 0.1 + k * width
            parts.append(
                f'<rect x="{x:.1f}" y="{axes.y(v):.1f}" width="{width:.1f}" '
                f'height="{TOP + axes.plot_h - axes.y(v):.1f}" fill="{colour}">'
                f"<title>{escape(name)} {escape(axes.labels[i])}: {v:g}</title></rect>"
            )
    return parts


def _line(
    axes: _Axes, name: str, values: Sequence[float | None], colour: str, *, k: int, unit: str
) -> list[str]:
    """A line broken where a value is missing, with a marker per value."""
    parts: list[str] = []
    points: list[str] = []
    for i, v in enumerate(values):
        x = LEFT + (i + 0.5) * axes.x_step
        if v is None:
            parts.append(_polyline(points, colour))
            points = []
            continue
        points.append(f"{x:.1f},{axes.y(v):.1f}")
        # the first series filled, the others as rings: equal values stay visible
        fill = colour if k == 0 else "none"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{axes.y(v):.1f}" r="{2.5 + 1.5 * k}" fill="{fill}" '
            f'stroke="{colour}" stroke-width="1.5">'
            f"<title>{escape(name)} {escape(axes.labels[i])}: {_fmt(v, unit)}</title></circle>"
        )
    parts.append(_polyline(points, colour))
    return parts


def _polyline(points: list[str], colour: str) -> str:
    if len(points) < 2:
        return ""
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="2"/>'


def _label(bucket: str) -> str:
    at = datetime.fromisoformat(bucket)
    return at.strftime("%H:%M") if at.hour or at.minute else at.strftime("%d %b")
