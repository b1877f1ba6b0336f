"""Actions (admin role, CSRF): each goes through ``dicom_node.admin.actions``, which audits it.
A form post comes back to its page with a flash message; an API call gets JSON.

No ``from __future__ import annotations``: FastAPI reads these annotations at run time.
"""

from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Action:
    """One action route: ``POST /api{path}``, whose one path parameter is ``key``."""

    name: str
    path: str
    do: Callable[[Ctx, str, str], Any]  # (context, key, user name) -> result
    done: str  # the flash message


ACTIONS = (
    Action(
        "force_complete",
        "/studies/{key}/force-complete",
        lambda ctx, uid, who: actions.force_complete(ctx.engine, ctx.settings, uid, who),
        "Study forced COMPLETE; its jobs are queued.",
    ),
    Action(
        "rerun",
        "/studies/{key}/rerun",
        lambda ctx, uid, who: actions.rerun(ctx.engine, ctx.settings, uid, who),
        "New jobs queued for the study.",
    ),
    Action(
        "retry",
        "/jobs/{key}/retry",
        lambda ctx, job, who: actions.retry_job(ctx.engine, job, who),
        "Job queued again.",
    ),
    Action(
        "cancel",
        "/jobs/{key}/cancel",
        lambda ctx, job, who: actions.cancel_job(ctx.engine, job, who),
        "Job cancelled.",
    ),
    Action(
        "resend_job",
        "/jobs/{key}/resend",
        lambda ctx, job, who: actions.resend(ctx.engine, who, job_id=job),
        "The job's results are queued for sending again.",
    ),
    Action(
        "resend_export",
        "/exports/{key}/resend",
        lambda ctx, export, who: actions.resend(ctx.engine, who, export_id=export),
        "The object is queued for sending again.",
    ),
)


def _endpoint(action: Action) -> Callable[..., Any]:
    async def endpoint(request: Request, user: Admin, ctx: Ctx, key: str) -> Response:
        return await act(request, lambda: action.do(ctx, key, user.name), action.done)

    return endpoint


for _action in ACTIONS:
    router.add_api_route(_action.path, _endpoint(_action), methods=["POST"], name=_action.name)


@router.post("/jobs/{job}/send")
async def send(request: Request, user: Admin, ctx: Ctx, job: str) -> Response:
    """The job's kept results to the destination chosen in the form (``destination``)."""
    form = await form_of(request)
    name = str(form.get("destination") or request.query_params.get("destination") or "")
    return await act(
        request,
        lambda: actions.send_results(ctx.engine, ctx.settings, job, name, user.name),
        f"The job's results are queued for {name}.",
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
