"""Jobs and outbox rows, newest first, with their filters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from dicom_node.admin.read.common import iso, seconds, status_hex
from dicom_node.db.models import Export, Job


@dataclass(frozen=True, slots=True)
class JobFilter:
    state: str | None = None
    model: str | None = None
    study_uid: str | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class JobRow:
    job_id: str
    study_uid: str
    rule: str
    model: str
    state: str
    priority: str  # "stat" or "routine"
    series_uids: list[str]
    stack: dict[str, Any] | None
    attempts: int
    max_attempts: int
    error: str | None
    created_at: str | None
    queued_at: str | None
    started_at: str | None
    results_ready_at: str | None
    finished_at: str | None
    run_s: float | None  # claimed -> results ready


def jobs(engine: Engine, flt: JobFilter) -> list[JobRow]:
    stmt = select(Job.__table__).order_by(Job.created_at.desc()).limit(flt.limit)
    if flt.state:
        stmt = stmt.where(Job.state == flt.state.upper())
    if flt.model:
        stmt = stmt.where(Job.model == flt.model)
    if flt.study_uid:
        stmt = stmt.where(Job.study_uid == flt.study_uid)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [
        JobRow(
            job_id=r.id,
            study_uid=r.study_uid,
            rule=r.rule,
            model=r.model,
            state=r.state,
            priority="stat" if r.priority == 0 else "routine",
            series_uids=r.series_uids,
            stack=r.stack,
            attempts=r.attempts,
            max_attempts=r.max_attempts,
            error=r.error,
            created_at=iso(r.created_at),
            queued_at=iso(r.queued_at),
            started_at=iso(r.started_at),
            results_ready_at=iso(r.results_ready_at),
            finished_at=iso(r.finished_at),
            run_s=seconds(r.started_at, r.results_ready_at),
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class ExportFilter:
    state: str | None = None
    destination: str | None = None
    job_id: str | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class ExportRow:
    export_id: str
    job_id: str
    study_uid: str
    destination: str
    kind: str
    sop_instance_uid: str
    state: str
    attempts: int
    max_attempts: int
    last_status: str | None
    last_error: str | None
    warning: str | None
    next_attempt_at: str | None
    created_at: str | None
    delivered_at: str | None
    send_s: float | None  # made -> delivered


def export_row(r: Any) -> ExportRow:
    """One ``exports`` row as the outbox views (and each job of a timeline) show it."""
    return ExportRow(
        export_id=r.id,
        job_id=r.job_id,
        study_uid=r.study_uid,
        destination=r.destination,
        kind=r.kind,
        sop_instance_uid=r.sop_instance_uid,
        state=r.state,
        attempts=r.attempts,
        max_attempts=r.max_attempts,
        last_status=status_hex(r.last_status),
        last_error=r.last_error,
        warning=r.warning,
        next_attempt_at=iso(r.next_attempt_at),
        created_at=iso(r.created_at),
        delivered_at=iso(r.delivered_at),
        send_s=seconds(r.created_at, r.delivered_at),
    )


def exports(engine: Engine, flt: ExportFilter) -> list[ExportRow]:
    """Outbox rows with their attempts, last status and error."""
    stmt = select(Export.__table__).order_by(Export.created_at.desc(), Export.kind).limit(flt.limit)
    if flt.job_id:
        stmt = stmt.where(Export.job_id == flt.job_id)
    if flt.state:
        stmt = stmt.where(Export.state == flt.state.upper())
    if flt.destination:
        stmt = stmt.where(Export.destination == flt.destination)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [export_row(r) for r in rows]
