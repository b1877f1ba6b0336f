"""The admin web app: server-rendered pages (Jinja2) and the JSON API under ``/api/`` that backs
them, behind one login; ``/metrics`` for Prometheus. This module wires it; the routes live in
``web.routes`` (auth, api, actions, pages, metrics) and share ``web.context``.

Auth: users in the index (``dicom_node.admin.users``), server-side sessions
(``dicom_node.admin.sessions``: the signed cookie, HttpOnly and SameSite=Strict, carries only a
token whose row the database holds, so logout, a password or role change and disabling a user
end the session at once), and a per-session CSRF token that every POST must carry (form field
``csrf_token`` or header ``X-CSRF-Token``). No session: pages redirect to /login, the API
answers 401. A viewer who tries to act gets 403. Every action goes through
``dicom_node.admin.actions``, which writes the audit event with the user's name; blocking work
(argon2, the database, a destination's C-ECHO) runs off the event loop.

Every response carries a Content-Security-Policy (no inline script, nothing from another
origin) and, but for static files, ``Cache-Control: no-store``. The OpenAPI schema is served
behind login; there is no docs page (it would load a CDN script). Redirects are relative paths:
the Host header is never used to build one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine
from starlette.middleware.sessions import SessionMiddleware

from dicom_node.admin import metrics
from dicom_node.admin.users import LoginThrottle
from dicom_node.logs import get_logger
from dicom_node.settings import Settings
from dicom_node.web import plots
from dicom_node.web.context import (
    LoginRequired,
    WebContext,
    back,
    form_of,
    is_api,
    page,
    session_secret,
)
from dicom_node.web.format import dicom_date, dicom_time, duration, uid_parts, when
from dicom_node.web.routes import actions, api, auth, pages
from dicom_node.web.routes import metrics as metrics_route

log = get_logger(__name__)
HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "dicom_node_session"
# no inline script, nothing from elsewhere; inline style attributes stay (the templates use them)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def create_app(
    settings: Settings, engine: Engine, *, on_change: Callable[[], None] | None = None
) -> FastAPI:
    """``on_change`` is called after an action that queued work (the node wakes its dispatcher
    and senders instead of waiting for their next poll)."""
    app = FastAPI(
        title="dicom-node admin",
        docs_url=None,  # Swagger UI loads from a CDN: the schema is behind login instead
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # Starlette builds that redirect from the Host header
    )
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(settings),
        session_cookie=SESSION_COOKIE,
        max_age=int(settings.admin.session_max_age_s),
        same_site="strict",
        https_only=settings.admin.secure_cookies,
    )
    app.middleware("http")(_headers_and_access_log)
    app.add_exception_handler(LoginRequired, _login_required)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.state.web = WebContext(
        settings=settings,
        engine=engine,
        templates=_templates(),
        registry=metrics.registry(engine, Path(settings.storage.root)),
        changed=on_change or (lambda: None),
        throttle=LoginThrottle(),
    )
    for module in (auth, api, actions, pages, metrics_route):
        app.include_router(module.router)
    return app


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["chart"] = plots.chart
    templates.env.filters["dur"] = duration
    templates.env.filters["when"] = when
    templates.env.filters["da"] = dicom_date
    templates.env.filters["tm"] = dicom_time
    templates.env.globals["uid_parts"] = uid_parts
    return templates


async def _login_required(request: Request, _exc: LoginRequired) -> Response:
    if is_api(request):
        return JSONResponse({"detail": "login required"}, status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if is_api(request) or request.method != "GET":
        form = {} if is_api(request) else await form_of(request)
        if "next" in form:
            return back(request, form, error=str(exc.detail))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    return page(request, "error.html", status=exc.status_code, message=exc.detail)


async def _headers_and_access_log(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    started = time.perf_counter()
    response = await call_next(request)
    user = getattr(request.state, "account", None)
    # the path only: a query string may hold what an admin typed (an accession number)
    log.info(
        "http_request",
        method=request.method,
        path=request.url.path,
        status=response.status_code,
        user=user.name if user else None,
        ms=round((time.perf_counter() - started) * 1000, 1),
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", CSP)
    if not request.url.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response
