"""Read models for the CLI (and later the web UI): no patient names, ever."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from dicom_node.db.models import (
    AuditEvent,
    DestinationCircuit,
    Export,
    Instance,
    Job,
    Series,
    Study,
)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def seconds(start: datetime | None, end: datetime | None) -> float | None:
    """``end - start`` in seconds (ms resolution, never negative); ``None`` if either is."""
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds()), 3)


def _summaries(engine: Engine, *where: Any, limit: int = 1000) -> list[dict[str, Any]]:
    n_series = select(func.count(Series.id)).where(Series.study_id == Study.id).scalar_subquery()
    n_instances = (
        select(func.count(Instance.id))
        .join(Series, Series.id == Instance.series_id)
        .where(Series.study_id == Study.id)
        .scalar_subquery()
    )
    stmt = (
        select(Study.__table__, n_series.label("n_series"), n_instances.label("n_instances"))
        .where(*where)
        .order_by(Study.last_received.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = [row._mapping for row in conn.execute(stmt)]
    return [
        {
            "study_uid": r["study_uid"],
            "state": r["state"],
            "series": int(r["n_series"]),
            "instances": int(r["n_instances"]),
            "first_received": iso(r["first_received"]),
            "last_received": iso(r["last_received"]),
            "completed_at": iso(r["completed_at"]),
            "completion_reason": r["completion_reason"],
            "times_completed": r["times_completed"],
            "accession_hash": r["accession_hash"],
        }
        for r in rows
    ]


def list_studies(engine: Engine, limit: int = 1000) -> list[dict[str, Any]]:
    """Most recently received first."""
    return _summaries(engine, limit=limit)


def show_study(engine: Engine, study_uid: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        study_id = conn.execute(
            select(Study.id).where(Study.study_uid == study_uid)
        ).scalar_one_or_none()
        if study_id is None:
            return None
        series = conn.execute(
            select(
                Series.series_uid,
                Series.modality,
                Series.series_number,
                func.count(Instance.id),
                func.min(Instance.received_at),
                func.max(Instance.received_at),
            )
            .join(Instance, Instance.series_id == Series.id, isouter=True)
            .where(Series.study_id == study_id)
            .group_by(Series.id)
            .order_by(Series.series_number)
        ).all()
        events = conn.execute(
            select(AuditEvent.at, AuditEvent.event_type, AuditEvent.actor, AuditEvent.details)
            .where(AuditEvent.study_uid == study_uid)
            .order_by(AuditEvent.at, AuditEvent.id)
        ).all()
    summary = _summaries(engine, Study.study_uid == study_uid)[0]
    summary["series_detail"] = [
        {
            "series_uid": uid,
            "modality": mod,
            "series_number": num,
            "instances": n,
            "first_received": iso(first),
            "last_received": iso(last),
        }
        for uid, mod, num, n, first, last in series
    ]
    summary["timeline"] = [
        {"at": iso(at), "event": etype, "actor": actor, "details": details}
        for at, etype, actor, details in events
    ]
    return summary


def list_jobs(
    engine: Engine,
    *,
    state: str | None = None,
    model: str | None = None,
    study_uid: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Newest first; ``run_s`` is claimed -> results ready."""
    stmt = select(Job.__table__).order_by(Job.created_at.desc()).limit(limit)
    if state:
        stmt = stmt.where(Job.state == state.upper())
    if model:
        stmt = stmt.where(Job.model == model)
    if study_uid:
        stmt = stmt.where(Job.study_uid == study_uid)
    with engine.connect() as conn:
        rows = [row._mapping for row in conn.execute(stmt)]
    stamps = ("created_at", "queued_at", "started_at", "results_ready_at", "finished_at")
    return [
        {
            "job_id": r["id"],
            "study_uid": r["study_uid"],
            "rule": r["rule"],
            "model": r["model"],
            "state": r["state"],
            "priority": "stat" if r["priority"] == 0 else "routine",
            "series_uids": r["series_uids"],
            "stack": r["stack"],
            "attempts": r["attempts"],
            "max_attempts": r["max_attempts"],
            "error": r["error"],
            **{k: iso(r[k]) for k in stamps},
            "run_s": seconds(r["started_at"], r["results_ready_at"]),
        }
        for r in rows
    ]


def list_exports(
    engine: Engine, *, job_id: str | None = None, state: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Outbox rows, newest first, with their attempts, last status and error."""
    stmt = select(Export.__table__).order_by(Export.created_at.desc(), Export.kind).limit(limit)
    if job_id:
        stmt = stmt.where(Export.job_id == job_id)
    if state:
        stmt = stmt.where(Export.state == state.upper())
    with engine.connect() as conn:
        rows = [row._mapping for row in conn.execute(stmt)]
    return [
        {
            "export_id": r["id"],
            "job_id": r["job_id"],
            "study_uid": r["study_uid"],
            "destination": r["destination"],
            "kind": r["kind"],
            "sop_instance_uid": r["sop_instance_uid"],
            "state": r["state"],
            "attempts": r["attempts"],
            "max_attempts": r["max_attempts"],
            "last_status": None if r["last_status"] is None else f"0x{r['last_status']:04X}",
            "last_error": r["last_error"],
            "warning": r["warning"],
            "next_attempt_at": iso(r["next_attempt_at"]),
            "created_at": iso(r["created_at"]),
            "delivered_at": iso(r["delivered_at"]),
        }
        for r in rows
    ]


def list_circuits(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(DestinationCircuit.__table__)).all()
    return [
        {
            "destination": r.destination,
            "circuit": r.state,
            "failures": r.failures,
            "opened_at": iso(r.opened_at),
            "probe_at": iso(r.probe_at),
            "last_error": r.last_error,
        }
        for r in rows
    ]
