"""The study list: one row per study with its counts, senders and jobs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from dicom_node.admin.read.common import day_start, iso, seconds
from dicom_node.db.models import Association, Instance, Job, Series, Study, StudyAssociation
from dicom_node.domain import phi_hash


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
            clauses.append(Study.last_received >= day_start(self.received_from))
        if self.received_to:
            clauses.append(Study.first_received < day_start(self.received_to) + timedelta(days=1))
        return clauses


@dataclass(frozen=True, slots=True)
class StudyJob:
    model: str
    state: str


@dataclass(frozen=True, slots=True)
class StudyRow:
    study_uid: str
    state: str
    study_date: str | None
    accession: str | None  # only with ``[admin] show_accession``
    accession_hash: str | None
    calling_aes: list[str]
    series: int
    instances: int
    first_received: str | None
    last_received: str | None
    completed_at: str | None
    completion_reason: str | None
    times_completed: int
    receive_s: float | None  # first instance -> complete
    jobs: list[StudyJob]


def studies(engine: Engine, flt: StudyFilter, *, show_accession: bool) -> list[StudyRow]:
    """Most recently received first."""
    n_instances = (
        select(func.count(Instance.id))
        .join(Series, Series.id == Instance.series_id)
        .where(Series.study_id == Study.id)
        .scalar_subquery()
    )
    n_series = select(func.count(Series.id)).where(Series.study_id == Study.id).scalar_subquery()
    stmt = (
        select(Study.__table__, n_series.label("n_series"), n_instances.label("n_instances"))
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
        jobs: dict[int, list[StudyJob]] = defaultdict(list)
        for sid, model, state in conn.execute(
            select(Job.study_id, Job.model, Job.state)
            .where(Job.study_id.in_(ids))
            .order_by(Job.created_at)
        ):
            jobs[sid].append(StudyJob(model, state))
    return [
        StudyRow(
            study_uid=s.study_uid,
            state=s.state,
            study_date=s.study_date,
            accession=s.accession_number if show_accession else None,
            accession_hash=s.accession_hash,
            calling_aes=sorted(aes[s.id]),
            series=int(s.n_series),
            instances=int(s.n_instances),
            first_received=iso(s.first_received),
            last_received=iso(s.last_received),
            completed_at=iso(s.completed_at),
            completion_reason=s.completion_reason,
            times_completed=s.times_completed,
            receive_s=seconds(s.first_received, s.completed_at),
            jobs=jobs[s.id],
        )
        for s in rows
    ]
