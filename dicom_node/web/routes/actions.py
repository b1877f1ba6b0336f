"""Actions (admin role, CSRF): each goes through ``dicom_node.admin.actions``, which audits it.
A form post comes back to its page with a flash message; an API call gets JSON.

No ``from __future__ import annotations``: FastAPI reads these annotations at run time.
"""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from dicom_node.admin import actions
from dicom_node.web.context import CSRF, Admin, Ctx, back, context, form_of

router = APIRouter(prefix="/api", dependencies=CSRF)


async def act(request: Request, do: Callable[[], Any], done: str) -> Response:
    """Run ``do`` off the event loop; 404 for what does not exist, 409 for what may not be done."""
    form = await form_of(request)
    try:
        result = await run_in_threadpool(do)
    except actions.NotFoundError as exc:
        if "next" in form:
            return back(request, form, error=str(exc))
        raise HTTPException(404, str(exc)) from exc
    except actions.ActionError as exc:
        if "next" in form:
            return back(request, form, error=str(exc))
        raise HTTPException(409, str(exc)) from exc
    context(request).changed()
    if "next" in form:
        return back(request, form, message=done)
    return JSONResponse({"ok": True, "message": done, "result": result})


@router.post("/studies/{study_uid}/force-complete")
async def force_complete(request: Request, user: Admin, ctx: Ctx, study_uid: str) -> Response:
    return await act(
        request,
        lambda: actions.force_complete(ctx.engine, ctx.settings, study_uid, user.name),
        "Study forced COMPLETE; its jobs are queued.",
    )


@router.post("/studies/{study_uid}/rerun")
async def rerun(request: Request, user: Admin, ctx: Ctx, study_uid: str) -> Response:
    return await act(
        request,
        lambda: actions.rerun(ctx.engine, ctx.settings, study_uid, user.name),
        "New jobs queued for the study.",
    )


@router.post("/jobs/{job_id}/retry")
async def retry(request: Request, user: Admin, ctx: Ctx, job_id: str) -> Response:
    return await act(
        request, lambda: actions.retry_job(ctx.engine, job_id, user.name), "Job queued again."
    )


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, user: Admin, ctx: Ctx, job_id: str) -> Response:
    return await act(
        request, lambda: actions.cancel_job(ctx.engine, job_id, user.name), "Job cancelled."
    )


@router.post("/jobs/{job_id}/resend")
async def resend_job(request: Request, user: Admin, ctx: Ctx, job_id: str) -> Response:
    return await act(
        request,
        lambda: actions.resend(ctx.engine, user.name, job_id=job_id),
        "The job's results are queued for sending again.",
    )


@router.post("/exports/{export_id}/resend")
async def resend_export(request: Request, user: Admin, ctx: Ctx, export_id: str) -> Response:
    return await act(
        request,
        lambda: actions.resend(ctx.engine, user.name, export_id=export_id),
        "The object is queued for sending again.",
    )


@router.post("/destinations/{name}/echo")
async def echo(request: Request, user: Admin, ctx: Ctx, name: str) -> Response:
    form = await form_of(request)
    try:
        error = await run_in_threadpool(
            actions.echo_destination, ctx.engine, ctx.settings, name, user.name
        )
    except actions.NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    text = f"C-ECHO {name}: {error}" if error else f"C-ECHO {name}: Success"
    if "next" in form:
        return back(request, form, **({"error": text} if error else {"message": text}))
    return JSONResponse({"ok": error is None, "message": text})
