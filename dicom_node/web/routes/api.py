"""The JSON API under ``/api/``: the same read models the pages render.

No ``from __future__ import annotations``: FastAPI reads these annotations at run time.
"""

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from dicom_node.admin import reports
from dicom_node.admin.models import models_overview
from dicom_node.admin.queries import list_exports, list_jobs
from dicom_node.web.context import Ctx, Viewer, csrf_token
from dicom_node.web.filters import AuditQuery, StudyQuery

router = APIRouter(prefix="/api")


@router.get("/openapi.json")
def api_schema(request: Request, _: Viewer) -> dict[str, Any]:
    return request.app.openapi()  # type: ignore[no-any-return]


@router.get("/me")
def api_me(request: Request, user: Viewer) -> dict[str, Any]:
    return {"name": user.name, "role": str(user.role), "csrf_token": csrf_token(request)}


@router.get("/dashboard")
def api_dashboard(_: Viewer, ctx: Ctx, window: str = "24h") -> dict[str, Any]:
    return reports.dashboard(ctx.engine, window)


@router.get("/studies")
def api_studies(_: Viewer, ctx: Ctx, flt: StudyQuery) -> list[dict[str, Any]]:
    return reports.studies(ctx.engine, flt, show_accession=ctx.show_accession)


@router.get("/studies/{study_uid}")
def api_study(_: Viewer, ctx: Ctx, study_uid: str) -> dict[str, Any]:
    found = reports.timeline(ctx.engine, ctx.settings, study_uid, show_accession=ctx.show_accession)
    if found is None:
        raise HTTPException(404, f"no study {study_uid}")
    return found


@router.get("/jobs")
def api_jobs(
    _: Viewer,
    ctx: Ctx,
    state: str | None = None,
    model: str | None = None,
    study_uid: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    return list_jobs(
        ctx.engine,
        state=state or None,
        model=model or None,
        study_uid=study_uid or None,
        limit=max(1, min(limit, 5000)),
    )


@router.get("/exports")
def api_exports(
    _: Viewer,
    ctx: Ctx,
    state: str | None = None,
    destination: str | None = None,
    job_id: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    rows = list_exports(
        ctx.engine, job_id=job_id or None, state=state or None, limit=max(1, min(limit, 5000))
    )
    return [r for r in rows if not destination or r["destination"] == destination]


@router.get("/outbox")
def api_outbox(_: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return reports.outbox(ctx.engine, ctx.settings)


@router.get("/destinations")
def api_destinations(_: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return reports.outbox(ctx.engine, ctx.settings)


@router.get("/audit")
def api_audit(_: Viewer, ctx: Ctx, flt: AuditQuery) -> list[dict[str, Any]]:
    return reports.audit(ctx.engine, flt)


@router.get("/audit.csv")
def audit_csv(_: Viewer, ctx: Ctx, flt: AuditQuery) -> Response:
    """The audit log as CSV (also at ``/audit.csv``); cells never start a formula."""
    body = reports.audit_csv(reports.audit(ctx.engine, flt))
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="dicom-node-audit.csv"'},
    )


@router.get("/models")
def api_models(_: Viewer, ctx: Ctx) -> list[dict[str, Any]]:
    return models_overview(ctx.engine, Path(ctx.settings.models.root))
