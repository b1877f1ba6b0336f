"""Value types and lifecycle tables shared by every stage.

State machines are data: one transition table per lifecycle, and a single function that refuses
any move not in the table (the pattern of pynetdicom's ``fsm.TRANSITION_TABLE``).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from typing import TypeVar

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UID_MAX_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    """True for a DICOM UID (PS3.5 §9.1): digits and dots, at most 64 characters.

    Leading zeros in a component are tolerated on input (real scanners emit them); what matters
    for the node is that a UID can never carry a path separator, ``..`` or a NUL.
    """
    return (
        isinstance(value, str) and 0 < len(value) <= UID_MAX_LENGTH and bool(_UID_RE.match(value))
    )


def phi_hash(value: str | None) -> str | None:
    """A short, stable digest for identifiers that must not appear in logs (accession numbers)."""
    if not value:
        return None
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


def orientation_label(iop: object) -> str | None:
    """AXIAL / SAGITTAL / CORONAL / OBLIQUE from Image Orientation (Patient).

    The slice normal's dominant patient axis decides, so a gantry-tilted axial CT (the Philips
    head CT, -18.5 degrees) is still AXIAL. ``None`` when the value is missing or malformed.
    """
    try:
        rx, ry, rz, cx, cy, cz = (float(v) for v in iop)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    normal = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
    length = sum(n * n for n in normal) ** 0.5
    if length == 0:
        return None
    axis = max(range(3), key=lambda i: abs(normal[i]))
    if abs(normal[axis]) / length < OBLIQUE_BELOW:
        return "OBLIQUE"
    return ("SAGITTAL", "CORONAL", "AXIAL")[axis]


OBLIQUE_BELOW = 0.8  # |cos| of the angle between the normal and the nearest axis (~37 degrees)


class StudyState(enum.StrEnum):
    RECEIVING = "RECEIVING"
    COMPLETE = "COMPLETE"
    REOPENED = "REOPENED"


STUDY_TRANSITIONS: Mapping[StudyState, frozenset[StudyState]] = {
    StudyState.RECEIVING: frozenset({StudyState.COMPLETE}),
    StudyState.COMPLETE: frozenset({StudyState.REOPENED}),
    StudyState.REOPENED: frozenset({StudyState.COMPLETE}),
}

OPEN_STUDY_STATES = frozenset({StudyState.RECEIVING, StudyState.REOPENED})


class IllegalTransitionError(Exception):
    """A state change that the lifecycle's transition table does not allow."""


S = TypeVar("S", bound=enum.StrEnum)


def check_transition(table: Mapping[S, frozenset[S]], current: S, target: S) -> None:
    if target not in table.get(current, frozenset()):
        raise IllegalTransitionError(f"{current} -> {target} is not allowed")


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RESULTS_READY = "RESULTS_READY"
    EXPORTING = "EXPORTING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    # RUNNING -> QUEUED: a transient error or a lost worker (attempts + 1)
    JobState.RUNNING: frozenset(
        {JobState.RESULTS_READY, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}
    ),
    # RESULTS_READY -> DONE: no destination to send to; the objects stay in the results folder
    JobState.RESULTS_READY: frozenset({JobState.EXPORTING, JobState.DONE, JobState.FAILED}),
    JobState.EXPORTING: frozenset({JobState.DONE, JobState.FAILED}),
    JobState.DONE: frozenset({JobState.EXPORTING}),  # an admin's resend
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.EXPORTING}),  # retry, or resend
    JobState.CANCELLED: frozenset({JobState.QUEUED}),  # an admin's retry
}


class ExportState(enum.StrEnum):
    PENDING = "PENDING"
    SENDING = "SENDING"
    DELIVERED = "DELIVERED"
    RETRY_WAIT = "RETRY_WAIT"
    FAILED = "FAILED"


EXPORT_TRANSITIONS: Mapping[ExportState, frozenset[ExportState]] = {
    ExportState.PENDING: frozenset({ExportState.SENDING}),
    ExportState.SENDING: frozenset(
        {ExportState.DELIVERED, ExportState.RETRY_WAIT, ExportState.FAILED}
    ),
    ExportState.RETRY_WAIT: frozenset({ExportState.SENDING}),
    ExportState.DELIVERED: frozenset({ExportState.PENDING}),  # an admin's resend
    ExportState.FAILED: frozenset({ExportState.PENDING}),  # an admin's resend
}
EXPORT_FINAL = frozenset({ExportState.DELIVERED, ExportState.FAILED})


class CircuitState(enum.StrEnum):
    """A destination's circuit: OPEN pauses sending until a C-ECHO probe succeeds."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"


class AssociationEnd(enum.StrEnum):
    RELEASED = "RELEASED"
    ABORTED = "ABORTED"
    CLOSED = "CLOSED"  # TCP closed without A-RELEASE/A-ABORT
    NODE_RESTART = "NODE_RESTART"  # found open at start-up: the process that held it died
