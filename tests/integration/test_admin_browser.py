"""The admin UI in a real browser (Debian's headless Chromium, driven by Selenium through
Debian's chromedriver; nothing is downloaded), against ``dicom-node serve``.

A real study goes through the whole node: C-STORE in, the study completes, the embedded worker
runs a tiny real torch model, SEG + SR are C-STOREd to dcmtk storescp. Then an admin made with
``dicom-node users add`` logs in, sees the dashboard and its plots, opens the study's timeline
with its durations, clicks "Resend results" and sees the new export attempt. Screenshots go to
``artifacts/browser/`` (``DICOM_NODE_ARTIFACTS``). /metrics is parsed and matched to what was
sent, and neither the pages nor the node's log hold the patient's name or ID.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from dicom_node.domain import JobState
from tests.helpers import REPO, free_port, wait_for
from tests.peers import storescp
from tests.scenario import Scenario, destination
from tests.viewers import headless_chromium

ARTIFACTS = Path(os.environ.get("DICOM_NODE_ARTIFACTS", REPO / "artifacts")) / "browser"
PATIENT_NAME = "Fennimore^Wilhelmina"
PATIENT_ID = "PID-40417733"
SLICES = 12

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = headless_chromium("--window-size=1400,1000", "--disable-gpu")
    yield driver
    driver.quit()


def _anonymised_copy(ct_dir: Path, out: Path) -> Path:
    """The real CT with a distinctive patient name and ID, so that a leak is found by grep."""
    out.mkdir(parents=True)
    slices = sorted(
        (dcmread(p) for p in ct_dir.iterdir() if p.name != "DIRFILE"),
        key=lambda ds: int(ds.InstanceNumber),
    )
    for ds in slices[:SLICES]:  # the first contiguous slices: one volume
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.save_as(out / f"I{int(ds.InstanceNumber):03d}")
    return out


def _shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # the whole page, not the window: size the viewport to the content for the shot
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {
            "width": 1400,
            "height": min(int(size["height"]) + 20, 6000),
            "deviceScaleFactor": 1,
            "mobile": False,
        },
    )
    try:
        assert driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


def test_admin_ui_end_to_end(browser: Any, tmp_path: Path, ct_dir: Path) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support import expected_conditions as ec  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    driver = browser
    archive = tmp_path / "archive"
    admin_port = free_port()
    with storescp(archive) as archive_port:
        s = Scenario(tmp_path / "node", _anonymised_copy(ct_dir, tmp_path / "ct"), broker=None)
        config = s.config.read_text()
        assert "[admin]\nenabled = false\n" in config
        s.config.write_text(
            config.replace(
                "[admin]\nenabled = false\n", f'[admin]\nhost = "127.0.0.1"\nport = {admin_port}\n'
            )
            + destination("archive", "STORESCP", archive_port)
        )
        try:
            add = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dicom_node",
                    "users",
                    "add",
                    "ada",
                    "--role",
                    "admin",
                    "--password-stdin",
                    "--config",
                    str(s.config),
                ],
                input="a long passphrase\n",
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert add.returncode == 0, add.stderr
            s.node.start()
            study_uid = s.send()
            job = s.wait_state(study_uid, JobState.DONE, 120)
            base = f"http://127.0.0.1:{admin_port}"
            wait_for(lambda: _up(base), 20, "admin UI listening")
            delivered = len(list(archive.iterdir()))
            assert delivered == 2  # SEG + SR

            # log in
            driver.get(f"{base}/studies")
            assert "/login" in driver.current_url
            _shot(driver, "01-login")
            driver.find_element(By.NAME, "name").send_keys("ada")
            driver.find_element(By.NAME, "password").send_keys("a long passphrase")
            driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
            # (the login page's own URL ends in "?next=/studies": wait for the exact URL)
            WebDriverWait(driver, 10).until(ec.url_to_be(f"{base}/studies"))

            # the dashboard and its plots
            driver.get(f"{base}/")
            charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
            assert len(charts) == 6
            tiles = driver.find_element(By.CSS_SELECTOR, ".tiles").text
            assert f"INSTANCES RECEIVED\n{SLICES}" in tiles.upper()
            bars = driver.find_elements(By.CSS_SELECTOR, "svg.chart rect")
            assert bars, "the ingest plot has a bar for the instances just received"
            _shot(driver, "02-dashboard")

            # the study list, then the study's timeline with durations
            driver.get(f"{base}/studies")
            _shot(driver, "03-studies")
            driver.find_element(By.CSS_SELECTOR, f"a[href='/studies/{study_uid}']").click()
            WebDriverWait(driver, 10).until(ec.presence_of_element_located((By.ID, "timeline")))
            timeline = driver.find_element(By.ID, "timeline").text
            for stage in (
                "received (first instance)",
                "complete (settled after release)",
                "threshold: queued",
                "threshold: running",
                "threshold: results ready",
                "threshold: finished (DONE)",
                "threshold: SEG delivered",
                "threshold: SR delivered",
            ):
                assert stage in timeline, (stage, timeline)
            assert re.search(r"\d+(\.\d+)? (ms|s)\b", timeline), "durations are shown"
            _shot(driver, "04-study-timeline")

            # resend: a new export attempt appears
            attempts = [
                e.text for e in driver.find_elements(By.CSS_SELECTOR, "tr.export td.attempts")
            ]
            assert attempts == ["1", "1"]
            driver.find_element(By.XPATH, "//button[normalize-space()='Resend results']").click()
            # the click navigates (POST, 303 back to the study): wait for the new page
            flash = (
                WebDriverWait(driver, 10)
                .until(ec.presence_of_element_located((By.CSS_SELECTOR, ".flash.ok")))
                .text
            )
            assert "queued for sending again" in flash
            # (storescp names files by SOP Instance UID: the resent objects overwrite theirs)

            def delivered_twice() -> bool:
                driver.refresh()
                text = driver.find_element(By.ID, "timeline").text
                return (
                    text.count("SEG delivered") == 2
                    and text.count("SR delivered") == 2
                    and "SEG resend" in text
                )

            wait_for(delivered_twice, 30, "the new attempt in the timeline")
            timeline = driver.find_element(By.ID, "timeline").text
            assert "resend by ada" in timeline
            _shot(driver, "05-after-resend")

            # the study page: the study date as a date, the result objects where they are
            study_date = dcmread(s.files[0], stop_before_pixels=True).StudyDate
            header = driver.find_element(By.CSS_SELECTOR, ".card").text
            assert f"Study date {study_date[:4]}-{study_date[4:6]}-{study_date[6:]}" in header
            driver.find_element(By.CSS_SELECTOR, "details.objects summary").click()
            objects = driver.find_elements(By.CSS_SELECTOR, "tr.object")
            assert sorted(o.text.split()[0] for o in objects) == ["SEG", "SR"]
            for row in objects:
                assert str(tmp_path / "node" / "storage" / "results") in row.text
                assert row.text.endswith("archive")  # sent to
            _shot(driver, "05b-result-objects")

            # the audit log: pages that keep the filter; whole UIDs behind the shortened ones
            driver.get(f"{base}/audit?event_type=export.&per_page=10")
            pager = driver.find_element(By.CSS_SELECTOR, ".pager").text
            total = int(re.search(r"events 1-10 of (\d+)", pager)[1])  # type: ignore[index]
            assert total > 10
            uid = driver.find_element(By.CSS_SELECTOR, "td .uid.cut")
            full = uid.get_attribute("data-uid") or ""
            assert uid.get_attribute("title") == full and uid.text == full  # hover, copy
            shown = driver.execute_script(  # what is drawn: head, an ellipsis, tail
                "const u = arguments[0];"
                "return [getComputedStyle(u.querySelector('.head'), '::after').content,"
                " getComputedStyle(u.querySelector('.mid')).fontSize,"
                " u.getBoundingClientRect().width,"
                " u.querySelector('.head').textContent + u.querySelector('.tail').textContent];",
                uid,
            )
            assert shown[0] == '"\u2026"' and shown[1] == "0px"
            assert full.startswith(shown[3][:14]) and full.endswith(shown[3][14:])
            assert shown[2] < 8 * len(full) * 0.7  # narrower than the whole UID would be
            _shot(driver, "07-audit-page-1")
            driver.find_element(By.LINK_TEXT, "older \u2192").click()
            WebDriverWait(driver, 10).until(ec.url_contains("page=2"))
            assert "event_type=export." in driver.current_url
            assert "per_page=10" in driver.current_url
            pager = driver.find_element(By.CSS_SELECTOR, ".pager").text
            assert f"events 11-{min(20, total)} of {total}" in pager
            events = [
                e.text for e in driver.find_elements(By.CSS_SELECTOR, "tbody tr td:nth-child(2)")
            ]
            assert events and all(e.startswith("export.") for e in events)
            _shot(driver, "07-audit-page-2")

            for page in ("jobs", "exports", "audit", "destinations", "models"):
                driver.get(f"{base}/{page}")
                assert "500" not in driver.title
                _shot(driver, f"06-{page}")
            html_pages = [driver.page_source]
            with httpx.Client(base_url=base, cookies=_cookies(driver)) as client:
                for path in (
                    "/",
                    "/studies",
                    f"/studies/{study_uid}",
                    "/jobs",
                    "/exports",
                    "/audit",
                    "/models",
                    "/api/studies",
                    f"/api/studies/{study_uid}",
                    "/audit.csv",
                ):
                    r = client.get(path)
                    assert r.status_code == 200, path
                    html_pages.append(r.text)
                metrics = client.get("/metrics").text
        finally:
            s.close()
    # /metrics: the counters match what the test sent
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert families["dicom_node_instances_stored"].samples[0].value == SLICES
    assert families["dicom_node_studies_completed"].samples[0].value == 1
    events = {
        (x.labels.get("destination") or x.labels.get("model"), x.labels["event"]): x.value
        for name in ("dicom_node_job_events", "dicom_node_export_events")
        for x in families[name].samples
    }
    assert events[("threshold", "job.done")] == 2  # done, then done again after the resend
    assert events[("archive", "export.delivered")] == 4
    # no PHI in what the admin saw, nor in the node's log
    log = (tmp_path / "node" / "node.log").read_text()
    assert "http_request" in log and job.id in log
    for text in [*html_pages, log, metrics]:
        assert PATIENT_NAME not in text and "Fennimore" not in text
        assert PATIENT_ID not in text


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/login", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _cookies(driver: Any) -> dict[str, str]:
    return {c["name"]: c["value"] for c in driver.get_cookies()}
