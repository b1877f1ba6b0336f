"""What an admin may do, one function per action, shared by the CLI and the web UI.

Every action goes through the stage's own transition function, so the lifecycle tables decide
what is allowed and the audit event (with the admin's name as actor) is written in the same
transaction as the change. A refused action raises ``ActionError`` with a message for the admin.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, Row, select

from dicom_node.audit.recorder import AuditEventType, record
from dicom_node.db.models import Export, Job, Study, utcnow
from dicom_node.domain import JobState, StudyState
from dicom_node.export import outbox
from dicom_node.jobs.service import create_jobs, transition_job
from dicom_node.logs import get_logger
from dicom_node.results import JobSummary
from dicom_node.settings import Settings
from dicom_node.studies.transitions import transition_study

log = get_logger(__name__)

RETRYABLE = (JobState.FAILED, JobState.CANCELLED)
CANCELLABLE = (JobState.QUEUED, JobState.RUNNING)


class ActionError(Exception):
    """An action the current state does not allow, or an unknown study, job or export."""


class NotFoundError(ActionError):
    pass


def _study(conn: Connection, study_uid: str) -> Row[int, str]:
    row = conn.execute(select(Study.id, Study.state).where(Study.study_uid == study_uid)).first()
    if row is None:
        raise NotFoundError(f"no study {study_uid}")
    return row


def force_complete(engine: Engine, settings: Settings, study_uid: str, actor: str) -> list[str]:
    """A study still receiving is made COMPLETE now (its jobs are made); returns the job ids."""
    now = utcnow()
    with engine.begin() as conn:
        row = _study(conn, study_uid)
        if row.state == StudyState.COMPLETE:
            raise ActionError(f"study {study_uid} is already COMPLETE; use re-run for new jobs")
        transition_study(
            conn,
            study_id=row.id,
            study_uid=study_uid,
            current=StudyState(row.state),
            target=StudyState.COMPLETE,
            at=now,
            reason="forced",
            actor=actor,
        )
        jobs = create_jobs(conn, settings, (row.id, study_uid), at=now, actor=actor)
    log.info("study_force_completed", study_uid=study_uid, actor=actor, jobs=jobs)
    return jobs


def rerun(engine: Engine, settings: Settings, study_uid: str, actor: str) -> list[str]:
    """New QUEUED jobs for a COMPLETE study, as if it completed now; returns their ids."""
    now = utcnow()
    with engine.begin() as conn:
        row = _study(conn, study_uid)
        if row.state != StudyState.COMPLETE:
            raise ActionError(f"study {study_uid} is {row.state}: force-complete it first")
        jobs = create_jobs(conn, settings, (row.id, study_uid), at=now, actor=actor, rerun=True)
    if not jobs:
        raise ActionError(f"no rule applies to study {study_uid}: nothing to run")
    log.info("study_rerun", study_uid=study_uid, actor=actor, jobs=jobs)
    return jobs


def _job_state(engine: Engine, job_id: str) -> JobState:
    with engine.connect() as conn:
        state = conn.execute(select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
    if state is None:
        raise NotFoundError(f"no job {job_id}")
    return JobState(state)


def retry_job(engine: Engine, job_id: str, actor: str) -> None:
    """A FAILED or CANCELLED job back to QUEUED, attempts from zero."""
    state = _job_state(engine, job_id)
    if state not in RETRYABLE:
        raise ActionError(f"job {job_id} is {state}; only FAILED or CANCELLED jobs are retried")
    now = utcnow()
    with engine.begin() as conn:
        moved = transition_job(
            conn,
            job_id,
            state,
            JobState.QUEUED,
            at=now,
            reason=f"retry by {actor}",
            actor=actor,
            values={
                "attempts": 0,
                "error": None,
                "worker": None,
                "lease_expires_at": None,
                "queued_at": now,
                "enqueued_at": None,
                "started_at": None,
                "results_ready_at": None,
                "finished_at": None,
            },
        )
    if not moved:
        raise ActionError(f"job {job_id} changed state meanwhile; reload and try again")
    log.info("job_retried", job_id=job_id, actor=actor)


def cancel_job(engine: Engine, job_id: str, actor: str) -> None:
    """A QUEUED or RUNNING job to CANCELLED. A running worker's results are then refused."""
    state = _job_state(engine, job_id)
    if state not in CANCELLABLE:
        raise ActionError(f"job {job_id} is {state}; only QUEUED or RUNNING jobs are cancelled")
    with engine.begin() as conn:
        moved = transition_job(
            conn,
            job_id,
            state,
            JobState.CANCELLED,
            at=utcnow(),
            reason=f"cancelled by {actor}",
            actor=actor,
            values={"lease_expires_at": None},
        )
    if not moved:
        raise ActionError(f"job {job_id} changed state meanwhile; reload and try again")
    log.info("job_cancelled", job_id=job_id, actor=actor)


def resend(
    engine: Engine, actor: str, *, export_id: str | None = None, job_id: str | None = None
) -> list[str]:
    """DELIVERED or FAILED outbox rows of one export or one job back to PENDING."""
    with engine.connect() as conn:
        query = select(Export.id, Export.state)
        query = query.where(Export.id == export_id if export_id else Export.job_id == job_id)
        rows = conn.execute(query).all()
    if not rows:
        raise NotFoundError(f"no export {export_id}" if export_id else f"no exports of {job_id}")
    moved = outbox.resend(engine, export_id=export_id, job_id=job_id, actor=actor)
    if not moved:
        states = sorted({r.state for r in rows})
        raise ActionError(f"nothing to resend: exports are {', '.join(states)} (still in flight)")
    log.info("exports_resent", export_ids=moved, job_id=job_id, actor=actor)
    return moved


def send_results(
    engine: Engine, settings: Settings, job_id: str, destination: str, actor: str
) -> list[str]:
    """Send a job's kept result objects to ``destination`` (one added since, or a second
    one): new outbox rows for the objects of its profile. What cannot be sent says why."""
    dest = settings.destination(destination)
    if dest is None:
        known = ", ".join(d.name for d in settings.destinations) or "none configured"
        raise NotFoundError(f"no destination {destination!r} (destinations: {known})")
    with engine.connect() as conn:
        job = conn.execute(
            select(Job.state, Job.study_uid, Job.result).where(Job.id == job_id)
        ).one_or_none()
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    summary = JobSummary.from_json(job.result) if job.result else None
    if summary is None or summary.results is None:
        raise ActionError(f"job {job_id} is {job.state}: it has no result objects to send")
    objects = summary.objects_for(dest.profile)
    if not objects:
        built = ", ".join(sorted(summary.results.objects)) or "none"
        raise ActionError(
            f"job {job_id} built objects for profile(s) {built}, and {destination} takes "
            f"profile {dest.profile!r}: re-run the study to build them "
            f"(dicom-node studies rerun {job.study_uid})"
        )
    missing = [o.path for o in objects if not Path(o.path).is_file()]
    if missing:
        raise ActionError(f"result files are gone from the node: {', '.join(missing)}")
    made = outbox.send_kept(
        engine,
        job_id=job_id,
        study_uid=job.study_uid,
        dest=dest,
        objects=objects,
        actor=actor,
    )
    if not made:
        raise ActionError(
            f"job {job_id} already has these objects for {destination}: "
            f"dicom-node exports resend --job {job_id}"
        )
    log.info("results_sent", job_id=job_id, destination=destination, exports=made, actor=actor)
    return made


ECHO_TEST_TIMEOUT_S = 5.0


def echo_destination(engine: Engine, settings: Settings, name: str, actor: str) -> str | None:
    """C-ECHO a destination with its own settings; ``None`` on success, else the error.
    The test is audited (an admin's action), whatever its outcome."""
    from dicom_node.export.scu import echo as scu_echo  # noqa: PLC0415 - pynetdicom SCU

    dest = settings.destination(name)
    if dest is None:
        raise NotFoundError(f"no destination {name!r}")
    # an admin is waiting: a destination that hangs answers "timeout" in seconds, not minutes
    dest = dest.model_copy(
        update={
            "acse_timeout_s": min(dest.acse_timeout_s, ECHO_TEST_TIMEOUT_S),
            "dimse_timeout_s": min(dest.dimse_timeout_s, ECHO_TEST_TIMEOUT_S),
        }
    )
    started = datetime.now(UTC)
    error = scu_echo(dest, dest.calling_ae or settings.node.ae_title) or None
    with engine.begin() as conn:
        record(
            conn,
            AuditEventType.DESTINATION_ECHO,
            entity_type="destination",
            entity_id=name,
            actor=actor,
            details={
                "ok": error is None,
                "error": error,
                "ms": round((datetime.now(UTC) - started).total_seconds() * 1000, 1),
            },
        )
    return error


def audit_logout(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        record(conn, AuditEventType.USER_LOGOUT, entity_type="user", entity_id=name, actor=name)
