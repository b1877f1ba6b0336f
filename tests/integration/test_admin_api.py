"""The admin JSON API and pages over HTTP, in process (FastAPI's TestClient on the real app):
auth, roles, CSRF, filters, CSV export, every action and its audit event, and /metrics parsed
with prometheus_client. The data are real: CT slices C-STOREd to the node's SCP, a job run by
the worker code with a tiny real torch model, results C-STOREd to dcmtk storescp.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import Engine, delete, select, update

from dicom_node.admin.users import ALARM_FAILURES, FREE_FAILURES, Role, add_user, change_user
from dicom_node.db.models import AdminSession, AuditEvent, Export, Job
from dicom_node.db.session import make_engine
from dicom_node.domain import JobState, phi_hash
from dicom_node.export.exporter import DestinationSender
from dicom_node.settings import Settings
from dicom_node.web.app import create_app
from tests.helpers import (
    cli,
    config_for,
    node_settings,
    send_datasets,
    start_node,
    wait_for,
)
from tests.models import build_model
from tests.peers import storescp
from workers.runner import WorkerContext, execute

PATIENT_NAME = "Quibbleworth^Ottoline"  # distinctive, so that a leak is found by grep
PATIENT_ID = "PHI-88231977"
ACCESSION = "ACC-5521-XY"
PAGES = ["/", "/studies", "/jobs", "/exports", "/audit", "/destinations", "/models"]
APIS = [
    "/api/me",
    "/api/dashboard",
    "/api/studies",
    "/api/jobs",
    "/api/exports",
    "/api/outbox",
    "/api/destinations",
    "/api/audit",
    "/api/audit.csv",
    "/api/models",
]


@dataclass
class Site:
    """One test's own copy of the site: its index is a copy of the one the pipeline filled, so
    what a test changes (sessions, jobs, audit) no other test sees."""

    settings: Settings
    engine: Engine
    app_client: TestClient
    archive: Path
    study_a: str  # complete, its job run and delivered
    study_b: str  # still RECEIVING (no sweeper), sent by another AE

    def client(self) -> TestClient:
        return TestClient(self.app_client.app, follow_redirects=False)

    def login(self, name: str, password: str) -> TestClient:
        client = self.client()
        token = csrf_from(client.get("/login").text)
        response = client.post(
            "/login", data={"name": name, "password": password, "csrf_token": token, "next": "/"}
        )
        assert response.status_code == 303, response.text
        return client


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def token(client: TestClient) -> str:
    return str(client.get("/api/me").json()["csrf_token"])


def audit_rows(engine: Engine, event: str) -> list[AuditEvent]:
    with engine.connect() as conn:
        return list(conn.execute(select(AuditEvent).where(AuditEvent.event_type == event)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class BuiltSite:
    settings: Settings
    index: Path  # the filled SQLite index, never written after the build
    archive: Path
    study_a: str
    study_b: str


@pytest.fixture
def site(built_site: BuiltSite, tmp_path: Path) -> Iterator[Site]:
    index = tmp_path / "index.db"
    with sqlite3.connect(built_site.index) as source, sqlite3.connect(index) as copy:
        source.backup(copy)
    url = f"sqlite:///{index}"
    settings = built_site.settings.model_copy(
        update={"database": built_site.settings.database.model_copy(update={"url": SecretStr(url)})}
    )
    engine = make_engine(url)
    try:
        yield Site(
            settings,
            engine,
            TestClient(create_app(settings, engine)),
            built_site.archive,
            built_site.study_a,
            built_site.study_b,
        )
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory, ct_dir: Path) -> Iterator[BuiltSite]:
    """Two studies received, one run through the pipeline and delivered; built once, copied for
    each test (``site``). The archive (dcmtk storescp) stays up for the resend tests."""
    tmp = tmp_path_factory.mktemp("admin")
    build_model(tmp / "models", "threshold", "torchscript")
    with storescp(tmp / "archive") as archive_port:
        settings = node_settings(
            tmp,
            rules=[{"name": "ct", "models": ["threshold"], "match": {"modality": ["CT"]}}],
            models={"root": str(tmp / "models"), "device": "cpu"},
            destinations=[
                {
                    "name": "archive",
                    "ae_title": "STORESCP",
                    "host": "127.0.0.1",
                    "port": archive_port,
                }
            ],
        )
        node = start_node(settings, sweeper=False)
        try:
            a = _study(ct_dir, 3)
            b = _study(ct_dir, 2)
            for ds in [*a, *b]:
                ds.PatientName, ds.PatientID, ds.AccessionNumber = (
                    PATIENT_NAME,
                    PATIENT_ID,
                    ACCESSION,
                )
            for ds in b:
                ds.AccessionNumber = "OTHER-1"
            assert set(send_datasets(node.port, a)) == {0}
            assert set(send_datasets(node.port, b, calling="OTHERSCU")) == {0}
            add_user(node.engine, "ada", "correct horse", Role.ADMIN)
            add_user(node.engine, "vic", "viewer pass", Role.VIEWER)
            app = create_app(settings, node.engine)
            s = Site(
                settings,
                node.engine,
                TestClient(app),
                tmp / "archive",
                str(a[0].StudyInstanceUID),
                str(b[0].StudyInstanceUID),
            )
            # study A through the pipeline: force-complete (an admin action), run, deliver
            admin = s.login("ada", "correct horse")
            r = admin.post(
                f"/api/studies/{s.study_a}/force-complete", headers={"X-CSRF-Token": token(admin)}
            )
            assert r.status_code == 200, r.text
            [job_id] = r.json()["result"]
            ctx = WorkerContext(settings)
            assert execute(ctx, job_id, "test-worker") is JobState.RESULTS_READY
            sender = DestinationSender(node.engine, settings, settings.destinations[0])
            sender.pass_once()
            wait_for(lambda: _job_state(node.engine, job_id) == "DONE", 30, "job DONE")
            with node.engine.begin() as conn:  # the build's own login is not a test's
                conn.execute(delete(AdminSession))
        finally:
            node.stop()
        yield BuiltSite(
            settings,
            Path(settings.database.url.get_secret_value().removeprefix("sqlite:///")),
            tmp / "archive",
            s.study_a,
            s.study_b,
        )


def _study(ct_dir: Path, count: int) -> list[Dataset]:
    """The first ``count`` real slices of the CT as a new study (new UIDs, same pixels)."""
    study, series = generate_uid(), generate_uid()
    slices = sorted(
        (dcmread(p) for p in ct_dir.iterdir() if p.name != "DIRFILE"),
        key=lambda ds: int(ds.InstanceNumber),
    )
    out = []
    for ds in slices[:count]:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(ds)
    return out


def _job_state(engine: Engine, job_id: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(Job.state).where(Job.id == job_id)).scalar_one())


def _job_of(engine: Engine, study_uid: str) -> Job:
    with engine.connect() as conn:
        return conn.execute(  # type: ignore[no-any-return]
            select(Job).where(Job.study_uid == study_uid).order_by(Job.created_at)
        ).first()


# --- auth ------------------------------------------------------------------------------------


def test_unauthenticated_pages_redirect_and_the_api_answers_401(site: Site) -> None:
    client = site.client()
    for path in [*PAGES, f"/studies/{site.study_a}"]:
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    for path in [*APIS, f"/api/studies/{site.study_a}"]:
        r = client.get(path)
        assert r.status_code == 401 and r.json() == {"detail": "login required"}, path
    r = client.post(f"/api/jobs/{_job_of(site.engine, site.study_a).id}/retry")
    assert r.status_code in (401, 403)  # no session: no CSRF token either


def test_login_is_audited_and_a_wrong_password_is_refused(site: Site) -> None:
    client = site.client()
    page = client.get("/login").text
    r = client.post(
        "/login",
        data={"name": "ada", "password": "wrong", "csrf_token": csrf_from(page), "next": "/"},
    )
    assert r.status_code == 200 and "Wrong name or password." in r.text
    failed = audit_rows(site.engine, "user.login_failed")
    assert failed and failed[-1].entity_id == "ada" and failed[-1].actor == "anonymous"
    assert client.get("/api/me").status_code == 401
    # a login without the form's CSRF token is refused outright
    r = client.post("/login", data={"name": "ada", "password": "correct horse"})
    assert r.status_code == 403
    admin = site.login("ada", "correct horse")
    assert admin.get("/api/me").json()["role"] == "admin"
    assert any(e.actor == "ada" for e in audit_rows(site.engine, "user.login"))
    # an open redirect through ?next= is not followed
    r = client.post(
        "/login",
        data={
            "name": "ada",
            "password": "correct horse",
            "next": "https://evil.example/",
            "csrf_token": csrf_from(client.get("/login").text),
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_logout_ends_the_session(site: Site) -> None:
    client = site.login("vic", "viewer pass")
    r = client.post("/logout", data={"csrf_token": token(client)})
    assert r.status_code == 303
    assert client.get("/api/me").status_code == 401
    assert any(e.actor == "vic" for e in audit_rows(site.engine, "user.logout"))


def test_every_page_and_endpoint_renders_for_a_viewer(site: Site) -> None:
    viewer = site.login("vic", "viewer pass")
    for path in [*PAGES, f"/studies/{site.study_a}", f"/studies/{site.study_b}"]:
        r = viewer.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert "<title>" in r.text
    for path in [*APIS, f"/api/studies/{site.study_a}"]:
        assert viewer.get(path).status_code == 200, path
    assert viewer.get("/api/studies/1.2.3.4").status_code == 404
    assert viewer.get("/studies/1.2.3.4").status_code == 404


def test_a_viewer_may_not_act(site: Site) -> None:
    viewer = site.login("vic", "viewer pass")
    job = _job_of(site.engine, site.study_a)
    headers = {"X-CSRF-Token": token(viewer)}
    for path in [
        f"/api/studies/{site.study_b}/force-complete",
        f"/api/studies/{site.study_a}/rerun",
        f"/api/jobs/{job.id}/retry",
        f"/api/jobs/{job.id}/cancel",
        f"/api/jobs/{job.id}/resend",
        "/api/destinations/archive/echo",
    ]:
        r = viewer.post(path, headers=headers)
        assert r.status_code == 403 and "viewer" in r.json()["detail"], path
    assert not [e for e in audit_rows(site.engine, "export.resend") if e.actor == "vic"]


def test_actions_need_the_sessions_csrf_token(site: Site) -> None:
    admin = site.login("ada", "correct horse")
    other = site.login("ada", "correct horse")  # another session, another token
    path = "/api/destinations/archive/echo"
    assert admin.post(path).status_code == 403
    assert admin.post(path, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert admin.post(path, headers={"X-CSRF-Token": token(other)}).status_code == 403
    assert admin.post(path, data={"csrf_token": token(admin)}).status_code == 200
    assert admin.post(path, headers={"X-CSRF-Token": token(admin)}).json()["ok"] is True


# --- actions and their audit events ---------------------------------------------------------


def test_force_complete_then_rerun_cancel_and_retry(site: Site) -> None:
    admin = site.login("ada", "correct horse")
    headers = {"X-CSRF-Token": token(admin)}
    # study A is already COMPLETE (the fixture forced it): a second force is refused, clearly
    r = admin.post(f"/api/studies/{site.study_a}/force-complete", headers=headers)
    assert r.status_code == 409 and "already COMPLETE" in r.json()["detail"]
    forced = [e for e in audit_rows(site.engine, "study.completed") if e.study_uid == site.study_a]
    assert forced[0].actor == "ada" and forced[0].details["reason"] == "forced"
    # a re-run makes a new job for the same input
    r = admin.post(f"/api/studies/{site.study_a}/rerun", headers=headers)
    assert r.status_code == 200, r.text
    [new_id] = r.json()["result"]
    with site.engine.connect() as conn:
        jobs = conn.execute(select(Job).where(Job.study_uid == site.study_a)).all()
    assert len(jobs) == 2 and len({j.input_key for j in jobs}) == 2
    queued = [e for e in audit_rows(site.engine, "job.queued") if e.entity_id == new_id]
    assert queued[0].actor == "ada" and queued[0].details["reason"] == "re-run by ada"
    # cancel it (QUEUED), then a second cancel is a 409, then retry, then cancel again
    assert admin.post(f"/api/jobs/{new_id}/cancel", headers=headers).status_code == 200
    assert _job_state(site.engine, new_id) == "CANCELLED"
    r = admin.post(f"/api/jobs/{new_id}/cancel", headers=headers)
    assert r.status_code == 409 and "only QUEUED or RUNNING" in r.json()["detail"]
    assert admin.post(f"/api/jobs/{new_id}/retry", headers=headers).status_code == 200
    assert _job_state(site.engine, new_id) == "QUEUED"
    r = admin.post(f"/api/jobs/{site.study_a}/retry", headers=headers)
    assert r.status_code == 404
    assert admin.post(f"/api/jobs/{new_id}/cancel", headers=headers).status_code == 200
    with site.engine.connect() as conn:
        trail = conn.execute(
            select(AuditEvent.event_type, AuditEvent.actor)
            .where(AuditEvent.entity_id == new_id)
            .order_by(AuditEvent.id)
        ).all()
    assert [tuple(t) for t in trail] == [
        ("job.queued", "ada"),
        ("job.cancelled", "ada"),
        ("job.queued", "ada"),
        ("job.cancelled", "ada"),
    ]
    # study B is still RECEIVING: force-complete through the HTML form, flash and redirect
    page = admin.get(f"/studies/{site.study_b}").text
    assert "Force complete" in page
    r = admin.post(
        f"/api/studies/{site.study_b}/force-complete",
        data={"csrf_token": csrf_from(page), "next": f"/studies/{site.study_b}"},
    )
    assert r.status_code == 303 and r.headers["location"] == f"/studies/{site.study_b}"
    page = admin.get(f"/studies/{site.study_b}").text
    assert "Study forced COMPLETE" in page and "COMPLETE" in page


def test_resend_delivers_again_and_is_audited(site: Site) -> None:
    admin = site.login("ada", "correct horse")
    job = _job_of(site.engine, site.study_a)
    with site.engine.connect() as conn:
        exports = conn.execute(select(Export).where(Export.job_id == job.id)).all()
    assert exports and {x.state for x in exports} == {"DELIVERED"}
    delivered_before = len(audit_rows(site.engine, "export.delivered"))
    r = admin.post(f"/api/exports/{exports[0].id}/resend", headers={"X-CSRF-Token": token(admin)})
    assert r.status_code == 200 and r.json()["result"] == [exports[0].id]
    resent = [e for e in audit_rows(site.engine, "export.resend") if e.entity_id == exports[0].id]
    assert resent[-1].actor == "ada"
    # nothing to resend while it is PENDING: a clear 409
    r = admin.post(f"/api/exports/{exports[0].id}/resend", headers={"X-CSRF-Token": token(admin)})
    assert r.status_code == 409 and "PENDING" in r.json()["detail"]
    settings = site.settings
    DestinationSender(site.engine, settings, settings.destinations[0]).pass_once()
    wait_for(
        lambda: len(audit_rows(site.engine, "export.delivered")) == delivered_before + 1,
        20,
        "the resent object delivered",
    )
    rows = admin.get(f"/api/exports?job_id={job.id}").json()
    assert {r["state"] for r in rows} == {"DELIVERED"}
    timeline = admin.get(f"/api/studies/{site.study_a}").json()
    [j] = [j for j in timeline["jobs"] if j["job_id"] == job.id]
    events = [e["event"] for e in j["export_attempts"]]
    assert events.count("export.delivered") == len(exports) + 1 and "export.resend" in events


def test_destination_echo_is_audited_and_an_unknown_one_is_404(site: Site) -> None:
    admin = site.login("ada", "correct horse")
    headers = {"X-CSRF-Token": token(admin)}
    r = admin.post("/api/destinations/archive/echo", headers=headers)
    assert r.json() == {"ok": True, "message": "C-ECHO archive: Success"}
    assert audit_rows(site.engine, "destination.echo")[-1].details["ok"] is True
    assert admin.post("/api/destinations/nowhere/echo", headers=headers).status_code == 404


# --- reading: filters, timeline, CSV, models, metrics ----------------------------------------


def test_study_filters(site: Site) -> None:
    viewer = site.login("vic", "viewer pass")

    def uids(**params: Any) -> set[str]:
        r = viewer.get("/api/studies", params=params)
        assert r.status_code == 200, r.text
        return {s["study_uid"] for s in r.json()}

    both = {site.study_a, site.study_b}
    assert uids() >= both
    assert site.study_b in uids(calling_ae="OTHERSCU") and site.study_a not in uids(
        calling_ae="OTHERSCU"
    )
    assert uids(accession=ACCESSION) == {site.study_a}
    assert site.study_a in uids(model="threshold")
    assert uids(model="nothing") == set()
    today = date.today()
    assert uids(received_from=today.isoformat(), received_to=today.isoformat()) >= both
    assert uids(received_to=(today - timedelta(days=2)).isoformat()) == set()
    assert uids(state="COMPLETE") >= {site.study_a}
    r = viewer.get("/api/studies", params={"received_from": "yesterday"})
    assert r.status_code == 400 and "YYYY-MM-DD" in r.json()["detail"]
    # the accession is shown as its hash by default, never in clear
    [row] = [s for s in viewer.get("/api/studies").json() if s["study_uid"] == site.study_a]
    assert row["accession"] is None and row["accession_hash"] == phi_hash(ACCESSION)
    assert row["calling_aes"] == ["TESTSCU"] and row["instances"] == 3


def test_timeline_has_every_stage_with_durations(site: Site) -> None:
    viewer = site.login("vic", "viewer pass")
    t = viewer.get(f"/api/studies/{site.study_a}").json()
    assert [s["stage"] for s in t["stages"]][:3] == [
        "received (first instance)",
        "received (last instance)",
        "complete (forced)",
    ]
    job = t["jobs"][0]
    assert [s["stage"] for s in job["stages"]] == [
        "queued",
        "running",
        "results ready",
        "finished (DONE)",
    ]
    assert all(s["at"] and s["duration_s"] is not None for s in job["stages"])
    assert t["rules"][0]["chosen"] == job["series_uids"]
    assert {m["label"] for m in job["measurements"]} == {"bone"}
    html = viewer.get(f"/studies/{site.study_a}").text
    assert "results ready" in html and "inference and results" in html


def test_the_cli_and_the_web_render_the_same_timeline(site: Site, tmp_path: Path) -> None:
    """One read model: ``studies show --json`` is the API's study, and the text and the page
    list the same stages in the same order."""
    viewer = site.login("vic", "viewer pass")
    api = viewer.get(f"/api/studies/{site.study_a}").json()
    cfg = config_for(site, tmp_path)
    with cfg.open("a") as fh:  # the site's rule, so the CLI reads the rules' choice the same
        fh.write('[[rules]]\nname = "ct"\nmodels = ["threshold"]\nmatch = {modality = ["CT"]}\n')
    done = cli("studies", "show", site.study_a, "--json", config=cfg)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == api
    text = cli("studies", "show", site.study_a, config=cfg).stdout.splitlines()
    html = viewer.get(f"/studies/{site.study_a}").text
    stages = [e["stage"] for e in api["timeline"]]
    assert len(stages) >= 7
    at_line = [next(i for i, line in enumerate(text) if stage in line) for stage in stages]
    assert at_line == sorted(at_line)
    at_html = [html.index(stage) for stage in stages]
    assert at_html == sorted(at_html)


def test_audit_filters_and_csv_export(site: Site) -> None:
    viewer = site.login("vic", "viewer pass")
    rows = viewer.get("/api/audit", params={"study_uid": site.study_a}).json()
    assert rows and {r["study_uid"] for r in rows} == {site.study_a}
    jobs_only = viewer.get("/api/audit", params={"event_type": "job."}).json()
    assert jobs_only and all(r["event"].startswith("job.") for r in jobs_only)
    by_ada = viewer.get("/api/audit", params={"actor": "ada"}).json()
    assert by_ada and {r["actor"] for r in by_ada} == {"ada"}
    today = date.today().isoformat()
    assert viewer.get("/api/audit", params={"since": today, "until": today}).json()
    old = (date.today() - timedelta(days=3)).isoformat()
    assert viewer.get("/api/audit", params={"until": old}).json() == []
    r = viewer.get("/audit.csv", params={"study_uid": site.study_a})
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(t["id"]) for t in table] == [r["id"] for r in rows]
    assert {t["study_uid"] for t in table} == {site.study_a}


def test_models_show_runs_and_failure_rate(site: Site) -> None:
    viewer = site.login("vic", "viewer pass")
    [model] = [m for m in viewer.get("/api/models").json() if m["name"] == "threshold"]
    assert model["status"] == "ok"
    stats = model["stats"]
    assert stats["done"] >= 1 and stats["failure_rate"] == 0.0 and stats["mean_runtime_s"] > 0
    assert stats["days"][-1]["positive_share"] == 1.0  # the phantom's bone is found
    assert "Share of runs with a positive finding" in viewer.get("/models").text


def test_metrics_parse_and_match_what_was_sent(site: Site) -> None:
    r = site.client().get("/metrics")  # no login needed by default: no PHI in it
    assert r.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    value = {
        f: {tuple(sorted(s.labels.items())): s.value for s in fam.samples}
        for f, fam in families.items()
    }
    assert value["dicom_node_instances_stored"][()] == 5  # 3 + 2 C-STOREd
    assert value["dicom_node_studies_received"][()] == 2
    delivered = families["dicom_node_export_events"].samples
    assert any(
        s.labels == {"destination": "archive", "event": "export.delivered"} and s.value >= 1
        for s in delivered
    )
    done = [
        s
        for s in families["dicom_node_job_events"].samples
        if s.labels == {"model": "threshold", "event": "job.done"}
    ]
    assert done and done[0].value >= 1
    stage = families["dicom_node_stage_seconds"]
    counts = {s.labels["stage"]: s.value for s in stage.samples if s.name.endswith("_count")}
    assert counts["inference"] >= 1 and counts["receive"] >= 1
    for name in (
        "dicom_node_queue_depth",
        "dicom_node_oldest_queued_age_seconds",
        "dicom_node_disk_free_bytes",
        "dicom_node_open_associations",
    ):
        assert name in families, name
    assert PATIENT_NAME not in r.text and PATIENT_ID not in r.text


def test_metrics_token_when_configured(site: Site, tmp_path: Path) -> None:
    settings = node_settings(tmp_path, admin={"metrics_token": "s3cret-token"})
    client = TestClient(create_app(settings, site.engine))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert r.status_code == 200 and "dicom_node_instances_stored" in r.text


def test_no_phi_in_any_page(site: Site) -> None:
    admin = site.login("ada", "correct horse")
    for path in [*PAGES, f"/studies/{site.study_a}", f"/studies/{site.study_b}", *APIS]:
        body = admin.get(path).text
        for phi in (PATIENT_NAME, PATIENT_ID, "Quibbleworth", ACCESSION):
            assert phi not in body, (path, phi)


def test_the_read_models_on_postgresql(tmp_path: Path, pg_url: str, ct_dir: Path) -> None:
    """The dashboard's buckets, the filters and /metrics use SQL that differs by dialect."""
    settings = node_settings(tmp_path, db_url=pg_url)
    node = start_node(settings, sweeper=False)
    try:
        study = _study(ct_dir, 2)
        assert set(send_datasets(node.port, study, calling="PGSCU")) == {0}
        add_user(node.engine, "ada", "correct horse", Role.ADMIN)
        client = TestClient(create_app(settings, node.engine), follow_redirects=False)
        token = csrf_from(client.get("/login").text)
        client.post(
            "/login", data={"name": "ada", "password": "correct horse", "csrf_token": token}
        )
        for window in ("24h", "7d"):
            d = client.get("/api/dashboard", params={"window": window}).json()
            assert sum(d["ingest"]) == 2 and d["ingest"][-1] == 2, window
        uid = str(study[0].StudyInstanceUID)
        params = {"calling_ae": "PGSCU", "received_from": date.today().isoformat()}
        found = client.get("/api/studies", params=params).json()
        assert [s["study_uid"] for s in found] == [uid]
        assert client.get(f"/api/studies/{uid}").json()["stages"][0]["at"]
        assert client.get("/api/audit", params={"event_type": "study."}).json()
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert families["dicom_node_instances_stored"].samples[0].value == 2
    finally:
        node.stop()


def _try_login(client: TestClient, name: str, password: str) -> Any:
    page = client.get("/login").text
    return client.post(
        "/login", data={"name": name, "password": password, "csrf_token": csrf_from(page)}
    )


def test_failed_logins_back_off_per_client_and_never_lock_out_another(site: Site) -> None:
    add_user(site.engine, "tess", "tess password", Role.VIEWER)
    attacker = TestClient(site.app_client.app, follow_redirects=False, client=("203.0.113.9", 1))
    for _ in range(FREE_FAILURES):
        r = _try_login(attacker, "tess", "guess")
        assert r.status_code == 200 and "Wrong name or password." in r.text
    held = _try_login(attacker, "tess", "tess password")  # backing off: even the right one
    assert held.status_code == 429 and "Too many failed logins" in held.text
    assert int(held.headers["retry-after"]) >= 1
    # the user, from their own desk, is not locked out
    desk = TestClient(site.app_client.app, follow_redirects=False, client=("198.51.100.7", 1))
    assert _try_login(desk, "tess", "tess password").status_code == 303
    assert desk.get("/api/me").json()["name"] == "tess"
    failed = audit_rows(site.engine, "user.login_failed")
    assert failed[-1].details["client"] == "203.0.113.9"


def test_many_failures_for_one_name_raise_the_alarm(site: Site) -> None:
    for k in range(ALARM_FAILURES):
        spray = TestClient(site.app_client.app, follow_redirects=False, client=(f"192.0.2.{k}", 1))
        assert _try_login(spray, "root-guess", "hunter2").status_code == 200
    [alarm] = audit_rows(site.engine, "user.login_alarm")
    assert alarm.entity_id == "root-guess" and alarm.details["failures"] == ALARM_FAILURES


def test_an_unknown_name_costs_as_much_as_a_known_one(site: Site) -> None:
    """No user enumeration by timing: an unknown name is verified against a dummy hash."""
    client = TestClient(site.app_client.app, follow_redirects=False, client=("192.0.2.200", 1))

    def cost(name: str) -> float:
        started = time.perf_counter()
        _try_login(client, name, "wrong password")
        return time.perf_counter() - started

    known = min(cost("vic") for _ in range(2))
    unknown = min(cost(f"nobody-{k}") for k in range(2))
    assert unknown > 0.5 * known  # both pay for argon2 (tens of ms), not 3 ms against 119


def _replay(site: Site, cookies: Any) -> int:
    replayed = TestClient(site.app_client.app, follow_redirects=False, cookies=cookies)
    return int(replayed.get("/api/me").status_code)


@pytest.mark.parametrize("how", ["logout", "password change", "role change", "disable"])
def test_a_replayed_cookie_is_refused_once_the_session_ended(site: Site, how: str) -> None:
    name = f"rita-{how.replace(' ', '-')}"
    add_user(site.engine, name, "rita password", Role.ADMIN)
    client = site.login(name, "rita password")
    cookies = dict(client.cookies)
    assert _replay(site, cookies) == 200
    if how == "logout":
        assert client.post("/logout", data={"csrf_token": token(client)}).status_code == 303
    elif how == "password change":
        change_user(site.engine, name, password="a new password")  # noqa: S106
    elif how == "role change":
        change_user(site.engine, name, role=Role.VIEWER)
    else:
        change_user(site.engine, name, disabled=True)
    assert _replay(site, cookies) == 401


def test_sessions_end_when_idle_and_every_login_makes_a_new_one(site: Site) -> None:
    first, second = site.login("vic", "viewer pass"), site.login("vic", "viewer pass")
    with site.engine.begin() as conn:
        rows = conn.execute(select(AdminSession).where(AdminSession.user_name == "vic")).all()
        assert len({r.id for r in rows}) == len(rows) >= 2
        idle = datetime.now(UTC) - timedelta(seconds=site.settings.admin.session_idle_s + 60)
        conn.execute(update(AdminSession).values(last_seen_at=idle))
    assert first.get("/api/me").status_code == 401
    assert second.get("/api/me").status_code == 401


def test_every_response_has_a_csp_and_authenticated_ones_no_store(site: Site) -> None:
    viewer = site.login("vic", "viewer pass")
    for path in [*PAGES, *APIS, "/login", f"/studies/{site.study_a}"]:
        r = viewer.get(path) if path != "/login" else site.client().get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'self'" in csp, path
        assert r.headers["cache-control"] == "no-store", path


def test_the_api_schema_needs_login_and_there_is_no_cdn_docs_page(site: Site) -> None:
    anonymous = site.client()
    assert anonymous.get("/api/openapi.json").status_code == 401
    assert anonymous.get("/api/docs").status_code in (303, 404)
    schema = site.login("vic", "viewer pass").get("/api/openapi.json")
    assert schema.status_code == 200 and "/api/studies" in schema.json()["paths"]
    assert site.login("vic", "viewer pass").get("/api/docs").status_code == 404


def test_no_redirect_is_built_from_the_host_header(site: Site) -> None:
    viewer = site.login("vic", "viewer pass")
    r = viewer.get("/studies/", headers={"host": "evil.example"})
    assert "evil.example" not in r.headers.get("location", "")
    r = site.client().get("/studies", headers={"host": "evil.example"})
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


def test_audit_csv_cells_cannot_be_formulas(site: Site, tmp_path: Path) -> None:
    client = TestClient(site.app_client.app, follow_redirects=False, client=("192.0.2.201", 1))
    _try_login(client, '=HYPERLINK("https://evil.example","x")', "x")
    viewer = site.login("vic", "viewer pass")
    table = list(csv.reader(io.StringIO(viewer.get("/audit.csv").text)))
    cells = [c for row in table for c in row]
    assert '\'=HYPERLINK("https://evil.example","x")' in cells
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")]
    done = cli("audit", "--csv", config=config_for(site, tmp_path))
    assert done.returncode == 0, done.stderr
    assert not [c for row in csv.reader(io.StringIO(done.stdout)) for c in row if c[:1] == "="]


def test_cancelling_a_running_job_takes_it_from_its_worker(site: Site) -> None:
    from dicom_node.jobs.service import claim, heartbeat  # noqa: PLC0415

    admin = site.login("ada", "correct horse")
    headers = {"X-CSRF-Token": token(admin)}
    [job_id] = admin.post(f"/api/studies/{site.study_a}/rerun", headers=headers).json()["result"]
    jobs_settings = site.settings.jobs
    assert claim(site.engine, job_id, "worker-1", jobs_settings)
    assert _job_state(site.engine, job_id) == "RUNNING"
    assert admin.post(f"/api/jobs/{job_id}/cancel", headers=headers).status_code == 200
    assert _job_state(site.engine, job_id) == "CANCELLED"
    assert heartbeat(site.engine, job_id, "worker-1", jobs_settings) is False  # the worker stops
