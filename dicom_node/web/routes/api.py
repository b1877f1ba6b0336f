"""The JSON API under ``/api/``: the same read models the pages render.

No ``from __future__ import annotations``: FastAPI reads these annotations at run time.
"""

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from dicom_node.admin.read import audit, dashboard, destinations, jobs, models, studies, timeline
from dicom_node.web.context import Ctx, Viewer, csrf_token
from dicom_node.web.filters import AuditQuery, ExportQuery, JobQuery, StudyQuery

router = APIRouter(prefix="/api")


@router.get("/openapi.json")
def api_schema(request: Request, _: Viewer) -> dict[str, Any]:
    return request.app.openapi()  # type: ignore[no-any-return]


@router.get("/me")
def api_me(request: Request, user: Viewer) -> dict[str, Any]:
    return {"name": user.name, "role": str(user.role), "csrf_token": csrf_token(request)}


@router.get("/dashboard")
def api_dashboard(_: Viewer, ctx: Ctx, window: str = "24h") -> dashboard.Dashboard:
    return dashboard.dashboard(ctx.engine, window)


@router.get("/studies")
def api_studies(_: Viewer, ctx: Ctx, flt: StudyQuery) -> list[studies.StudyRow]:
    return studies.studies(ctx.engine, flt, show_accession=ctx.show_accession)


@router.get("/studies/{study_uid}")
def api_study(_: Viewer, ctx: Ctx, study_uid: str) -> timeline.StudyTimeline:
    found = timeline.timeline(
        ctx.engine, ctx.settings, study_uid, show_accession=ctx.show_accession
    )
    if found is None:
        raise HTTPException(404, f"no study {study_uid}")
    return found


@router.get("/jobs")
def api_jobs(_: Viewer, ctx: Ctx, flt: JobQuery) -> list[jobs.JobRow]:
    return jobs.jobs(ctx.engine, flt)


@router.get("/exports")
def api_exports(_: Viewer, ctx: Ctx, flt: ExportQuery) -> list[jobs.ExportRow]:
    return jobs.exports(ctx.engine, flt)


@router.get("/outbox")
@router.get("/destinations")
def api_destinations(_: Viewer, ctx: Ctx) -> list[destinations.DestinationRow]:
    return destinations.destinations(ctx.engine, ctx.settings)


@router.get("/audit")
def api_audit(_: Viewer, ctx: Ctx, flt: AuditQuery) -> list[audit.AuditRow]:
    return audit.audit(ctx.engine, flt)


@router.get("/audit.csv")
def audit_csv(_: Viewer, ctx: Ctx, flt: AuditQuery) -> Response:
    """The audit log as CSV (also at ``/audit.csv``); cells never start a formula."""
    body = audit.audit_csv(audit.audit(ctx.engine, flt))
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="dicom-node-audit.csv"'},
    )


@router.get("/models")
def api_models(_: Viewer, ctx: Ctx) -> list[models.ModelRow]:
    return models.models_overview(ctx.engine, ctx.settings.model_path)
