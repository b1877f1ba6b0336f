"""The admin web app in process (FastAPI's TestClient) on index rows: login and logout, roles,
CSRF on every action, the flash round trip of a form post, JSON errors, every page and API
route answering, and /metrics. The same app on a real pipeline's index is in
tests/integration/test_admin_api.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from dicom_node.admin.users import FREE_FAILURES, Role, add_user
from dicom_node.audit.recorder import AuditEventType, record
from dicom_node.settings import Settings
from dicom_node.web import app as web_app
from dicom_node.web.app import SESSION_COOKIE, create_app
from dicom_node.web.routes import actions, api, metrics, pages
from tests.rows import add_job, add_study, events, sqlite_index

STUDY = "1.2.826.0.1.3680043.8.498.91"
RECEIVING = "1.2.826.0.1.3680043.8.498.92"
PAGES = ["/", "/studies", f"/studies/{STUDY}", "/jobs", "/exports", "/audit", "/destinations"]
APIS = ["/api/me", "/api/dashboard", "/api/studies", f"/api/studies/{STUDY}", "/api/jobs"]
APIS += ["/api/exports", "/api/outbox", "/api/destinations", "/api/audit", "/api/audit.csv"]


@pytest.fixture
def app(tmp_path: Path) -> tuple[TestClient, Engine]:
    engine = sqlite_index(tmp_path)
    add_study(engine, STUDY)
    add_study(engine, RECEIVING, state="RECEIVING")
    add_job(engine, "job-1", study_uid=STUDY, state="FAILED", error="no stack")
    add_user(engine, "ada", "correct horse", Role.ADMIN)
    add_user(engine, "vic", "viewer pass", Role.VIEWER)
    settings = Settings(
        storage={"root": str(tmp_path / "storage")},  # type: ignore[arg-type]
        database={"url": f"sqlite:///{tmp_path / 'index.db'}"},  # type: ignore[arg-type]
    )
    return TestClient(create_app(settings, engine), follow_redirects=False), engine


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def login(client: TestClient, name: str, password: str) -> int:
    token = csrf_of(client.get("/login").text)
    data = {"name": name, "password": password, "csrf_token": token, "next": "/jobs"}
    response = client.post("/login", data=data)
    if response.status_code == 303:
        assert response.headers["location"] == "/jobs"
    else:
        assert "Wrong name or password." in response.text
    return response.status_code


def test_every_page_needs_a_login_and_answers_after_it(app: tuple[TestClient, Engine]) -> None:
    client, _ = app
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login")
    assert client.get("/api/studies").status_code == 401  # the API says so, no redirect
    assert login(client, "ada", "correct horse") == 303
    for path in PAGES + APIS:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:200])
    assert STUDY in client.get("/studies").text
    assert client.get("/api/studies/1.2.3.999").status_code == 404


def test_a_wrong_password_gets_the_form_again_and_no_session(
    app: tuple[TestClient, Engine],
) -> None:
    client, _ = app
    assert login(client, "ada", "wrong") == 200
    assert login(client, "nobody", "correct horse") == 200  # the same words: no user probing
    assert client.get("/api/me").status_code == 401


def test_logout_ends_the_session(app: tuple[TestClient, Engine]) -> None:
    client, _ = app
    login(client, "ada", "correct horse")
    token = client.get("/api/me").json()["csrf_token"]
    assert client.post("/logout", headers={"X-CSRF-Token": token}).status_code == 303
    assert client.get("/api/me").status_code == 401


def test_actions_need_the_admin_role_and_the_csrf_token(app: tuple[TestClient, Engine]) -> None:
    client, engine = app
    login(client, "vic", "viewer pass")
    token = client.get("/api/me").json()["csrf_token"]
    refused = client.post("/api/jobs/job-1/retry", headers={"X-CSRF-Token": token})
    assert refused.status_code == 403
    assert "vic is a viewer" in refused.json()["detail"]
    admin = TestClient(client.app, follow_redirects=False)
    login(admin, "ada", "correct horse")
    assert admin.post("/api/jobs/job-1/retry").status_code == 403  # no token
    token = admin.get("/api/me").json()["csrf_token"]
    done = admin.post("/api/jobs/job-1/retry", headers={"X-CSRF-Token": token})
    assert done.json() == {"ok": True, "message": "Job queued again.", "result": None}
    assert events(engine, "job-1")[-1][1]["reason"] == "retry by ada"
    again = admin.post("/api/jobs/job-1/retry", headers={"X-CSRF-Token": token})
    assert again.status_code == 409  # a QUEUED job is not retried
    missing = admin.post("/api/studies/1.2.3.999/rerun", headers={"X-CSRF-Token": token})
    assert missing.status_code == 404


def test_a_form_post_comes_back_to_its_page_with_a_flash(app: tuple[TestClient, Engine]) -> None:
    client, _ = app
    login(client, "ada", "correct horse")
    token = csrf_of(client.get(f"/studies/{RECEIVING}").text)
    form = {"csrf_token": token, "next": f"/studies/{RECEIVING}"}
    response = client.post(f"/api/studies/{RECEIVING}/force-complete", data=form)
    assert (response.status_code, response.headers["location"]) == (303, f"/studies/{RECEIVING}")
    assert "Study forced COMPLETE; its jobs are queued." in client.get(f"/studies/{RECEIVING}").text
    form["next"] = "https://evil.example/"
    response = client.post(f"/api/studies/{RECEIVING}/force-complete", data=form)
    assert response.headers["location"] == "/"  # never off the site
    flash = client.get("/").text  # the second force-complete was refused: said so
    assert f"study {RECEIVING} is already COMPLETE; use re-run for new jobs" in flash


def test_metrics_are_served_without_a_login_by_default(app: tuple[TestClient, Engine]) -> None:
    client, _ = app
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "dicom_node_studies_received_total 2.0" in response.text


def get_routes() -> list[str]:
    """Every GET path of the pages and the API, with a study UID for its parameter."""
    paths = [r.path for r in (*pages.router.routes, *api.router.routes) if "GET" in r.methods]
    return [p.replace("{study_uid}", STUDY) for p in paths]


def test_every_page_and_api_route_is_behind_the_login(app: tuple[TestClient, Engine]) -> None:
    client, _ = app
    routes = get_routes()
    assert len(routes) >= 20
    for path in routes:
        status = client.get(path).status_code
        assert status in (303, 401), (path, status)  # a page redirects, the API says 401
    login(client, "vic", "viewer pass")
    for path in routes:
        assert client.get(path).status_code == 200, path  # a viewer reads everything


@pytest.mark.parametrize("action", actions.ACTIONS, ids=lambda a: a.name)
def test_every_action_needs_an_admin_and_the_csrf_token(
    app: tuple[TestClient, Engine], action: actions.Action
) -> None:
    client, _ = app
    path = "/api" + action.path.replace("{key}", "no-such-thing")
    assert client.post(path).status_code == 403  # no session, no token
    login(client, "vic", "viewer pass")
    token = client.get("/api/me").json()["csrf_token"]
    assert client.post(path).status_code == 403  # no token
    viewer = client.post(path, headers={"X-CSRF-Token": token})
    assert viewer.status_code == 403 and "acting needs the admin role" in viewer.json()["detail"]
    admin = TestClient(client.app, follow_redirects=False)
    login(admin, "ada", "correct horse")
    token = admin.get("/api/me").json()["csrf_token"]
    assert admin.post(path, headers={"X-CSRF-Token": token}).status_code == 404  # nothing there


def test_metrics_take_a_bearer_token_when_one_is_set(tmp_path: Path) -> None:
    engine = sqlite_index(tmp_path)
    settings = Settings(
        storage={"root": str(tmp_path / "storage")},  # type: ignore[arg-type]
        admin={"metrics_token": "s3cret-token"},  # type: ignore[arg-type]
    )
    client = TestClient(create_app(settings, engine))
    assert metrics.router.routes[0].path == "/metrics"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and "dicom_node_queue_depth" in ok.text


def test_repeated_failures_are_throttled_with_retry_after(app: tuple[TestClient, Engine]) -> None:
    client, engine = app
    for _ in range(FREE_FAILURES):
        assert login(client, "ada", "guess") == 200
    token = csrf_of(client.get("/login").text)
    data = {"name": "ada", "password": "correct horse", "csrf_token": token, "next": "/"}
    held = client.post("/login", data=data)  # even the right password waits now
    assert held.status_code == 429
    assert int(held.headers["Retry-After"]) >= 1
    assert "Too many failed logins for this name from here" in held.text
    assert client.get("/api/me").status_code == 401
    other = TestClient(client.app, follow_redirects=False)
    assert login(other, "vic", "viewer pass") == 303  # another name is not held back
    failed = [t for t, _ in events(engine, "ada") if t == "user.login_failed"]
    assert len(failed) == FREE_FAILURES


def test_a_login_starts_a_new_session_and_token(app: tuple[TestClient, Engine]) -> None:
    client, _ = app
    before = csrf_of(client.get("/login").text)
    cookie = client.cookies.get(SESSION_COOKIE)
    login(client, "ada", "correct horse")
    after = client.get("/api/me").json()
    assert after["csrf_token"] != before  # a token seen before login is worth nothing after
    assert client.cookies.get(SESSION_COOKIE) != cookie
    assert after["name"] == "ada" and after["role"] == "admin"
    stale = client.post("/api/jobs/job-1/retry", headers={"X-CSRF-Token": before})
    assert stale.status_code == 403


def test_every_response_has_the_security_headers_and_logs_no_query(
    app: tuple[TestClient, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = app
    logged: list[dict[str, object]] = []

    class Log:
        def info(self, event: str, **values: object) -> None:
            logged.append({"event": event, **values})

    monkeypatch.setattr(web_app, "log", Log())
    login(client, "ada", "correct horse")
    logged.clear()
    for path in ("/studies?accession=ACC-5521-XY", "/api/studies", "/static/admin.css"):
        response = client.get(path)
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Security-Policy"] == web_app.CSP
        no_store = response.headers.get("Cache-Control") == "no-store"
        assert no_store is (not path.startswith("/static/")), path
    assert [(e["path"], e["status"], e["user"]) for e in logged] == [
        ("/studies", 200, "ada"),
        ("/api/studies", 200, "ada"),
        ("/static/admin.css", 200, None),
    ]
    assert "ACC-5521-XY" not in repr(logged)  # what an admin typed stays out of the log


def test_the_audit_log_pages_keeping_its_filters_and_shows_whole_uids(
    app: tuple[TestClient, Engine],
) -> None:
    """250 events: pages of 100, newest first; the pager links keep the filter; entity UIDs
    are whole in the page (shortened only on screen); details are key-value pairs."""
    client, engine = app
    long_uid = "1.2.826.0.1.3680043.8.498.99887766554433221100"
    with engine.begin() as conn:
        for i in range(250):
            record(
                conn,
                AuditEventType.EXPORT_SENDING,
                entity_type="export",
                entity_id=f"{long_uid}.{i}",
                actor="system",
                details={"destination": "pacs", "attempt": i},
            )
        record(conn, AuditEventType.DESTINATION_ECHO, entity_type="destination", entity_id="x")
    assert login(client, "vic", "viewer pass") == 303
    first = client.get("/audit", params={"event_type": "export."}).text
    assert "events 1-100 of 250" in first
    assert f'title="{long_uid}.249"' in first and f'data-uid="{long_uid}.249"' in first
    assert "<dt>attempt</dt><dd>249</dd>" in first and "<dt>destination</dt><dd>pacs</dd>" in first
    older = re.search(r'<a href="/audit\?([^"]+)">older', first)
    assert older is not None and older[1] == "event_type=export.&amp;page=2"
    second = client.get("/audit", params={"event_type": "export.", "page": 2}).text
    assert "events 101-200 of 250" in second and f"{long_uid}.149" in second
    assert f"{long_uid}.249" not in second
    assert "← newer" in second and "older →" in second
    last = client.get("/audit", params={"event_type": "export.", "page": 9}).text  # past the end
    assert "events 201-250 of 250" in last and "older →" not in last
    assert "<td>destination.echo</td>" not in last  # the filter held on every page
    assert last.count("<td>export.sending</td>") == 50
