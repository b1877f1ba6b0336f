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


def dicom_date(value: str | None) -> str:
    """A DICOM DA (``20150206``) as ``2015-02-06``; what is not one stays as it came."""
    if not value:
        return "-"
    text = value.strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def dicom_time(value: str | None) -> str:
    """A DICOM TM (``143005.123``, ``1430``) as ``14:30:05``; what is not one stays as it came."""
    if not value:
        return "-"
    text = value.strip()
    whole = text.split(".", 1)[0]
    if not whole.isdigit() or len(whole) not in (2, 4, 6):
        return text
    return ":".join(whole[i : i + 2] for i in range(0, len(whole), 2))


def uid_parts(uid: str | None, head: int = 14, tail: int = 10) -> tuple[str, str, str]:
    """A UID cut in the middle for display: (head, middle, tail); the middle is hidden on the
    page but still there, so selecting and copying the UID copies all of it."""
    text = uid or ""
    if len(text) <= head + tail + 2:
        return text, "", ""
    return text[:head], text[head:-tail], text[-tail:]
