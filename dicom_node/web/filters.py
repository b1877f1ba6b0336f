"""Query-string filters as FastAPI dependencies, shared by the API and the pages.

No ``from __future__ import annotations``: FastAPI reads these annotations at run time.
"""

from typing import Annotated

from fastapi import Depends

from dicom_node.admin.read.audit import AuditFilter
from dicom_node.admin.read.jobs import ExportFilter, JobFilter
from dicom_node.admin.read.studies import StudyFilter
from dicom_node.web.context import day


def study_filter(
    *,
    state: str | None = None,
    calling_ae: str | None = None,
    model: str | None = None,
    accession: str | None = None,
    received_from: str | None = None,
    received_to: str | None = None,
    limit: int = 200,
) -> StudyFilter:
    return StudyFilter(
        state=state or None,
        calling_ae=calling_ae or None,
        model=model or None,
        accession=accession or None,
        received_from=day(received_from, "received_from"),
        received_to=day(received_to, "received_to"),
        limit=max(1, min(limit, 5000)),
    )


def audit_filter(
    *,
    event_type: str | None = None,
    actor: str | None = None,
    study_uid: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 500,
) -> AuditFilter:
    return AuditFilter(
        event_type=event_type or None,
        actor=actor or None,
        study_uid=study_uid or None,
        since=day(since, "since"),
        until=day(until, "until"),
        limit=max(1, min(limit, 100_000)),
    )


def job_filter(
    *,
    state: str | None = None,
    model: str | None = None,
    study_uid: str | None = None,
    limit: int = 200,
) -> JobFilter:
    return JobFilter(state or None, model or None, study_uid or None, max(1, min(limit, 5000)))


def export_filter(
    *,
    state: str | None = None,
    destination: str | None = None,
    job_id: str | None = None,
    limit: int = 200,
) -> ExportFilter:
    return ExportFilter(
        state or None, destination or None, job_id or None, max(1, min(limit, 5000))
    )


StudyQuery = Annotated[StudyFilter, Depends(study_filter)]
AuditQuery = Annotated[AuditFilter, Depends(audit_filter)]
JobQuery = Annotated[JobFilter, Depends(job_filter)]
ExportQuery = Annotated[ExportFilter, Depends(export_filter)]
