"""The server-rendered pages (Jinja2), from the same read models as the API.

No ``from __future__ import annotations``: FastAPI reads these annotations at run time.
"""

from dataclasses import replace
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from dicom_node.admin.read import audit, dashboard, destinations, jobs, models, studies, timeline
from dicom_node.web.context import Ctx, Viewer, page
from dicom_node.web.filters import AuditQuery, ExportQuery, JobQuery, StudyQuery
from dicom_node.web.routes.api import audit_csv

router = APIRouter(default_response_class=HTMLResponse)
PageNumber = Annotated[int, Query(alias="page", ge=1)]


@router.get("/")
def dashboard_page(request: Request, _: Viewer, ctx: Ctx, window: str = "24h") -> HTMLResponse:
    return page(request, "dashboard.html", d=dashboard.dashboard(ctx.engine, window))


@router.get("/studies")
def studies_page(request: Request, _: Viewer, ctx: Ctx, flt: StudyQuery) -> HTMLResponse:
    return page(
        request,
        "studies.html",
        rows=studies.studies(ctx.engine, flt, show_accession=ctx.show_accession),
        f=flt,
        models=sorted({m for rule in ctx.settings.rules for m in rule.models}),
        show_accession=ctx.show_accession,
    )


@router.get("/studies/{study_uid}")
def study_page(request: Request, _: Viewer, ctx: Ctx, study_uid: str) -> HTMLResponse:
    found = timeline.timeline(
        ctx.engine, ctx.settings, study_uid, show_accession=ctx.show_accession
    )
    if found is None:
        raise HTTPException(404, f"no study {study_uid}")
    return page(request, "study.html", s=found, show_accession=ctx.show_accession)


@router.get("/jobs")
def jobs_page(request: Request, _: Viewer, ctx: Ctx, flt: JobQuery) -> HTMLResponse:
    rows = jobs.jobs(ctx.engine, flt)
    return page(
        request,
        "jobs.html",
        rows=rows,
        state=flt.state or "",
        model=flt.model or "",
        study_uid=flt.study_uid or "",
    )


@router.get("/exports")
def exports_page(request: Request, _: Viewer, ctx: Ctx, flt: ExportQuery) -> HTMLResponse:
    return page(
        request,
        "exports.html",
        outbox=destinations.destinations(ctx.engine, ctx.settings),
        rows=jobs.exports(ctx.engine, flt),
        state=flt.state or "",
        destination=flt.destination or "",
    )


PerPage = Annotated[int, Query(ge=10, le=500)]


@router.get("/audit")
def audit_page(
    request: Request,
    _: Viewer,
    ctx: Ctx,
    flt: AuditQuery,
    page_number: PageNumber = 1,
    per_page: PerPage = 100,
) -> HTMLResponse:
    """The audit log, newest first, ``per_page`` events a page; the pager keeps the filters."""
    total = audit.count(ctx.engine, flt)
    last_page = max(1, -(-total // per_page))
    number = min(page_number, last_page)
    shown = replace(flt, limit=per_page, offset=(number - 1) * per_page)
    rows = audit.audit(ctx.engine, shown)
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in {"page", "limit"}]

    def link(to: int) -> str:
        return urlencode([*kept, ("page", str(to))])

    return page(
        request,
        "audit.html",
        rows=rows,
        f=flt,
        event_types=audit.event_types(ctx.engine),
        query=urlencode(kept),
        total=total,
        first=shown.offset + 1,
        last=shown.offset + len(rows),
        newer=link(number - 1) if number > 1 else None,
        older=link(number + 1) if number < last_page else None,
        per_page=per_page,
    )


@router.get("/destinations")
def destinations_page(request: Request, _: Viewer, ctx: Ctx) -> HTMLResponse:
    return page(
        request, "destinations.html", outbox=destinations.destinations(ctx.engine, ctx.settings)
    )


@router.get("/models")
def models_page(request: Request, _: Viewer, ctx: Ctx) -> HTMLResponse:
    rows = models.models_overview(ctx.engine, ctx.settings.model_path)
    return page(request, "models.html", models=rows)


router.add_api_route("/audit.csv", audit_csv, methods=["GET"], response_class=Response)
