"""The web layer's small parts, without a server: template filters, query-string filters, the
request helpers (redirect targets, dates, the session secret, CSRF) and the SVG charts."""

from __future__ import annotations

import re
import stat
from datetime import date
from pathlib import Path
from xml.etree import ElementTree

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.middleware.sessions import SessionMiddleware

from dicom_node.settings import Settings
from dicom_node.web import filters, plots
from dicom_node.web.context import CSRF, csrf_token, day, safe_next, session_secret
from dicom_node.web.format import dicom_date, dicom_time, duration, uid_parts, when

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.0004, "0 ms"),
        (0.25, "250 ms"),
        (1.234, "1.23 s"),
        (59.994, "59.99 s"),
        (75, "1 min 15 s"),
        (3599.4, "59 min 59 s"),
        (3600, "1 h 0 min"),
        (7384, "2 h 3 min"),
    ],
)
def test_duration_reads_as_an_admin_says_it(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        ("", "-"),
        ("2026-11-24T20:41:07.123456+00:00", "2026-11-24 20:41:07 UTC"),
        ("2026-11-24T20:41:07", "2026-11-24 20:41:07 UTC"),
    ],
)
def test_when_is_second_precise_utc(value: str | None, text: str) -> None:
    assert when(value) == text


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/studies?state=FAILED", "/studies?state=FAILED"),
        ("/", "/"),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("studies", "/"),
        ("", "/"),
    ],
)
def test_safe_next_never_leaves_the_site(target: str, expected: str) -> None:
    assert safe_next(target) == expected


def test_day_parses_iso_dates_and_names_the_field_when_wrong() -> None:
    assert day("2026-02-03", "since") == date(2026, 2, 3)
    assert day(None, "since") is None
    assert day("", "since") is None
    with pytest.raises(HTTPException) as caught:
        day("03/02/2026", "received_from")
    assert caught.value.status_code == 400
    assert caught.value.detail == "received_from: a date as YYYY-MM-DD, not '03/02/2026'"


def test_filters_clamp_limits_and_treat_empty_fields_as_absent() -> None:
    studies = filters.study_filter(state="", calling_ae="CT1", limit=0, received_to="2026-01-02")
    assert (studies.state, studies.calling_ae, studies.limit) == (None, "CT1", 1)
    assert studies.received_to == date(2026, 1, 2)
    assert filters.study_filter(limit=10**9).limit == 5000
    assert filters.audit_filter(limit=10**9).limit == 100_000
    assert filters.audit_filter(actor="", since="2026-01-01").actor is None
    jobs = filters.job_filter(state="FAILED", model="", limit=-5)
    assert (jobs.state, jobs.model, jobs.limit) == ("FAILED", None, 1)
    exports = filters.export_filter(destination="PACS", job_id="", limit=99_999)
    assert (exports.destination, exports.job_id, exports.limit) == ("PACS", None, 5000)


def settings_at(root: Path, secret: str | None = None) -> Settings:
    admin = {"session_secret": SecretStr(secret)} if secret else {}
    return Settings(storage={"root": str(root / "storage")}, admin=admin)  # type: ignore[arg-type]


def test_session_secret_is_kept_private_and_stable(tmp_path: Path) -> None:
    settings = settings_at(tmp_path)
    first = session_secret(settings)
    path = tmp_path / "storage/.admin-session-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 48
    assert session_secret(settings) == first  # a restart signs alike
    assert session_secret(settings_at(tmp_path, "configured")) == "configured"


def csrf_app() -> TestClient:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, secret_key="test")  # noqa: S106 - a test app

    @app.get("/token")
    def token(request: Request) -> dict[str, str]:
        return {"token": csrf_token(request)}

    @app.post("/act", dependencies=CSRF)
    def act() -> dict[str, bool]:
        return {"done": True}

    @app.get("/again")
    def again(token: str = Depends(csrf_token)) -> dict[str, str]:
        return {"token": token}

    return TestClient(app)


def test_csrf_needs_the_sessions_own_token_in_a_header_or_a_field() -> None:
    client = csrf_app()
    token = client.get("/token").json()["token"]
    assert client.get("/again").json()["token"] == token  # one token per session
    assert client.post("/act", headers={"X-CSRF-Token": token}).json() == {"done": True}
    assert client.post("/act", data={"csrf_token": token}).status_code == 200
    refused = client.post("/act", headers={"X-CSRF-Token": token + "x"})
    assert refused.status_code == 403
    assert "CSRF token missing or wrong" in refused.json()["detail"]
    assert client.post("/act").status_code == 403
    assert csrf_app().post("/act", headers={"X-CSRF-Token": token}).status_code == 403


@pytest.mark.parametrize(
    ("value", "top"),
    [
        (0, 1.0),
        (0.04, 0.05),
        (0.4, 0.5),
        (1, 1.0),
        (3, 5.0),
        (10, 10.0),
        (11, 20.0),
        (2400, 2500.0),
    ],
)
def test_chart_top_is_a_round_number_at_or_above_the_largest_value(
    value: float, top: float
) -> None:
    assert plots._nice_max(value) == top


def parse(markup: str) -> ElementTree.Element:
    svg = re.search(r"<svg.*</svg>", markup, re.S)
    assert svg is not None
    return ElementTree.fromstring(svg.group(0))  # noqa: S314 - our own markup


def test_bar_chart_draws_one_bar_per_value_and_escapes_names() -> None:
    buckets = ["2026-01-01T00:00:00", "2026-01-02T00:00:00", "2026-01-03T00:00:00"]
    markup = plots.chart("Runs <per day>", buckets, {"ct&tissue": [4, None, 2]})
    assert "<per day>" not in markup and "&lt;per day&gt;" in markup
    assert "ct&amp;tissue" in markup
    svg = parse(markup)
    bars = svg.findall(f"{SVG}rect")
    assert [b.findtext(f"{SVG}title") for b in bars] == [
        "ct&tissue 01 Jan: 4",
        "ct&tissue 03 Jan: 2",
    ]
    heights = [float(b.get("height", "0")) for b in bars]
    assert heights[0] == pytest.approx(2 * heights[1], rel=0.01)  # top is 5: 4 vs 2
    labels = [t.text for t in svg.findall(f"{SVG}text")]
    assert labels[:3] == ["0", "2.5", "5"]


def test_line_chart_breaks_at_gaps_and_formats_long_durations() -> None:
    buckets = [f"2026-01-01T{h:02d}:00:00" for h in range(1, 6)]
    series: dict[str, list[float | None]] = {"p50": [30, 60, None, 200, 240], "p95": [90] * 5}
    svg = parse(plots.chart("Run time", buckets, series, kind="line", unit="s"))
    lines = svg.findall(f"{SVG}polyline")
    assert [len(p.get("points", "").split()) for p in lines] == [2, 2, 5]
    circles = svg.findall(f"{SVG}circle")
    assert len(circles) == 9
    assert circles[2].findtext(f"{SVG}title") == "p50 04:00: 3 min"
    assert {c.get("fill") for c in circles[4:]} == {"none"}  # the second series as rings
    assert "4 min" in [t.text for t in svg.findall(f"{SVG}text")]  # the axis top, 240 s


@pytest.mark.parametrize(
    ("value", "text"),
    [("20150206", "2015-02-06"), (" 19991231", "1999-12-31"), ("2015", "2015"), (None, "-")],
)
def test_dicom_dates_read_as_dates(value: str | None, text: str) -> None:
    assert dicom_date(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [("143005.123", "14:30:05"), ("1430", "14:30"), ("07", "07"), ("x1", "x1"), ("", "-")],
)
def test_dicom_times_read_as_times(value: str | None, text: str) -> None:
    assert dicom_time(value) == text


def test_a_long_uid_is_cut_in_the_middle_and_keeps_every_character() -> None:
    uid = "1.2.826.0.1.3680043.8.498.12345678901234567890"
    head, mid, tail = uid_parts(uid)
    assert (head, tail) == ("1.2.826.0.1.36", "1234567890")
    assert head + mid + tail == uid
    assert uid_parts("1.2.3") == ("1.2.3", "", "")
