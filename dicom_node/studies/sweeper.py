"""The completeness sweeper: reads the evidence from the index, applies the policy, transitions.

Stateless between sweeps (the database is the truth), so a restarted node simply carries on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, and_, case, func, or_, select

from dicom_node.db.models import Association, Study, StudyAssociation, utcnow
from dicom_node.domain import OPEN_STUDY_STATES, AssociationEnd, StudyState
from dicom_node.logs import get_logger
from dicom_node.loops import Loop
from dicom_node.studies.policy import CompletionPolicy, StudyEvidence, decide
from dicom_node.studies.transitions import transition_study

log = get_logger(__name__)


def _evidence_query() -> Select[Any]:
    in_episode = or_(Association.ended_at.is_(None), Association.ended_at >= Study.opened_at)
    open_ = case((Association.ended_at.is_(None), 1), else_=0)
    unreleased = case(
        (
            and_(
                Association.ended_at.is_not(None),
                Association.end_reason != str(AssociationEnd.RELEASED),
                in_episode,
            ),
            1,
        ),
        else_=0,
    )
    return (
        select(
            Study.id,
            Study.study_uid,
            Study.state,
            Study.opened_at,
            Study.last_received,
            func.coalesce(func.sum(open_), 0),
            func.coalesce(func.sum(unreleased), 0),
        )
        .select_from(Study)
        .outerjoin(StudyAssociation, StudyAssociation.study_id == Study.id)
        .outerjoin(Association, Association.id == StudyAssociation.association_id)
        .where(Study.state.in_([str(s) for s in OPEN_STUDY_STATES]))
        .group_by(Study.id)
    )


OnComplete = Callable[[Connection, int, str, datetime], object]
"""Called inside the transaction that completes a study (the job service makes its jobs)."""


def sweep_once(
    engine: Engine, policy: CompletionPolicy, on_complete: OnComplete | None = None
) -> list[str]:
    """Complete every study whose evidence says so. Returns their UIDs."""
    now = utcnow()
    with engine.connect() as conn:
        rows = conn.execute(_evidence_query()).all()
    completed: list[str] = []
    for study_id, uid, state, opened_at, last_received, n_open, n_unreleased in rows:
        evidence = StudyEvidence(
            state=StudyState(state),
            opened_at=opened_at,
            last_received=last_received,
            open_associations=int(n_open),
            unreleased_associations=int(n_unreleased),
        )
        reason = decide(evidence, now, policy)
        if reason is None:
            continue
        with engine.begin() as conn:
            moved = transition_study(
                conn,
                study_id=study_id,
                study_uid=uid,
                current=evidence.state,
                target=StudyState.COMPLETE,
                at=now,
                reason=str(reason),
            )
            if moved and on_complete is not None:
                on_complete(conn, study_id, uid, now)
        if moved:
            completed.append(uid)
            log.info(
                "study_completed",
                study_uid=uid,
                reason=str(reason),
                quiet_s=round((now - last_received).total_seconds(), 3),
            )
    return completed


class Sweeper(Loop):
    def __init__(
        self,
        engine: Engine,
        policy: CompletionPolicy,
        interval_s: float,
        on_complete: OnComplete | None = None,
        after_commit: Callable[[list[str]], object] | None = None,
    ) -> None:
        super().__init__(
            "completion-sweeper", self.pass_once, interval_s, event="sweep_failed", wait_first=True
        )
        self.after_commit = after_commit
        self.engine = engine
        self.policy = policy
        self.on_complete = on_complete

    def pass_once(self) -> None:
        """Complete what the evidence allows, then tell ``after_commit`` which studies."""
        completed = sweep_once(self.engine, self.policy, self.on_complete)
        if completed and self.after_commit is not None:
            self.after_commit(completed)  # e.g. wake the dispatcher: jobs are committed
