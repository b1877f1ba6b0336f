"""What every read model shares: ISO timestamps, durations, percentiles and JSON output."""

from __future__ import annotations

import math
from datetime import date, datetime

from dicom_node.db.models import utcnow


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def seconds(start: datetime | None, end: datetime | None) -> float | None:
    """``end - start`` in seconds (ms resolution, never negative); ``None`` if either is."""
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds()), 3)


def status_hex(status: int | None) -> str | None:
    """A DIMSE status as the standard writes it (``0xA700``)."""
    return None if status is None else f"0x{status:04X}"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def day_start(day: date) -> datetime:
    """Midnight UTC of ``day``, as the index stores its timestamps."""
    return datetime(day.year, day.month, day.day, tzinfo=utcnow().tzinfo)
