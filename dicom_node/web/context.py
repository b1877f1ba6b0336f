"""What every route shares: the web context on ``app.state``, the login and role dependencies,
the CSRF check, page rendering and the small request helpers.

No ``from __future__ import annotations``: FastAPI reads these annotations at run time.
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from dicom_node.admin import sessions
from dicom_node.admin.users import Account, LoginThrottle
from dicom_node.settings import Settings


class LoginRequired(Exception):  # noqa: N818 - it is a condition, not an error
    pass


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    engine: Engine
    templates: Jinja2Templates
    registry: CollectorRegistry
    changed: Callable[[], None]  # after an action that queued work
    throttle: LoginThrottle

    @property
    def show_accession(self) -> bool:
        return self.settings.admin.show_accession


def context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.web
    return ctx


Ctx = Annotated[WebContext, Depends(context)]


def viewer(request: Request, ctx: Ctx) -> Account:
    token = request.session.get("sid")
    found = (
        sessions.lookup(ctx.engine, token, ctx.settings.admin) if isinstance(token, str) else None
    )
    if found is None:
        request.session.pop("sid", None)
        raise LoginRequired
    request.state.account = found
    return found


def admin(user: Annotated[Account, Depends(viewer)]) -> Account:
    if not user.may_act:
        raise HTTPException(403, f"{user.name} is a viewer: acting needs the admin role")
    return user


Viewer = Annotated[Account, Depends(viewer)]
Admin = Annotated[Account, Depends(admin)]


async def csrf(request: Request) -> None:
    """Every POST carries the session's token: header ``X-CSRF-Token`` or field ``csrf_token``."""
    token = request.headers.get("x-csrf-token")
    if token is None:
        form = await request.form()
        value = form.get("csrf_token")
        token = value if isinstance(value, str) else None
    expected = request.session.get("csrf")
    if not expected or not token or not secrets.compare_digest(token, expected):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


CSRF = [Depends(csrf)]


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def page(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    """Render template ``name`` with the user, the CSRF token and the flash message."""
    ctx = context(request)
    return ctx.templates.TemplateResponse(
        request,
        name,
        {
            "user": getattr(request.state, "account", None),
            "csrf": csrf_token(request),
            "flash": request.session.pop("flash", None),
            "node": ctx.settings.node,
            "path": request.url.path,
            "status": status,
            **values,
        },
        status_code=status,
    )


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def form_of(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        return dict(await request.form())
    return {}


def safe_next(target: str) -> str:
    """Only a path on this site (no open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def back(
    request: Request, form: dict[str, Any], *, message: str | None = None, error: str | None = None
) -> RedirectResponse:
    """Back to the form's ``next`` page, with a flash message."""
    request.session["flash"] = {"message": message, "error": error}
    return RedirectResponse(safe_next(str(form.get("next", "/"))), status_code=303)


def day(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise HTTPException(400, f"{name}: a date as YYYY-MM-DD, not {value!r}") from exc


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
