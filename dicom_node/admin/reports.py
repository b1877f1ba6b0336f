"""Read models for the web UI and its JSON API: filters, a study's timeline, the dashboard's
series, the audit log and per-model monitoring. No patient names or IDs are ever selected;
the accession number only when ``[admin] show_accession`` says so (else its hash).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Float, and_, func, select

from dicom_node.admin.queries import iso, list_circuits, seconds
from dicom_node.db.models import (
    Association,
    AuditEvent,
    Export,
    Instance,
    Job,
    Series,
    Study,
    StudyAssociation,
    utcnow,
)
from dicom_node.domain import JobState, phi_hash
from dicom_node.jobs.facts import study_stack_facts
from dicom_node.jobs.rules import evaluate
from dicom_node.results import JobSummary
from dicom_node.settings import Settings


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- studies -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StudyFilter:
    state: str | None = None
    calling_ae: str | None = None
    model: str | None = None
    accession: str | None = None  # matched by its hash: the index is searched, never logged
    received_from: date | None = None
    received_to: date | None = None  # inclusive
    limit: int = 200

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.state:
            clauses.append(Study.state == self.state.upper())
        if self.calling_ae:
            clauses.append(
                Study.id.in_(
                    select(StudyAssociation.study_id)
                    .join(Association, Association.id == StudyAssociation.association_id)
                    .where(Association.calling_ae == self.calling_ae.strip())
                )
            )
        if self.model:
            clauses.append(Study.id.in_(select(Job.study_id).where(Job.model == self.model)))
        if self.accession:
            clauses.append(Study.accession_hash == phi_hash(self.accession.strip()))
        if self.received_from:
            clauses.append(Study.last_received >= _day_start(self.received_from))
        if self.received_to:
            clauses.append(Study.first_received < _day_start(self.received_to) + timedelta(days=1))
        return clauses


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=utcnow().tzinfo)


def studies(engine: Engine, flt: StudyFilter, *, show_accession: bool) -> list[dict[str, Any]]:
    n_instances = (
        select(func.count(Instance.id))
        .join(Series, Series.id == Instance.series_id)
        .where(Series.study_id == Study.id)
        .scalar_subquery()
    )
    n_series = select(func.count(Series.id)).where(Series.study_id == Study.id).scalar_subquery()
    stmt = (
        select(
            Study.id,
            Study.study_uid,
            Study.state,
            Study.study_date,
            Study.accession_number,
            Study.accession_hash,
            Study.first_received,
            Study.last_received,
            Study.completed_at,
            Study.completion_reason,
            n_series.label("n_series"),
            n_instances.label("n_instances"),
        )
        .where(*flt.where())
        .order_by(Study.last_received.desc())
        .limit(flt.limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
        ids = [r.id for r in rows]
        aes: dict[int, set[str]] = defaultdict(set)
        for sid, ae in conn.execute(
            select(StudyAssociation.study_id, Association.calling_ae)
            .join(Association, Association.id == StudyAssociation.association_id)
            .where(StudyAssociation.study_id.in_(ids))
        ):
            aes[sid].add(ae)
        jobs: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for sid, model, state in conn.execute(
            select(Job.study_id, Job.model, Job.state)
            .where(Job.study_id.in_(ids))
            .order_by(Job.created_at)
        ):
            jobs[sid].append((model, state))
    return [
        {
            "study_uid": r.study_uid,
            "state": r.state,
            "study_date": r.study_date,
            "accession": r.accession_number if show_accession else None,
            "accession_hash": r.accession_hash,
            "calling_aes": sorted(aes[r.id]),
            "series": int(r.n_series),
            "instances": int(r.n_instances),
            "first_received": iso(r.first_received),
            "last_received": iso(r.last_received),
            "completed_at": iso(r.completed_at),
            "completion_reason": r.completion_reason,
            "receive_s": seconds(r.first_received, r.completed_at),
            "jobs": [{"model": m, "state": s} for m, s in jobs[r.id]],
        }
        for r in rows
    ]


def timeline(
    engine: Engine, settings: Settings, study_uid: str, *, show_accession: bool
) -> dict[str, Any] | None:
    """Every stage of one study with its time and duration, the rules' choice of series and
    why, each job with its log (audit events) and each export attempt."""
    with engine.connect() as conn:
        study = conn.execute(select(Study).where(Study.study_uid == study_uid)).first()
        if study is None:
            return None
        series = conn.execute(
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
            .where(Series.study_id == study.id)
            .group_by(Series.id)
            .order_by(Series.series_number)
        ).all()
        jobs = conn.execute(
            select(Job).where(Job.study_id == study.id).order_by(Job.created_at)
        ).all()
        exports = conn.execute(
            select(Export).where(Export.study_uid == study_uid).order_by(Export.created_at)
        ).all()
        events = conn.execute(
            select(AuditEvent)
            .where(AuditEvent.study_uid == study_uid)
            .order_by(AuditEvent.at, AuditEvent.id)
        ).all()
        facts = study_stack_facts(conn, study_uid, settings.storage.root) or []
        aes = sorted(
            set(
                conn.execute(
                    select(Association.calling_ae)
                    .join(StudyAssociation, StudyAssociation.association_id == Association.id)
                    .where(StudyAssociation.study_id == study.id)
                ).scalars()
            )
        )
    outcomes = evaluate(settings.rules, facts)
    stages: list[dict[str, Any]] = [
        _stage("received (first instance)", study.first_received, None, None),
        _stage(
            "received (last instance)",
            study.last_received,
            seconds(study.first_received, study.last_received),
            "receiving",
        ),
    ]
    if study.completed_at is not None:
        stages.append(
            _stage(
                f"complete ({study.completion_reason})",
                study.completed_at,
                seconds(study.last_received, study.completed_at),
                "quiet period after the last instance",
            )
        )
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e.entity_type == "job" and e.entity_id:
            by_job[e.entity_id].append(_event(e))
        elif e.entity_type == "export" and e.entity_id:
            by_job[_export_job(exports, e.entity_id)].append(_event(e))
    job_rows = []
    for job in jobs:
        job_exports = [x for x in exports if x.job_id == job.id]
        attempts = [ev for ev in by_job.get(job.id, []) if ev["event"].startswith("export.")]
        job_rows.append(
            {
                "job_id": job.id,
                "rule": job.rule,
                "model": job.model,
                "state": job.state,
                "attempts": job.attempts,
                "error": job.error,
                "series_uids": job.series_uids,
                "stack": job.stack,
                "stages": [
                    _stage("queued", job.queued_at, seconds(study.completed_at, job.queued_at), ""),
                    _stage(
                        "running",
                        job.started_at,
                        seconds(job.queued_at, job.started_at),
                        "waiting in the queue",
                    ),
                    _stage(
                        "results ready",
                        job.results_ready_at,
                        seconds(job.started_at, job.results_ready_at),
                        "inference and results",
                    ),
                    _stage(
                        f"finished ({job.state})",
                        job.finished_at,
                        seconds(job.results_ready_at or job.started_at, job.finished_at),
                        "export" if job.results_ready_at else "",
                    ),
                ],
                "total_s": seconds(study.first_received, job.finished_at),
                "exports": [
                    {
                        "export_id": x.id,
                        "destination": x.destination,
                        "kind": x.kind,
                        "state": x.state,
                        "attempts": x.attempts,
                        "last_status": None if x.last_status is None else f"0x{x.last_status:04X}",
                        "last_error": x.last_error,
                        "created_at": iso(x.created_at),
                        "delivered_at": iso(x.delivered_at),
                        "send_s": seconds(x.created_at, x.delivered_at),
                    }
                    for x in job_exports
                ],
                "export_attempts": attempts,
                "log": by_job.get(job.id, []),
                "measurements": _measurements(job.result),
            }
        )
    return {
        "study_uid": study.study_uid,
        "state": study.state,
        "study_date": study.study_date,
        "accession": study.accession_number if show_accession else None,
        "accession_hash": study.accession_hash,
        "calling_aes": aes,
        "stages": stages,
        "timeline": _merged(stages, job_rows, exports),
        "series": [
            {
                "series_uid": uid,
                "modality": modality,
                "series_number": number,
                "description": description,
                "orientation": orientation,
                "instances": n,
                "first_received": iso(first),
                "last_received": iso(last),
            }
            for uid, modality, number, description, orientation, n, first, last in series
        ],
        "rules": [
            {
                "rule": o.rule,
                "models": list(o.models),
                "priority": o.priority,
                "chosen": list(o.chosen),
                "not_chosen": o.reasons,
                "refused": o.refused,
                "stacks": [asdict(v) for v in o.stacks],
            }
            for o in outcomes
        ],
        "jobs": job_rows,
        "events": [_event(e) for e in events],
    }


def _merged(
    stages: list[dict[str, Any]], jobs: list[dict[str, Any]], exports: Iterable[Any]
) -> list[dict[str, Any]]:
    """One chronological list: the study's stages, each job's stages, and every export
    event (``SEG delivered``, with the time since that object's ``sending``)."""
    kinds = {x.id: x.kind.upper() for x in exports}
    entries = [{**st, "actor": None, "detail": None} for st in stages if st["at"]]
    for job in jobs:
        model = job["model"]
        entries += [
            {**st, "stage": f"{model}: {st['stage']}", "actor": None, "detail": None}
            for st in job["stages"]
            if st["at"]
        ]
        sending: dict[str, datetime] = {}
        for ev in job["export_attempts"]:
            at = datetime.fromisoformat(ev["at"])
            what = ev["event"].removeprefix("export.").replace("_", " ")
            duration = None
            if what == "sending":
                sending[ev["entity_id"]] = at
            elif ev["entity_id"] in sending:
                duration = seconds(sending.pop(ev["entity_id"]), at)
            details = ev["details"] or {}
            detail = " · ".join(
                str(v) for v in (details.get("destination"), details.get("reason")) if v
            )
            entries.append(
                {
                    "stage": f"{model}: {kinds.get(ev['entity_id'], 'object')} {what}",
                    "at": ev["at"],
                    "duration_s": duration,
                    "duration_of": "C-STORE" if duration is not None else None,
                    "actor": ev["actor"] if ev["actor"] != "system" else None,
                    "detail": detail or None,
                }
            )
    return sorted(entries, key=lambda e: str(e["at"]))


def _export_job(exports: Iterable[Any], export_id: str) -> str:
    for x in exports:
        if x.id == export_id:
            return str(x.job_id)
    return ""


def _stage(
    name: str, at: datetime | None, duration: float | None, what: str | None
) -> dict[str, Any]:
    return {"stage": name, "at": iso(at), "duration_s": duration, "duration_of": what or None}


def _event(e: Any) -> dict[str, Any]:
    return {
        "at": iso(e.at),
        "event": e.event_type,
        "actor": e.actor,
        "entity_type": e.entity_type,
        "entity_id": e.entity_id,
        "details": e.details,
    }


def _measurements(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    summary = JobSummary.from_json(result) if result else None
    return [
        {
            "series_uid": series.series_uid,
            "label": label.name,
            "voxels": label.voxels,
            "volume_ml": label.volume_ml,
            "mean": label.mean,
        }
        for series in (summary.series if summary else ())
        for label in series.labels
    ]


# --- dashboard -----------------------------------------------------------------------------

WINDOWS = {
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(hours=6)),
}


def _buckets(since: datetime, step: timedelta, now: datetime) -> list[datetime]:
    out, at = [], since
    while at < now:
        out.append(at)
        at += step
    return out


def _epoch(conn: Any, column: Any) -> Any:
    """Whole seconds since 1970 of a UTC timestamp column, in SQL (SQLite keeps them as text)."""
    if conn.dialect.name == "sqlite":
        return func.cast(func.strftime("%s", column), Float)
    return func.extract("epoch", column)


def _bucket_of(at: datetime, since: datetime, step: timedelta) -> int:
    return int((at - since) / step)


def dashboard(engine: Engine, window: str = "24h") -> dict[str, Any]:
    """Totals now, and per time bucket over the window: instances received, studies completed,
    stage latencies (p50/p95) and failures."""
    span, step = WINDOWS.get(window, WINDOWS["24h"])
    now = utcnow()
    since = now - span
    since = since.replace(minute=0, second=0, microsecond=0)
    edges = _buckets(since, step, now)
    with engine.connect() as conn:
        instances = conn.execute(select(func.count(Instance.id))).scalar_one()
        n_studies = conn.execute(select(func.count(Study.id))).scalar_one()
        study_states = dict(
            conn.execute(select(Study.state, func.count()).group_by(Study.state)).all()
        )
        job_states = dict(conn.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        export_states = dict(
            conn.execute(select(Export.state, func.count()).group_by(Export.state)).all()
        )
        oldest = conn.execute(
            select(Job.id, Job.study_uid, Job.model, Job.queued_at)
            .where(Job.state == str(JobState.QUEUED))
            .order_by(Job.queued_at)
            .limit(1)
        ).first()
        # counted per bucket in the database: a busy week is millions of instances
        bucket = func.floor(
            (_epoch(conn, Instance.received_at) - since.timestamp()) / step.total_seconds()
        )
        received = conn.execute(
            select(bucket, func.count()).where(Instance.received_at >= since).group_by(bucket)
        ).all()
        completed = conn.execute(
            select(Study.first_received, Study.completed_at).where(Study.completed_at >= since)
        ).all()
        job_times = conn.execute(
            select(
                Job.queued_at, Job.started_at, Job.results_ready_at, Job.finished_at, Job.state
            ).where(Job.created_at >= since - span)
        ).all()
        failures = conn.execute(
            select(AuditEvent.at, AuditEvent.event_type)
            .where(AuditEvent.at >= since)
            .where(
                AuditEvent.event_type.in_(
                    ("job.failed", "export.failed", "export.retry_wait", "job.requeued")
                )
            )
        ).all()
    ingest = [0] * len(edges)
    for index, n in received:
        ingest[max(0, min(int(index), len(edges) - 1))] += int(n)
    latency: dict[str, list[list[float]]] = {
        k: [[] for _ in edges] for k in ("receive", "queue_wait", "inference", "export")
    }
    for first, done in completed:
        value = seconds(first, done)
        if value is not None and done is not None:
            latency["receive"][min(_bucket_of(done, since, step), len(edges) - 1)].append(value)
    for queued, started, ready, finished, state in job_times:
        for stage, end, value in (
            ("queue_wait", started, seconds(queued, started)),
            ("inference", ready, seconds(started, ready)),
            ("export", finished, seconds(ready, finished) if state == JobState.DONE else None),
        ):
            if value is not None and end is not None and end >= since:
                latency[stage][min(_bucket_of(end, since, step), len(edges) - 1)].append(value)
    failed: dict[str, list[int]] = defaultdict(lambda: [0] * len(edges))
    for at, kind in failures:
        failed[kind][min(_bucket_of(at, since, step), len(edges) - 1)] += 1
    return {
        "window": window if window in WINDOWS else "24h",
        "now": iso(now),
        "totals": {
            "instances": instances,
            "studies": n_studies,
            "studies_by_state": study_states,
            "jobs_by_state": job_states,
            "exports_by_state": export_states,
        },
        "oldest_queued": None
        if oldest is None
        else {
            "job_id": oldest.id,
            "study_uid": oldest.study_uid,
            "model": oldest.model,
            "age_s": seconds(oldest.queued_at, now),
        },
        "buckets": [iso(b) for b in edges],
        "bucket_s": step.total_seconds(),
        "ingest": ingest,
        "latency": {
            stage: {
                "p50": [percentile(v, 50) for v in values],
                "p95": [percentile(v, 95) for v in values],
                "n": [len(v) for v in values],
            }
            for stage, values in latency.items()
        },
        "failures": dict(failed),
    }


# --- jobs and exports ----------------------------------------------------------------------


def outbox(engine: Engine, settings: Settings) -> list[dict[str, Any]]:
    """Per configured destination: outbox rows by state and the circuit."""
    circuits = {c["destination"]: c for c in list_circuits(engine)}
    with engine.connect() as conn:
        counts = conn.execute(
            select(Export.destination, Export.state, func.count()).group_by(
                Export.destination, Export.state
            )
        ).all()
    by_dest: dict[str, dict[str, int]] = defaultdict(dict)
    for name, state, n in counts:
        by_dest[name][state] = n
    names = [d.name for d in settings.destinations] + sorted(
        set(by_dest) - {d.name for d in settings.destinations}
    )
    out = []
    for name in names:
        dest = settings.destination(name)
        circuit = circuits.get(name, {})
        out.append(
            {
                "destination": name,
                "configured": dest is not None,
                "address": f"{dest.ae_title}@{dest.host}:{dest.port}" if dest else None,
                "tls": bool(dest and dest.tls),
                "states": by_dest.get(name, {}),
                "circuit": circuit.get("circuit", "CLOSED"),
                "failures": circuit.get("failures", 0),
                "circuit_last_error": circuit.get("last_error"),
                "probe_at": circuit.get("probe_at"),
            }
        )
    return out


# --- audit log ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditFilter:
    event_type: str | None = None  # exact, or a prefix ending in "." ("job.")
    actor: str | None = None
    study_uid: str | None = None
    since: date | None = None
    until: date | None = None  # inclusive
    limit: int = 500

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.event_type:
            if self.event_type.endswith("."):
                clauses.append(AuditEvent.event_type.startswith(self.event_type))
            else:
                clauses.append(AuditEvent.event_type == self.event_type)
        if self.actor:
            clauses.append(AuditEvent.actor == self.actor)
        if self.study_uid:
            clauses.append(AuditEvent.study_uid == self.study_uid)
        if self.since:
            clauses.append(AuditEvent.at >= _day_start(self.since))
        if self.until:
            clauses.append(AuditEvent.at < _day_start(self.until) + timedelta(days=1))
        return clauses


AUDIT_COLUMNS = ("id", "at", "event", "actor", "study_uid", "entity_type", "entity_id", "details")


def audit(engine: Engine, flt: AuditFilter) -> list[dict[str, Any]]:
    stmt = (
        select(AuditEvent)
        .where(and_(True, *flt.where()))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(flt.limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [{"id": e.id, **_event(e), "study_uid": e.study_uid} for e in rows]


def audit_event_types(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(AuditEvent.event_type).distinct()).scalars())


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """A cell a spreadsheet will not run (OWASP CSV injection): text that starts like a formula
    gets a leading apostrophe. User-typed values reach the audit log (a failed login's name)."""
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def audit_csv(rows: list[dict[str, Any]]) -> str:
    import json  # noqa: PLC0415

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(AUDIT_COLUMNS)
    for r in rows:
        writer.writerow(
            csv_cell(v)
            for v in (
                r["id"],
                r["at"],
                r["event"],
                r["actor"],
                r["study_uid"],
                r["entity_type"],
                r["entity_id"],
                json.dumps(r["details"], sort_keys=True),
            )
        )
    return buf.getvalue()


# --- models: continuous monitoring ----------------------------------------------------------


def model_stats(engine: Engine, days: int = 30) -> dict[str, dict[str, Any]]:
    """Per model: runs, failures, failure rate, mean runtime; per day the share of runs with a
    positive finding (any labelled voxel) and the mean volume of each label."""
    since = utcnow() - timedelta(days=days)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Job.model,
                Job.state,
                Job.started_at,
                Job.results_ready_at,
                Job.created_at,
                Job.result,
            ).where(Job.created_at >= since)
        ).all()
    stats: dict[str, dict[str, Any]] = {}
    per_day: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for model, state, started, ready, created, result in rows:
        s = stats.setdefault(
            model, {"runs": 0, "failed": 0, "cancelled": 0, "done": 0, "runtimes": []}
        )
        s["runs"] += 1
        s["failed"] += state == JobState.FAILED
        s["cancelled"] += state == JobState.CANCELLED
        s["done"] += state == JobState.DONE
        run = seconds(started, ready)
        if run is not None:
            s["runtimes"].append(run)
        if result:
            day = per_day[model].setdefault(
                created.date().isoformat(), {"runs": 0, "positive": 0, "volumes": defaultdict(list)}
            )
            day["runs"] += 1
            labels = [
                lab for series in JobSummary.from_json(result).series for lab in series.labels
            ]
            day["positive"] += any(lab.voxels > 0 for lab in labels)
            for lab in labels:
                day["volumes"][lab.name].append(lab.volume_ml)
    out = {}
    for model, s in stats.items():
        finished = s["done"] + s["failed"]
        out[model] = {
            "runs": s["runs"],
            "done": s["done"],
            "failed": s["failed"],
            "cancelled": s["cancelled"],
            "failure_rate": round(s["failed"] / finished, 4) if finished else None,
            "mean_runtime_s": round(statistics.fmean(s["runtimes"]), 3) if s["runtimes"] else None,
            "days": [
                {
                    "day": day,
                    "runs": d["runs"],
                    "positive_share": round(d["positive"] / d["runs"], 4),
                    "mean_volume_ml": {
                        k: round(statistics.fmean(v), 2) for k, v in sorted(d["volumes"].items())
                    },
                }
                for day, d in sorted(per_day[model].items())
            ],
        }
    return out
