"""Template filters: durations and instants as an admin reads them."""

from __future__ import annotations


def duration(value: float | None) -> str:
    """1.234 -> '1.23 s', 75 -> '1 min 15 s', None -> '-'."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.2f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def when(value: str | None) -> str:
    """ISO UTC -> '2026-11-24 20:41:07 UTC'."""
    if not value:
        return "-"
    return value[:19].replace("T", " ") + " UTC"
