"""The job service: jobs made when a study completes, moved only through ``JOB_TRANSITIONS``.

The database is the queue of record. Every transition is one conditional UPDATE plus one audit
event in the same transaction, so two workers (or a worker and the reconciler) racing on a job
cannot both move it. A queue (Celery, or the embedded runner) only carries job ids, enqueued
after the commit that made them QUEUED.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, or_, select, update

from dicom_node.audit.recorder import AuditEventType, record_transition
from dicom_node.db.models import Instance, Job, Series, utcnow
from dicom_node.db.session import insert_ignore
from dicom_node.domain import JOB_TRANSITIONS, JobState, check_transition
from dicom_node.jobs.facts import study_stack_facts
from dicom_node.jobs.rules import RuleOutcome, SeriesFacts, evaluate
from dicom_node.results import JobSummary, ResultObject
from dicom_node.settings import DestinationSettings, JobSettings, Settings

PRIORITY = {"stat": 0, "routine": 1}
_AUDIT = {
    JobState.QUEUED: AuditEventType.JOB_QUEUED,
    JobState.RUNNING: AuditEventType.JOB_RUNNING,
    JobState.RESULTS_READY: AuditEventType.JOB_RESULTS_READY,
    JobState.EXPORTING: AuditEventType.JOB_EXPORTING,
    JobState.DONE: AuditEventType.JOB_DONE,
    JobState.FAILED: AuditEventType.JOB_FAILED,
    JobState.CANCELLED: AuditEventType.JOB_CANCELLED,
}
_STAMP = {
    JobState.QUEUED: "queued_at",
    JobState.RUNNING: "started_at",
    JobState.RESULTS_READY: "results_ready_at",
    JobState.DONE: "finished_at",
    JobState.FAILED: "finished_at",
    JobState.CANCELLED: "finished_at",
}


def input_key(
    model: str, rule: str, sop_instance_uids: Sequence[str], *, rerun: str | None = None
) -> str:
    """The job's identity; an admin's re-run salts it with its own id, so it is a new job.
    A frame of a multi-frame instance is ``<SOP Instance UID>/<frame number>``."""
    digest = hashlib.sha256(f"{model}\n{rule}\n".encode())
    if rerun is not None:
        digest.update(f"rerun {rerun}\n".encode())
    for uid in sorted(sop_instance_uids):
        digest.update(uid.encode() + b"\n")
    return digest.hexdigest()


def _input(conn: Connection, candidate: SeriesFacts) -> list[str]:
    """What a candidate runs on, for its input key: the stack's frames, or the whole series."""
    if candidate.stack is None:
        return list(
            conn.execute(
                select(Instance.sop_instance_uid)
                .join(Series, Series.id == Instance.series_id)
                .where(Series.series_uid == candidate.series_uid)
            ).scalars()
        )
    return [
        f.ref.sop_instance_uid
        if f.ref.frame_number is None
        else f"{f.ref.sop_instance_uid}/{f.ref.frame_number}"
        for f in candidate.stack.frames
    ]


def _stack_column(outcome: RuleOutcome, key: str) -> dict[str, Any] | None:
    verdict = next(v for v in outcome.stacks if v.key == key)
    if verdict.stack is None:
        return None
    return {
        "number": verdict.stack,
        "label": verdict.label,
        "frames": verdict.slices,
        "spacing": verdict.spacing,
    }


def create_jobs(
    conn: Connection,
    node: Settings,
    study: tuple[int, str],
    *,
    at: datetime,
    actor: str = "system",
    rerun: bool = False,
) -> list[str]:
    """QUEUED jobs for every (rule, model, chosen stack); none twice for the same input, unless
    an admin asks for a ``rerun``. A stack the rule matched but that cannot be one volume gets
    a job made FAILED at once with the refusal, so it shows in ``jobs``, the timeline and the
    audit log; only the QUEUED ones are returned (to be enqueued after the commit). ``study``
    is its row id and Study Instance UID."""
    (study_id, study_uid), settings = study, node.jobs
    facts = study_stack_facts(conn, study_uid, node.storage.root) or []
    by_key = {f.key: f for f in facts}
    created = []
    for outcome in evaluate(node.rules, facts):
        for key in (*outcome.chosen, *outcome.refused):
            candidate = by_key[key]
            sops = _input(conn, candidate)
            stack = _stack_column(outcome, key)
            refusal = outcome.refused.get(key)
            for model in outcome.models:
                job_id = str(uuid.uuid4())
                values = {
                    "id": job_id,
                    "study_id": study_id,
                    "study_uid": study_uid,
                    "rule": outcome.rule,
                    "model": model,
                    "series_uids": [candidate.series_uid],
                    "stack": stack,
                    "input_key": input_key(
                        model, outcome.rule, sops, rerun=job_id if rerun else None
                    ),
                    "priority": PRIORITY[outcome.priority],
                    "state": str(JobState.QUEUED),
                    "attempts": 0,
                    "max_attempts": settings.max_attempts,
                    "created_at": at,
                    "queued_at": at,
                }
                if not insert_ignore(conn, Job, values):
                    continue
                _audit(
                    conn,
                    job_id,
                    study_uid=study_uid,
                    current=None,
                    target=JobState.QUEUED,
                    at=at,
                    reason=f"re-run by {actor}" if rerun else "study complete",
                    actor=actor,
                    details={
                        "rule": outcome.rule,
                        "model": model,
                        "series": [candidate.series_uid],
                        "stack": stack,
                    },
                )
                if refusal is None:
                    created.append(job_id)
                    continue
                transition_job(
                    conn,
                    job_id,
                    JobState.QUEUED,
                    JobState.FAILED,
                    at=at,
                    reason=refusal,
                    actor=actor,
                    values={"error": refusal[:1024]},
                )
    return created


def transition_job(
    conn: Connection,
    job_id: str,
    current: JobState,
    target: JobState,
    *,
    at: datetime,
    reason: str,
    actor: str = "system",
    values: dict[str, Any] | None = None,
    worker: str | None = None,
) -> bool:
    """Move one job; ``False`` if it was no longer ``current`` (someone else moved it), or, with
    ``worker``, no longer that worker's (its lease ran out and another took it)."""
    check_transition(JOB_TRANSITIONS, current, target)
    changes: dict[str, Any] = {"state": str(target), **(values or {})}
    if target in _STAMP:
        changes.setdefault(_STAMP[target], at)
    condition = [Job.id == job_id, Job.state == str(current)]
    if worker is not None:
        condition.append(Job.worker == worker)
    row = conn.execute(
        update(Job).where(*condition).values(**changes).returning(Job.study_uid)
    ).first()
    if row is None:
        return False
    _audit(
        conn,
        job_id,
        study_uid=row.study_uid,
        current=current,
        target=target,
        at=at,
        reason=reason,
        actor=actor,
    )
    return True


def _audit(
    conn: Connection,
    job_id: str,
    *,
    study_uid: str,
    current: JobState | None,
    target: JobState,
    at: datetime,
    reason: str,
    details: dict[str, Any] | None = None,
    actor: str = "system",
) -> None:
    event = _AUDIT[target]
    if current is JobState.RUNNING and target is JobState.QUEUED:
        event = AuditEventType.JOB_REQUEUED
    record_transition(
        conn,
        event,
        ("job", job_id),
        study_uid=study_uid,
        current=current,
        target=target,
        at=at,
        reason=reason,
        actor=actor,
        details=details,
    )


def claim(engine: Engine, job_id: str, worker: str, settings: JobSettings) -> bool:
    """QUEUED -> RUNNING for this worker, with a lease; ``False`` if another got it first."""
    now = utcnow()
    with engine.begin() as conn:
        attempts = conn.execute(select(Job.attempts).where(Job.id == job_id)).scalar_one()
        return transition_job(
            conn,
            job_id,
            JobState.QUEUED,
            JobState.RUNNING,
            at=now,
            reason=f"claimed by {worker}",
            values={
                "worker": worker,
                "attempts": attempts + 1,
                "lease_expires_at": now + timedelta(seconds=settings.lease_s),
                "error": None,
            },
        )


def heartbeat(engine: Engine, job_id: str, worker: str, settings: JobSettings) -> bool:
    """Extend a RUNNING job's lease; ``False`` if the job is no longer this worker's."""
    with engine.begin() as conn:
        result = conn.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == str(JobState.RUNNING), Job.worker == worker)
            .values(lease_expires_at=utcnow() + timedelta(seconds=settings.lease_s))
        )
        return bool(result.rowcount)


def give_back(
    engine: Engine, job_id: str, error: str, *, permanent: bool = False, worker: str | None = None
) -> JobState | None:
    """A RUNNING job that could not finish: back to QUEUED while attempts remain, else FAILED.
    ``None`` when it was no longer RUNNING (for ``worker``): someone else already moved it."""
    now = utcnow()
    with engine.begin() as conn:
        job = conn.execute(select(Job.attempts, Job.max_attempts).where(Job.id == job_id)).one()
        exhausted = job.attempts >= job.max_attempts
        if permanent or exhausted:
            message = error if permanent else f"{error} (failed {job.attempts} attempts)"
            moved = transition_job(
                conn,
                job_id,
                JobState.RUNNING,
                JobState.FAILED,
                at=now,
                reason=message,
                values={"error": message[:1024], "lease_expires_at": None},
                worker=worker,
            )
            return JobState.FAILED if moved else None
        moved = transition_job(
            conn,
            job_id,
            JobState.RUNNING,
            JobState.QUEUED,
            at=now,
            reason=error,
            values={
                "error": error[:1024],
                "worker": None,
                "lease_expires_at": None,
                "queued_at": now,
                "enqueued_at": None,
            },
            worker=worker,
        )
        return JobState.QUEUED if moved else None


def expire_leases(engine: Engine) -> list[str]:
    """RUNNING jobs past their lease (a killed worker, a dead node) go back to QUEUED, or to
    FAILED when their attempts are used up. Returns the ids requeued."""
    now = utcnow()
    with engine.connect() as conn:
        expired = list(
            conn.execute(
                select(Job.id).where(Job.state == str(JobState.RUNNING), Job.lease_expires_at < now)
            ).scalars()
        )
    return [
        job_id
        for job_id in expired
        if give_back(engine, job_id, "lease expired: the worker stopped answering")
        is JobState.QUEUED
    ]


def due_for_enqueue(engine: Engine, *, unclaimed_after_s: float) -> list[str]:
    """QUEUED jobs to hand to the broker: never sent, or sent ``unclaimed_after_s`` ago and
    still unclaimed (a lost broker message, a flushed Redis, a restarted node)."""
    stale = utcnow() - timedelta(seconds=unclaimed_after_s)
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(Job.id)
                .where(
                    Job.state == str(JobState.QUEUED),
                    or_(Job.enqueued_at.is_(None), Job.enqueued_at <= stale),
                )
                .order_by(Job.priority, Job.queued_at)
            ).scalars()
        )


def mark_enqueued(engine: Engine, job_ids: Sequence[str]) -> None:
    """Stamp ``enqueued_at`` on the QUEUED ``job_ids`` handed to the broker."""
    if not job_ids:
        return
    with engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.state == str(JobState.QUEUED))
            .values(enqueued_at=utcnow())
        )


def next_queued(engine: Engine) -> list[str]:
    """QUEUED job ids in the order workers should take them (stat first, then oldest)."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(Job.id)
                .where(Job.state == str(JobState.QUEUED))
                .order_by(Job.priority, Job.queued_at)
                .limit(16)
            ).scalars()
        )


class ExportMaker(Protocol):
    """Makes the outbox rows of a job's objects in the caller's transaction: the outbox's
    ``create_exports``, given by the worker (jobs sits below export and never imports it)."""

    def __call__(
        self,
        conn: Connection,
        *,
        job_id: str,
        study_uid: str,
        destinations: Sequence[DestinationSettings],
        objects: Mapping[str, Sequence[ResultObject]],
        at: datetime,
    ) -> list[str]: ...


def results_ready(
    engine: Engine,
    job_id: str,
    worker: str,
    summary: JobSummary,
    *,
    study_uid: str,
    destinations: Sequence[DestinationSettings],
    make_exports: ExportMaker,
) -> bool:
    """RUNNING -> RESULTS_READY with ``summary`` stored, and its outbox rows made, in one
    transaction; on to DONE at once when no destination takes the objects (they stay on the
    node for a later send). ``False`` when ``worker`` no longer held the job."""
    now = utcnow()
    with engine.begin() as conn:
        moved = transition_job(
            conn,
            job_id,
            JobState.RUNNING,
            JobState.RESULTS_READY,
            at=now,
            reason=f"inference done by {worker}",
            values={"result": summary.to_json(), "lease_expires_at": None, "error": None},
            worker=worker,
        )
        if not moved:
            return False
        made = make_exports(
            conn,
            job_id=job_id,
            study_uid=study_uid,
            destinations=destinations,
            objects=summary.results.objects if summary.results else {},
            at=now,
        )
        if not made:
            transition_job(
                conn,
                job_id,
                JobState.RESULTS_READY,
                JobState.DONE,
                at=now,
                reason="no destination configured: results kept on the node",
            )
    return True
