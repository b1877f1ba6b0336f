"""The one way a study changes state: checked against ``STUDY_TRANSITIONS``, audited, atomic.

The UPDATE is conditional on the current state, so two processes racing on one study cannot both
move it: the loser sees ``False`` and writes no audit event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, update

from dicom_node.audit.recorder import AuditEventType, record_transition
from dicom_node.db.models import Study
from dicom_node.domain import STUDY_TRANSITIONS, StudyState, check_transition

_AUDIT = {
    StudyState.COMPLETE: AuditEventType.STUDY_COMPLETED,
    StudyState.REOPENED: AuditEventType.STUDY_REOPENED,
}


def transition_study(
    conn: Connection,
    *,
    study_id: int,
    study_uid: str,
    current: StudyState,
    target: StudyState,
    at: datetime,
    reason: str,
    actor: str = "system",
    details: dict[str, Any] | None = None,
) -> bool:
    """Move one study from ``current`` to ``target``; ``False`` if it was no longer ``current``."""
    check_transition(STUDY_TRANSITIONS, current, target)
    values: dict[str, Any] = {"state": str(target)}
    if target is StudyState.COMPLETE:
        values.update(
            completed_at=at, completion_reason=reason, times_completed=Study.times_completed + 1
        )
    elif target is StudyState.REOPENED:
        values.update(opened_at=at, completed_at=None, completion_reason=None)
    result = conn.execute(
        update(Study).where(Study.id == study_id, Study.state == str(current)).values(**values)
    )
    if result.rowcount != 1:
        return False
    record_transition(
        conn,
        _AUDIT[target],
        ("study", study_uid),
        study_uid=study_uid,
        current=current,
        target=target,
        at=at,
        reason=reason,
        actor=actor,
        details=details,
    )
    return True
