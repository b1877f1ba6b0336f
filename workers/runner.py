"""Run one job by id: claim it, keep its lease alive, run the pipeline, record the outcome.

The same function serves a Celery task (``workers.celery_app``) and an embedded worker process
(``dicom_node.jobs.embedded``). It is idempotent: a job that is not QUEUED (already running
elsewhere, done, cancelled) is left alone, so a redelivered broker message or a reconciler
re-send never runs a job twice at once, and only the worker holding the lease can finish it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, select

from dicom_node.db.models import Instance, Job, Series, utcnow
from dicom_node.db.session import make_engine
from dicom_node.domain import JobState
from dicom_node.errors import Permanent, Transient
from dicom_node.export.outbox import create_exports
from dicom_node.jobs.service import claim, give_back, heartbeat, results_ready
from dicom_node.logs import get_logger
from dicom_node.loops import Loop
from dicom_node.results import BuiltResults, JobSummary, ObjectKind
from dicom_node.settings import Settings
from workers.inference.pipeline import JobInput, SeriesInput, run
from workers.inference.runners import ModelCache
from workers.results.build import build_results

log = get_logger(__name__)


class JobTimeLimitError(Permanent):
    """The job ran past its soft time limit."""


def worker_name(kind: str) -> str:
    """The name a worker claims jobs under: kind, pid and host."""
    return f"{kind}-{os.getpid()}@{socket.gethostname()}"[:128]


class WorkerContext:
    """What a worker process keeps between jobs: one engine and the warm models.

    ``time_limit_errors``: what the host raises at the soft time limit (Celery's
    SoftTimeLimitExceeded, given by ``workers.celery_app``; the embedded worker's own).
    """

    def __init__(
        self,
        settings: Settings,
        time_limit_errors: tuple[type[BaseException], ...] = (JobTimeLimitError,),
    ) -> None:
        self.settings = settings
        self.time_limit_errors = time_limit_errors
        self.engine = make_engine(settings.database.url.get_secret_value())
        self.models = ModelCache(settings.model_path, settings.models.device)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The job's row as the worker reads it, once, after claiming it."""

    id: str
    attempt: int
    model: str
    rule: str
    study_uid: str
    series_uids: tuple[str, ...]
    stack: dict[str, Any]

    @classmethod
    def read(cls, engine: Engine, job_id: str) -> JobRecord:
        """The job's row, read once after the claim."""
        with engine.connect() as conn:
            job = conn.execute(select(Job).where(Job.id == job_id)).one()
        return cls(
            id=job.id,
            attempt=job.attempts,
            model=job.model,
            rule=job.rule,
            study_uid=job.study_uid,
            series_uids=tuple(job.series_uids),
            stack=dict(job.stack or {}),
        )


def job_input(engine: Engine, job: JobRecord, settings: Settings) -> JobInput:
    """The pipeline's input for ``job``: its series' stored files and its rule's settings."""
    storage_root = settings.storage.root
    with engine.connect() as conn:
        rows = conn.execute(
            select(Series.series_uid, Instance.path)
            .join(Instance, Instance.series_id == Series.id)
            .where(Series.series_uid.in_(job.series_uids))
        ).all()
    by_series: dict[str, list[Path]] = {uid: [] for uid in job.series_uids}
    for series_uid, path in rows:
        by_series[series_uid].append(storage_root / path)
    missing = [uid for uid, paths in by_series.items() if not paths]
    if missing:
        raise Permanent(f"series {missing[0]} has no stored instances")
    series = tuple(
        SeriesInput(
            uid,
            tuple(sorted(paths)),
            stack=job.stack.get("number"),
            stack_frames=job.stack.get("frames"),
        )
        for uid, paths in by_series.items()
    )
    rule = settings.rule(job.rule)
    if rule is None:
        return JobInput(job.id, job.attempt, job.model, series)
    return JobInput(
        job.id,
        job.attempt,
        job.model,
        series,
        confidence=rule.confidence_map,
        gap_tolerance=rule.gap_tolerance,
        interpolate_gaps_mm=rule.interpolate_gaps_mm,
    )


class Heartbeat(Loop):
    """Extends the lease every third of it while the job runs."""

    def __init__(self, ctx: WorkerContext, job_id: str, worker: str) -> None:
        super().__init__(
            f"heartbeat-{job_id[:8]}",
            self.beat,
            ctx.settings.jobs.lease_s / 3,
            event="heartbeat_failed",
            wait_first=True,
            job_id=job_id,
        )
        self.ctx, self.job_id, self.worker = ctx, job_id, worker
        self.lost = False

    def beat(self) -> None:
        """Extend the lease; stop beating once it was lost."""
        if not heartbeat(self.ctx.engine, self.job_id, self.worker, self.ctx.settings.jobs):
            self.lost = True
            log.warning("job_lease_lost", job_id=self.job_id, worker=self.worker)
            self.stop()

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()
        self.join()


def execute(ctx: WorkerContext, job_id: str, worker: str) -> JobState | None:
    """Claim and run ``job_id``. Returns the state it left the job in, ``None`` if not claimed."""
    settings = ctx.settings
    if not claim(ctx.engine, job_id, worker, settings.jobs):
        log.info("job_not_claimed", job_id=job_id, worker=worker)
        return None
    log.info("job_started", job_id=job_id, worker=worker)
    job = JobRecord.read(ctx.engine, job_id)
    with Heartbeat(ctx, job_id, worker):
        try:
            summary = run(job_input(ctx.engine, job, settings), ctx.models, settings.results_root)
            summary = summary.with_results(results(ctx, job, summary))
        except ctx.time_limit_errors:
            message = f"exceeded the soft time limit of {settings.jobs.soft_time_limit_s:g} s"
            return _give_back(ctx, job_id, worker, message, permanent=True)
        except Transient as exc:
            return _give_back(ctx, job_id, worker, f"transient: {exc}", permanent=False)
        except Permanent as exc:
            return _give_back(ctx, job_id, worker, str(exc), permanent=True)
        except Exception as exc:
            log.exception("job_crashed", job_id=job_id)
            return _give_back(
                ctx, job_id, worker, f"{type(exc).__name__}: {exc}"[:500], permanent=False
            )
    return _results_ready(ctx, job, worker, summary)


def source_paths(engine: Engine, job: JobRecord, storage_root: Path) -> dict[str, Path]:
    """SOP Instance UID -> stored file, for every instance of the job's series."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Instance.sop_instance_uid, Instance.path)
            .join(Series, Series.id == Instance.series_id)
            .where(Series.series_uid.in_(job.series_uids))
        ).all()
    return {uid: storage_root / path for uid, path in rows}


def previous_reports(engine: Engine, job: JobRecord) -> dict[str, list[Path]]:
    """Per profile, the SR files of the latest earlier results of the same rule and model on the
    same study: the documents the new SR replaces (``PredecessorDocumentsSequence``)."""
    with engine.connect() as conn:
        earlier = conn.execute(
            select(Job.result)
            .where(
                Job.study_uid == job.study_uid,
                Job.rule == job.rule,
                Job.model == job.model,
                Job.id != job.id,
                Job.results_ready_at.is_not(None),
                Job.state.in_(
                    [str(s) for s in (JobState.RESULTS_READY, JobState.EXPORTING, JobState.DONE)]
                ),
            )
            .order_by(Job.results_ready_at.desc())
            .limit(1)
        ).scalar()
    if not earlier:
        return {}
    before = JobSummary.from_json(earlier).results
    return {
        profile: [
            Path(o.path) for o in objects if o.kind is ObjectKind.SR and Path(o.path).is_file()
        ]
        for profile, objects in (before.objects.items() if before else ())
    }


def results(ctx: WorkerContext, job: JobRecord, summary: JobSummary) -> BuiltResults:
    """Build and validate the SEG/SR/key images each of the job's destinations' profiles needs
    (the default profile when there is no destination: the objects are kept for a later send)."""
    settings = ctx.settings
    profiles = settings.all_profiles
    names = {d.profile for d in settings.destinations_for(job.rule)} or {"default"}
    model = ctx.models.get(summary.model)
    return build_results(
        summary,
        model.manifest,
        {name: profiles[name] for name in sorted(names)},
        source_paths(ctx.engine, job, settings.storage.root),
        at=utcnow(),
        previous=previous_reports(ctx.engine, job),
        confidence=summary.confidence_map,
    )


def _give_back(
    ctx: WorkerContext, job_id: str, worker: str, error: str, *, permanent: bool
) -> JobState | None:
    state = give_back(ctx.engine, job_id, error, permanent=permanent, worker=worker)
    log.warning("job_given_back", job_id=job_id, error=error, state=state and str(state))
    return state


def _results_ready(
    ctx: WorkerContext, job: JobRecord, worker: str, summary: JobSummary
) -> JobState | None:
    moved = results_ready(
        ctx.engine,
        job.id,
        worker,
        summary,
        study_uid=job.study_uid,
        destinations=ctx.settings.destinations_for(job.rule),
        make_exports=create_exports,
    )
    if not moved:
        log.warning("job_lost_before_results", job_id=job.id, worker=worker)
        return None
    log.info(
        "job_results_ready",
        job_id=job.id,
        model=summary.model,
        device=summary.device,
        forward_s=round(sum(s.timings_s["forward"] for s in summary.series), 3),
    )
    return JobState.RESULTS_READY
