"""Results back to the PACS, end to end with real peers on loopback.

Orthanc plays the hospital PACS: the test uploads the tilted CT over REST, Orthanc C-STOREs it to
a ``dicom-node serve`` process, the study completes, the test model runs in the node's embedded
worker, and the SEG and SR go back to Orthanc (asserted through its REST API, in the same study)
and to a second destination, dcmtk ``storescp``. The fault test stops Orthanc before the export
and starts it again 60 s later: everything arrives exactly once, and the audit log shows the
backoff schedule and the circuit.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.db.models import AuditEvent, Export
from dicom_node.domain import JobState
from tests.helpers import NODE_AE, cli, free_port, job_events, wait_for
from tests.peers import OrthancPeer, orthanc, storescp
from tests.scenario import Scenario, destination


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[OrthancPeer, int]]:
    node_port = free_port()
    with orthanc(tmp_path / "orthanc", {"node": [NODE_AE, "127.0.0.1", node_port]}) as peer:
        yield peer, node_port


def push_study(peer: OrthancPeer, files: list[Path]) -> str:
    """Upload over REST, then have Orthanc C-STORE the study to the node."""
    study = peer.upload(files)
    job = peer.api("POST", "/modalities/node/store", study.encode())
    assert job["FailedInstancesCount"] == 0, job
    return study


def orthanc_series(peer: OrthancPeer, study: str) -> dict[str, list[str]]:
    """Modality -> SOP Instance UIDs in that Orthanc study."""
    out: dict[str, list[str]] = {}
    for series in peer.api("GET", f"/studies/{study}/series"):
        modality = series["MainDicomTags"]["Modality"]
        for instance in peer.api("GET", f"/series/{series['ID']}/instances"):
            out.setdefault(modality, []).append(instance["MainDicomTags"]["SOPInstanceUID"])
    return out


def exports_of(s: Scenario, job_id: str) -> list[Export]:
    with s.engine.connect() as conn:
        return list(conn.execute(select(Export).where(Export.job_id == job_id)).all())  # type: ignore[arg-type]


def test_seg_and_sr_reach_orthanc_in_the_same_study_and_a_second_destination(
    tmp_path: Path, ct_dir: Path, pacs: tuple[OrthancPeer, int]
) -> None:
    peer, node_port = pacs
    with storescp(tmp_path / "archive") as archive_port:
        extra = destination("pacs", peer.aet, peer.dicom_port) + destination(
            "archive", "STORESCP", archive_port
        )
        s = Scenario(tmp_path / "node", ct_dir, broker=None, extra=extra, port=node_port)
        try:
            s.node.start()
            wait_for(s.listening, 20, "node listening")
            study = push_study(peer, s.files)
            uid = str(dcmread(s.files[0], stop_before_pixels=True).StudyInstanceUID)
            job = s.wait_state(uid, JobState.DONE, 120)
            rows = exports_of(s, job.id)
            assert sorted((r.destination, r.kind, r.state) for r in rows) == [
                ("archive", "seg", "DELIVERED"),
                ("archive", "sr", "DELIVERED"),
                ("pacs", "seg", "DELIVERED"),
                ("pacs", "sr", "DELIVERED"),
            ]
            for row in rows:
                events = job_events(s.engine, row.id)
                assert events == ["export.pending", "export.sending", "export.delivered"], row
                assert row.last_status == 0 and row.attempts == 1
            # Orthanc: the same study now holds the CT, the SEG and the SR
            got = orthanc_series(peer, study)
            seg_uid = next(r.sop_instance_uid for r in rows if r.kind == "seg")
            sr_uid = next(r.sop_instance_uid for r in rows if r.kind == "sr")
            assert got["SEG"] == [seg_uid] and got["SR"] == [sr_uid]
            assert len(got["CT"]) == len(s.files)
            tags = peer.api("GET", f"/instances/{_orthanc_id(peer, seg_uid)}/simplified-tags")
            assert tags["StudyInstanceUID"] == uid
            assert tags["SeriesDescription"].startswith("AI SEG threshold 1.0.0")
            # storescp: the same two objects, byte for byte what the node built
            received = {dcmread(p).SOPInstanceUID: p for p in (tmp_path / "archive").iterdir()}
            assert set(received) == {seg_uid, sr_uid}
            assert s.events(job.id)[-3:] == ["job.results_ready", "job.exporting", "job.done"]
            resend_from_the_cli(s, job.id, seg_uid)
        finally:
            s.close()


def resend_from_the_cli(s: Scenario, job_id: str, seg_uid: str) -> None:
    """``dicom-node exports``, ``exports resend ID`` and ``destinations`` on the running node."""
    listed = json.loads(cli("exports", "--json", "--job", job_id, config=s.config).stdout)
    assert {r["state"] for r in listed} == {"DELIVERED"} and len(listed) == 4
    row = next(r for r in listed if r["destination"] == "pacs" and r["kind"] == "seg")
    assert row["sop_instance_uid"] == seg_uid and row["last_status"] == "0x0000"
    done = cli("exports", "resend", row["export_id"], config=s.config)
    assert done.returncode == 0, done.stderr
    wait_for(
        lambda: s.job_state(job_id) == "DONE" and len(job_events(s.engine, row["export_id"])) == 6,
        30,
        "resent export delivered",
    )
    assert job_events(s.engine, row["export_id"])[3:] == [
        "export.resend",
        "export.sending",
        "export.delivered",
    ]
    with s.engine.connect() as conn:
        actor = conn.execute(
            select(AuditEvent.actor).where(
                AuditEvent.entity_id == row["export_id"], AuditEvent.event_type == "export.resend"
            )
        ).scalar_one()
    assert actor == f"cli:{getpass.getuser()}"  # the OS user who ran the command
    again = cli("exports", "resend", "--job", "no-such-job", config=s.config)
    assert again.returncode == 2 and "no exports of no-such-job" in again.stderr
    destinations = json.loads(cli("destinations", "--json", config=s.config).stdout)
    assert [(d["destination"], d["circuit"]) for d in destinations] == [
        ("pacs", "CLOSED"),
        ("archive", "CLOSED"),
    ]
    echo = cli("destinations", "echo", "pacs", config=s.config)
    assert echo.returncode == 0 and "Success" in echo.stdout


def _orthanc_id(peer: OrthancPeer, sop_uid: str) -> str:
    [found] = peer.api(
        "POST",
        "/tools/find",
        f'{{"Level": "Instance", "Query": {{"SOPInstanceUID": "{sop_uid}"}}}}'.encode(),
    )
    return str(found)


def test_pacs_down_for_60_s_loses_nothing_and_delivers_once(
    tmp_path: Path, ct_dir: Path, pacs: tuple[OrthancPeer, int]
) -> None:
    peer, node_port = pacs
    extra = destination(
        "pacs",
        peer.aet,
        peer.dicom_port,
        backoff_initial_s=2.0,
        backoff_max_s=20.0,
        circuit_failures=3,
        circuit_probe_s=5.0,
        max_attempts=20,
        acse_timeout_s=5.0,
    )
    s = Scenario(tmp_path / "node", ct_dir, broker=None, extra=extra, port=node_port)
    try:
        s.node.start()
        wait_for(s.listening, 20, "node listening")
        study = push_study(peer, s.files)
        peer.stop()  # before the study completes (quiet period 3 s): the export will find it down
        down_at = time.monotonic()
        uid = str(dcmread(s.files[0], stop_before_pixels=True).StudyInstanceUID)
        job = s.wait_state(uid, JobState.EXPORTING, 60)
        wait_for(lambda: _circuit_opened(s), 60, "circuit opened")
        time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
        assert s.job(uid).state == str(JobState.EXPORTING)  # type: ignore[union-attr]
        peer.start()
        back_at = time.monotonic()
        job = s.wait_state(uid, JobState.DONE, 60)
        delivered_after_s = time.monotonic() - back_at
        rows = exports_of(s, job.id)
        assert sorted((r.kind, r.state) for r in rows) == [
            ("seg", "DELIVERED"),
            ("sr", "DELIVERED"),
        ]
        got = orthanc_series(peer, study)
        assert sorted(got["SEG"] + got["SR"]) == sorted(r.sop_instance_uid for r in rows)
        for row in rows:
            events = job_events(s.engine, row.id)
            assert events.count("export.delivered") == 1
            assert events[-2:] == ["export.sending", "export.delivered"]
            # each try while the PACS was down waited (RETRY_WAIT) without using an attempt:
            # nothing was sent; the one send that reached the PACS is the only attempt
            assert events.count("export.retry_wait") >= 3
            assert row.attempts == 1
        schedule = _retry_delays(s, rows[0].id)
        print(
            f"backoff schedule (s): {schedule}; delivered {delivered_after_s:.1f} s after restart"
        )
        # exponential, with +-20 % jitter, capped
        for n, delay in enumerate(schedule[:3], start=1):
            assert 2.0 * 2 ** (n - 1) * 0.8 <= delay <= 2.0 * 2 ** (n - 1) * 1.2
        types = _destination_events(s)
        assert (
            types[0] == "destination.circuit_opened" and types[-1] == "destination.circuit_closed"
        )
        assert "destination.probe_failed" in types
    finally:
        s.close()


def _circuit_opened(s: Scenario) -> bool:
    return "destination.circuit_opened" in _destination_events(s)


def _destination_events(s: Scenario) -> list[str]:
    with s.engine.connect() as conn:
        return list(
            conn.execute(
                select(AuditEvent.event_type)
                .where(AuditEvent.entity_type == "destination")
                .order_by(AuditEvent.id)
            ).scalars()
        )


def _retry_delays(s: Scenario, export_id: str) -> list[float]:
    with s.engine.connect() as conn:
        details = conn.execute(
            select(AuditEvent.details)
            .where(AuditEvent.entity_id == export_id, AuditEvent.event_type == "export.retry_wait")
            .order_by(AuditEvent.id)
        ).scalars()
        return [float(d["delay_s"]) for d in details]
