"""One study, every stage: received, complete, each job's queue/run/results/finish, every
export attempt, the rules' choice of stacks and why, and the study's audit events. The web's
study page, ``GET /api/studies/{uid}`` and ``dicom-node studies show`` all render this."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from dicom_node.admin.read.common import iso, seconds
from dicom_node.admin.read.jobs import ExportRow, export_row
from dicom_node.db.models import (
    Association,
    AuditEvent,
    Export,
    Instance,
    Job,
    Series,
    Study,
    StudyAssociation,
)
from dicom_node.jobs.facts import study_stack_facts
from dicom_node.jobs.rules import RuleOutcome, StackVerdict, evaluate
from dicom_node.results import JobSummary
from dicom_node.settings import Settings


@dataclass(frozen=True, slots=True)
class Stage:
    stage: str
    at: str | None
    duration_s: float | None  # since the stage before
    duration_of: str | None  # what that duration measures


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the merged, chronological timeline."""

    stage: str
    at: str | None
    duration_s: float | None
    duration_of: str | None
    actor: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    at: str | None
    event: str
    actor: str
    entity_type: str | None
    entity_id: str | None
    details: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class SeriesRow:
    series_uid: str
    modality: str | None
    series_number: int | None
    description: str | None
    orientation: str | None
    instances: int
    first_received: str | None
    last_received: str | None


@dataclass(frozen=True, slots=True)
class RuleRow:
    rule: str
    models: list[str]
    priority: str
    chosen: list[str]
    not_chosen: dict[str, str]  # candidate -> why not
    refused: dict[str, str]  # matched, but not one volume: a FAILED job says why
    stacks: list[StackVerdict]


@dataclass(frozen=True, slots=True)
class Measure:
    series_uid: str
    label: str
    voxels: int
    volume_ml: float
    mean: float | None


@dataclass(frozen=True, slots=True)
class ObjectRow:
    """One result object a job built and keeps on the node: where it is, and where it went."""

    profile: str
    kind: str
    sop_instance_uid: str
    path: str
    on_node: bool  # the file is still there to send
    sent_to: list[str]  # destinations with an outbox row for it


@dataclass(frozen=True, slots=True)
class JobTimeline:
    job_id: str
    rule: str
    model: str
    state: str
    attempts: int
    error: str | None
    series_uids: list[str]
    stack: dict[str, Any] | None
    stages: list[Stage]
    total_s: float | None  # first instance (a re-run: its request) -> finished
    total_of: str
    exports: list[ExportRow]
    export_attempts: list[Event]
    log: list[Event]
    measurements: list[Measure]
    objects: list[ObjectRow]
    sendable: list[str]  # destinations its kept objects can still be sent to (exports send)


@dataclass(frozen=True, slots=True)
class StudyTimeline:
    study_uid: str
    state: str
    study_date: str | None
    accession: str | None
    accession_hash: str | None
    calling_aes: list[str]
    stages: list[Stage]
    timeline: list[Entry]
    series: list[SeriesRow]
    rules: list[RuleRow]
    jobs: list[JobTimeline]
    events: list[Event]


def timeline(
    engine: Engine, settings: Settings, study_uid: str, *, show_accession: bool
) -> StudyTimeline | None:
    """The study's timeline, or ``None`` when the index has no such study."""
    with engine.connect() as conn:
        study = conn.execute(select(Study.__table__).where(Study.study_uid == study_uid)).first()
        if study is None:
            return None
        series = _series(conn, study.id)
        jobs = conn.execute(
            select(Job.__table__).where(Job.study_id == study.id).order_by(Job.created_at)
        ).all()
        exports = conn.execute(
            select(Export.__table__)
            .where(Export.study_uid == study_uid)
            .order_by(Export.created_at)
        ).all()
        events = [
            _event(e)
            for e in conn.execute(
                select(AuditEvent.__table__)
                .where(AuditEvent.study_uid == study_uid)
                .order_by(AuditEvent.at, AuditEvent.id)
            )
        ]
        facts = study_stack_facts(conn, study_uid, settings.storage.root) or []
        aes = conn.execute(
            select(Association.calling_ae)
            .join(StudyAssociation, StudyAssociation.association_id == Association.id)
            .where(StudyAssociation.study_id == study.id)
        ).scalars()
        calling_aes = sorted(set(aes))
    stages = _study_stages(study)
    log = _job_logs(events, {x.id: x.job_id for x in exports})
    job_rows = [
        _job(job, study, [x for x in exports if x.job_id == job.id], log[job.id], settings)
        for job in jobs
    ]
    return StudyTimeline(
        study_uid=study.study_uid,
        state=study.state,
        study_date=study.study_date,
        accession=study.accession_number if show_accession else None,
        accession_hash=study.accession_hash,
        calling_aes=calling_aes,
        stages=stages,
        timeline=_merged(stages, job_rows, {x.id: x.kind.upper() for x in exports}),
        series=series,
        rules=[_rule(o) for o in evaluate(settings.rules, facts)],
        jobs=job_rows,
        events=events,
    )


def job_timeline(engine: Engine, settings: Settings, job_id: str) -> JobTimeline | None:
    """One job as its study's page shows it (stages, exports, objects), or ``None``."""
    with engine.connect() as conn:
        study_uid = conn.execute(select(Job.study_uid).where(Job.id == job_id)).scalar()
    if study_uid is None:
        return None
    found = timeline(engine, settings, study_uid, show_accession=False)
    return next((j for j in found.jobs if j.job_id == job_id), None) if found else None


def _series(conn: Connection, study_id: int) -> list[SeriesRow]:
    rows = conn.execute(
        select(
            Series.series_uid,
            Series.modality,
            Series.series_number,
            Series.series_description,
            Series.orientation,
            func.count(Instance.id),
            func.min(Instance.received_at),
            func.max(Instance.received_at),
        )
        .join(Instance, Instance.series_id == Series.id, isouter=True)
        .where(Series.study_id == study_id)
        .group_by(Series.id)
        .order_by(Series.series_number)
    ).all()
    return [
        SeriesRow(uid, modality, number, description, orientation, n, iso(first), iso(last))
        for uid, modality, number, description, orientation, n, first, last in rows
    ]


def _study_stages(study: Any) -> list[Stage]:
    stages = [
        Stage("received (first instance)", iso(study.first_received), None, None),
        Stage(
            "received (last instance)",
            iso(study.last_received),
            seconds(study.first_received, study.last_received),
            "receiving",
        ),
    ]
    if study.completed_at is not None:
        stages.append(
            Stage(
                f"complete ({study.completion_reason})",
                iso(study.completed_at),
                seconds(study.last_received, study.completed_at),
                "quiet period after the last instance",
            )
        )
    return stages


def _job_logs(events: list[Event], export_job: dict[str, str]) -> dict[str, list[Event]]:
    """Each job's events: its own, and those of its exports."""
    by_job: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.entity_type == "job" and e.entity_id:
            by_job[e.entity_id].append(e)
        elif e.entity_type == "export" and e.entity_id:
            by_job[export_job.get(e.entity_id, "")].append(e)
    return by_job


def _job(
    job: Any, study: Any, exports: list[Any], log: list[Event], settings: Settings
) -> JobTimeline:
    rerun_by = next(
        (e.actor for e in log if str((e.details or {}).get("reason", "")).startswith("re-run")),
        None,
    )
    resent = any(e.event == "export.resend" for e in log)
    queued = (
        Stage(f"queued (re-run by {rerun_by})", iso(job.queued_at), None, None)
        if rerun_by
        else Stage(
            "queued",
            iso(job.queued_at),
            seconds(study.completed_at, job.queued_at),
            "since complete",
        )
    )
    stages = [
        queued,
        Stage(
            "running",
            iso(job.started_at),
            seconds(job.queued_at, job.started_at),
            "waiting in the queue",
        ),
        Stage(
            "results ready",
            iso(job.results_ready_at),
            seconds(job.started_at, job.results_ready_at),
            "inference and results",
        ),
        Stage(
            f"finished ({job.state})",
            iso(job.finished_at),
            seconds(job.results_ready_at or job.started_at, job.finished_at),
            ("export, re-sends included" if resent else "export") if job.results_ready_at else None,
        ),
    ]
    # a re-run is measured from when it was asked for, not from the study's first instance
    since = job.queued_at if rerun_by else study.first_received
    return JobTimeline(
        job_id=job.id,
        rule=job.rule,
        model=job.model,
        state=job.state,
        attempts=job.attempts,
        error=job.error,
        series_uids=job.series_uids,
        stack=job.stack,
        stages=stages,
        total_s=seconds(since, job.finished_at),
        total_of="re-run to finished" if rerun_by else "first instance to finished",
        exports=[export_row(x) for x in exports],
        export_attempts=[e for e in log if e.event.startswith("export.")],
        log=log,
        measurements=_measurements(job.result),
        objects=(objects := _objects(job.result, exports)),
        sendable=_sendable(objects, exports, settings),
    )


def _objects(result: dict[str, Any] | None, exports: list[Any]) -> list[ObjectRow]:
    summary = JobSummary.from_json(result) if result else None
    built = summary.results.objects if summary and summary.results else {}
    sent: dict[str, list[str]] = defaultdict(list)
    for x in exports:
        sent[x.sop_instance_uid].append(x.destination)
    return [
        ObjectRow(
            profile,
            str(o.kind),
            o.sop_instance_uid,
            o.path,
            Path(o.path).is_file(),
            sorted(set(sent[o.sop_instance_uid])),
        )
        for profile, objs in sorted(built.items())
        for o in objs
    ]


def _sendable(objects: list[ObjectRow], exports: list[Any], settings: Settings) -> list[str]:
    """Destinations whose profile this job built, that have no row of it yet."""
    have = {x.destination for x in exports}
    built = {o.profile for o in objects if o.on_node}
    return [d.name for d in settings.destinations if d.profile in built and d.name not in have]


def _rule(o: RuleOutcome) -> RuleRow:
    return RuleRow(
        rule=o.rule,
        models=list(o.models),
        priority=o.priority,
        chosen=list(o.chosen),
        not_chosen=o.reasons,
        refused=o.refused,
        stacks=list(o.stacks),
    )


def _merged(stages: list[Stage], jobs: list[JobTimeline], kinds: dict[str, str]) -> list[Entry]:
    """One chronological list: the study's stages, each job's stages, and every export
    event (``SEG delivered``, with the time since that object's ``sending``)."""
    entries = [Entry(st.stage, st.at, st.duration_s, st.duration_of) for st in stages if st.at]
    for job in jobs:
        entries += [
            Entry(f"{job.model}: {st.stage}", st.at, st.duration_s, st.duration_of)
            for st in job.stages
            if st.at
        ]
        entries += _export_entries(job, kinds)
    return sorted(entries, key=lambda e: str(e.at))


def _export_entries(job: JobTimeline, kinds: dict[str, str]) -> list[Entry]:
    sending: dict[str, datetime] = {}
    entries = []
    for ev in job.export_attempts:
        at = datetime.fromisoformat(str(ev.at))
        what = ev.event.removeprefix("export.").replace("_", " ")
        duration = None
        if what == "sending" and ev.entity_id:
            sending[ev.entity_id] = at
        elif ev.entity_id in sending:
            duration = seconds(sending.pop(str(ev.entity_id)), at)
        details = ev.details or {}
        detail = " · ".join(
            str(v) for v in (details.get("destination"), details.get("reason")) if v
        )
        entries.append(
            Entry(
                stage=f"{job.model}: {kinds.get(str(ev.entity_id), 'object')} {what}",
                at=ev.at,
                duration_s=duration,
                duration_of="C-STORE" if duration is not None else None,
                actor=ev.actor if ev.actor != "system" else None,
                detail=detail or None,
            )
        )
    return entries


def _event(e: Any) -> Event:
    return Event(iso(e.at), e.event_type, e.actor, e.entity_type, e.entity_id, e.details)


def _measurements(result: dict[str, Any] | None) -> list[Measure]:
    summary = JobSummary.from_json(result) if result else None
    return [
        Measure(series.series_uid, label.name, label.voxels, label.volume_ml, label.mean)
        for series in (summary.series if summary else ())
        for label in series.labels
    ]
