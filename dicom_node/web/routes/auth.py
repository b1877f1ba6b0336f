"""Login and logout: server-side sessions, throttled failures, a new session id every login.

No ``from __future__ import annotations``: FastAPI reads these annotations at run time.
"""

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dicom_node.admin import actions, sessions
from dicom_node.admin.users import LoginThrottledError, authenticate
from dicom_node.logs import get_logger
from dicom_node.web.context import CSRF, Ctx, Viewer, form_of, page, safe_next

log = get_logger(__name__)
router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return page(request, "login.html", next=safe_next(next), error=None)


@router.post("/login", response_model=None, dependencies=CSRF)
async def login(request: Request, ctx: Ctx) -> Response:
    form = await form_of(request)
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    target = safe_next(str(form.get("next", "/")))
    client = request.client.host if request.client else "unknown"
    try:
        found = await run_in_threadpool(
            authenticate, ctx.engine, name, password, client, ctx.throttle
        )
    except LoginThrottledError as exc:
        log.warning("login_throttled", user=name[:64], client=client)
        wait = max(1, round(exc.retry_after_s))
        message = f"Too many failed logins for this name from here: try again in {wait} s."
        response = page(request, "login.html", status=429, next=target, error=message)
        response.headers["Retry-After"] = str(wait)
        return response
    if found is None:
        log.warning("login_failed", user=name[:64], client=client)
        return page(request, "login.html", next=target, error="Wrong name or password.")
    token = await run_in_threadpool(
        sessions.start, ctx.engine, found.name, client, ctx.settings.admin
    )
    request.session.clear()
    request.session["sid"] = token  # a new session id at every login
    request.session["csrf"] = secrets.token_urlsafe(32)  # a new session, a new token
    log.info("login", user=found.name, role=str(found.role))
    return RedirectResponse(target, status_code=303)


@router.post("/logout", dependencies=CSRF)
def logout(request: Request, user: Viewer, ctx: Ctx) -> RedirectResponse:
    token = request.session.get("sid")
    if isinstance(token, str):
        sessions.end(ctx.engine, token)
    actions.audit_logout(ctx.engine, user.name)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
