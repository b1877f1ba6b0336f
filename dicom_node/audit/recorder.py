"""Write audit events inside the caller's transaction. Details never carry PHI."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert

from dicom_node.db.models import AuditEvent, utcnow


class AuditEventType(enum.StrEnum):
    STUDY_RECEIVING = "study.receiving"
    STUDY_COMPLETED = "study.completed"
    STUDY_REOPENED = "study.reopened"
    INSTANCE_DUPLICATE = "instance.duplicate"
    INSTANCE_OVERWRITTEN = "instance.overwritten"
    INSTANCE_CONFLICT = "instance.conflict"
    RECOVERY_INDEXED = "recovery.indexed"
    RECOVERY_QUARANTINED = "recovery.quarantined"
    ASSOCIATIONS_CLOSED_AT_START = "associations.closed_at_start"
    JOB_QUEUED = "job.queued"
    JOB_RUNNING = "job.running"
    JOB_REQUEUED = "job.requeued"
    JOB_RESULTS_READY = "job.results_ready"
    JOB_EXPORTING = "job.exporting"
    JOB_DONE = "job.done"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    EXPORT_PENDING = "export.pending"
    EXPORT_SENDING = "export.sending"
    EXPORT_DELIVERED = "export.delivered"
    EXPORT_RETRY_WAIT = "export.retry_wait"
    EXPORT_FAILED = "export.failed"
    EXPORT_RESEND = "export.resend"
    DESTINATION_CIRCUIT_OPENED = "destination.circuit_opened"
    DESTINATION_PROBE_FAILED = "destination.probe_failed"
    DESTINATION_CIRCUIT_CLOSED = "destination.circuit_closed"
    DESTINATION_ECHO = "destination.echo"
    USER_ADDED = "user.added"
    USER_CHANGED = "user.changed"
    USER_LOGIN = "user.login"
    USER_LOGIN_FAILED = "user.login_failed"
    USER_LOGOUT = "user.logout"
    USER_LOGIN_ALARM = "user.login_alarm"


def record(
    conn: Connection,
    event_type: AuditEventType,
    *,
    study_uid: str | None = None,
    entity_type: str | None = None,
    entity_id: str | None = None,
    details: dict[str, Any] | None = None,
    actor: str = "system",
    at: datetime | None = None,
) -> None:
    conn.execute(
        insert(AuditEvent),
        {
            "at": at or utcnow(),
            "event_type": str(event_type),
            "actor": actor,
            "study_uid": study_uid,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "details": details or {},
        },
    )


def record_transition(
    conn: Connection,
    event_type: AuditEventType,
    entity: tuple[str, str],
    *,
    study_uid: str | None,
    current: enum.StrEnum | None,
    target: enum.StrEnum,
    at: datetime,
    reason: str,
    actor: str = "system",
    details: dict[str, Any] | None = None,
) -> None:
    """One state machine's move (``entity`` is its type and id): from, to and why, with the
    caller's ``details`` after them."""
    record(
        conn,
        event_type,
        study_uid=study_uid,
        entity_type=entity[0],
        entity_id=entity[1],
        actor=actor,
        at=at,
        details={
            "from": current and str(current),
            "to": str(target),
            "reason": reason,
            **(details or {}),
        },
    )
