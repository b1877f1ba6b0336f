"""The admin web app: server-rendered pages (Jinja2) and the JSON API under ``/api/`` that backs
them, behind one login; ``/metrics`` for Prometheus.

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

Handlers stay thin: reading is ``dicom_node.admin.reports``, acting is ``dicom_node.admin.actions``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at
# run time, and the ``Viewer``/``Admin`` aliases are local to create_app.
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from dicom_node.admin import actions, metrics, reports, sessions
from dicom_node.admin.models import describe_models
from dicom_node.admin.queries import list_exports, list_jobs
from dicom_node.admin.users import Account, LoginThrottle, LoginThrottledError, authenticate
from dicom_node.logs import get_logger
from dicom_node.settings import Settings
from dicom_node.web import plots

log = get_logger(__name__)
HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "dicom_node_session"
# no inline script, nothing from elsewhere; inline style attributes stay (the templates use them)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class LoginRequired(Exception):  # noqa: N818 - it is a condition, not an error
    pass


def session_secret(settings: Settings) -> str:
    """``[admin] session_secret``, else one kept in the storage root (0600), so that sessions
    survive a restart and every process of the node signs alike."""
    if settings.admin.session_secret is not None:
        return settings.admin.session_secret.get_secret_value()
    path = Path(settings.storage.root) / ".admin-session-secret"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        temp.write_text(secrets.token_urlsafe(48))
        temp.chmod(0o600)
        temp.replace(path)
    return path.read_text().strip()


def create_app(  # noqa: PLR0915 - one closure per route, all sharing the engine and settings
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
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["chart"] = plots.chart
    templates.env.filters["dur"] = duration
    templates.env.filters["when"] = when
    registry = metrics.registry(engine, Path(settings.storage.root))
    show_accession = settings.admin.show_accession
    changed = on_change or (lambda: None)
    throttle = LoginThrottle()

    # --- auth ------------------------------------------------------------------------------

    def viewer(request: Request) -> Account:
        token = request.session.get("sid")
        found = sessions.lookup(engine, token, settings.admin) if isinstance(token, str) else None
        if found is None:
            request.session.pop("sid", None)
            raise LoginRequired
        request.state.account = found
        return found

    def admin(user: Annotated[Account, Depends(viewer)]) -> Account:
        if not user.may_act:
            raise HTTPException(403, f"{user.name} is a viewer: acting needs the admin role")
        return user

    async def csrf(request: Request) -> None:
        token = request.headers.get("x-csrf-token")
        if token is None:
            form = await request.form()
            value = form.get("csrf_token")
            token = value if isinstance(value, str) else None
        expected = request.session.get("csrf")
        if not expected or not token or not secrets.compare_digest(token, expected):
            raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")

    Viewer = Annotated[Account, Depends(viewer)]  # noqa: N806 - a type alias
    Admin = Annotated[Account, Depends(admin)]  # noqa: N806

    def csrf_token(request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return token

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        user = getattr(request.state, "account", None)
        return templates.TemplateResponse(
            request,
            name,
            {
                "user": user,
                "csrf": csrf_token(request),
                "flash": request.session.pop("flash", None),
                "node": settings.node,
                "path": request.url.path,
                "status": status,
                **context,
            },
            status_code=status,
        )

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _exc: LoginRequired) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": "login required"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if _is_api(request) or request.method != "GET":
            form = {} if _is_api(request) else await _form(request)
            if "next" in form:
                return _back(request, form, error=str(exc.detail))
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        return page(request, "error.html", status=exc.status_code, message=exc.detail)

    @app.middleware("http")
    async def _access_log(
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

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return page(request, "login.html", next=_safe_next(next), error=None)

    @app.post("/login", response_model=None, dependencies=[Depends(csrf)])
    async def login(request: Request) -> Response:
        form = await _form(request)
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        target = _safe_next(str(form.get("next", "/")))
        client = request.client.host if request.client else "unknown"
        try:
            found = await run_in_threadpool(authenticate, engine, name, password, client, throttle)
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
        token = await run_in_threadpool(sessions.start, engine, found.name, client, settings.admin)
        request.session.clear()
        request.session["sid"] = token  # a new session id at every login
        request.session["csrf"] = secrets.token_urlsafe(32)  # a new session, a new token
        log.info("login", user=found.name, role=str(found.role))
        return RedirectResponse(target, status_code=303)

    @app.post("/logout", dependencies=[Depends(csrf)])
    def logout(request: Request, user: Viewer) -> RedirectResponse:
        token = request.session.get("sid")
        if isinstance(token, str):
            sessions.end(engine, token)
        actions.audit_logout(engine, user.name)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # --- JSON API ------------------------------------------------------------------------------

    @app.get("/api/openapi.json")
    def api_schema(_: Viewer) -> dict[str, Any]:
        return app.openapi()

    @app.get("/api/me")
    def api_me(request: Request, user: Viewer) -> dict[str, Any]:
        return {"name": user.name, "role": str(user.role), "csrf_token": csrf_token(request)}

    @app.get("/api/dashboard")
    def api_dashboard(_: Viewer, window: str = "24h") -> dict[str, Any]:
        return reports.dashboard(engine, window)

    def study_filter(
        *,
        state: str | None = None,
        calling_ae: str | None = None,
        model: str | None = None,
        accession: str | None = None,
        received_from: str | None = None,
        received_to: str | None = None,
        limit: int = 200,
    ) -> reports.StudyFilter:
        return reports.StudyFilter(
            state=state or None,
            calling_ae=calling_ae or None,
            model=model or None,
            accession=accession or None,
            received_from=_day(received_from, "received_from"),
            received_to=_day(received_to, "received_to"),
            limit=max(1, min(limit, 5000)),
        )

    StudyQuery = Annotated[reports.StudyFilter, Depends(study_filter)]  # noqa: N806

    @app.get("/api/studies")
    def api_studies(_: Viewer, flt: StudyQuery) -> list[dict[str, Any]]:
        return reports.studies(engine, flt, show_accession=show_accession)

    @app.get("/api/studies/{study_uid}")
    def api_study(_: Viewer, study_uid: str) -> dict[str, Any]:
        found = reports.timeline(engine, settings, study_uid, show_accession=show_accession)
        if found is None:
            raise HTTPException(404, f"no study {study_uid}")
        return found

    @app.get("/api/jobs")
    def api_jobs(
        _: Viewer,
        state: str | None = None,
        model: str | None = None,
        study_uid: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        return list_jobs(
            engine,
            state=state or None,
            model=model or None,
            study_uid=study_uid or None,
            limit=max(1, min(limit, 5000)),
        )

    @app.get("/api/exports")
    def api_exports(
        _: Viewer,
        state: str | None = None,
        destination: str | None = None,
        job_id: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        rows = list_exports(
            engine, job_id=job_id or None, state=state or None, limit=max(1, min(limit, 5000))
        )
        return [r for r in rows if not destination or r["destination"] == destination]

    @app.get("/api/outbox")
    def api_outbox(_: Viewer) -> list[dict[str, Any]]:
        return reports.outbox(engine, settings)

    @app.get("/api/destinations")
    def api_destinations(_: Viewer) -> list[dict[str, Any]]:
        return reports.outbox(engine, settings)

    def audit_filter(
        *,
        event_type: str | None = None,
        actor: str | None = None,
        study_uid: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 500,
    ) -> reports.AuditFilter:
        return reports.AuditFilter(
            event_type=event_type or None,
            actor=actor or None,
            study_uid=study_uid or None,
            since=_day(since, "since"),
            until=_day(until, "until"),
            limit=max(1, min(limit, 100_000)),
        )

    AuditQuery = Annotated[reports.AuditFilter, Depends(audit_filter)]  # noqa: N806

    @app.get("/api/audit")
    def api_audit(_: Viewer, flt: AuditQuery) -> list[dict[str, Any]]:
        return reports.audit(engine, flt)

    @app.get("/api/audit.csv")
    @app.get("/audit.csv")
    def audit_csv(_: Viewer, flt: AuditQuery) -> Response:
        body = reports.audit_csv(reports.audit(engine, flt))
        return Response(
            body,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="dicom-node-audit.csv"'},
        )

    @app.get("/api/models")
    def api_models(_: Viewer) -> list[dict[str, Any]]:
        return _models(settings, engine)

    # --- actions (admin role, CSRF) ----------------------------------------------------------

    async def act(request: Request, do: Callable[[], Any], done: str) -> Response:
        form = await _form(request)
        try:
            result = await run_in_threadpool(do)
        except actions.NotFoundError as exc:
            if "next" in form:
                return _back(request, form, error=str(exc))
            raise HTTPException(404, str(exc)) from exc
        except actions.ActionError as exc:
            if "next" in form:
                return _back(request, form, error=str(exc))
            raise HTTPException(409, str(exc)) from exc
        changed()
        if "next" in form:
            return _back(request, form, message=done)
        return JSONResponse({"ok": True, "message": done, "result": result})

    @app.post("/api/studies/{study_uid}/force-complete", dependencies=[Depends(csrf)])
    async def force_complete(request: Request, user: Admin, study_uid: str) -> Response:
        return await act(
            request,
            lambda: actions.force_complete(engine, settings, study_uid, user.name),
            "Study forced COMPLETE; its jobs are queued.",
        )

    @app.post("/api/studies/{study_uid}/rerun", dependencies=[Depends(csrf)])
    async def rerun(request: Request, user: Admin, study_uid: str) -> Response:
        return await act(
            request,
            lambda: actions.rerun(engine, settings, study_uid, user.name),
            "New jobs queued for the study.",
        )

    @app.post("/api/jobs/{job_id}/retry", dependencies=[Depends(csrf)])
    async def retry(request: Request, user: Admin, job_id: str) -> Response:
        return await act(
            request, lambda: actions.retry_job(engine, job_id, user.name), "Job queued again."
        )

    @app.post("/api/jobs/{job_id}/cancel", dependencies=[Depends(csrf)])
    async def cancel(request: Request, user: Admin, job_id: str) -> Response:
        return await act(
            request, lambda: actions.cancel_job(engine, job_id, user.name), "Job cancelled."
        )

    @app.post("/api/jobs/{job_id}/resend", dependencies=[Depends(csrf)])
    async def resend_job(request: Request, user: Admin, job_id: str) -> Response:
        return await act(
            request,
            lambda: actions.resend(engine, user.name, job_id=job_id),
            "The job's results are queued for sending again.",
        )

    @app.post("/api/exports/{export_id}/resend", dependencies=[Depends(csrf)])
    async def resend_export(request: Request, user: Admin, export_id: str) -> Response:
        return await act(
            request,
            lambda: actions.resend(engine, user.name, export_id=export_id),
            "The object is queued for sending again.",
        )

    @app.post("/api/destinations/{name}/echo", dependencies=[Depends(csrf)])
    async def echo(request: Request, user: Admin, name: str) -> Response:
        form = await _form(request)
        try:
            error = await run_in_threadpool(
                actions.echo_destination, engine, settings, name, user.name
            )
        except actions.NotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        text = f"C-ECHO {name}: {error}" if error else f"C-ECHO {name}: Success"
        if "next" in form:
            return _back(request, form, **({"error": text} if error else {"message": text}))
        return JSONResponse({"ok": error is None, "message": text})

    # --- pages -------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def dashboard_page(request: Request, _: Viewer, window: str = "24h") -> HTMLResponse:
        return page(request, "dashboard.html", d=reports.dashboard(engine, window))

    @app.get("/studies", response_class=HTMLResponse)
    def studies_page(request: Request, _: Viewer, flt: StudyQuery) -> HTMLResponse:
        return page(
            request,
            "studies.html",
            rows=reports.studies(engine, flt, show_accession=show_accession),
            f=flt,
            models=sorted({m for rule in settings.rules for m in rule.models}),
            show_accession=show_accession,
        )

    @app.get("/studies/{study_uid}", response_class=HTMLResponse)
    def study_page(request: Request, _: Viewer, study_uid: str) -> HTMLResponse:
        found = reports.timeline(engine, settings, study_uid, show_accession=show_accession)
        if found is None:
            raise HTTPException(404, f"no study {study_uid}")
        return page(request, "study.html", s=found, show_accession=show_accession)

    @app.get("/jobs", response_class=HTMLResponse)
    def jobs_page(
        request: Request, _: Viewer, state: str = "", model: str = "", study_uid: str = ""
    ) -> HTMLResponse:
        rows = list_jobs(
            engine,
            state=state or None,
            model=model or None,
            study_uid=study_uid or None,
            limit=200,
        )
        return page(request, "jobs.html", rows=rows, state=state, model=model, study_uid=study_uid)

    @app.get("/exports", response_class=HTMLResponse)
    def exports_page(
        request: Request, _: Viewer, state: str = "", destination: str = ""
    ) -> HTMLResponse:
        rows = list_exports(engine, state=state or None)
        rows = [r for r in rows if not destination or r["destination"] == destination]
        return page(
            request,
            "exports.html",
            outbox=reports.outbox(engine, settings),
            rows=rows,
            state=state,
            destination=destination,
        )

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, _: Viewer, flt: AuditQuery) -> HTMLResponse:
        return page(
            request,
            "audit.html",
            rows=reports.audit(engine, flt),
            f=flt,
            event_types=reports.audit_event_types(engine),
            query=request.url.query,
        )

    @app.get("/destinations", response_class=HTMLResponse)
    def destinations_page(request: Request, _: Viewer) -> HTMLResponse:
        return page(request, "destinations.html", outbox=reports.outbox(engine, settings))

    @app.get("/models", response_class=HTMLResponse)
    def models_page(request: Request, _: Viewer) -> HTMLResponse:
        return page(request, "models.html", models=_models(settings, engine))

    # --- metrics -------------------------------------------------------------------------------

    @app.get("/metrics")
    def metrics_endpoint(request: Request) -> Response:
        token = settings.admin.metrics_token
        if token is not None:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {token.get_secret_value()}"
            if not secrets.compare_digest(given.encode(), expected.encode()):
                return PlainTextResponse(
                    "bearer token required",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        return Response(metrics.exposition(registry), media_type=metrics.CONTENT_TYPE)

    return app


# --- helpers -----------------------------------------------------------------------------------


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _form(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        return dict(await request.form())
    return {}


def _safe_next(target: str) -> str:
    """Only a path on this site (no open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _back(
    request: Request, form: dict[str, Any], *, message: str | None = None, error: str | None = None
) -> RedirectResponse:
    request.session["flash"] = {"message": message, "error": error}
    return RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)


def _day(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise HTTPException(400, f"{name}: a date as YYYY-MM-DD, not {value!r}") from exc


def _models(settings: Settings, engine: Engine) -> list[dict[str, Any]]:
    stats = reports.model_stats(engine)
    rows = describe_models(Path(settings.models.root))
    names = {r["name"] for r in rows}
    for name in sorted(set(stats) - names):
        rows.append({"name": name, "version": None, "runner": None, "status": "not installed"})
    for row in rows:
        row["stats"] = found = stats.get(row["name"])
        days = (found or {}).get("days", [])
        labels = sorted({k for d in days for k in d["mean_volume_ml"]})
        row["trend"] = {
            "days": [d["day"] for d in days],
            "positive": [round(d["positive_share"] * 100, 1) for d in days],
            "volumes": {k: [d["mean_volume_ml"].get(k) for d in days] for k in labels},
        }
    return rows


def duration(value: float | None) -> str:
    """1.234 -> '1.23 s', 75 -> '1 min 15 s', None -> '-'."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.2f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def when(value: str | None) -> str:
    """ISO UTC -> '2026-11-24 20:41:07 UTC'."""
    if not value:
        return "-"
    return value[:19].replace("T", " ") + " UTC"
