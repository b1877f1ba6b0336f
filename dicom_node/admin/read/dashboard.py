"""The dashboard: totals now, and per time bucket over a window the instances received,
studies completed, stage latencies (p50/p95) and failures."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Float, func, select

from dicom_node.admin.read.common import iso, percentile, seconds
from dicom_node.db.models import AuditEvent, Export, Instance, Job, Study, utcnow
from dicom_node.domain import JobState

WINDOWS = {
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(hours=6)),
}
FAILURES = ("job.failed", "export.failed", "export.retry_wait", "job.requeued")
STAGES = ("receive", "queue_wait", "inference", "export")


@dataclass(frozen=True, slots=True)
class Totals:
    instances: int
    studies: int
    studies_by_state: dict[str, int]
    jobs_by_state: dict[str, int]
    exports_by_state: dict[str, int]


@dataclass(frozen=True, slots=True)
class OldestQueued:
    job_id: str
    study_uid: str
    model: str
    age_s: float | None


@dataclass(frozen=True, slots=True)
class Latency:
    p50: list[float | None]
    p95: list[float | None]
    n: list[int]


@dataclass(frozen=True, slots=True)
class Dashboard:
    window: str
    now: str | None
    totals: Totals
    oldest_queued: OldestQueued | None
    buckets: list[str | None]
    bucket_s: float
    ingest: list[int]  # instances received per bucket
    latency: dict[str, Latency]  # per stage (STAGES)
    failures: dict[str, list[int]]  # per audit event type (FAILURES)


@dataclass(frozen=True, slots=True)
class _Window:
    since: datetime
    step: timedelta
    edges: list[datetime]

    def bucket(self, at: datetime) -> int:
        return min(int((at - self.since) / self.step), len(self.edges) - 1)


def dashboard(engine: Engine, window: str = "24h") -> Dashboard:
    window = window if window in WINDOWS else "24h"
    span, step = WINDOWS[window]
    now = utcnow()
    since = (now - span).replace(minute=0, second=0, microsecond=0)
    edges: list[datetime] = []
    while since + len(edges) * step < now:
        edges.append(since + len(edges) * step)
    w = _Window(since, step, edges)
    with engine.connect() as conn:
        totals = _totals(conn)
        oldest = conn.execute(
            select(Job.id, Job.study_uid, Job.model, Job.queued_at)
            .where(Job.state == str(JobState.QUEUED))
            .order_by(Job.queued_at)
            .limit(1)
        ).first()
        ingest = _ingest(conn, w)
        latency = _latency(conn, w, span)
        failures = conn.execute(
            select(AuditEvent.at, AuditEvent.event_type)
            .where(AuditEvent.at >= since)
            .where(AuditEvent.event_type.in_(FAILURES))
        ).all()
    failed: dict[str, list[int]] = defaultdict(lambda: [0] * len(edges))
    for at, kind in failures:
        failed[kind][w.bucket(at)] += 1
    return Dashboard(
        window=window,
        now=iso(now),
        totals=totals,
        oldest_queued=None
        if oldest is None
        else OldestQueued(
            oldest.id, oldest.study_uid, oldest.model, seconds(oldest.queued_at, now)
        ),
        buckets=[iso(b) for b in edges],
        bucket_s=step.total_seconds(),
        ingest=ingest,
        latency={
            stage: Latency(
                [percentile(v, 50) for v in values],
                [percentile(v, 95) for v in values],
                [len(v) for v in values],
            )
            for stage, values in latency.items()
        },
        failures=dict(failed),
    )


def _totals(conn: Connection) -> Totals:
    def by_state(column: Any) -> dict[str, int]:
        return {s: int(n) for s, n in conn.execute(select(column, func.count()).group_by(column))}

    return Totals(
        instances=conn.execute(select(func.count(Instance.id))).scalar_one(),
        studies=conn.execute(select(func.count(Study.id))).scalar_one(),
        studies_by_state=by_state(Study.state),
        jobs_by_state=by_state(Job.state),
        exports_by_state=by_state(Export.state),
    )


def _epoch(conn: Connection, column: Any) -> Any:
    """Whole seconds since 1970 of a UTC timestamp column, in SQL (SQLite keeps them as text)."""
    if conn.dialect.name == "sqlite":
        return func.cast(func.strftime("%s", column), Float)
    return func.extract("epoch", column)


def _ingest(conn: Connection, w: _Window) -> list[int]:
    # counted per bucket in the database: a busy week is millions of instances
    bucket = func.floor(
        (_epoch(conn, Instance.received_at) - w.since.timestamp()) / w.step.total_seconds()
    )
    ingest = [0] * len(w.edges)
    for index, n in conn.execute(
        select(bucket, func.count()).where(Instance.received_at >= w.since).group_by(bucket)
    ):
        ingest[max(0, min(int(index), len(w.edges) - 1))] += int(n)
    return ingest


def _latency(conn: Connection, w: _Window, span: timedelta) -> dict[str, list[list[float]]]:
    latency: dict[str, list[list[float]]] = {k: [[] for _ in w.edges] for k in STAGES}
    for first, done in conn.execute(
        select(Study.first_received, Study.completed_at).where(Study.completed_at >= w.since)
    ):
        value = seconds(first, done)
        if value is not None and done is not None:
            latency["receive"][w.bucket(done)].append(value)
    for queued, started, ready, finished, state in conn.execute(
        select(
            Job.queued_at, Job.started_at, Job.results_ready_at, Job.finished_at, Job.state
        ).where(Job.created_at >= w.since - span)
    ):
        for stage, end, value in (
            ("queue_wait", started, seconds(queued, started)),
            ("inference", ready, seconds(started, ready)),
            ("export", finished, seconds(ready, finished) if state == JobState.DONE else None),
        ):
            if value is not None and end is not None and end >= w.since:
                latency[stage][w.bucket(end)].append(value)
    return latency
