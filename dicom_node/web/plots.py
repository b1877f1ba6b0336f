"""Small server-rendered SVG charts for the dashboard: no JavaScript, no build step.

Each chart is a list of named series over the same time buckets; values may be ``None`` (no
data in that bucket: a gap in a line, nothing in a bar). Text is escaped by Jinja2's Markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** len(str(int(value))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return value


def _fmt(value: float, unit: str) -> str:
    if unit == "s" and value >= 120:
        return f"{value / 60:.0f} min"
    return f"{value:g}{' ' + unit if unit else ''}"


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
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = _nice_max(max([v for vals in series.values() for v in vals if v is not None] or [0]))
    x_step = plot_w / n

    def y(value: float) -> float:
        return TOP + plot_h - value / top * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for frac in (0, 0.5, 1):
        gy = y(top * frac)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{gy + 4:.1f}" class="axis" text-anchor="end">'
            f"{escape(_fmt(top * frac, unit))}</text>"
        )
    labels = [_label(b) for b in buckets]
    every = max(1, n // 6)
    for i, label in enumerate(labels):
        if i % every == 0:
            parts.append(
                f'<text x="{LEFT + (i + 0.5) * x_step:.1f}" y="{HEIGHT - 8}" class="axis" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    for k, (name, values) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        if kind == "bar":
            width = max(1.0, x_step * 0.8 / len(series))
            for i, v in enumerate(values):
                if v:
                    x = LEFT + i * x_step + x_step * 0.1 + k * width
                    parts.append(
                        f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{width:.1f}" '
                        f'height="{TOP + plot_h - y(v):.1f}" fill="{colour}">'
                        f"<title>{escape(name)} {escape(labels[i])}: {v:g}</title></rect>"
                    )
        else:
            points: list[str] = []
            for i, v in enumerate(values):
                x = LEFT + (i + 0.5) * x_step
                if v is None:
                    parts.append(_polyline(points, colour))
                    points = []
                    continue
                points.append(f"{x:.1f},{y(v):.1f}")
                # the first series filled, the others as rings: equal values stay visible
                fill = colour if k == 0 else "none"
                parts.append(
                    f'<circle cx="{x:.1f}" cy="{y(v):.1f}" r="{2.5 + 1.5 * k}" fill="{fill}" '
                    f'stroke="{colour}" stroke-width="1.5">'
                    f"<title>{escape(name)} {escape(labels[i])}: {_fmt(v, unit)}</title></circle>"
                )
            parts.append(_polyline(points, colour))
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{COLOURS[k % len(COLOURS)]}"></i>'
        f"{escape(name)}</span>"
        for k, name in enumerate(series)
    )
    return Markup(  # noqa: S704 - every text in it went through html.escape above
        f'<figure class="plot"><figcaption>{escape(title)}'
        f'<span class="legend">{legend}</span></figcaption>{"".join(parts)}</figure>'
    )


def _polyline(points: list[str], colour: str) -> str:
    if len(points) < 2:
        return ""
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="2"/>'


def _label(bucket: str) -> str:
    at = datetime.fromisoformat(bucket)
    return at.strftime("%H:%M") if at.hour or at.minute else at.strftime("%d %b")
